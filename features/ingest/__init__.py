"""Reading and staging events: the files behind ``--events``, the event contract enforced,
identities normalised and hashed, duplicates and bad rows set apart (DuckDB SQL)."""

from propensity.features.ingest.inputs import InputFiles, resolve_input
from propensity.features.ingest.staging import StagedEvents, stage_events, stage_profiles

__all__ = ["InputFiles", "StagedEvents", "resolve_input", "stage_events", "stage_profiles"]
