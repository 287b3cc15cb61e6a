"""CDNOW, real purchases, through the command line on a slice of the customers: the scores a
user gets are no worse than the classic baselines beyond their paired intervals.

The commands run in the test's process (the CLI app through Typer's runner, as the other CLI
tests do). On every customer, where the intervals are narrow enough for "better than logistic
RFM beyond the interval" (issue 23), the figures come from ``python benchmarks/cdnow.py --check``
(README, "Worked example: CDNOW")."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.cdnow import MODEL_YAML, cdnow_events, model_yaml, run_cli


def test_cdnow_events_follow_the_event_contract():
    events = cdnow_events(every=10)
    assert list(events.columns) == ["timestamp", "event_type", "crm_id", "revenue", "channel"]
    assert (events["event_type"] == "purchase").all() and events["revenue"].ge(0).all()
    # One row per customer and day: the day's orders are one purchase.
    assert not events.assign(day=events["timestamp"].dt.date).duplicated(["crm_id", "day"]).any()
    assert events["crm_id"].str.fullmatch(r"CD\d{5}").all()
    assert (
        events["timestamp"].min().year == 1997
        and events["timestamp"].max().date().isoformat() == "1998-06-30"
    )


@pytest.mark.slow
def test_cdnow_scores_are_no_worse_than_the_baselines(tmp_path):
    # Every 10th customer (2,357), the default LightGBM only: fast, and real data all the same.
    figures = run_cli(
        tmp_path / "cdnow",
        every=10,
        model_yaml=MODEL_YAML + "training: {tuning: {trials: 1}}\n",
        in_process=True,
    )
    assert figures["rows"] == 2357 and figures["positives"] > 300
    model = figures["model"]
    assert (
        model["auc"]["low"] > 0.5
        and model["average_precision"]["low"] > figures["positives"] / figures["rows"]
    )
    # Probabilities that mean what they say: better than predicting the base rate for everyone.
    base = figures["positives"] / figures["rows"]
    assert model["brier"]["value"] < base * (1 - base)
    for baseline in ("logistic", "lightgbm", "bgnbd", "recency"):
        difference = figures[f"model-{baseline}"]
        assert difference["auc"]["high"] > 0, baseline
        assert difference["average_precision"]["high"] > 0, baseline
        if "brier" in difference:
            assert difference["brier"]["low"] < 0, baseline
    # Beyond recency where it matters to a campaign: who is at the top of the list.
    assert figures["model-recency"]["average_precision"]["low"] > 0


# Two questions of the range the issue names (as-of 1997-07-01..1998-03-01, horizons of 30 to
# 120 days ending within the data), besides 1997-10-01 / 90 days: the earliest as-of (six months
# of history) and the longest horizon. (1997-07-01 / 120 days cannot be trained: its labelled
# snapshots would have to start before the first purchase; train says so in one line.)
QUESTIONS = [(dt.date(1997, 7, 1), 30), (dt.date(1998, 1, 1), 120)]


@pytest.mark.slow
@pytest.mark.parametrize(("as_of", "horizon_days"), QUESTIONS, ids=lambda v: str(v))
def test_cdnow_train_and_promote_ship_a_champion_no_worse_than_the_baselines(tmp_path, as_of, horizon_days):
    figures = run_cli(
        tmp_path / "cdnow",
        every=10,
        model_yaml=model_yaml(horizon_days) + "training: {tuning: {trials: 1}}\n",
        as_of=as_of,
        horizon_days=horizon_days,
        promote=True,
        in_process=True,
    )
    # promote made it champion (scores were written with --alias champion) and said why
    assert figures["promotion"].startswith("promoted: no champion yet"), figures["promotion"]
    assert figures["rows"] > 1000 and figures["positives"] > 100
    # the champion's written scores: no worse than any baseline beyond the paired interval
    for baseline in ("logistic", "bgnbd", "recency"):
        difference = figures[f"model-{baseline}"]
        assert difference["auc"]["high"] > 0, (baseline, difference)
        assert difference["average_precision"]["high"] > 0, (baseline, difference)
        if "brier" in difference:
            assert difference["brier"]["low"] < 0, (baseline, difference)
