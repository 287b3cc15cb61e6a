"""A model config: its outcome, snapshots, training, feature selection, buckets and governance."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from propensity.core.config.base import _Strict


class OutcomeConfig(_Strict):
    """What the model predicts: an event that will (or will not) occur within the horizon."""

    event_type: str = "purchase"
    """The event that makes the outcome (any event type of the contract, or a custom one)."""
    category: str | None = None
    """product_category the event must have"""
    min_revenue: float | None = Field(default=None, ge=0)
    """Only events with at least this revenue count."""
    above_average_order_value: bool = False
    """Upsell variant: an order above the profile's own 365-day average order value."""
    horizon_days: int = Field(default=30, ge=1, le=730)
    """Days after the as-of date in which the outcome is looked for."""
    occurs: bool = True
    """False: the label is 1 when the event does NOT occur (churn)"""


class SnapshotConfig(_Strict):
    """Which as-of dates a model trains on: the snapshot plan.

    By default snapshots are ``spacing_days`` (7) apart, from the latest whose horizon has
    passed back as far as the history allows (``min_history_days`` of the events the features
    and the outcome use before the first), at most ``max_count`` of them and about
    ``max_rows`` training rows (estimated from the profiles seen before each date). The last
    is the test snapshot; validation is the last snapshot whose horizon ends by the test
    snapshot's date. A fixed ``count`` keeps that many; with ``adapt`` (the default) the
    spacing shrinks (down to ``min_spacing_days``) and then the count (down to 3) when the
    history is too short. Every adaptation is printed and logged with its numbers.
    """

    count: int | None = Field(default=None, ge=3, le=260)
    """Training snapshots; None: as many as the history, max_count and max_rows allow."""
    spacing_days: int = Field(default=7, ge=1)
    """Days between consecutive snapshot dates."""
    max_count: int = Field(default=52, ge=3, le=260)
    """With count None: snapshots at most (the newest are kept)."""
    max_rows: int = Field(default=1_500_000, ge=1000)
    """Estimated training rows built at most (with sampled training on DuckDB, the rows the sample builds):
    older snapshots beyond it are left out (said in the plan).
    """
    adapt: bool = True
    """Shrink spacing, then count, when the events are too short for the plan."""
    min_history_days: int = Field(default=90, ge=1)
    """Days of events (of the types the features and the outcome use) required before the first snapshot."""
    min_spacing_days: int = Field(default=7, ge=1)
    """The spacing never shrinks below this."""
    seasonal: int = Field(default=0, ge=0, le=52)
    """Last year's season: also train on the dates 52 weeks before the newest `seasonal` snapshots (the
    test snapshot and those just before it) where the history reaches that far; 0: off. A plan spanning a
    few months otherwise never sees the time of year its test date is in.
    """


# Last year's same season, on the same weekday (on a weekly plan's grid).
SEASON_BEFORE = dt.timedelta(weeks=52)


def season_before(dates: list[dt.date], seasonal: int) -> list[dt.date]:
    """The dates 52 weeks before the newest ``seasonal`` of ``dates`` (oldest first): what
    ``training.snapshots.seasonal`` adds to a plan."""
    return [d - SEASON_BEFORE for d in dates[max(0, len(dates) - seasonal) :]] if seasonal > 0 else []


class TuningConfig(_Strict):
    """The LightGBM hyperparameter search (Optuna, seeded TPE) on time-ordered validation.

    ``trials`` bounds the search and keeps it deterministic; ``timeout_seconds`` is a safety
    cap: a search it cuts short depends on the machine's speed (the run records it).
    ``trials: 1`` fits the defaults only.
    """

    trials: int = Field(default=12, ge=1, le=500)
    """Optuna trials; 1: LightGBM with the defaults and training.lightgbm only."""
    timeout_seconds: float | None = Field(default=600.0, gt=0)
    """High enough never to cut a search on the demo or test data (which would make the model depend on the
    machine's load); None: no cap.
    """
    max_boost_rounds: int = Field(default=1000, ge=10)
    """Boosting rounds at most (early stopping usually ends sooner)."""
    trial_rows: int | None = Field(default=None, ge=1000)
    """Beyond this many training rows the search's trials fit a sample: every positive and a seeded draw
    of the negatives (weighted 1 / rate); the chosen parameters are then fitted on every row. None (the
    default: at 150k profiles a sample of 80k cost validation quality and saved no time): every row.
    """


Candidate = Literal["lightgbm", "logistic", "bgnbd"]


