"""Every configuration model of the project, validated by pydantic.

One module, so that a key means one thing everywhere. Unknown keys and wrong types are
refused with a message that names the source, the key and what was expected. Reading the
YAML files is the pipeline's job (``propensity.pipeline.jobs.config_files``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from propensity.core.errors import UserError, describe_validation_error


class _Strict(BaseModel):
    # Each field's docstring is its description: the config reference in README is generated from them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class IdentityConfig(_Strict):
    """How identities are stitched into profiles."""

    namespaces: list[str] = Field(default_factory=lambda: ["crm_id", "email_sha256", "phone_sha256", "ecid"])
    """Precedence order: an event is attributed through its first non-null namespace here, so authenticated
    ids win over device ids when the graph had to be split.
    """
    anonymous_namespaces: list[str] = Field(default_factory=lambda: ["ecid"])
    """Namespaces of devices and cookies: a profile with only these is anonymous."""
    unique_namespaces: list[str] = Field(default_factory=lambda: ["crm_id"])
    """A profile may hold at most one value of each of these (two crm_ids = two people)."""
    max_identities_per_profile: int = Field(default=50, ge=2)
    """A component with more identities is split (a shared or kiosk device, a test account)."""

    @field_validator("namespaces")
    @classmethod
    def _no_raw_pii(cls, value: list[str]) -> list[str]:
        for raw in ("email", "phone"):
            if raw in value:
                raise ValueError(f"'{raw}' is hashed on ingest; list '{raw}_sha256' instead")
        if len(set(value)) != len(value):
            raise ValueError("namespaces must be unique")
        return value


class IngestConfig(_Strict):
    """Validation policy for incoming events."""

    on_bad_rows: Literal["fail", "quarantine"] = "fail"
    """fail: stop at the first bad row, naming file, column and rows; quarantine: write good rows and set bad
    ones aside with their reason.
    """
    max_reported_rows: int = Field(default=5, ge=1)
    """Rows named in a failure message; the full list goes to the quarantine file."""
    future_tolerance_hours: int = Field(default=24, ge=0)
    """Without --as-of, events more than this many hours after the ingest time are bad rows
    (`future_timestamp`), so a mistyped year never becomes the default as-of.
    """


class FeatureConfig(_Strict):
    """Windows and parameters of the feature families."""

    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90, 365])
    """Look-back windows, in days, of the windowed features (counts, revenue, funnel, channels...)."""
    categories: list[str] | None = None
    """Categories with their own affinity features; None = learned from the training snapshot."""
    max_learned_categories: int = Field(default=8, ge=1)
    """When categories are learned: the most purchased this many get affinity features."""
    cart_abandonment_days: int = Field(default=3, ge=1)
    """A cart with no purchase within this many days counts as abandoned."""

    @field_validator("windows_days")
    @classmethod
    def _positive_sorted(cls, value: list[int]) -> list[int]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("windows must be positive whole days")
        return sorted(set(value))


class EngineConfig(_Strict):
    """The embedded DuckDB engine (Spark is the scale-out alternative)."""

    name: Literal["duckdb", "spark"] = "duckdb"
    """duckdb (one machine) or spark (a cluster)."""
    memory_limit: str | None = None
    """e.g. "4GB"; DuckDB spills to temp_directory past it"""
    threads: int | None = Field(default=None, ge=1)
    """DuckDB threads; None: all cores."""
    temp_directory: str | None = None
    """Where DuckDB spills; None: DuckDB's default."""

    class SparkSettings(_Strict):
        """The SparkSession the Spark jobs build (``engine.name: spark``)."""

        master: str | None = None
        """None: whatever spark-submit or the cluster sets (pyspark alone falls back to local[*])."""
        app_name: str = "propensity"
        """The Spark application name."""
        shuffle_partitions: int | None = Field(default=None, ge=1)
        """spark.sql.shuffle.partitions; None: Spark's default."""
        conf: dict[str, str | int | float | bool] = Field(default_factory=dict)
        """Any other Spark setting: {"spark.executor.memory": "8g", "spark.hadoop.fs.s3a.endpoint": ...}."""

    spark: SparkSettings = Field(default_factory=SparkSettings)


