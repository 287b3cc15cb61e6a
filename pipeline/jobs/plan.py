"""The snapshot plan of a model on given events: made before any feature is built (settled once
the population of every date is known: :meth:`SnapshotPlan.settle`), printed and logged by
``train`` and shown alone by ``propensity plan``.

History is measured on the events the features and the outcome use
(:func:`propensity.features.build.snapshots.history_event_types`); the row budget reads the
profiles seen before each date; both come from one query on either engine (the engine seam's
``Events.history``).
"""

from __future__ import annotations

import datetime as dt

import mlflow
import pandas as pd

from propensity.core.config import ModelConfig
from propensity.core.errors import UserError
from propensity.features.build.event_queries import EventHistory
from propensity.features.build.snapshots import history_event_types
from propensity.features.engine import Events
from propensity.models.snapshot_plan import SampledBuild, SnapshotPlan, plan_snapshots


def make_plan(
    model_cfg: ModelConfig, loaded: Events, cutoff: dt.date, history: EventHistory | None = None
) -> SnapshotPlan:
    """The model's snapshot plan on ``loaded`` events before ``cutoff``; ``history``: the
    events' :meth:`~propensity.features.engine.Events.history` of the model's history event
    types when already asked (train asks it once, for the span too)."""
    types = history_event_types(model_cfg.outcome.event_type)
    history = history or loaded.history(types)
    if history.start is None or history.start >= cutoff:
        raise UserError(
            f"model '{model_cfg.name}': no event the features or the outcome use before {cutoff} "
            f"(event types {', '.join(types)}); only those count as history"
        )
    return plan_snapshots(
        model_cfg.training.snapshots,
        history.start,
        cutoff,
        model_cfg.outcome.horizon_days,
        model_cfg.name,
        estimate=history.profiles_seen,
        sampled=sampled_build(model_cfg, loaded),
    )


def sampled_build(model_cfg: ModelConfig, loaded: Events) -> SampledBuild | None:
    """How the row budget counts sampled training's rows: on an engine that builds only the
    chosen rows (DuckDB), for a model that samples (not uplift); None: every row is built."""
    if not loaded.builds_chosen_rows or model_cfg.treatment is not None:
        return None
    training = model_cfg.training
    return SampledBuild(
        training.sampling.rows,
        training.sampling.min_rate,
        training.test_profile_fraction,
        training.validation_profile_fraction,
    )


def describe(plan: SnapshotPlan, table: pd.DataFrame) -> str:
    """The plan for people: the summary, every note, and totals of the table."""
    lines = [plan.summary()]
    lines += [f"adapted: {note}" for note in plan.notes] or ["as configured"]
    if table["population"].notna().all():
        lines.append(
            f"{int(table['population'].sum()):,} labelled rows, {int(table['positives'].sum()):,} positives "
            f"over {len(table)} snapshots"
        )
    return "\n".join(lines)


def log_plan(plan: SnapshotPlan, table: pd.DataFrame) -> None:
    """The plan on the active MLflow run: parameters, the notes as a tag, the table as an artifact."""
    mlflow.log_params(
        {
            "plan_snapshots": len(plan.dates),
            "plan_spacing_days": plan.spacing_days,
            "plan_first_as_of": str(plan.dates[0]),
            "plan_validation_as_of": str(plan.validation),
            "plan_test_as_of": str(plan.test),
            "plan_history_start": str(plan.history_start),
            "plan_validation_overlap_days": plan.overlap_days,
        }
    )
    mlflow.set_tag("snapshot_plan_notes", " | ".join(plan.notes)[:5000] or "as configured")
    mlflow.log_table(table, "plan/snapshots.json")
    mlflow.log_dict({"summary": plan.summary(), "notes": plan.notes}, "plan/plan.json")
