"""Drift monitoring: how far a model's scores and top features moved from its reference.

The reference is the population the model was tested on (the job rebuilds the model's test
snapshot, ``metadata["test_as_of"]``, and scores it); the current population is the score
partition at an as-of with that date's features. Both come in as DataFrames with the model's
feature columns and ``probability``; this module only measures.

Population stability index, per variable::

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)

where ``r_i`` and ``c_i`` are the shares of reference and current rows in bin ``i``, and a
share of 0 counts as ``epsilon`` (so an empty bin gives a large but finite term). Numeric
bins are fixed by the reference: cut points at its quantiles 1/B, ..., (B-1)/B (repeated cut
points merged, so a feature that is mostly 0 gets fewer bins), intervals ``(-inf, q1]``,
``(q1, q2]``, ..., ``(q_k, +inf)``; missing values are one more bin, so a surge of missing
values shows as drift. Categorical features: one bin per reference category, one for
categories the reference never had, one for missing.

Also per feature: the share of missing values (reference and current) and the share of
current values outside the reference's [min, max]. The alert is raised when any PSI (score
or feature) is at or above the threshold, or when the base rate moved (below).

Base rate: the outcome rate of the latest snapshot whose horizon has ended by the monitored
as-of, against the rate of the test snapshot the model was trained to (both of the model's
population, rebuilt from the events). It moved when Newcombe's 95 % interval of the difference
(:func:`propensity.models.rates.rate_difference_interval`) excludes zero: a seasonal or lasting
shift that leaves the model's probabilities too high or too low even when no PSI moves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from propensity.core.config import MonitorConfig
from propensity.core.io import atomic_path, write_json
from propensity.models.estimator import PropensityModel
from propensity.models.plots import plt  # pyplot, with the backend chosen for batch jobs
from propensity.models.rates import rate_difference_interval, wilson_interval

SCORE = "probability"


@dataclass
class Drift:
    """Stability of one variable (the score, or a feature) between reference and current."""

    name: str
    label: str
    psi: float
    bins: int
    reference_missing: float
    current_missing: float
    out_of_range: float | None  # share of current values outside the reference range (numeric only)
    importance: float | None = None  # the model's gain, for features


@dataclass
class BaseRate:
    """The outcome rate of the latest labelled snapshot against the test snapshot's."""

    labelled_as_of: str
    rate: float
    positives: int
    rows: int
    rate_low: float  # Wilson 95 % interval of ``rate``
    rate_high: float
    reference_as_of: str
    reference_rate: float
    reference_positives: int
    reference_rows: int
    difference_low: float  # Newcombe 95 % interval of rate - reference_rate
    difference_high: float

    @property
    def moved(self) -> bool:
        """The difference's interval excludes zero."""
        return self.difference_low > 0 or self.difference_high < 0


def base_rate_shift(
    labelled_as_of: str, labels: np.ndarray, reference_as_of: str, reference_labels: np.ndarray
) -> BaseRate:
    """The outcome rate of ``labels`` (0/1 at ``labelled_as_of``) against ``reference_labels``'s."""
    k, n = float(np.sum(labels)), len(labels)
    k0, n0 = float(np.sum(reference_labels)), len(reference_labels)
    if n == 0 or n0 == 0:
        raise ValueError("a base rate needs labelled rows on both snapshots")
    low, high = wilson_interval(k, n)
    difference_low, difference_high = rate_difference_interval(k, n, k0, n0)
    return BaseRate(
        labelled_as_of=labelled_as_of,
        rate=k / n,
        positives=int(k),
        rows=n,
        rate_low=low,
        rate_high=high,
        reference_as_of=reference_as_of,
        reference_rate=k0 / n0,
        reference_positives=int(k0),
        reference_rows=n0,
        difference_low=difference_low,
        difference_high=difference_high,
    )


@dataclass
class MonitorReport:
    model: str
    version: str | None
    as_of: str
    reference_as_of: str
    reference_rows: int
    current_rows: int
    psi_threshold: float
    score: Drift
    features: list[Drift] = field(default_factory=list)
    # None: no snapshot after the test snapshot has its horizon ended by the monitored as-of.
    base_rate: BaseRate | None = None

    @property
    def drifted(self) -> list[str]:
        """Names (``probability`` or features) whose PSI reaches the threshold, and
        ``base_rate`` when it moved beyond its interval."""
        moved = ["base_rate"] if self.base_rate is not None and self.base_rate.moved else []
        return [d.name for d in (self.score, *self.features) if d.psi >= self.psi_threshold] + moved

    @property
    def alert(self) -> bool:
        return bool(self.drifted)

    def to_dict(self) -> dict:
        out = {**asdict(self), "alert": self.alert, "drifted": self.drifted}
        if self.base_rate is not None:
            out["base_rate"]["moved"] = self.base_rate.moved
        return out


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points at the reference quantiles (missing values ignored, repeats merged)."""
    values = np.asarray(reference, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def numeric_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of ``values`` per bin (-inf, e1], (e1, e2], ..., (ek, inf), then missing."""
    values = np.asarray(values, dtype=float)
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return counts / max(len(values), 1)


