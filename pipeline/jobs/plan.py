"""The snapshot plan of a model on given events: made before any feature is built, settled
once the population of every date is known, printed and logged by ``train`` and shown alone
by ``propensity plan``.

History is measured on the events the features and the outcome use
(:func:`propensity.features.build.snapshots.history_event_types`); the row budget reads the
profiles seen before each date; both are one query on either engine (the engine seam's
``Events.history_start`` / ``Events.profiles_seen``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import mlflow
import pandas as pd

from propensity.core.config import ModelConfig
from propensity.core.errors import UserError
from propensity.features.build.snapshots import history_event_types
from propensity.features.engine import Events
from propensity.models.snapshot_plan import SampledBuild, SnapshotPlan, plan_snapshots, validation_index


def make_plan(model_cfg: ModelConfig, loaded: Events, cutoff: dt.date) -> SnapshotPlan:
    """The model's snapshot plan on ``loaded`` events before ``cutoff``."""
    types = history_event_types(model_cfg.outcome.event_type)
    start = loaded.history_start(types)
    if start is None or start >= cutoff:
        raise UserError(
            f"model '{model_cfg.name}': no event the features or the outcome use before {cutoff} "
            f"(event types {', '.join(types)}); only those count as history"
        )
    return plan_snapshots(
        model_cfg.training.snapshots,
        start,
        cutoff,
        model_cfg.outcome.horizon_days,
        model_cfg.name,
        estimate=lambda dates: loaded.profiles_seen(dates, types),
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


def planned(model_cfg: ModelConfig, plan: SnapshotPlan) -> ModelConfig:
    """The model config whose snapshots are the plan's (what the engines build)."""
    snapshots = plan.config(model_cfg.training.snapshots)
    return model_cfg.model_copy(
        update={"training": model_cfg.training.model_copy(update={"snapshots": snapshots})}
    )


def settle(plan: SnapshotPlan, frame: pd.DataFrame, model_cfg: ModelConfig) -> SnapshotPlan:
    """The plan once each date's population is known: leading dates whose population is empty
    are dropped (said in the notes); a plan left without a test, a validation and a training
    snapshot with a population is refused, with the population and positives of every date."""
    table = plan.table(frame)
    populated = table["population"].to_numpy() > 0
    first = int(populated.argmax()) if populated.any() else len(plan.dates)
    dates = plan.dates[first:]
    if len(dates) < 3:
        raise UserError(_thin_population(plan, table, model_cfg))
    validation = dates[validation_index(dates, plan.horizon_days)]
    counts = dict(zip(plan.dates, table["population"], strict=True))
    if counts[validation] == 0 or counts[dates[-1]] == 0:
        raise UserError(_thin_population(plan, table, model_cfg))
    if first == 0:
        return plan
    note = (
        f"the population rule `{model_cfg.population}` holds no profile at the {first} earliest "
        f"snapshot(s) ({plan.dates[0]} .. {plan.dates[first - 1]}); training starts at {dates[0]}"
    )
    return dataclasses.replace(plan, dates=dates, validation=validation, notes=[*plan.notes, note])


def _thin_population(plan: SnapshotPlan, table: pd.DataFrame, model_cfg: ModelConfig) -> str:
    """Why a plan cannot train: the population and positives of every date, and the cause."""
    empty = table[table["population"] == 0]
    shown = "; ".join(f"{r.as_of}: {r.population} ({r.positives} positives)" for r in table.itertuples())
    return (
        f"model '{model_cfg.name}': training needs a test, a validation and an earlier training snapshot "
        f"whose population is not empty, but the population rule `{model_cfg.population}` holds no profile "
        f"at {len(empty)} of the {len(table)} snapshot dates (population per date: {shown}); the events the "
        f"features and the outcome use start on {plan.history_start}: use data that reaches further back, "
        f"a shorter outcome.horizon_days or a population rule that holds at the early dates"
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