class SamplingConfig(_Strict):
    """Sampled training for large data: labels are cheap, features are not.

    When the snapshot plan's estimated rows exceed ``rows``, each snapshot's labels are found
    first (one query over the outcome events) and the features are built only for the chosen
    rows: every row that may be positive, and the negatives of a seeded sample of profiles
    (all of a profile's rows together, at the rate that brings the total near ``rows``), each
    kept negative weighted by 1 / rate so that fits, calibration and metrics stay unbiased. The
    test snapshot's held-out profiles and the validation snapshot's validation profiles are kept
    whole (weight 1). The features are built in profile partitions of at most ``partition_rows``
    chosen rows, which bounds the build's memory whatever the size of the data.
    """

    rows: int = Field(default=1_500_000, ge=1000)
    """Labelled rows to build features for, about: beyond it, negatives are sampled by profile."""
    min_rate: float = Field(default=0.02, gt=0.0, le=1.0)
    """The sampled negatives' rate never goes below this, even when the positives alone fill `rows`."""
    partition_rows: int = Field(default=250_000, ge=1000)
    """Chosen rows per feature-build partition: bounds its memory (more partitions, more event scans)."""


class TrainingConfig(_Strict):
    """How a model is trained; every key has a sensible default."""

    seed: int = 42
    """Seed of the split, the search, LightGBM and the bootstrap."""
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampled training for data too large to build every row's features (SamplingConfig)."""
    calibration: Literal["auto", "none", "isotonic", "sigmoid"] = "auto"
    """auto: no calibration unless isotonic or sigmoid (whichever has the lower cross-validated log loss on
    the calibration rows) beats none by more than its paired bootstrap 95 % interval there; none: the model's
    own probabilities; isotonic / sigmoid: always that calibrator.
    """
    monotone_constraints: bool = True
    """LightGBM: hold each feature the registry gives a direction (recency decreasing; counts, revenue and
    rates increasing; flipped for an outcome that must not occur) to that direction.
    """
    candidates: list[Candidate] = Field(
        default_factory=lambda: ["lightgbm", "logistic", "bgnbd"], min_length=1
    )
    """Model families fitted: lightgbm on every feature; logistic: L2 logistic regression on the log-scaled
    recency, frequency and monetary features; bgnbd: only for an outcome that is any next purchase, on
    purchase histories, always Platt-scaled. See `blend` for which one is registered.
    """
    blend: bool = True
    """Register the convex blend of the fitted families in log-odds (weights by validation log loss on a
    0.05 grid of the simplex; one family alone when it gets all the weight), so the champion contains the
    baselines; false: the family with the best validation `selection_metric`.
    """
    selection_metric: Literal["auc", "average_precision", "log_loss", "brier"] = "log_loss"
    """Validation metric that chooses among candidates when `blend` is off (log_loss rewards calibrated
    probabilities).
    """
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    bootstrap_resamples: int = Field(default=1000, ge=50, le=20_000)
    """Test metrics carry percentile intervals from this many seeded bootstrap resamples."""
    min_positives: int = Field(default=100, ge=1)
    """Fewer positives in the training snapshots: the run stops with a clear error."""
    min_negatives: int = Field(default=100, ge=1)
    """Fewer negatives in the training snapshots: the run stops with a clear error."""
    test_profile_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    """Share of profiles held out for the test snapshot, so no profile is in train and test."""
    validation_profile_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    """Share of the other profiles kept for the validation snapshot only (early stopping, tuning, candidate
    choice, calibration), so none of them is seen in training; raised (up to 0.6) when the validation
    snapshot's rarer outcome is scarce.
    """
    max_training_rows: int = Field(default=2_000_000, ge=1000)
    """Training rows at most; a sample stratified by label beyond it (said in the run)."""
    early_stopping_rounds: int = Field(default=50, ge=1)
    """Stop boosting after this many rounds without validation improvement."""
    refit: bool = True
    """After validation chose the model and its round count, fit it again with that round count on every
    labelled snapshot before the test snapshot (validation's rows included); the test snapshot stays held out.
    """
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    """LightGBM parameters fixed instead of searched (objective and re-weighting are refused)."""
    promote_metric: Literal["test_auc", "test_average_precision", "test_log_loss", "test_brier"] = "test_auc"
    """Test metric compared by `promote` (challenger against champion and baselines)."""
    promote_min_improvement: float = 0.0
    """A challenger must beat the champion by at least this much on promote_metric."""

    @field_validator("candidates")
    @classmethod
    def _unique_candidates(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("candidates must be unique")
        return value

    @field_validator("lightgbm")
    @classmethod
    def _no_reweighting(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in ("is_unbalance", "scale_pos_weight", "objective"):
            if key in value:
                raise ValueError(f"`{key}` is not allowed: it spoils calibrated probabilities")
        return value


class FeatureSelection(_Strict):
    """Which registry features a model may use, by name or family."""

    include: list[str] = Field(default_factory=list)
    """feature or family names; empty = all"""
    exclude: list[str] = Field(default_factory=list)
    """Feature or family names left out."""
    population_outcome_rate: bool = False
    """Add `population_outcome_rate`: the share of profiles seen before the horizon-length
    window ending at each as-of date that had the outcome in it (point in time; shared by every
    profile, so it follows the base rate's seasonal drift; monitor does not watch it)."""


class BucketConfig(_Strict):
    """Score (0-100) thresholds: score >= high is `high`, >= medium is `medium`, else `low`."""

    medium: int = Field(default=40, ge=1, le=99)
    """Scores from here up to `high` are the medium bucket."""
    high: int = Field(default=70, ge=2, le=100)
    """Scores from here up are the high bucket."""


class GovernanceConfig(_Strict):
    """What a model's scores may be used for, and the features refused for it."""

    marketing_action: str = "personalization"
    """What the scores may be used for; destinations with another purpose refuse segments built on them."""
    sensitive_features: list[str] = Field(default_factory=list)
    """Features this model must never use (training refuses to start if selected)."""


Learner = Literal["t", "x"]


class TreatmentConfig(_Strict):
    """What makes a profile *treated* at a snapshot date, for an uplift model (README "Uplift models").

    Either an event (``event_type``, optionally of one ``campaign``) in the ``window_days`` before or
    at the as-of date, or the arm a past export recorded in the memberships of ``segment``
    (``targeted`` is treated, ``holdout`` is control; profiles in neither arm are left out).
    """

    event_type: str | None = None
    """The event that marks contact (e.g. `email_open`); one of this or `segment`."""
    campaign: str | None = None
    """Only events of this campaign count as treatment (needs `event_type`)."""
    segment: str | None = None
    """The segment whose recorded arm (targeted / holdout) is the treatment; one of this or `event_type`."""
    memberships_dir: str | None = None
    """With `segment`: the segments job's output folder (`as_of=<date>/memberships.parquet` with `arm`)."""
    destination: str | None = None
    """With `segment`: the arms this destination's export drew (its own `holdout`), recorded beside the
    memberships, instead of the segment's."""
    window_days: int = Field(default=30, ge=1, le=365)
    """A treatment event in this many days up to and including the as-of date makes the profile treated."""
    learners: list[Learner] = Field(default_factory=lambda: ["t", "x"], min_length=1)
    """Meta-learners fitted on LightGBM (t: one model per arm; x: the X-learner's imputed effects); the
    one with the best validation Qini coefficient is registered."""
    min_treated: int = Field(default=100, ge=1)
    """Fewer treated (or control) training rows: training stops with a clear error."""

    @field_validator("learners")
    @classmethod
    def _unique_learners(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("learners must be unique")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TreatmentConfig:
        if (self.event_type is None) == (self.segment is None):
            raise ValueError(
                "a treatment is either an `event_type` or a past export's `segment`, exactly one"
            )
        if (self.segment is None) != (self.memberships_dir is None):
            raise ValueError(
                "a treatment `segment` needs `memberships_dir` (the segments job's output folder)"
            )
        if self.destination is not None and self.segment is None:
            raise ValueError(
                "a treatment `destination` names whose arms of a `segment` to read; it needs one"
            )
        if self.campaign is not None and self.event_type is None:
            raise ValueError("`campaign` narrows a treatment `event_type`; it needs one")
        return self


class ModelConfig(_Strict):
    """configs/models/NAME.yaml: a model is data, not code."""

    name: str
    """The registered model name (defaults to the file name)."""
    description: str = ""
    """What the model predicts, for people."""
    population: str = "days_since_last_event <= 90"
    """Who is scored: a rule over features and profile attributes (the same grammar as segment rules)."""
    outcome: OutcomeConfig = Field(default_factory=OutcomeConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    features: FeatureSelection = Field(default_factory=FeatureSelection)
    buckets: BucketConfig = Field(default_factory=BucketConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    treatment: TreatmentConfig | None = None
    """Set: an uplift model, trained on treated and control rows and scored with `uplift`."""

    @model_validator(mode="after")
    def _treatment_is_not_the_outcome(self) -> ModelConfig:
        treatment = self.treatment
        if treatment is not None and treatment.event_type == self.outcome.event_type:
            raise ValueError(
                f"treatment.event_type '{treatment.event_type}' is the outcome's event: "
                "a treatment must be a contact, not the conversion it should cause"
            )
        return self
