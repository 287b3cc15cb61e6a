"""MLflow: tracking URI, runs, the logged pyfunc model, versions and aliases.

One experiment per model name; each training run registers a new version of the model and
points the ``challenger`` alias at it. ``champion`` moves only through :func:`promote`.
Registry stages are not used (deprecated in MLflow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.models.estimator import (
    LEGACY_MODEL_FILE,
    MODEL_FILE,
    PropensityModel,
    file_sha256,
    load_model,
)
from propensity.models.linear import LinearPropensityModel
from propensity.models.scoring import is_uplift

CHALLENGER, CHAMPION = "challenger", "champion"
LOWER_IS_BETTER = {"test_log_loss", "test_brier", "test_ece"}
PACKAGE_DIR = Path(__file__).resolve().parent


CHECKSUM_TAG = "propensity_model_sha256"


def tracking_uri(config: ProjectConfig) -> str:
    """MLFLOW_TRACKING_URI, else the config, else sqlite:///mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or config.mlflow.tracking_uri or "sqlite:///mlflow.db"


def configure(config: ProjectConfig) -> MlflowClient:
    """Point MLflow (tracking and registry) at :func:`tracking_uri`; returns a client."""
    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def git_commit() -> str | None:
    """The commit of the code that trains, when it runs from a git checkout."""
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=PACKAGE_DIR
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.CalledProcessError):
        return None


def _requirements() -> list[str]:
    from importlib.metadata import version

    # Pinned to what trained the model; given explicitly so MLflow does not load the model
    # in a subprocess to guess them.
    packages = ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "joblib", "skops")
    return [f"{p}=={version(p)}" for p in packages]


def signature_frame(model: PropensityModel | LinearPropensityModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The input example: model columns as the pyfunc expects them (floats, categoricals as text)."""
    sample = model.matrix(frame.head(5))
    for column in model.categories:
        sample[column] = sample[column].astype("object").astype("string")
    return sample


def _shipped_code(tmp: Path) -> Path:
    """A ``propensity/`` tree with only what the pyfunc needs: the bottom package and models.

    MLflow copies each code path into the model and puts its parent on ``sys.path``, so the
    served model imports ``propensity.models`` exactly as the installed package does, without
    the pipeline or features layers (and without colliding with anyone's ``models/`` folder).
    """
    root = tmp / "code" / "propensity"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("core", "models"):
        shutil.copytree(PACKAGE_DIR.parent / package, root / package, ignore=ignore)
    return root


def log_model(
    model: PropensityModel | LinearPropensityModel, example: pd.DataFrame, registered_name: str
) -> tuple[str, str]:
    """Log the pyfunc in the active run and register it; returns (model_uri, version).

    The model file (skops, no pickle) has its SHA-256 recorded on the registered version
    (tag ``propensity_model_sha256``), which :func:`load_propensity_model` checks."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / MODEL_FILE
        model.save(path)
        checksum = file_sha256(path)
        sample = signature_frame(model, example)
        output = pd.DataFrame({"probability": model.predict_proba(example.head(5))})
        if is_uplift(model):
            output["uplift"] = model.predict_uplift(example.head(5))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PACKAGE_DIR / "pyfunc_entry.py"),
            artifacts={"propensity_model": str(path)},
            code_paths=[str(_shipped_code(Path(tmp)))],
            signature=infer_signature(sample, output),
            input_example=sample,
            pip_requirements=_requirements(),
            registered_model_name=registered_name,
        )
    MlflowClient().set_model_version_tag(
        registered_name, str(info.registered_model_version), CHECKSUM_TAG, checksum
    )
    return info.model_uri, str(info.registered_model_version)


def version_for(client: MlflowClient, name: str, version: str | None = None, alias: str | None = None):
    """A model version by number or alias, with a clear error when there is none."""
    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, alias or CHAMPION)
    except MlflowException:
        what = f"version {version}" if version is not None else f"alias '{alias or CHAMPION}'"
        raise UserError(
            f"model '{name}' has no {what} in the registry at {mlflow.get_tracking_uri()}; "
            f"train it first (`propensity train {name}`)"
        ) from None


