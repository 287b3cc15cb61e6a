"""The fitted propensity model: features in, calibrated probability and contributions out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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

    def used_features(self) -> list[str]:
        """The features some tree splits on (of the trees ``predict`` uses), in model order: the
        others cannot change a prediction or a contribution, whatever their values."""
        splits = self.booster.feature_importance("split")
        return [name for name, count in zip(self.feature_names, splits, strict=True) if count > 0]

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

    def predict_and_explain(self, table: pa.Table, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Calibrated probabilities and the ``k`` strongest contributions of an Arrow feature table:
        (probability (n,), feature indices (n, k), impacts (n, k)), as :meth:`predict_proba` and
        :meth:`top_contributions` on the same rows. The batch-scoring path: the table goes straight
        to LightGBM's float64 rows, one conversion for the prediction and the explanation."""
        return self.predict_explain_values(table, k)[:3]

    def predict_explain_values(
        self, table: pa.Table, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict_and_explain` and each factor's value as LightGBM saw it (n, k): float64,
        NaN when missing, a categorical's category code. Scoring shows numeric factors from it
        instead of looking each up in the table again."""
        rows = arrow_lightgbm_array(table, self.feature_names, self._categorical_lists())
        if k <= 0:
            probability = self.calibrator.transform(self.booster.predict(rows, raw_score=True))
            return (
                probability,
                np.zeros((len(rows), 0), np.int32),
                np.zeros((len(rows), 0)),
                np.zeros((len(rows), 0)),
            )
        # One pass over the trees: the explainer's raw scores are LightGBM's, bit for bit.
        raw, indices, impacts = self.explainer.raw_score_and_top_k(rows, k)
        values = rows[np.arange(len(rows))[:, None], indices]
        return self.calibrator.transform(raw), indices, impacts, values

    def _categorical_lists(self) -> dict[str, list]:
        """Categorical column -> the category list its codes index, the booster's own when it has
        one (as ``booster.predict`` on a DataFrame does)."""
        names = [c for c in self.feature_names if c in self.categories]
        trained = list(self.booster.pandas_categorical or [])
        return {c: (trained[i] if i < len(trained) else self.categories[c]) for i, c in enumerate(names)}

    def save(self, path: str | Path) -> Path:
        """Write the model to one file without pickle (see :func:`save_model`)."""
        return save_model(self, path)

    @staticmethod
    def load(path: str | Path) -> PropensityModel:
        """Read a saved model, including one pickled by an earlier release (see :func:`load_model`)."""
        return load_model(path)


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
            values = frame[column].astype("object")
            known = values.where(values.isin(categories[column]))  # unknown -> missing, as LightGBM
            columns[column] = pd.Categorical(known, categories=categories[column])
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


def arrow_lightgbm_array(
    table: pa.Table, feature_names: list[str], categorical: dict[str, list]
) -> np.ndarray:
    """An Arrow feature table as the float64 rows LightGBM predicts on, without pandas: numeric
    columns cast to float64 (null -> NaN), each column of ``categorical`` as the index of its value
    in that category list (null or unknown -> NaN). Equal to ``lightgbm_array(feature_matrix(...))``
    (as a column-major array)."""
    present = set(table.column_names)  # (a list built once, not once a feature)
    missing = [c for c in feature_names if c not in present]
    if missing:
        raise UserError(f"feature table lacks {len(missing)} model features, e.g. `{missing[0]}`")
    # Column-major: each column is written in one contiguous run (a row-major fill strides
    # through memory, several times slower), and the TreeSHAP kernel reads rows by column.
    out = np.empty((len(feature_names), table.num_rows), dtype=np.float64).T
    for j, name in enumerate(feature_names):
        column = table.column(name)
        if column.null_count == len(column):  # e.g. a feature no tree splits on, NULL in the query
            out[:, j] = np.nan
        elif name in categorical:
            values = pa.array([str(c) for c in categorical[name]], type=pa.string())
            codes = pc.index_in(pc.cast(column, pa.string()), value_set=values)
            out[:, j] = pc.cast(codes, pa.float64()).to_numpy(zero_copy_only=False)
        elif (
            pa.types.is_integer(column.type)
            or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type)
            or pa.types.is_decimal(column.type)
            or pa.types.is_null(column.type)
        ):
            out[:, j] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        else:  # text in a numeric feature: what the DataFrame path makes of it (non-numbers: NaN)
            out[:, j] = pd.to_numeric(column.to_pandas(), errors="coerce").to_numpy(
                np.float64, na_value=np.nan
            )
    return out


# -- storage -------------------------------------------------------------------------------
# A model is stored with skops (a zip of JSON and .npy arrays: the booster as LightGBM's own text
# model, the calibrator's sklearn estimator and the logistic model's arrays), never pickle, and
# loaded with only these types trusted besides skops' defaults (numpy, sklearn estimators):
# loading a model file can build these objects and nothing else, so it cannot run code.
MODEL_FILE = "propensity_model.skops"
LEGACY_MODEL_FILE = "propensity_model.joblib"  # pickled by earlier releases; loaded restricted
TRUSTED_TYPES = frozenset(
    {
        "propensity.models.estimator.PropensityModel",
        "propensity.models.calibration.Calibrator",
        "propensity.models.linear.LinearPropensityModel",
        "propensity.models.linear.LogScaledDesign",
        "propensity.models.uplift.UpliftModel",
        "propensity.models.blend.BlendPropensityModel",
        "propensity.models.bgnbd_model.BgNbdPropensityModel",
    }
)


def save_model(model: object, path: str | Path) -> Path:
    """Write a model of any family (LightGBM, logistic, BG/NBD, blend) to ``path`` in the skops format."""
    import skops.io as sio

    sio.dump(model, path)
    return Path(path)


def load_model(path: str | Path):
    """Read a model file: the skops format with only :data:`TRUSTED_TYPES` (and skops' own
    trusted numpy/sklearn types) allowed, or a pickle of an earlier release through an unpickler
    that resolves only the classes such a model holds. Anything else is a UserError."""
    import zipfile

    path = Path(path)
    if zipfile.is_zipfile(path):
        import skops.io as sio

        untrusted = set(sio.get_untrusted_types(file=path))
        refused = sorted(untrusted - TRUSTED_TYPES)
        if refused:
            raise UserError(
                f"{path}: the model file holds types outside the allow-list ({', '.join(refused[:5])})"
            )
        return sio.load(path, trusted=sorted(untrusted))
    return _load_legacy(path)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file (recorded in the registry when a model is logged, checked at load)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a model pickled by release 0.1-0.2 may reference: its own classes, numpy arrays, dtypes
# and scalars, the sklearn calibrators and what they hold, and plain containers. A pickle naming
# anything else (os.system, builtins.eval, numpy.load, subprocess...) is refused before it runs.
_LEGACY_CLASS_MODULES = (
    "propensity.models.",
    "sklearn.isotonic.",
    "sklearn.linear_model.",
    "scipy.interpolate.",
)
_LEGACY_TOPS = ("propensity", "numpy", "sklearn", "scipy", "joblib", "copyreg", "collections", "builtins")
_LEGACY_BUILTINS = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "int",
    "float",
    "str",
    "bytes",
    "object",
    "bool",
)
_LEGACY_ALLOWED = {
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    *(("builtins", n) for n in _LEGACY_BUILTINS),
    *(
        (m, n)
        for m in ("numpy.core.multiarray", "numpy._core.multiarray")
        for n in ("_reconstruct", "scalar")
    ),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
}


def _legacy_allowed(module: str, name: str, found: object) -> bool:
    """Whether a pickled model may reference ``module.name`` (``found``, already resolved)."""
    if (module, name) in _LEGACY_ALLOWED:
        return True
    if module.split(".")[0] == "numpy":
        return (
            found is np.ndarray
            or (isinstance(found, type) and issubclass(found, np.generic | np.dtype))
            or found is np.dtype
        )
    return isinstance(found, type) and f"{module}.".startswith(_LEGACY_CLASS_MODULES)


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
            module = legacy_module(module)
            # Never import an unknown module just to look at it.
            found = super().find_class(module, name) if module.split(".")[0] in _LEGACY_TOPS else None
            if found is None or not _legacy_allowed(module, name, found):
                raise UserError(
                    f"{path}: the model pickle references {module}.{name}, which no model holds; refused"
                )
            return found

    with path.open("rb") as handle:
        try:
            unpickler = RenamingUnpickler(str(path), handle, ensure_native_byte_order=False)
        except TypeError:  # joblib < 1.5 has no byte-order argument
            unpickler = RenamingUnpickler(str(path), handle)
        return unpickler.load()
