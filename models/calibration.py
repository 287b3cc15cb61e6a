"""Calibration: turn raw log-odds into probabilities that mean what they say.

``none`` is a calibrator too: the model's own probabilities (the logistic function of its
log-odds). A model trained on log loss is often calibrated already, and a calibrator fitted
on a few thousand validation rows then only adds noise (on CDNOW, Platt and isotonic made
the test Brier worse). So ``auto`` keeps a calibrator only when it beats ``none`` on the
validation rows by more than its paired bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from propensity.models.bootstrap import resample_weights

METHODS = ("none", "isotonic", "sigmoid")
FITTED_METHODS = ("isotonic", "sigmoid")
CHOICE_RESAMPLES = 1000  # paired resamples of the validation rows for the none-or-calibrator test
TIE_BREAK = 1e-6  # the spread of the in-step tie breaker (see Calibrator.transform)


def logistic(raw_scores: np.ndarray) -> np.ndarray:
    """Log-odds -> probabilities, kept off exact 0 and 1 as the fitted calibrators are."""
    return np.clip(1.0 / (1.0 + np.exp(-np.clip(raw_scores, -50, 50))), 1e-6, 1 - 1e-6)


class Calibrator:
    """Isotonic regression or Platt (sigmoid) scaling of raw log-odds, fitted on held-out rows;
    or ``none``, the logistic function of the log-odds (fitting it is a no-op)."""

    def __init__(self, method: str = "isotonic") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        self.method = method
        self._model: IsotonicRegression | LogisticRegression | None = None

    def fit(self, raw_scores: np.ndarray, labels: np.ndarray) -> Calibrator:
        """Fit on held-out raw log-odds and their 0/1 outcomes."""
        raw_scores = np.asarray(raw_scores, dtype=float)
        labels = np.asarray(labels, dtype=int)
        if self.method == "none":
            self._model = None
        elif self.method == "isotonic":
            self._model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                raw_scores, labels
            )
        else:
            self._model = LogisticRegression(C=1e6).fit(raw_scores.reshape(-1, 1), labels)
        return self

    def transform(self, raw_scores: np.ndarray) -> np.ndarray:
        """Raw log-odds -> calibrated probabilities in (0, 1)."""
        raw_scores = np.asarray(raw_scores, dtype=float)
        if self.method == "none":
            return logistic(raw_scores)
        if self._model is None:
            raise RuntimeError("Calibrator is not fitted")
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
    """The method to use, each method's cross-validated log loss, its out-of-fold
    probabilities, and (for ``auto``) the paired interval of the best calibrator's log loss
    minus that of ``none`` and why the method was chosen."""

    method: str
    log_loss: dict[str, float]
    out_of_fold: dict[str, np.ndarray]
    gain_interval: tuple[float, float] | None = None  # log loss, calibrator minus none
    reason: str = ""

    def record(self) -> dict:
        """The choice and its figures, for the model's metadata (plain JSON types)."""
        return {
            "method": self.method,
            "validation_log_loss": dict(self.log_loss),
            "calibrator_minus_none_log_loss_interval": (
                list(self.gain_interval) if self.gain_interval is not None else None
            ),
            "reason": self.reason,
        }


def out_of_fold(
    method: str, raw_scores: np.ndarray, labels: np.ndarray, seed: int, folds: int = 5
) -> np.ndarray:
    """Calibrated probabilities for every row from a calibrator fitted on the other folds.

    Folds are a seeded shuffle, stratified by outcome so that each sees both classes.
    """
    raw_scores, labels = np.asarray(raw_scores, dtype=float), np.asarray(labels, dtype=int)
    if method == "none":
        return logistic(raw_scores)
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


def paired_log_loss_interval(
    labels: np.ndarray,
    p: np.ndarray,
    reference: np.ndarray,
    seed: int,
    resamples: int = CHOICE_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of log loss(p) minus log loss(reference) over paired resamples of
    the rows (negative: ``p`` is better)."""
    y = np.asarray(labels, dtype=float)

    def row_loss(q: np.ndarray) -> np.ndarray:
        q = np.clip(np.asarray(q, dtype=float), 1e-9, 1 - 1e-9)
        return -(y * np.log(q) + (1 - y) * np.log(1 - q))

    difference = row_loss(p) - row_loss(reference)
    draws = [difference @ w / w.sum(axis=0) for w in resample_weights(len(y), resamples, seed)]
    values = np.concatenate(draws)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def choose_calibration(
    configured: str, raw_scores: np.ndarray, labels: np.ndarray, seed: int
) -> CalibrationChoice:
    """``configured`` ("none" / "isotonic" / "sigmoid") or, for "auto", ``none`` unless the
    better of isotonic and sigmoid by 5-fold out-of-fold log loss (ties go to sigmoid, the
    simpler) has a lower log loss than ``none`` with the paired bootstrap 95 % interval of
    the difference below zero on these held-out rows."""
    labels = np.asarray(labels, dtype=int)
    methods = METHODS if configured == "auto" else (configured,)
    probabilities = {m: out_of_fold(m, raw_scores, labels, seed) for m in methods}
    losses = {m: float(log_loss(labels, p, labels=[0, 1])) for m, p in probabilities.items()}
    if configured != "auto":
        return CalibrationChoice(configured, losses, probabilities, reason="configured")
    best = min(sorted(FITTED_METHODS, reverse=True), key=losses.get)
    low, high = paired_log_loss_interval(labels, probabilities[best], probabilities["none"], seed)
    kept = high < 0
    reason = (
        f"{best} {'beats' if kept else 'does not beat'} none beyond the interval: log loss "
        f"{losses[best]:.5f} vs {losses['none']:.5f}, difference 95% interval [{low:+.5f}, {high:+.5f}]"
    )
    return CalibrationChoice(best if kept else "none", losses, probabilities, (low, high), reason)