class MlflowConfig(_Strict):
    """Where runs and models are tracked (MLFLOW_TRACKING_URI wins over it)."""

    tracking_uri: str | None = None
    """None: sqlite:///mlflow.db in the working directory."""


class ScoringConfig(_Strict):
    """Batch scoring: how many factors per profile, how many profiles per chunk."""

    factors: int = Field(default=5, ge=0, le=50)
    """Top factors (exact TreeSHAP, log-odds) written per profile; 0: none."""
    chunk_rows: int = Field(default=100_000, ge=1_000)
    """Peak memory grows with the chunk, not the population (features of one chunk, their explanations and
    the Arrow batch being written).
    """
    profile_partitions: int | None = Field(default=None, ge=1, le=256)
    """DuckDB: build the features of 1/N of the profiles (by a hash of the id) at a time, each partition's
    aggregates held in memory instead of all of them; None: one partition per 125,000 profiles at 232
    model features, more profiles per partition for models that split on fewer features (at 1M
    profiles, 8 partitions built 232 features 1.1x faster than one, in a fifth of the memory)."""


class ProjectConfig(_Strict):
    """configs/project.yaml"""

    name: str = "luma"
    """The project (brand) name."""
    seed: int = 42
    """Seed of the synthetic data and of everything random outside training."""
    events: str = "data/luma"
    """Default --events: raw events (Parquet, CSV, JSONL, hive directories) or an ingest directory."""
    work_dir: str = "work"
    """Default home of outputs: WORK_DIR/scores, WORK_DIR/segments, WORK_DIR/reports."""
    models_dir: str = "configs/models"
    """Where the model configs (NAME.yaml) are."""
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)


M = TypeVar("M", bound=BaseModel)


