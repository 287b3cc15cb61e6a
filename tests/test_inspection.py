"""What the notebook calls: a registered model inspected on its population and a labelled date."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from propensity.core.config import ProjectConfig
from propensity.core.errors import UserError
from propensity.models.explain import top_factors
from propensity.models.plots import plt
from propensity.pipeline.jobs.inspection import inspect_model

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the inspected
# churn model) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("inspection")

AS_OF = dt.date(2025, 11, 10)


@pytest.fixture(scope="module")
def inspection(churn_run, luma_ingested, tracking):
    return inspect_model("churn", luma_ingested, ProjectConfig(), as_of=AS_OF, version=churn_run.version)


def test_population_and_labelled_snapshot_are_the_models(inspection):
    assert inspection.as_of == AS_OF and inspection.version
    population = inspection.population
    assert len(population) and (population["purchase_count_365d"] >= 1).all()  # churn's population
    assert population["probability"].between(0, 1).all()
    # The labelled date is one horizon (60 days) back, with both outcomes.
    assert inspection.labelled_as_of == AS_OF - dt.timedelta(days=60)
    assert set(inspection.labelled["label"].unique()) == {0, 1}


def test_importance_factors_and_lift(inspection):
    importance = inspection.importance(rows=3000)
    assert list(importance.columns) == ["feature", "label", "gain", "mean_abs_shap"]
    assert importance["mean_abs_shap"].is_monotonic_decreasing and importance["mean_abs_shap"].iloc[0] > 0
    ids = inspection.population.sort_values("probability")["profile_id"].iloc[[0, -1]].tolist()
    factors = inspection.factors(ids, k=3)
    assert set(factors["profile_id"]) == set(ids) and factors["rank"].max() <= 3
    rows = inspection.population.set_index("profile_id").loc[ids].reset_index()
    expected = top_factors(inspection.model, rows, 3)
    assert factors["impact"].tolist() == [f["impact"] for row in expected for f in row]
    for _, one in factors.groupby("profile_id"):
        assert np.all(np.diff(one["impact"].abs().to_numpy()) <= 0)  # strongest first
    with pytest.raises(UserError, match="not in the population"):
        inspection.factors(["p_nobody"])
    lift = inspection.lift_table()
    assert len(lift) == 10 and lift["lift"].iloc[0] > 1  # the top decile beats the base rate


def test_figures_draw(inspection):
    for figure in (
        inspection.importance_figure(top=10, rows=2000),
        inspection.beeswarm_figure(top=8, rows=1000),
        inspection.lift_figure(),
        inspection.calibration_figure(),
    ):
        assert figure.axes and any(ax.has_data() for ax in figure.axes)
        plt.close(figure)
