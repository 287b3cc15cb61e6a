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
# A config is hand-written: far below these, and an alias bomb ("billion laughs", a few hundred
# bytes expanding to billions of values) is refused before anything walks the expansion.
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_VALUES = 100_000


def _expanded_values(data: Any) -> int:
    """How many values ``data`` holds once its YAML aliases are expanded, counted without
    expanding them (each shared object's size is computed once); stops past the limit."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if isinstance(node, dict):
            children = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            children = node
        else:
            return 1
        sizes[key] = MAX_CONFIG_VALUES + 1  # a cycle counts as too large
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_CONFIG_VALUES:
                break
        sizes[key] = min(total, MAX_CONFIG_VALUES + 1)
        return sizes[key]

    return size(data)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning a missing file, a syntax error or an oversized (or alias-bomb)
    file into a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config file larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        data = yaml.safe_load(path.read_text())
    except RecursionError:
        raise UserError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(
            f"{path}: invalid YAML{where}: {str(getattr(error, 'problem', error))[:200]}"
        ) from None
    if _expanded_values(data) > MAX_CONFIG_VALUES:
        raise UserError(
            f"{path}: expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeating "
            "collections); write the values out instead"
        )
    return data


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