def categorical_shares(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Shares per reference category (compared as text), then other categories, then missing."""
    values = pd.Series(values, dtype="object")
    missing = values.isna()
    known = values[~missing].astype(str).map({c: i for i, c in enumerate(categories)})
    counts = np.bincount(known.dropna().astype(int), minlength=len(categories)).astype(float)
    counts = np.append(counts, [known.isna().sum(), missing.sum()])
    return counts / max(len(values), 1)


def psi_from_shares(reference: np.ndarray, current: np.ndarray, epsilon: float = 1e-4) -> float:
    """sum (c - r) ln(c / r), empty shares counted as ``epsilon``."""
    r = np.where(reference > 0, reference, epsilon)
    c = np.where(current > 0, current, epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4) -> float:
    """PSI of a numeric variable, with bins fixed by the reference's quantiles (see module doc)."""
    edges = quantile_edges(reference, bins)
    return psi_from_shares(numeric_shares(reference, edges), numeric_shares(current, edges), epsilon)


def _drift(
    name: str, label: str, reference: pd.Series, current: pd.Series, config: MonitorConfig, categorical: bool
) -> Drift:
    ref_missing, cur_missing = float(reference.isna().mean()), float(current.isna().mean())
    if categorical:
        categories = sorted(reference.dropna().astype(str).unique())
        shares = (
            categorical_shares(reference.astype("object"), categories),
            categorical_shares(current.astype("object"), categories),
        )
        return Drift(
            name,
            label,
            psi_from_shares(*shares, config.epsilon),
            len(categories) + 2,
            ref_missing,
            cur_missing,
            None,
        )
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float)
    cur = pd.to_numeric(current, errors="coerce").to_numpy(dtype=float)
    edges = quantile_edges(ref, config.bins)
    value = psi_from_shares(numeric_shares(ref, edges), numeric_shares(cur, edges), config.epsilon)
    present = cur[~np.isnan(cur)]
    out_of_range = None
    if np.isfinite(ref).any():
        low, high = np.nanmin(ref), np.nanmax(ref)
        out_of_range = float(((present < low) | (present > high)).sum() / max(len(cur), 1))
    return Drift(name, label, value, len(edges) + 2, ref_missing, cur_missing, out_of_range)


def top_features(model: PropensityModel, n: int) -> list[tuple[str, float]]:
    """The model's ``n`` most important features by total gain, strongest first; calendar
    features (``metadata["as_of_features"]``: every profile shares the as-of date's value, so
    they move by construction between two dates) are never watched for drift."""
    gain = model.booster.feature_importance(importance_type="gain")
    calendar = set(model.metadata.get("as_of_features", []))
    pairs = [(name, g) for name, g in zip(model.feature_names, gain, strict=True) if name not in calendar]
    ranked = sorted(pairs, key=lambda item: (-item[1], item[0]))
    return [(name, float(g)) for name, g in ranked[:n]]


def monitor(
    model: PropensityModel,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: MonitorConfig,
    as_of: str,
    reference_as_of: str,
    version: str | None = None,
    base_rate: BaseRate | None = None,
) -> MonitorReport:
    """PSI of ``probability`` and of the model's top features, with missing and out-of-range shares.

    ``reference`` and ``current``: one row per profile with ``probability`` and the model's
    feature columns. Returns a :class:`MonitorReport` whose ``alert`` is set when any PSI
    reaches ``config.psi_threshold``.
    """
    for frame, what in ((reference, "reference"), (current, "current")):
        if SCORE not in frame.columns or frame.empty:
            raise ValueError(f"the {what} frame needs rows and a `{SCORE}` column")
    score = _drift(
        SCORE, "Calibrated probability", reference[SCORE], current[SCORE], config, categorical=False
    )
    features = []
    for name, gain in top_features(model, config.top_features):
        drift = _drift(
            name,
            model.feature_labels.get(name, name),
            reference[name],
            current[name],
            config,
            categorical=name in model.categories,
        )
        drift.importance = gain
        features.append(drift)
    return MonitorReport(
        model=model.name,
        version=version,
        as_of=as_of,
        reference_as_of=reference_as_of,
        reference_rows=len(reference),
        current_rows=len(current),
        psi_threshold=config.psi_threshold,
        score=score,
        features=features,
        base_rate=base_rate,
    )


def plot_score_distributions(reference: np.ndarray, current: np.ndarray, path: Path, title: str) -> Path:
    """Both probability distributions on the same bins (densities)."""
    top = max(float(np.nanmax(reference)), float(np.nanmax(current)), 1e-3)
    bins = np.linspace(0, top, 41)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(reference, bins=bins, alpha=0.55, density=True, label="reference (test snapshot)")
    ax.hist(current, bins=bins, alpha=0.55, density=True, label="current")
    ax.set(xlabel="calibrated probability", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the atomic temp path has no .png suffix
    plt.close(fig)
    return path


def write_report(
    report: MonitorReport, reference: pd.DataFrame, current: pd.DataFrame, out_dir: str | Path
) -> tuple[Path, Path]:
    """``drift_report.json`` and ``score_distributions.png`` in ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = write_json(json.loads(json.dumps(report.to_dict(), default=str)), out / "drift_report.json")
    plot_path = out / "score_distributions.png"
    with atomic_path(plot_path) as tmp:
        title = f"{report.model} scores: {report.reference_as_of} (reference) vs {report.as_of}"
        plot_score_distributions(
            reference[SCORE].to_numpy(dtype=float), current[SCORE].to_numpy(dtype=float), tmp, title
        )
    return report_path, plot_path
