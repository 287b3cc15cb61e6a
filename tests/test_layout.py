"""The package layout users rely on: one namespace, models saved before the move still load,
and modules short enough to read (the developers' guide: every module under 450 lines)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd

from propensity.models.calibration import Calibrator
from propensity.models.estimator import PropensityModel, legacy_module

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "features", "models", "pipeline")
MODULE_LINE_LIMIT = 450


def test_packages_install_under_one_namespace_only(tmp_path):
    # A user's process (not pytest's, which puts the repository on sys.path) sees only
    # `propensity.*`: the old top-level names are free for the user's own packages.
    script = (
        "import importlib.util as u\n"
        "names = ('core', 'features', 'models', 'pipeline')\n"
        "print([u.find_spec(f'propensity.{n}') is not None for n in names])\n"
        "print([u.find_spec(n) is None for n in names])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[True, True, True, True]", "[True, True, True, True]"]


def _small_model() -> tuple[PropensityModel, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    y = (frame["a"] + rng.normal(scale=0.5, size=400) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 4}, lgb.Dataset(frame, y), 5)
    calibrator = Calibrator("sigmoid").fit(booster.predict(frame, raw_score=True), y.to_numpy())
    model = PropensityModel("m", ["a", "b"], {"a": "A", "b": "B"}, {}, booster.model_to_string(), calibrator)
    return model, frame


def test_a_model_pickled_before_the_move_still_loads(tmp_path, monkeypatch):
    model, frame = _small_model()
    path = tmp_path / "propensity_model.joblib"
    # Pickle it exactly as release 0.1 did: classes under the top-level `models` package.
    for cls, module in ((PropensityModel, "models.estimator"), (Calibrator, "models.calibration")):
        monkeypatch.setattr(cls, "__module__", module)
        monkeypatch.setitem(sys.modules, module, sys.modules[f"propensity.{module}"])
    joblib.dump(model, path)
    monkeypatch.undo()
    assert b"models.estimator" in path.read_bytes() and "models.estimator" not in sys.modules

    loaded = PropensityModel.load(path)
    assert type(loaded) is PropensityModel and type(loaded.calibrator) is Calibrator
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_legacy_module_names_map_to_their_new_homes():
    assert legacy_module("models.estimator") == "propensity.models.estimator"
    assert legacy_module("pipeline.errors") == "propensity.core.errors"
    assert legacy_module("sklearn.isotonic") == "sklearn.isotonic"


def test_no_module_is_longer_than_the_house_limit():
    """A module over 450 lines does more than one job: split it by job rather than raise the limit."""
    modules = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    assert len(modules) > 100  # the walk found the packages, not an empty tree
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in modules}
    too_long = {module: n for module, n in lengths.items() if n > MODULE_LINE_LIMIT}
    assert not too_long, f"modules over {MODULE_LINE_LIMIT} lines (split them by job): {too_long}"
