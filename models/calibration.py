"""Calibration: turn raw log-odds into probabilities that mean what they say."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

METHODS = ("isotonic", "sigmoid")
TIE_BREAK = 1e-6  # the spread of the in-step tie breaker (see Calibrator.transform)


class Calibrator:
    """Isotonic regression or Platt (sigmoid) scaling of raw log-odds, fitted on held-out rows."""

    def __init__(self, method: str = "isotonic") -> None:
        if method not in METHODS:
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
        if self.method == "sigmoid":
            probability = self._model.predict_proba(raw_scores.reshape(-1, 1))[:, 1]
            # Exact 0 or 1 would make log loss infinite and claim a certainty nobody has.
            return np.clip(probability, 1e-6, 1 - 1e-6)
        # Isotonic regression is a step function: every row of a step would get the same
        # probability, and the ranking inside a step (the model's) would be lost, which costs
        # average precision most at the top step. A term far below any step's height keeps the
        # raw scores' order inside each step: calibration moves by at most 5e-7.
        probability = np.clip(self._model.predict(raw_scores), 2e-6, 1 - 2e-6)
        return probability + TIE_BREAK * (1.0 / (1.0 + np.exp(-np.clip(raw_scores, -50, 50))) - 0.5)


@dataclass(frozen=True)
class CalibrationChoice:
    """The method to use, each method's cross-validated log loss, and its out-of-fold probabilities."""

    method: str
    log_loss: dict[str, float]
    out_of_fold: dict[str, np.ndarray]


def out_of_fold(
    method: str, raw_scores: np.ndarray, labels: np.ndarray, seed: int, folds: int = 5
) -> np.ndarray:
    """Calibrated probabilities for every row from a calibrator fitted on the other folds.

    Folds are a seeded shuffle, stratified by outcome so that each sees both classes.
    """
    raw_scores, labels = np.asarray(raw_scores, dtype=float), np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=int)
    for outcome in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels == outcome))
        fold[rows] = np.arange(len(rows)) % folds
    probability = np.empty(len(labels))
    for k in range(folds):
        held = fold == k
        probability[held] = (
            Calibrator(method).fit(raw_scores[~held], labels[~held]).transform(raw_scores[held])
        )
    return probability


def choose_calibration(
    configured: str, raw_scores: np.ndarray, labels: np.ndarray, seed: int
) -> CalibrationChoice:
    """``configured`` ("isotonic" / "sigmoid") or, for "auto", the method with the lower
    5-fold out-of-fold log loss on these held-out rows (ties go to sigmoid, the simpler)."""
    methods = METHODS if configured == "auto" else (configured,)
    probabilities = {m: out_of_fold(m, raw_scores, labels, seed) for m in methods}
    losses = {m: float(log_loss(labels, p, labels=[0, 1])) for m, p in probabilities.items()}
    method = configured if configured != "auto" else min(sorted(losses, reverse=True), key=losses.get)
    return CalibrationChoice(method, losses, probabilities)