def load_propensity_model(
    client: MlflowClient, name: str, version: str | None = None, alias: str | None = None
) -> tuple[PropensityModel | LinearPropensityModel, object]:
    """The model behind a registered version (for scoring and explanations): a LightGBM
    PropensityModel or a LinearPropensityModel, with the same methods."""
    mv = version_for(client, name, version, alias)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}")) / "artifacts"
    path = local / MODEL_FILE if (local / MODEL_FILE).is_file() else local / LEGACY_MODEL_FILE
    expected = (mv.tags or {}).get(CHECKSUM_TAG)
    if expected is None and path.name == MODEL_FILE:
        raise UserError(
            f"model '{name}' v{mv.version}: no {CHECKSUM_TAG} tag in the registry; refusing to load"
        )
    if expected is not None and file_sha256(path) != expected:
        raise UserError(
            f"model '{name}' v{mv.version}: {path.name} does not match the SHA-256 the registry recorded "
            "when it was trained (the artifact store was changed); refusing to load"
        )
    return load_model(path), mv


def run_metric(client: MlflowClient, mv, metric: str) -> float | None:
    """A metric of the run that produced a model version, if logged."""
    if not mv.run_id:
        return None
    value = client.get_run(mv.run_id).data.metrics.get(metric)
    return None if value is None else float(value)


@dataclass
class Promotion:
    """What ``promote`` decided, for which version, and why."""

    promoted: bool
    version: str
    reason: str


def best_baseline(metrics: dict[str, float], metric: str) -> tuple[str, float] | None:
    """The best baseline by ``metric`` (``test_auc`` ...) among a run's ``baseline_<name>_<m>``
    metrics, as (name, value); None when the run logged none."""
    suffix = metric.removeprefix("test_")
    values = {
        key.removeprefix("baseline_").removesuffix(f"_{suffix}"): value
        for key, value in metrics.items()
        if key.startswith("baseline_") and key.endswith(f"_{suffix}") and "_ci_" not in key
    }
    if not values:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    name = pick(sorted(values), key=values.get)
    return name, float(values[name])


def verdict(low: float | None, high: float | None, lower_is_better: bool) -> str:
    """ "better", "worse" or "no worse" from the paired interval of a difference (this minus the
    other): better or worse only where the interval excludes zero."""
    if low is None or high is None:
        return "no interval"
    if lower_is_better:
        low, high = -high, -low
    return "better" if low > 0 else "worse" if high < 0 else "no worse"


def baseline_verdicts(metrics: dict[str, float], metric: str) -> dict[str, tuple[str, str]]:
    """Per baseline the run logged for ``metric``: (verdict, text with the point values and the
    paired interval of the model minus the baseline on the test snapshot)."""
    suffix = metric.removeprefix("test_")
    out = {}
    for key in sorted(metrics):
        if not (key.startswith("baseline_") and key.endswith(f"_{suffix}")) or "_ci_" in key:
            continue
        name = key.removeprefix("baseline_").removesuffix(f"_{suffix}")
        low = metrics.get(f"{metric}_minus_baseline_{name}_ci_low")
        high = metrics.get(f"{metric}_minus_baseline_{name}_ci_high")
        said = verdict(low, high, metric in LOWER_IS_BETTER)
        shown = f" (difference 95% interval [{low:+.4f}, {high:+.4f}])" if low is not None else ""
        out[name] = (said, f"{said} than {name} {_fmt(metrics[key])}{shown}")
    return out


def _loses_to_baseline(client: MlflowClient, mv, metric: str) -> str | None:
    """Why version ``mv`` loses to a baseline on its own test snapshot, or None if it does not.

    With the paired intervals logged, it loses only where the interval of its advantage lies
    wholly below zero; a run logged without them is compared by the point values."""
    if not mv.run_id:
        return None
    metrics = client.get_run(mv.run_id).data.metrics
    own, best = metrics.get(metric), best_baseline(metrics, metric)
    if own is None or best is None:
        return None
    verdicts = baseline_verdicts(metrics, metric)
    if any(said != "no interval" for said, _ in verdicts.values()):
        worse = [name for name, (said, _) in verdicts.items() if said == "worse"]
        if not worse:
            return None
        return (
            f"v{mv.version} {metric} {_fmt(own)} loses to the {', '.join(worse)} baseline beyond the "
            f"paired interval on its test snapshot ({'; '.join(t for _, t in verdicts.values())}); "
            "promote with --force to override"
        )
    worse_point = own > best[1] if metric in LOWER_IS_BETTER else own < best[1]
    if not worse_point:
        return None
    return (
        f"v{mv.version} {metric} {_fmt(own)} loses to the {best[0]} baseline ({_fmt(best[1])}) on its "
        f"test snapshot; promote with --force to override"
    )


