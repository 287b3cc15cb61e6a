"""Inspecting a registered model in a notebook: what drives it, why one profile scores as it
does, and how its probabilities hold up on a date whose outcomes are known.

``inspect_model`` loads the model and two point-in-time snapshots of its population: the one
being scored (``as_of``) and the latest one whose horizon has passed (with labels). The
methods of :class:`ModelInspection` return tables and matplotlib figures; notebooks only call
them, so their logic is tested with the package and cannot rot in a cell.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.features.build.snapshots import horizon_passed
from propensity.models import plots, tracking
from propensity.models.estimator import PropensityModel
from propensity.models.evaluate import decile_table
from propensity.models.explain import global_importance, top_factors
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import feature_set, load_events, model_vocabulary

SAMPLE_SEED = 0


@dataclass
class ModelInspection:
    """A registered model and its population's features at ``as_of`` (with ``probability``)
    and at ``labelled_as_of`` (with ``label`` and ``probability``; None when no date before
    ``as_of`` has a complete horizon in the data)."""

    model_name: str
    version: str
    model: PropensityModel
    as_of: dt.date
    population: pd.DataFrame
    labelled_as_of: dt.date | None
    labelled: pd.DataFrame | None

    def _sample(self, rows: int) -> pd.DataFrame:
        frame = self.population
        return frame.sample(min(len(frame), rows), random_state=SAMPLE_SEED) if len(frame) > rows else frame

    def importance(self, rows: int = 20_000) -> pd.DataFrame:
        """Per feature: label, total gain and mean |SHAP| (log-odds) on up to ``rows`` profiles of
        the population, strongest first."""
        return global_importance(self.model, self._sample(rows))

    def importance_figure(self, top: int = 15, rows: int = 20_000):
        """Gain and mean |SHAP| of the ``top`` features, side by side."""
        return plots.importance_figure(self.importance(rows), top)

    def beeswarm_figure(self, top: int = 15, rows: int = 5_000):
        """SHAP summary (beeswarm) of the ``top`` features on up to ``rows`` profiles."""
        sample = self._sample(rows)
        model = self.model
        matrix = model.matrix(sample)
        # Colours need numbers: categories as their codes (missing stays NaN).
        values = np.column_stack(
            [
                matrix[c].cat.codes.to_numpy(float)
                if isinstance(matrix[c].dtype, pd.CategoricalDtype)
                else matrix[c].to_numpy(float)
                for c in matrix.columns
            ]
        )
        values[matrix.isna().to_numpy()] = np.nan
        labels = [model.feature_labels.get(f, f) for f in model.feature_names]
        title = f"{self.model_name} v{self.version} at {self.as_of}"
        return plots.beeswarm_figure(model.contributions(sample), values, labels, top, title)

    def factors(self, profile_ids: list[str], k: int = 5) -> pd.DataFrame:
        """The top ``k`` factors of each profile, one row per factor: profile_id, probability,
        rank, feature, label, value, impact (log-odds). A profile outside the population at
        ``as_of`` raises UserError naming it."""
        frame = self.population.set_index("profile_id", drop=False)
        missing = [p for p in profile_ids if p not in frame.index]
        if missing:
            raise UserError(
                f"{', '.join(missing)}: not in the population of '{self.model_name}' at {self.as_of} "
                f"(`propensity explain {self.model_name} --profile ID` says which condition fails)"
            )
        rows = frame.loc[profile_ids].reset_index(drop=True)
        records = [
            {"profile_id": pid, "probability": probability, "rank": rank, **factor}
            for pid, probability, factors in zip(
                rows["profile_id"], rows["probability"], top_factors(self.model, rows, k), strict=True
            )
            for rank, factor in enumerate(factors, start=1)
        ]
        return pd.DataFrame(
            records, columns=["profile_id", "probability", "rank", "feature", "label", "value", "impact"]
        )

    def _labelled(self) -> tuple[np.ndarray, np.ndarray]:
        if self.labelled is None:
            raise UserError(
                f"no snapshot before {self.as_of} has a complete outcome horizon in these events, "
                "so lift and calibration cannot be measured"
            )
        return self.labelled["label"].to_numpy(), self.labelled["probability"].to_numpy()

    def lift_table(self) -> pd.DataFrame:
        """Lift and cumulative gains by score decile on the labelled snapshot."""
        return decile_table(*self._labelled())

    def lift_figure(self):
        """Lift by score decile on the labelled snapshot."""
        figure = plots.lift_figure(self.lift_table())
        figure.axes[0].set_title(f"Lift by decile at {self.labelled_as_of}")
        return figure

    def calibration_figure(self, bins: int = 10):
        """Predicted probability against the observed rate on the labelled snapshot."""
        y, p = self._labelled()
        figure = plots.calibration_figure(y, p, bins)
        figure.axes[0].set_title(f"Calibration at {self.labelled_as_of} ({int(y.sum())} positives)")
        return figure


def inspect_model(
    model_name: str,
    events: str | Path,
    config: ProjectConfig,
    as_of: dt.date | None = None,
    alias: str | None = None,
    version: str | None = None,
) -> ModelInspection:
    """Load ``models:/<name>@<alias>`` (default champion) or a version, and build its population
    at ``as_of`` (default: the day after the last event) and at the latest earlier date whose
    horizon has passed (``as_of`` minus the horizon), each through the identity graph of its
    date, as scoring and evaluation do."""
    if version and alias:
        raise UserError("give a version or an alias, not both")
    model_cfg = load_model_config(model_name, config)
    model, mv = tracking.load_propensity_model(tracking.configure(config), model_cfg.name, version, alias)
    loaded = load_events(events, config)
    cutoff = loaded.data_end()
    as_of = as_of or cutoff
    if as_of > cutoff:
        raise UserError(f"as-of {as_of} is after the data (the latest as-of is {cutoff})")

    def snapshot(date: dt.date) -> pd.DataFrame:
        fs = feature_set(loaded, config, before=date, **model_vocabulary(model.metadata))
        relation, _ = loaded.population_snapshot(fs, model_cfg, date, cutoff)
        frame = loaded.frame(relation)
        frame["probability"] = model.predict_proba(frame) if len(frame) else []
        return frame

    population = snapshot(as_of)
    labelled_as_of = as_of - dt.timedelta(days=model_cfg.outcome.horizon_days)
    labelled = None
    if horizon_passed(labelled_as_of, model_cfg.outcome.horizon_days, cutoff):
        labelled = snapshot(labelled_as_of)
        if "label" not in labelled or labelled.empty:
            labelled = None
    return ModelInspection(
        model_name=model_cfg.name,
        version=str(mv.version),
        model=model,
        as_of=as_of,
        population=population,
        labelled_as_of=labelled_as_of if labelled is not None else None,
        labelled=labelled,
    )
