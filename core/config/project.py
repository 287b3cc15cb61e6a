"""The project config: identity, ingest, features, engine, MLflow and scoring settings."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import Field, field_validator

from propensity.core.config.base import NAME_PATTERN, _Strict

# Profile columns the feature table already has (or that key it): a trait may not take their name.
RESERVED_TRAIT_NAMES = frozenset(
    {"profile_id", "as_of", "label", "loyalty_tier", "tenure_days", "signup_date", "updated_at"}
)


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
    bucket_rows: int = Field(default=10_000_000, ge=1)
    """Events de-duplicated, sorted and written at most about this many at a time (DuckDB): past it, the
    duplicate search runs in event-id hash buckets and events.parquet is written in profile-key ranges, so the
    ingest's memory follows this and `engine.memory_limit`, not the number of events.
    """
    event_type_mapping: dict[str, str] = Field(default_factory=dict)
    """Source event types renamed on ingest, e.g. {coupon_redeemed: offer_redeemed}: the source name as it
    appears in the data (compared exactly, after XDM names are mapped), the target a canonical type or a new
    name (lower case, digits, `_`); a target may not itself be renamed (no chains or cycles).
    """

    @field_validator("event_type_mapping")
    @classmethod
    def _mapping_targets(cls, value: dict[str, str]) -> dict[str, str]:
        for source, target in value.items():
            if not source.strip():
                raise ValueError("a source event type may not be empty")
            if not re.fullmatch(NAME_PATTERN, target):
                raise ValueError(
                    f"target '{target}' of '{source}' is not an event type name "
                    "(lower case letters, digits and _, starting with a letter)"
                )
            if source == target:
                raise ValueError(f"'{source}' is mapped to itself")
            if target in value:
                raise ValueError(
                    f"'{source}' maps to '{target}', which is itself mapped to '{value[target]}': "
                    "map every source straight to its final type (no chains or cycles)"
                )
        return value


class TraitConfig(_Strict):
    """One declared profile attribute (a trait) and how it may be used."""

    kind: Literal["numeric", "categorical"]
    """numeric (read as a number; text that is not one is NULL) or categorical (read as text)."""
    governance: Literal["standard", "sensitive"]
    """standard: a feature like any other; sensitive: carried for segment rules, refused as a model
    feature."""
    label: str | None = None
    """The label factors and reports show; None: the name, spaced and capitalised."""


class FeatureConfig(_Strict):
    """Windows and parameters of the feature families."""

    windows_days: list[int] = Field(default_factory=lambda: [7, 30, 90, 365])
    """Look-back windows, in days, of the windowed features (counts, revenue, funnel, channels...)."""
    categories: list[str] | None = None
    """Categories with their own affinity features; None = learned from the training snapshot."""
    max_learned_categories: int = Field(default=8, ge=1)
    """When categories are learned: the most purchased this many get affinity features."""
    max_learned_event_types: int = Field(default=8, ge=0)
    """The most frequent event types outside the contract's vocabulary (before the training snapshot's
    as-of) get their own count, active-day and recency features, up to this many; 0: none."""
    cart_abandonment_days: int = Field(default=3, ge=1)
    """A cart with no purchase within this many days counts as abandoned."""
    traits: dict[str, TraitConfig] = Field(default_factory=dict)
    """Profile attribute columns (from profiles.csv) that become point-in-time features and can be used in
    rules, e.g. {age_band: {kind: categorical, governance: standard}}; a trait is seen at an as-of date
    only when the row's `updated_at` (else `signup_date`) is before it."""

    @field_validator("traits")
    @classmethod
    def _trait_names(cls, value: dict[str, TraitConfig]) -> dict[str, TraitConfig]:
        for name in value:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"trait '{name}' must be a column name (lower case letters, digits and _)")
            if name in RESERVED_TRAIT_NAMES or name.startswith("consent_"):
                raise ValueError(f"trait '{name}' is a column the feature table already has")
        return value

    season_peaks: dict[str, str] = Field(
        default_factory=lambda: {"black_friday": "11-27", "christmas": "12-25"}
    )
    """Yearly peaks (name -> MM-DD) a model may know the distance to: features days_from_<name> (days to
    the nearest occurrence, before or after), beside the day of year as sine and cosine (the season
    family; exclude it per model with features.exclude).
    """

    @field_validator("season_peaks")
    @classmethod
    def _month_days(cls, value: dict[str, str]) -> dict[str, str]:
        for name, month_day in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"season peak name `{name}`: lower case letters, digits and _ only")
            try:
                dt.date(2000, *(int(part) for part in month_day.split("-")))
            except (TypeError, ValueError):
                raise ValueError(f"season peak `{name}`: `{month_day}` is not a MM-DD date") from None
        return value

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
    """DuckDB: build the features of 1/N of the profiles (on ingested events a range of profile keys,
    else by a hash or range of the id) at a time, each partition's
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
