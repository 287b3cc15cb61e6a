"""The fitted propensity model: features in, calibrated probability and contributions out."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd

from models.calibration import Calibrator


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

    @property
    def booster(self) -> lgb.Booster:
        if self._booster is None:
            self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_booster"] = None  # the text form is the stable serialisation
        return state

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's columns, numeric as float64, categoricals with the training categories."""
        missing = [c for c in self.feature_names if c not in frame.columns]
        if missing:
            from pipeline.errors import UserError

            raise UserError(f"feature table lacks {len(missing)} model features, e.g. `{missing[0]}`")
        columns = {}
        for column in self.feature_names:
            if column in self.categories:
                columns[column] = pd.Categorical(frame[column].astype("object"), categories=self.categories[column])
            else:
                columns[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        return pd.DataFrame(columns, index=frame.index)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds."""
        return self.booster.predict(self.matrix(frame), raw_score=True)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the outcome."""
        return self.calibrator.transform(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """TreeSHAP log-odds contributions (n, features + 1); the last column is the bias."""
        return self.booster.predict(self.matrix(frame), pred_contrib=True)