def parse_config(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` against ``model``; a problem becomes a UserError naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise UserError(describe_validation_error(source, error)) from None


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
    """How many training snapshots, and how many days apart.

    With ``adapt`` (the default), when the events do not reach back far enough for ``count``
    snapshots ``spacing_days`` apart plus ``min_history_days`` of history before the first,
    the spacing shrinks (down to ``min_spacing_days``) and then the count (down to 3) instead
    of failing; the run records what was used.
    """

    count: int = Field(default=8, ge=3, le=64)
    """Training snapshots; the last is the test snapshot, the one before it validation."""
    spacing_days: int = Field(default=28, ge=1)
    """Days between consecutive snapshot dates."""
    adapt: bool = True
    """Shrink spacing, then count, when the events are too short for the plan."""
    min_history_days: int = Field(default=90, ge=1)
    """Days of events required before the first snapshot."""
    min_spacing_days: int = Field(default=7, ge=1)
    """The spacing never shrinks below this."""


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


Candidate = Literal["lightgbm", "logistic"]


class TrainingConfig(_Strict):
    """How a model is trained; every key has a sensible default."""

    seed: int = 42
    """Seed of the split, the search, LightGBM and the bootstrap."""
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    calibration: Literal["auto", "none", "isotonic", "sigmoid"] = "auto"
    """auto: no calibration unless isotonic or sigmoid (whichever has the lower cross-validated log loss on
    the calibration rows) beats none by more than its paired bootstrap 95 % interval there; none: the model's
    own probabilities; isotonic / sigmoid: always that calibrator.
    """
    monotone_constraints: bool = True
    """LightGBM: hold each feature the registry gives a direction (recency decreasing; counts, revenue and
    rates increasing; flipped for an outcome that must not occur) to that direction.
    """
    candidates: list[Candidate] = Field(default_factory=lambda: ["lightgbm", "logistic"], min_length=1)
    """Model families fitted; the one with the best validation `selection_metric` is registered."""
    selection_metric: Literal["auc", "average_precision", "log_loss", "brier"] = "log_loss"
    """Validation metric that chooses among candidates (log_loss rewards calibrated probabilities)."""
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


# --- segments, destinations and monitoring -----------------------------------------------

# Segment and destination names become file and directory names (segment=<name>.csv).
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} '{value}' is listed twice")
        seen.add(value)
    return values


class SegmentConfig(_Strict):
    """One audience: a rule over features, profile attributes and model scores."""

    name: str = Field(pattern=NAME_PATTERN)
    """Lower case letters, digits and _: it becomes file names."""
    description: str = ""
    """What the audience is for, for people."""
    rule: str = Field(min_length=1)
    """e.g. "upsell.score >= 70 AND days_since_last_purchase > 60"; checked by features.build.rules."""


class SegmentsFile(_Strict):
    """configs/segments.yaml"""

    segments: list[SegmentConfig] = Field(min_length=1)
    """The audiences, each qualified at every as-of date."""

    @field_validator("segments")
    @classmethod
    def _unique_names(cls, value: list[SegmentConfig]) -> list[SegmentConfig]:
        _unique([s.name for s in value], "segment")
        return value


class DestinationConfig(_Strict):
    """Where segments are activated, and which identities and purpose that destination has."""

    name: str = Field(pattern=NAME_PATTERN)
    """Lower case letters, digits and _: it becomes directory names."""
    description: str = ""
    """What the destination is, for people."""
    format: Literal["csv", "parquet"] = "csv"
    """File format of the export."""
    identities: list[str] = Field(min_length=1)
    """Identity namespaces this destination may receive; nothing else is ever written."""
    marketing_action: str = Field(min_length=1)
    """What the destination does with the audience; a segment built on a model governed for another action is
    refused for it.
    """
    segments: list[str] = Field(min_length=1)
    """Segments sent to this destination."""
    include_exited: bool = False
    """Also send profiles that left a segment (status `exited`), for destinations that sync changes."""
    required_consents: list[Literal["consent_personalization", "consent_marketing"]] = Field(
        default_factory=list
    )
    """Consents that must be explicitly 'y' for a profile to be sent (e.g. consent_marketing for email)."""
    file_mode: str = Field(default="0600", pattern=r"^0?[0-7]{3}$")
    """Permissions of the exported files (octal): they hold identities, so by default only their owner may
    read them; folders get the same bits plus search (x) where read is set.
    """

    @field_validator("identities")
    @classmethod
    def _hashed_only(cls, value: list[str]) -> list[str]:
        for raw in ("email", "phone"):
            if raw in value:
                raise ValueError(f"'{raw}' is hashed on ingest and never exported; list '{raw}_sha256'")
        return _unique(value, "identity namespace")

    @field_validator("segments")
    @classmethod
    def _unique_segments(cls, value: list[str]) -> list[str]:
        return _unique(value, "segment")


class DestinationsFile(_Strict):
    """configs/destinations.yaml"""

    destinations: list[DestinationConfig] = Field(min_length=1)
    """Where segments are activated."""

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[DestinationConfig]) -> list[DestinationConfig]:
        _unique([d.name for d in value], "destination")
        return value


class MonitorConfig(_Strict):
    """configs/monitoring.yaml: drift of a model's scores and top features."""

    psi_threshold: float = Field(default=0.2, gt=0)
    """PSI at or above this on the score or any monitored feature raises the alert (0.1-0.2: moderate shift;
    >= 0.2: significant, the usual rule of thumb).
    """
    top_features: int = Field(default=10, ge=0)
    """the model's most important, by gain"""
    bins: int = Field(default=10, ge=2, le=100)
    """quantile bins of the reference"""
    epsilon: float = Field(default=1e-4, gt=0, lt=0.01)
    """share given to an empty bin"""