def _against_baselines(client: MlflowClient, mv, metric: str) -> str:
    """The version against every baseline on its test snapshot, for the promotion's reason."""
    if not mv.run_id:
        return ""
    verdicts = baseline_verdicts(client.get_run(mv.run_id).data.metrics, metric)
    return "; against the baselines: " + ", ".join(t for _, t in verdicts.values()) if verdicts else ""


def promote(
    client: MlflowClient,
    name: str,
    metric: str,
    min_improvement: float,
    version: str | None = None,
    force: bool = False,
) -> Promotion:
    """Move ``champion`` to the challenger when it is better by the margin, or to ``version``.

    Either is refused when it is worse than a baseline on its test snapshot by ``metric`` beyond
    the paired bootstrap interval (no worse within it is enough), unless ``force``. The reason
    says, for the champion and each baseline, "better" where the paired interval of the
    difference excludes zero and "no worse" otherwise.
    """
    if version is not None:
        return _promote_version(client, name, metric, version, force)
    challenger = version_for(client, name, alias=CHALLENGER)
    refusal = None if force else _loses_to_baseline(client, challenger, metric)
    if refusal:
        return Promotion(False, challenger.version, refusal)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    new = run_metric(client, challenger, metric)
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        return Promotion(
            True,
            challenger.version,
            f"no champion yet; challenger v{challenger.version} ({metric} {_fmt(new)}) becomes champion"
            + _against_baselines(client, challenger, metric),
        )
    if champion.version == challenger.version:
        return Promotion(False, champion.version, f"challenger v{challenger.version} is already champion")
    return _challenge(client, name, metric, min_improvement, challenger, champion, new)


def _promote_version(client: MlflowClient, name: str, metric: str, version: str, force: bool) -> Promotion:
    """Move ``champion`` to ``version`` unless it loses to the best baseline (or ``force``)."""
    mv = version_for(client, name, version=version)
    refusal = None if force else _loses_to_baseline(client, mv, metric)
    if refusal:
        return Promotion(False, mv.version, refusal)
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    return Promotion(True, mv.version, f"version {mv.version} promoted explicitly")


def _challenge(
    client: MlflowClient,
    name: str,
    metric: str,
    min_improvement: float,
    challenger: ModelVersion,
    champion: ModelVersion,
    new: float | None,
) -> Promotion:
    """The challenger (scoring ``new``) takes ``champion`` when better by ``min_improvement``."""
    # Best: the champion scored on the challenger's own test snapshot when it was trained.
    run = client.get_run(challenger.run_id) if challenger.run_id else None
    same_snapshot = run is not None and run.data.tags.get("compared_champion_version") == str(
        champion.version
    )
    interval = ""
    if same_snapshot:
        old, basis = run.data.metrics.get(f"champion_{metric}"), "on the challenger's test snapshot"
        low = run.data.metrics.get(f"{metric}_minus_champion_ci_low")
        high = run.data.metrics.get(f"{metric}_minus_champion_ci_high")
        if low is not None and high is not None:
            said = verdict(low, high, metric in LOWER_IS_BETTER)
            interval = f"; {said} than the champion (difference 95% interval [{low:+.4f}, {high:+.4f}])"
    else:
        old, basis = run_metric(client, champion, metric), "each on its own test snapshot"
    if new is None or old is None:
        return Promotion(False, champion.version, f"cannot compare: {metric} missing on a run")
    better = (old - new) if metric in LOWER_IS_BETTER else (new - old)
    if better > min_improvement:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
        return Promotion(
            True,
            challenger.version,
            f"challenger v{challenger.version} {metric} {_fmt(new)} beats "
            f"champion v{champion.version} {_fmt(old)} by more than "
            f"{min_improvement} ({basis}){interval}" + _against_baselines(client, challenger, metric),
        )
    return Promotion(
        False,
        champion.version,
        f"champion v{champion.version} stays: challenger v{challenger.version} "
        f"{metric} {_fmt(new)} vs {_fmt(old)} (needs > {min_improvement} better; "
        f"{basis}){interval}",
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
