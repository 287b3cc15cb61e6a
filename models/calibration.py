"""Calibration: turn LightGBM log-odds into probabilities that mean what they say."""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression


class Calibrator:
    """Isotonic regression or Platt (sigmoid) scaling of raw log-odds, fitted on held-out rows."""

    def __init__(self, method: str = "isotonic") -> None:
        if method not in ("isotonic", "sigmoid"):
            raise ValueError(f"unknown calibration method {method!r}")
        self.method = method
        self._model: IsotonicRegression | LogisticRegression | None = None

    def fit(self, raw_scores: np.ndarray, labels: np.ndarray) -> Calibrator:
        """Fit on held-out raw log-odds and their 0/1 outcomes."""
        raw_scores = np.asarray(raw_scores, dtype=float)
        labels = np.asarray(labels, dtype=int)
        if self.method == "isotonic":
            self._model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                raw_scores, labels
            )
        else:
            self._model = LogisticRegression(C=1e6).fit(raw_scores.reshape(-1, 1), labels)
        return self

    def transform(self, raw_scores: np.ndarray) -> np.ndarray:
        """Raw log-odds -> calibrated probabilities in (0, 1)."""
        if self._model is None:
            raise RuntimeError("Calibrator is not fitted")
        raw_scores = np.asarray(raw_scores, dtype=float)
        if self.method == "isotonic":
            probability = self._model.predict(raw_scores)
        else:
            probability = self._model.predict_proba(raw_scores.reshape(-1, 1))[:, 1]
        # Exact 0 or 1 would make log loss infinite and claim a certainty nobody has.
        return np.clip(probability, 1e-6, 1 - 1e-6)
