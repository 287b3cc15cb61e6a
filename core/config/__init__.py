"""Every configuration model of the project, validated by pydantic.

One package, so that a key means one thing everywhere: ``project`` (the project config),
``model`` (a model config), ``activation`` (segments, destinations, monitoring), on the shared
strict base in ``base``. Unknown keys and wrong types are refused with a message that names the
source, the key and what was expected. Reading the YAML files is the pipeline's job
(``propensity.pipeline.jobs.config_files``). Import the models from here.
"""

from propensity.core.config.activation import (
    DestinationConfig,
    DestinationsFile,
    HoldoutFields,
    MonitorConfig,
    SegmentConfig,
    SegmentsFile,
)
from propensity.core.config.base import NAME_PATTERN, parse_config
from propensity.core.config.model import (
    BucketConfig,
    FeatureSelection,
    GovernanceConfig,
    ModelConfig,
    OutcomeConfig,
    SamplingConfig,
    SnapshotConfig,
    TrainingConfig,
    TreatmentConfig,
    TuningConfig,
    season_before,
)
from propensity.core.config.project import (
    EngineConfig,
    FeatureConfig,
    IdentityConfig,
    IngestConfig,
    MlflowConfig,
    ProjectConfig,
    ScoringConfig,
    TraitConfig,
)

__all__ = [
    "NAME_PATTERN",
    "BucketConfig",
    "DestinationConfig",
    "DestinationsFile",
    "EngineConfig",
    "FeatureConfig",
    "FeatureSelection",
    "GovernanceConfig",
    "HoldoutFields",
    "IdentityConfig",
    "IngestConfig",
    "MlflowConfig",
    "ModelConfig",
    "MonitorConfig",
    "OutcomeConfig",
    "ProjectConfig",
    "SamplingConfig",
    "ScoringConfig",
    "SegmentConfig",
    "SegmentsFile",
    "SnapshotConfig",
    "TrainingConfig",
    "TraitConfig",
    "TreatmentConfig",
    "TuningConfig",
    "parse_config",
    "season_before",
]
