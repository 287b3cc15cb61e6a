"""The export job: memberships + destinations.yaml -> one file per destination and segment,
identities filtered and governance checked (:mod:`propensity.features.activation.destinations`).

DuckDB only, whatever the config's engine: the memberships are small, already qualified files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features.activation import destinations as destinations_mod
from propensity.features.activation import membership_store
from propensity.features.connection import connect
from propensity.pipeline.jobs.config_files import load_destinations, load_model_config


@dataclass
class ExportResult:
    """What each destination received at one as-of."""

    as_of: dt.date
    out: Path
    destinations: list[destinations_mod.DestinationExport]


def model_actions(models: set[str], config: ProjectConfig) -> dict[str, str | None]:
    """Each model's governance marketing action; None for a model without a config."""
    actions: dict[str, str | None] = {}
    for model in sorted(models):
        try:
            actions[model] = load_model_config(model, config).governance.marketing_action
        except UserError:
            actions[model] = None
    return actions


def export_segments(
    memberships_dir: str | Path,
    as_of: dt.date | None,
    destinations_path: str | Path,
    export_dir: str | Path,
    config: ProjectConfig,
) -> ExportResult:
    """Export the memberships at ``as_of`` (default: the latest) to every destination.

    All destinations are checked first (segments present, identity namespaces known,
    governance of the models behind each segment); any problem stops the export before a
    file is written. One check comes later: a destination's own holdout under its minimum is
    found when that destination is split, so destinations exported before it in the same run
    stay written (each complete, its folder replaced atomically); nothing of the refused one is.
    """
    destinations = load_destinations(destinations_path).destinations
    dates = membership_store.membership_dates(memberships_dir)
    if as_of is None:
        if not dates:
            raise UserError(f"{memberships_dir}: no memberships; run `propensity segments` first")
        as_of = dates[-1]
    summary = membership_store.read_summary(memberships_dir, as_of)
    segment_models = {name: tuple(s.get("models", ())) for name, s in summary["segments"].items()}
    wanted = {seg for d in destinations for seg in d.segments}
    actions = model_actions({m for seg in wanted for m in segment_models.get(seg, ())}, config)
    namespaces = destinations_mod.recorded_namespaces(memberships_dir, as_of, summary)
    destinations_mod.check_destinations(destinations, segment_models, actions, namespaces, as_of)
    con = connect(config.engine)
    membership_store.refuse_stale(con, memberships_dir, as_of)
    exports = [
        destinations_mod.export_destination(con, memberships_dir, as_of, d, export_dir) for d in destinations
    ]
    return ExportResult(as_of=as_of, out=Path(export_dir), destinations=exports)
