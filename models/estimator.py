"""The fitted propensity model: features in, calibrated probability and contributions out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd

from propensity.core.errors import UserError
from propensity.models.calibration import Calibrator

if TYPE_CHECKING:  # numba loads only when explanations are asked for; the served pyfunc has none
    from propensity.models.treeshap import TreeShapExplainer


@dataclass
class PropensityModel:
    """A LightGBM booster with its feature contract and calibrator; picklable with joblib."""

    name: str
    feature_names: list[str]
    feature_labels: dict[str, str]
    categories: dict[str, list[str]]  # categorical column -> its categories, fixed at training
    booster_text: str
    calibrator: Calibrator
    metadata: dict = field(default_factory=dict)
    _booster: lgb.Booster | None = field(default=None, repr=False, compare=False)
    _explainer: TreeShapExplainer | None = field(default=None, repr=False, compare=False)

    @property
    def booster(self) -> lgb.Booster:
        if self._booster is None:
            self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    @property
    def explainer(self) -> TreeShapExplainer:
        """The compiled exact TreeSHAP over the booster's trees, built on first use."""
        if self._explainer is None:
            from propensity.models.treeshap import TreeShapExplainer

            self._explainer = TreeShapExplainer.from_booster(self.booster)
        return self._explainer

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_booster"] = None  # the text form is the stable serialisation
        state["_explainer"] = None  # rebuilt from the booster on first use
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_explainer", None)  # models saved before explanations were cached
        self.__dict__.update(state)

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's columns, numeric as float64, categoricals with the training categories."""
        return feature_matrix(frame, self.feature_names, self.categories)

    def lightgbm_array(self, frame: pd.DataFrame) -> np.ndarray:
        """The float64 rows LightGBM sees for ``frame``: categoricals as category codes, missing
        and unknown categories as NaN (what ``booster.predict`` makes of :meth:`matrix`)."""
        return lightgbm_array(self.matrix(frame), self.booster.pandas_categorical)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds."""
        return self.booster.predict(self.matrix(frame), raw_score=True)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the outcome."""
        return self.calibrator.transform(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """TreeSHAP log-odds contributions (n, features + 1); the last column is the bias. The same
        values as LightGBM's ``pred_contrib`` (exact TreeSHAP), computed by :attr:`explainer`."""
        return self.explainer.contributions(self.lightgbm_array(frame))

    def top_contributions(self, matrix: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` strongest contributions per row of :meth:`matrix`: feature indices (n, k) and
        their log-odds impacts (n, k), strongest |impact| first; no full sort per row."""
        return self.explainer.top_k(lightgbm_array(matrix, self.booster.pandas_categorical), k)

    def save(self, path: str | Path) -> Path:
        """Write the model to one file (joblib); :meth:`load` reads it back."""
        joblib.dump(self, path)
        return Path(path)

    @staticmethod
    def load(path: str | Path) -> PropensityModel:
        """Read a saved model, including one saved before the packages moved under ``propensity``.

        Class paths of release 0.1 (``models.estimator`` ...) are always read as their
        ``propensity.*`` homes, even where some other ``models`` package is importable.
        """
        return _load_legacy(Path(path))


def feature_matrix(
    frame: pd.DataFrame, feature_names: list[str], categories: dict[str, list[str]]
) -> pd.DataFrame:
    """A feature table -> the model's columns in order: numeric as float64, categoricals as
    ``pd.Categorical`` with the categories fixed at training. A missing column is a UserError."""
    missing = [c for c in feature_names if c not in frame.columns]
    if missing:
        raise UserError(f"feature table lacks {len(missing)} model features, e.g. `{missing[0]}`")
    columns = {}
    for column in feature_names:
        if column in categories:
            columns[column] = pd.Categorical(frame[column].astype("object"), categories=categories[column])
        else:
            columns[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return pd.DataFrame(columns, index=frame.index)


def lightgbm_array(matrix: pd.DataFrame, pandas_categorical: list[list] | None = None) -> np.ndarray:
    """A model matrix (float64 and ``pd.Categorical`` columns) as the float64 array LightGBM predicts
    on: each categorical as its category code, -1 (missing or unknown) as NaN. With the booster's
    ``pandas_categorical`` the codes refer to its category lists, as in ``booster.predict``."""
    out = np.empty(matrix.shape, dtype=np.float64)
    categorical = iter(pandas_categorical or [])
    for j, column in enumerate(matrix.columns):
        values = matrix[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            trained = next(categorical, None)
            if trained is not None and list(values.cat.categories) != list(trained):
                values = values.cat.set_categories(trained)
            codes = values.cat.codes.to_numpy()
            out[:, j] = np.where(codes < 0, np.nan, codes)
        else:
            out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


# Models registered before version 0.2 pickled their classes as top-level `models.*` and
# `pipeline.*` modules; on load those names are read as their `propensity.*` homes.
LEGACY_PACKAGES = {
    "models": "propensity.models",
    "pipeline": "propensity.core",
    "features": "propensity.features",
}
LEGACY_MODULES = {"pipeline.errors": "propensity.core.errors", "pipeline.config": "propensity.core.config"}


def legacy_module(module: str) -> str:
    """The current module for a class path pickled by an older release."""
    if module in LEGACY_MODULES:
        return LEGACY_MODULES[module]
    top, _, rest = module.partition(".")
    if top in LEGACY_PACKAGES:
        return LEGACY_PACKAGES[top] + (f".{rest}" if rest else "")
    return module


def _load_legacy(path: Path) -> PropensityModel:
    from joblib.numpy_pickle import NumpyUnpickler

    class RenamingUnpickler(NumpyUnpickler):
        def find_class(self, module: str, name: str):
            return super().find_class(legacy_module(module), name)

    with path.open("rb") as handle:
        try:
            unpickler = RenamingUnpickler(str(path), handle, ensure_native_byte_order=False)
        except TypeError:  # joblib < 1.5 has no byte-order argument
            unpickler = RenamingUnpickler(str(path), handle)
        return unpickler.load()
