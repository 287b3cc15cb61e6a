"""The train job of an uplift model (a model config with a ``treatment``): the usual stacked
labelled snapshots, each row marked treated or control (rows in neither arm left out), split
by profile (:func:`profile_split`), T- and X-learners fitted and chosen on the validation rows by
Qini, measured on the test rows (Qini, uplift at 20 %, incremental conversions of targeting the
top 20 % by uplift against the top 20 % by the arm-blind probability a propensity model would
give, with bootstrap intervals), logged to MLflow and registered as the challenger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from propensity.core.config import ProjectConfig, TrainingConfig, TreatmentConfig
from propensity.core.errors import UserError
from propensity.features.activation.holdout import destination_arms_file
from propensity.features.engine import Events
from propensity.models import evaluate as ev
from propensity.models import tracking
from propensity.models.split import profile_fraction
from propensity.models.uplift import ArmRows, UpliftModel, fit_uplift
from propensity.models.uplift_metrics import UpliftEvaluation, evaluate_uplift

TARGET_FRACTION = 0.2  # the top share whose incremental conversions are compared


@dataclass(frozen=True)
class UpliftTrained:
    """A fitted, measured, logged and registered uplift model."""

    run_id: str
    version: str
    model_uri: str
    model: UpliftModel
    evaluation: UpliftEvaluation
    metrics: dict[str, float]
    rows: dict[str, Any]
    buckets: pd.DataFrame
    fit_seconds: float


def arms_from_events(loaded: Events, treatment: TreatmentConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``treated`` (1: a treatment event in the window up to its as_of, else 0)."""
    dates = sorted(pd.to_datetime(frame["as_of"]).dt.date.unique())
    hits = loaded.treated(treatment, dates).assign(treated=1)
    keyed = frame.assign(as_of=pd.to_datetime(frame["as_of"]))
    out = keyed.merge(hits, on=["profile_id", "as_of"], how="left")
    out["treated"] = out["treated"].fillna(0).astype(int)
    return out.set_axis(frame.index)


