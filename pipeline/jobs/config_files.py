"""Reading the YAML configs: the project file, one file per model, segments, destinations, monitoring.

The schemas live in :mod:`propensity.core.config`; this module only finds, reads and parses
files, turning a missing file or bad YAML into a :class:`UserError` naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from propensity.core.config import (
    DestinationsFile,
    ModelConfig,
    MonitorConfig,
    ProjectConfig,
    SegmentsFile,
    parse_config,
)
from propensity.core.errors import UserError

DEFAULT_PROJECT_CONFIG = Path("configs/project.yaml")


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning a missing file or a syntax error into a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: invalid YAML{where}: {getattr(error, 'problem', error)}") from None


def load_project_config(path: str | Path | None = None) -> ProjectConfig:
    """Load the project config; without a file at the default path, use the defaults."""
    if path is None:
        if not DEFAULT_PROJECT_CONFIG.is_file():
            return ProjectConfig()
        path = DEFAULT_PROJECT_CONFIG
    return parse_config(ProjectConfig, read_yaml(path), str(path))


def load_model_config(name_or_path: str, project: ProjectConfig) -> ModelConfig:
    """A model by name (``configs/models/NAME.yaml``) or by path to its YAML."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(project.models_dir) / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in Path(project.models_dir).glob("*.yaml"))
            raise UserError(
                f"unknown model '{name_or_path}': no {path} (models: {', '.join(known) or 'none'})"
            )
    data = read_yaml(path)
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return parse_config(ModelConfig, data, str(path))


DEFAULT_MONITOR_CONFIG = Path("configs/monitoring.yaml")


def load_segments(path: str | Path) -> SegmentsFile:
    """``configs/segments.yaml``: the segment definitions (rules are checked when qualifying)."""
    return parse_config(SegmentsFile, read_yaml(path), str(path))


def load_destinations(path: str | Path) -> DestinationsFile:
    """``configs/destinations.yaml``: where segments go and which identities each may receive."""
    return parse_config(DestinationsFile, read_yaml(path), str(path))


def load_monitor_config(path: str | Path | None = None) -> MonitorConfig:
    """Monitoring thresholds; without a file at the default path, the defaults."""
    if path is None:
        if not DEFAULT_MONITOR_CONFIG.is_file():
            return MonitorConfig()
        path = DEFAULT_MONITOR_CONFIG
    return parse_config(MonitorConfig, read_yaml(path), str(path))
