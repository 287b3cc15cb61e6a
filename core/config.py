"""Every configuration model of the project, validated by pydantic.

One module, so that a key means one thing everywhere. Unknown keys and wrong types are
refused with a message that names the source, the key and what was expected. Reading the
YAML files is the pipeline's job (``propensity.pipeline.config_files``).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from propensity.core.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityConfig(_Strict):
    """How identities are stitched into profiles."""

    # Precedence order: an event is attributed through its first non-null namespace here,
    # so authenticated ids win over device ids when the graph had to be split.
    namespaces: list[str] = Field(default_factory=lambda: ["crm_id", "email_sha256", "phone_sha256", "ecid"])
    anonymous_namespaces: list[str] = Field(default_factory=lambda: ["ecid"])
    # A profile may hold at most one value of each of these (two crm_ids = two people).
    unique_namespaces: list[str] = Field(default_factory=lambda: ["crm_id"])
    max_identities_per_profile: int = Field(default=50, ge=2)

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
    # Rows named in a failure message; the full list goes to the quarantine file.
    max_reported_rows: int = Field(default=5, ge=1)


class FeatureConfig(_Strict):
    """Windows and parameters of the feature families."""

    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90, 365])
    # Categories with their own affinity features; None = learned from the training snapshot.
    categories: list[str] | None = None
    max_learned_categories: int = Field(default=8, ge=1)
    cart_abandonment_days: int = Field(default=3, ge=1)

    @field_validator("windows_days")
    @classmethod
    def _positive_sorted(cls, value: list[int]) -> list[int]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("windows must be positive whole days")
        return sorted(set(value))


class EngineConfig(_Strict):
    """The embedded DuckDB engine (Spark is the scale-out alternative)."""

    name: Literal["duckdb", "spark"] = "duckdb"
    memory_limit: str | None = None  # e.g. "4GB"; DuckDB spills to temp_directory past it
    threads: int | None = Field(default=None, ge=1)
    temp_directory: str | None = None

    class SparkSettings(_Strict):
        """The SparkSession the Spark jobs build (``engine.name: spark``)."""

        # None: whatever spark-submit or the cluster sets (pyspark alone falls back to local[*]).
        master: str | None = None
        app_name: str = "propensity"
        shuffle_partitions: int | None = Field(default=None, ge=1)
        # Any other Spark setting: {"spark.executor.memory": "8g", "spark.hadoop.fs.s3a.endpoint": ...}.
        conf: dict[str, str | int | float | bool] = Field(default_factory=dict)

    spark: SparkSettings = Field(default_factory=SparkSettings)


class MlflowConfig(_Strict):
    """Where runs and models are tracked (MLFLOW_TRACKING_URI wins over it)."""

    tracking_uri: str | None = None


class ScoringConfig(_Strict):
    """Batch scoring: how many factors per profile, how many profiles per chunk."""

    factors: int = Field(default=5, ge=0, le=50)
    # Peak memory grows with the chunk, not the population (features of one chunk, their
    # explanations and the Arrow batch being written).
    chunk_rows: int = Field(default=100_000, ge=1_000)


class ProjectConfig(_Strict):
    """configs/project.yaml"""

    name: str = "luma"
    seed: int = 42
    events: str = "data/luma"
    work_dir: str = "work"
    models_dir: str = "configs/models"
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)


M = TypeVar("M", bound=BaseModel)


def describe_validation_error(source: str, error: ValidationError) -> str:
    """One readable line per problem: ``file: key `a.b`: message (got 'x')``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        got = item.get("input")
        suffix = f" (got {got!r})" if item["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"{source}: key `{key}`: {message}{suffix}")
    return "; ".join(lines)


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
    category: str | None = None  # product_category the event must have
    min_revenue: float | None = Field(default=None, ge=0)
    # Upsell variant: an order above the profile's own 365-day average order value.
    above_average_order_value: bool = False
    horizon_days: int = Field(default=30, ge=1, le=730)
    occurs: bool = True  # False: the label is 1 when the event does NOT occur (churn)


class SnapshotConfig(_Strict):
    """How many training snapshots, and how many days apart.

    With ``adapt`` (the default), when the events do not reach back far enough for ``count``
    snapshots ``spacing_days`` apart plus ``min_history_days`` of history before the first,
    the spacing shrinks (down to ``min_spacing_days``) and then the count (down to 3) instead
    of failing; the run records what was used.
    """

    count: int = Field(default=8, ge=3, le=64)
    spacing_days: int = Field(default=28, ge=1)
    adapt: bool = True
    min_history_days: int = Field(default=90, ge=1)
    min_spacing_days: int = Field(default=7, ge=1)


class TuningConfig(_Strict):
    """The LightGBM hyperparameter search (Optuna, seeded TPE) on time-ordered validation.

    ``trials`` bounds the search and keeps it deterministic; ``timeout_seconds`` is a safety
    cap: a search it cuts short depends on the machine's speed (the run records it).
    ``trials: 1`` fits the defaults only.
    """

    trials: int = Field(default=12, ge=1, le=500)
    # High enough never to cut a search on the demo or test data (which would make the model
    # depend on the machine's load); None: no cap.
    timeout_seconds: float | None = Field(default=600.0, gt=0)
    max_boost_rounds: int = Field(default=1000, ge=10)


Candidate = Literal["lightgbm", "logistic"]


class TrainingConfig(_Strict):
    """How a model is trained; every key has a sensible default."""

    seed: int = 42
    snapshots: SnapshotConfig = Field(default_factory=SnapshotConfig)
    # auto: isotonic or sigmoid, whichever has the lower cross-validated log loss on the
    # calibration rows (isotonic overfits small calibration sets).
    calibration: Literal["auto", "isotonic", "sigmoid"] = "auto"
    # Model families fitted; the one with the best validation `selection_metric` is registered.
    candidates: list[Candidate] = Field(default_factory=lambda: ["lightgbm", "logistic"], min_length=1)
    selection_metric: Literal["auc", "average_precision", "log_loss", "brier"] = "log_loss"
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    # Test metrics carry percentile intervals from this many seeded bootstrap resamples.
    bootstrap_resamples: int = Field(default=1000, ge=50, le=20_000)
    min_positives: int = Field(default=100, ge=1)
    min_negatives: int = Field(default=100, ge=1)
    # Share of profiles held out for the test snapshot, so no profile is in train and test.
    test_profile_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    # Share of the other profiles kept for the validation snapshot only (early stopping,
    # tuning, candidate choice, calibration), so none of them is seen in training; raised (up
    # to 0.6) when the validation snapshot's rarer outcome is scarce.
    validation_profile_fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    max_training_rows: int = Field(default=2_000_000, ge=1000)
    early_stopping_rounds: int = Field(default=50, ge=1)
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    promote_metric: Literal["test_auc", "test_average_precision", "test_log_loss", "test_brier"] = "test_auc"
    promote_min_improvement: float = 0.0

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

    include: list[str] = Field(default_factory=list)  # feature or family names; empty = all
    exclude: list[str] = Field(default_factory=list)


class BucketConfig(_Strict):
    """Score (0-100) thresholds: score >= high is `high`, >= medium is `medium`, else `low`."""

    medium: int = Field(default=40, ge=1, le=99)
    high: int = Field(default=70, ge=2, le=100)


class GovernanceConfig(_Strict):
    """What a model's scores may be used for, and the features refused for it."""

    marketing_action: str = "personalization"
    sensitive_features: list[str] = Field(default_factory=list)


class ModelConfig(_Strict):
    """configs/models/NAME.yaml: a model is data, not code."""

    name: str
    description: str = ""
    population: str = "days_since_last_event <= 90"
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
    description: str = ""
    # e.g. "upsell.score >= 70 AND days_since_last_purchase > 60"; checked by features.rules.
    rule: str = Field(min_length=1)


class SegmentsFile(_Strict):
    """configs/segments.yaml"""

    segments: list[SegmentConfig] = Field(min_length=1)

    @field_validator("segments")
    @classmethod
    def _unique_names(cls, value: list[SegmentConfig]) -> list[SegmentConfig]:
        _unique([s.name for s in value], "segment")
        return value


class DestinationConfig(_Strict):
    """Where segments are activated, and which identities and purpose that destination has."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    format: Literal["csv", "parquet"] = "csv"
    # Identity namespaces this destination may receive; nothing else is ever written.
    identities: list[str] = Field(min_length=1)
    # What the destination does with the audience; a segment built on a model governed for
    # another action is refused for it.
    marketing_action: str = Field(min_length=1)
    segments: list[str] = Field(min_length=1)
    # Also send profiles that left a segment (status `exited`), for destinations that sync changes.
    include_exited: bool = False
    # Consents that must be explicitly 'y' for a profile to be sent (e.g. consent_marketing for email).
    required_consents: list[Literal["consent_personalization", "consent_marketing"]] = Field(
        default_factory=list
    )

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

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[DestinationConfig]) -> list[DestinationConfig]:
        _unique([d.name for d in value], "destination")
        return value


class MonitorConfig(_Strict):
    """configs/monitoring.yaml: drift of a model's scores and top features."""

    # PSI at or above this on the score or any monitored feature raises the alert
    # (0.1-0.2: moderate shift; >= 0.2: significant, the usual rule of thumb).
    psi_threshold: float = Field(default=0.2, gt=0)
    top_features: int = Field(default=10, ge=0)  # the model's most important, by gain
    bins: int = Field(default=10, ge=2, le=100)  # quantile bins of the reference
    epsilon: float = Field(default=1e-4, gt=0, lt=0.01)  # share given to an empty bin