def arms_from_memberships(treatment: TreatmentConfig, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s rows whose profile a past export of ``treatment.segment`` placed in an arm in
    the window up to the row's as_of (the latest placement), with ``treated`` (targeted 1,
    holdout 0); rows in neither arm are dropped."""
    root = Path(str(treatment.memberships_dir))
    recorded = (
        "memberships.parquet"
        if treatment.destination is None
        else destination_arms_file(treatment.destination)
    )
    files = sorted(root.glob(f"as_of=*/{recorded}"))
    if not files:
        raise UserError(f"treatment: no memberships under {root} (as_of=<date>/{recorded})")
    tables = [pq.read_table(f).to_pandas() for f in files]
    members = pd.concat(tables, ignore_index=True)
    if "arm" not in members.columns:
        raise UserError(
            f"treatment: the memberships under {root} record no `arm`; give the segment or its "
            "destination a holdout share and run segments again"
        )
    members = members[(members["segment"] == treatment.segment) & (members["status"] != "exited")]
    members = members.assign(placed=pd.to_datetime(members["as_of"]))[["profile_id", "placed", "arm"]]
    rows = frame.assign(as_of=pd.to_datetime(frame["as_of"])).reset_index(names="_row")
    joined = rows.merge(members, on="profile_id")
    window = pd.Timedelta(days=treatment.window_days)
    joined = joined[(joined["placed"] <= joined["as_of"]) & (joined["placed"] > joined["as_of"] - window)]
    latest = joined.sort_values(["_row", "placed"]).groupby("_row").tail(1)
    latest = latest[latest["arm"].isin(["targeted", "holdout"])]
    out = frame.loc[latest["_row"].to_numpy()].copy()
    out["treated"] = (latest["arm"].to_numpy() == "targeted").astype(int)
    return out


def fit_uplift_model(data: Any, loaded: Events, config: ProjectConfig, started: float) -> UpliftTrained:
    """Fit, measure, log and register an uplift model on ``data`` (the train job's
    ``TrainingData``: stacked labelled snapshots of the model's population)."""
    model_cfg = data.model
    treatment, training = model_cfg.treatment, model_cfg.training
    if treatment.event_type is not None:
        frame = arms_from_events(loaded, treatment, data.frame)
    else:
        frame = arms_from_memberships(treatment, data.frame)
    train, valid, test = profile_split(frame, training)
    names = list(data.labels)
    model, qini = fit_uplift(ArmRows(train, valid), names, data.labels, training, treatment, model_cfg.name)
    fit_seconds = time.perf_counter() - started
    test_table = _table(test, names)
    probability, uplift = model.predict(test_table)
    evaluation = evaluate_uplift(
        test["label"].to_numpy(),
        test["treated"].to_numpy(),
        uplift,
        model.arm_blind_probability(test_table),
        fraction=TARGET_FRACTION,
        resamples=training.bootstrap_resamples,
        seed=training.seed,
        true_effect=true_effects(loaded, treatment, test),
    )
    reference = np.quantile(probability, np.linspace(0, 1, 1001))
    model.metadata |= {
        "reference_probabilities": reference.tolist(),
        "buckets": model_cfg.buckets.model_dump(),
        "outcome": model_cfg.outcome.model_dump(),
        "treatment": treatment.model_dump(),
        "population": model_cfg.population,
        "categories": data.fs.categories,
        "event_types": data.fs.event_types,
        "trained_until": str(data.cutoff),
        "test_as_of": str(data.dates[-1]),
        "model_family": f"uplift_{model.learner}",
    }
    score = ev.scores_from_reference(probability, reference)
    medium, high = model_cfg.buckets.medium, model_cfg.buckets.high
    # The probability is the outcome's if contacted: it comes true (or not) on the treated rows.
    contacted = test["treated"].to_numpy() == 1
    bucket = ev.buckets(score, medium, high)
    buckets = ev.bucket_table(test["label"].to_numpy()[contacted], probability[contacted], bucket[contacted])
    metrics = {**evaluation.metrics(), **{f"valid_qini_{k}": v for k, v in qini.items()}}
    rows = {name: _summary(part) for name, part in (("train", train), ("validation", valid), ("test", test))}
    run_id, model_uri, version = _log_and_register(data, config, model, metrics, rows, test, fit_seconds)
    return UpliftTrained(run_id, version, model_uri, model, evaluation, metrics, rows, buckets, fit_seconds)


def true_effects(loaded: Events, treatment: TreatmentConfig, rows: pd.DataFrame) -> np.ndarray | None:
    """Each row's true effect of the treatment, from a simulated world's ground truth
    (``campaign_people.parquet``: the campaign ``treatment.campaign`` names, or its only one),
    matched to profiles by ``crm_id``; None for real data or rows it cannot place."""
    truth = loaded.inputs.ground_truth
    path = None if truth is None else Path(truth) / "campaign_people.parquet"
    if path is None or not path.is_file():
        return None
    people = pd.read_parquet(path, columns=["campaign", "crm_id", "true_effect"])
    campaigns = people["campaign"].unique()
    wanted = treatment.campaign if treatment.campaign is not None else campaigns[0]
    if treatment.campaign is None and len(campaigns) != 1:
        return None
    people = people[people["campaign"] == wanted]
    crm = pd.DataFrame(
        loaded.rows("SELECT profile_id, value FROM identity_map WHERE namespace = 'crm_id'"),
        columns=["profile_id", "crm_id"],
    )
    effects = people.merge(crm, on="crm_id").groupby("profile_id")["true_effect"].mean()
    placed = rows["profile_id"].map(effects)
    return None if placed.isna().any() else placed.to_numpy(dtype=float)


def profile_split(frame: pd.DataFrame, training: TrainingConfig) -> tuple[pd.DataFrame, ...]:
    """(train, validation, test) rows, disjoint by profile (a hash of ``profile_id``, seeded):
    ``training.test_profile_fraction`` of the profiles for the test, then
    ``training.validation_profile_fraction`` of the rest for validation. Not by time, as a
    propensity model's split is: a treatment is a moment (a campaign is sent once), and the rows
    that have an arm are often one snapshot's."""
    held_out = profile_fraction(frame["profile_id"], f"test-{training.seed}") < training.test_profile_fraction
    share = training.validation_profile_fraction
    validating = (profile_fraction(frame["profile_id"], f"validation-{training.seed}") < share) & ~held_out
    return frame[~held_out & ~validating], frame[validating], frame[held_out]


def _summary(frame: pd.DataFrame) -> dict:
    """Rows, treated, positives and dates of a part, for the run's record."""
    return {
        "rows": len(frame),
        "treated": int(frame["treated"].sum()),
        "positives": int(frame["label"].sum()),
        "as_of": sorted({str(d.date()) for d in pd.to_datetime(frame["as_of"])}),
    }


def _table(frame: pd.DataFrame, names: list[str]):
    import pyarrow as pa

    return pa.Table.from_pandas(frame[names], preserve_index=False)


def _log_and_register(
    data: Any,
    config: ProjectConfig,
    model: UpliftModel,
    metrics: dict[str, float],
    rows: dict[str, Any],
    test: pd.DataFrame,
    fit_seconds: float,
) -> tuple[str, str, str]:
    """The train run (tags, parameters, the evaluation's figures) and the registered challenger."""
    model_cfg = data.model
    client = tracking.configure(config)
    mlflow.set_experiment(model_cfg.name)
    with mlflow.start_run(run_name=f"train uplift {model_cfg.name} until {data.cutoff}") as run:
        mlflow.set_tags(
            {
                "git_commit": tracking.git_commit() or "unknown",
                "events": data.events_display,
                "step": "train",
                "trained_until": str(data.cutoff),
                "model_family": f"uplift_{model.learner}",
                "factor_space": model.metadata["factor_space"],
            }
        )
        mlflow.log_params(
            {
                "learner": model.learner,
                "learners": ",".join(model_cfg.treatment.learners),
                "treated_share": round(model.treated_share, 6),
                "seed": model_cfg.training.seed,
                "horizon_days": model_cfg.outcome.horizon_days,
                "treatment_window_days": model_cfg.treatment.window_days,
                "test_as_of": str(data.dates[-1]),
                "features": len(data.labels),
                **{
                    f"best_iteration_{p.metadata['role']}": p.metadata["best_iteration"]
                    for p in _parts(model)
                },
            }
        )
        mlflow.log_metrics({**metrics, "fit_seconds": fit_seconds})
        mlflow.log_dict(model_cfg.model_dump(mode="json"), "config/model.json")
        mlflow.log_dict(rows, "training_data.json")
        model_uri, version = tracking.log_model(model, test, model_cfg.name)
        run_id = run.info.run_id
    client.set_registered_model_alias(model_cfg.name, tracking.CHALLENGER, version)
    client.set_model_version_tag(model_cfg.name, version, "trained_until", str(data.cutoff))
    client.set_model_version_tag(model_cfg.name, version, "model_family", f"uplift_{model.learner}")
    return run_id, model_uri, version


def _parts(model: UpliftModel) -> list:
    return [model.treated, model.control, *model.effects]
