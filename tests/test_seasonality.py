"""Season features: the time of year an as-of date is at, as SQL both engines run."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.core.config import FeatureConfig
from propensity.features.build.registry import build_registry
from propensity.features.build.seasonality import season_features

PEAKS = {"black_friday": "11-27", "christmas": "12-25", "leap": "02-29"}


def _values(dates: list[dt.date]) -> dict[str, np.ndarray]:
    features = season_features(PEAKS)
    days = ", ".join(f"({(d - dt.date(1970, 1, 1)).days})" for d in dates)
    sql = ", ".join(f"{f.sql} AS {f.name}" for f in features)
    rows = duckdb.connect().execute(f"SELECT {sql} FROM (VALUES {days}) AS t(as_of_day)").fetchnumpy()
    return {name: np.asarray(values, dtype=float) for name, values in rows.items()}


def _days_from(date: dt.date, month: int, day: int) -> int:
    """Days between ``date`` and the nearest occurrence of the peak, last year's to next year's."""
    if (month, day) == (2, 29):
        month, day = 3, 1
    return min(
        abs((dt.date(year, month, day) - date).days) for year in (date.year - 1, date.year, date.year + 1)
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dates(dt.date(1990, 1, 1), dt.date(2060, 12, 31)), min_size=1, max_size=20))
def test_the_time_of_year_and_the_days_from_each_peak_are_within_a_day_of_the_calendar(dates):
    values = _values(dates)
    for i, date in enumerate(dates):
        day_of_year = (date - dt.date(date.year, 1, 1)).days
        angle = np.arctan2(values["day_of_year_sin"][i], values["day_of_year_cos"][i])
        position = (angle % (2 * np.pi)) / (2 * np.pi) * 365.2425
        # On a circle: 364.9 and 0.1 are 0.2 days apart.
        assert abs((position - day_of_year + 182.6) % 365.2425 - 182.6) <= 1.5, (date, position)
        for name, month_day in PEAKS.items():
            truth = _days_from(date, *(int(p) for p in month_day.split("-")))
            got = values[f"days_from_{name}"][i]
            assert 0 <= got <= 182.7
            # The days just after a peak are near it, not a year from the next one.
            assert abs(got - truth) <= 1.5, (date, name, got, truth)


def test_season_features_are_in_the_registry_without_a_direction_and_peaks_are_checked():
    fs = build_registry(FeatureConfig())
    season = [f for f in fs.features if f.family == "season"]
    assert [f.name for f in season] == [
        "day_of_year_sin",
        "day_of_year_cos",
        "days_from_black_friday",
        "days_from_christmas",
    ]
    assert all(f.monotone == 0 and f.aggregates == () for f in season)
    with pytest.raises(ValueError, match="not a MM-DD date"):
        FeatureConfig(season_peaks={"sale": "13-01"})
    with pytest.raises(ValueError, match="lower case"):
        FeatureConfig(season_peaks={"Big Sale": "07-01"})


def test_the_days_after_a_peak_are_near_it_on_the_side_the_newest_snapshots_do_not_cover():
    # The demo's test snapshot (5 days after Black Friday) beside its newest training snapshot
    # (16 days before it): days *to the next* peak read 360 and 16, the summer's value and the
    # newest snapshot's; days *from* the nearest read 5 and 16.
    values = _values([dt.date(2025, 12, 2), dt.date(2025, 11, 11), dt.date(2025, 7, 8)])
    # Within a day of the calendar (the year is taken as 365.2425 days).
    np.testing.assert_allclose(values["days_from_black_friday"], [5, 16, 142], atol=1.0)
    np.testing.assert_allclose(values["days_from_christmas"], [23, 44, 170], atol=1.0)


def test_a_model_registered_before_days_from_still_gets_its_days_to_features_when_scored():
    # Models trained on days_to_<peak> (before days_from_<peak> replaced it) keep scoring: the
    # score job builds the retired features such a model uses, with their old values, and only
    # those; a new model's feature set never carries them.
    from types import SimpleNamespace

    from propensity.core.config import ProjectConfig
    from propensity.pipeline.jobs.events import scoring_feature_set

    config = ProjectConfig()
    fs = build_registry(config.features)
    old = SimpleNamespace(feature_names=["day_of_year_sin", "days_to_black_friday"], metadata={})
    scored = scoring_feature_set(fs, None, old, dt.date(2025, 12, 2), config)
    added = [f for f in scored.features if f.name not in {g.name for g in fs.features}]
    assert [f.name for f in added] == ["days_to_black_friday"]
    day = (dt.date(2025, 12, 2) - dt.date(1970, 1, 1)).days
    (value,) = (
        duckdb.connect().execute(f"SELECT {added[0].sql} FROM (VALUES ({day})) AS t(as_of_day)").fetchone()
    )
    assert abs(value - ((dt.date(2026, 11, 27) - dt.date(2025, 12, 2)).days)) <= 1.5
    new = SimpleNamespace(feature_names=["day_of_year_sin", "days_from_black_friday"], metadata={})
    assert scoring_feature_set(fs, None, new, dt.date(2025, 12, 2), config) is fs
