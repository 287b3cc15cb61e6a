"""The snapshot plan (issue #23) and training that explains itself (issue #22): known-answer
plans, the row budget, validation clear of the test window, history measured on the events
the features and the outcome use, refusals with their numbers, the ``plan`` command, the refit
and determinism."""

from __future__ import annotations

import datetime as dt
import pickle
import time

import numpy as np
import pandas as pd
import pytest

from propensity.core.config import ProjectConfig, SnapshotConfig
from propensity.core.errors import UserError
from propensity.features.build.snapshots import snapshot_dates
from propensity.models.bgnbd_model import fit_bgnbd_model
from propensity.models.refit import refit, refit_rows
from propensity.models.snapshot_plan import SampledBuild, SnapshotPlan, plan_snapshots, validation_index
from propensity.pipeline.jobs import plan as plan_jobs
from propensity.pipeline.jobs import train as train_jobs
from propensity.pipeline.jobs.config_files import load_model_config
from propensity.pipeline.jobs.events import load_events
from tests.conftest import invoke
from tests.purchase_data import purchase_only_events

D = dt.date


def _weeks(first: dt.date, count: int) -> list[dt.date]:
    return [first + dt.timedelta(days=7 * i) for i in range(count)]


# --- the plan: known answers -------------------------------------------------------------------


def test_weekly_snapshots_back_as_far_as_the_history_allows():
    plan = plan_snapshots(SnapshotConfig(), D(2024, 1, 1), D(2024, 12, 1), 30, "m")
    # latest 2024-11-01 (cutoff - 30); earliest 2024-03-31 (history + 90): 215 days, 31 weeks.
    assert plan.dates == _weeks(D(2024, 4, 5), 31) and plan.test == D(2024, 11, 1)
    # Validation: the last snapshot whose 30-day labels end by the test date (5 weeks before).
    assert plan.validation == D(2024, 9, 27) and plan.overlap_days == 0
    assert plan.notes == []
    roles = [plan.role(d) for d in plan.dates]
    assert roles.count("train") == 25 and roles.count("refit") == 4 and roles[-1] == "test"


def test_the_row_budget_keeps_the_newest_snapshots_and_says_what_it_cut():
    plan = plan_snapshots(
        SnapshotConfig(max_rows=10_000),
        D(2024, 1, 1),
        D(2024, 12, 1),
        30,
        "m",
        estimate=lambda dates: dict.fromkeys(dates, 1000),
    )
    assert plan.dates == _weeks(D(2024, 8, 30), 10)
    assert plan.notes == [
        "the row budget (training.snapshots.max_rows 10,000) keeps the newest 10 snapshots (~10,000 rows); "
        "21 older ones (2024-04-05 .. 2024-08-23, ~21,000 rows) are left out"
    ]
    # Never fewer than a test, a clean validation and a training snapshot need: 90 days = 13
    # weeks back to validation, one more before it.
    long = plan_snapshots(
        SnapshotConfig(max_rows=1000),
        D(2024, 1, 1),
        D(2024, 12, 1),
        90,
        "m",
        estimate=lambda dates: dict.fromkeys(dates, 1000),
    )
    assert len(long.dates) == 15 and long.validation == long.dates[1] and long.overlap_days == 0


def test_with_sampled_training_the_row_budget_counts_the_rows_the_sample_builds():
    """31 weekly dates of 100,000 estimated rows each, a budget of 150,000 rows: counted
    unsampled it keeps the 7 dates a 30-day horizon needs; counted as sampled training builds
    them (the whole test and validation profiles, 20 % + 80 % x 25 % of 100,000 = 40,000, and
    10 % of the rest, or sampling.rows when that is more) it keeps the newest 11 (40,000 + 10 % x
    1,060,000 = 146,000, so about 150,000 are built; 12 would build 156,000)."""
    every = dict.fromkeys(_weeks(D(2024, 4, 5), 31), 100_000)

    def plan(sampled):
        return plan_snapshots(
            SnapshotConfig(max_rows=150_000), D(2024, 1, 1), D(2024, 12, 1), 30, "m",
            estimate=lambda dates: {d: every[d] for d in dates}, sampled=sampled,
        )  # fmt: skip

    assert len(plan(None).dates) == 7
    sampled = SampledBuild(rows=150_000, min_rate=0.1, test_fraction=0.2, validation_share=0.25)
    kept = plan(sampled)
    assert kept.dates == _weeks(D(2024, 8, 23), 11) and kept.overlap_days == 0
    assert kept.notes == [
        "the row budget (training.snapshots.max_rows 150,000) keeps the newest 11 snapshots (~150,000 rows "
        "built by training.sampling, of ~1,100,000 estimated); 20 older ones (2024-04-05 .. 2024-08-16, "
        "~2,000,000 rows) are left out"
    ]
    assert sampled.built(kept.dates[-12:], every, kept.validation) <= 150_000
    # Within sampling.rows every row is built: the budget counts them all, as unsampled.
    assert sampled.built(kept.dates[:1], every, kept.dates[0]) == 100_000
    # Sampling rows above the kept dates' rows: every row built, the plan as unsampled (same note).
    assert plan(SampledBuild(10**9, 0.1, 0.2, 0.25)) == plan(None)
    # A lower floor keeps every date (40,000 + 2 % x 3,060,000 = 101,200).
    assert plan(SampledBuild(150_000, 0.02, 0.2, 0.25)).notes == []


def test_max_count_keeps_the_newest_and_says_so():
    plan = plan_snapshots(SnapshotConfig(max_count=10), D(2024, 1, 1), D(2024, 12, 1), 30, "m")
    assert plan.dates == _weeks(D(2024, 8, 30), 10)
    assert plan.notes == [
        "the history allows 31 snapshots; keeping the newest 10 (training.snapshots.max_count)"
    ]


def test_short_history_validation_overlaps_and_the_plan_names_the_days():
    # CDNOW at 1997-10-01 with a 90-day horizon: 93 days between 1997-04-01 and 1997-07-03.
    plan = plan_snapshots(SnapshotConfig(), D(1997, 1, 1), D(1997, 10, 1), 90, "m")
    assert plan.dates == _weeks(D(1997, 4, 3), 14)
    assert plan.validation == D(1997, 4, 10) and plan.overlap_days == 6
    assert plan.notes == [
        "validation 1997-04-10 is not clear of the test window: a 90-day horizon needs 97 days between "
        "the first snapshot and the test snapshot for a training snapshot before a validation snapshot "
        "whose labels end by 1997-07-03; the history gives 91, so its labels overlap the test window by "
        "6 days"
    ]


def test_spacing_shrinks_when_three_weekly_snapshots_do_not_fit():
    plan = plan_snapshots(SnapshotConfig(), D(2024, 1, 1), D(2024, 5, 10), 30, "m")
    assert plan.dates == [D(2024, 3, 31), D(2024, 4, 5), D(2024, 4, 10)]
    assert plan.notes[0] == (
        "7-day spacing leaves fewer than 3 snapshots in the 10 days between 2024-03-31 and 2024-04-10; "
        "using 5 days"
    )


def test_a_fixed_count_shrinks_spacing_then_count_and_says_so():
    fixed = SnapshotConfig(count=6, spacing_days=28)
    plan = plan_snapshots(fixed, D(2023, 1, 1), D(2025, 1, 1), 90, "m")
    assert (len(plan.dates), plan.spacing_days, plan.notes) == (6, 28, [])
    # 28-day spacing, 90-day horizon: validation is 4 snapshots before the test (112 >= 90).
    assert plan.validation == plan.dates[1]
    tight = plan_snapshots(fixed, D(2024, 1, 1), D(2024, 7, 1), 30, "m")
    # 182 - 30 - 90 = 62 days: 5 gaps of 12 days.
    assert (len(tight.dates), tight.spacing_days) == (6, 12)
    assert "using 6 snapshots 12 days apart" in tight.notes[0]
    assert "(the first event the features and the outcome use + 90 days of history)" in tight.notes[0]
    fewer = plan_snapshots(SnapshotConfig(count=10, spacing_days=14), D(2024, 1, 1), D(2024, 6, 1), 60, "m")
    assert (len(fewer.dates), fewer.spacing_days) == (3, 1)  # 152 - 60 - 90 = 2 days


def test_seasonal_adds_last_years_dates_of_the_newest_snapshots_as_training():
    """The demo's fixed plan (8 snapshots 21 days apart, 30-day horizon) on two years of data:
    52 weeks before the test, the snapshot before it and validation, last year's season trains."""
    config = SnapshotConfig(count=8, spacing_days=21, seasonal=3)
    plan = plan_snapshots(config, D(2024, 1, 1), D(2026, 1, 1), 30, "m")
    regular = [D(2025, 12, 2) - dt.timedelta(days=21 * i) for i in reversed(range(8))]
    season = [D(2024, 10, 22), D(2024, 11, 12), D(2024, 12, 3)]  # 364 days before, same weekday
    assert plan.dates == season + regular and plan.season_dates == tuple(season) and plan.seasonal == 3
    assert plan.validation == D(2025, 10, 21) and plan.notes == []
    assert [plan.role(d) for d in season] == ["train"] * 3
    assert (
        "8 snapshots 21 days apart, 2025-07-08 .. 2025-12-02 and 3 from last year's season" in plan.summary()
    )
    # What the engines build from the planned config is the plan's dates.
    built = plan.config(config)
    assert snapshot_dates(D(2026, 1, 1), 30, built.count, built.spacing_days, built.seasonal) == plan.dates
    assert plan_snapshots(
        config.model_copy(update={"seasonal": 0}), D(2024, 1, 1), D(2026, 1, 1), 30, "m"
    ).dates == (regular)


def test_seasonal_keeps_the_dates_the_history_and_the_row_budget_allow_and_says_so():
    config = SnapshotConfig(count=8, spacing_days=21, seasonal=3)
    # History from 2024-08-01: the first usable date is 2024-10-30 (+90 days); 2024-10-22 is before it.
    short = plan_snapshots(config, D(2024, 8, 1), D(2026, 1, 1), 30, "m")
    assert short.season_dates == (D(2024, 11, 12), D(2024, 12, 3)) and short.seasonal == 2
    assert short.notes == [
        "training.snapshots.seasonal 3: the history (the first usable date is 2024-10-30) reaches 52 weeks "
        "before the newest 2 snapshot(s) only"
    ]
    # One year of data: none.
    year = plan_snapshots(config, D(2025, 1, 1), D(2026, 1, 1), 30, "m")
    assert year.season_dates == () and year.config(config).seasonal == 0 and len(year.dates) == 8
    # 1,000 rows a date, a budget of 9,500: one seasonal date fits beside the 8 regular ones.
    budget = plan_snapshots(
        config.model_copy(update={"max_rows": 9_500}), D(2024, 1, 1), D(2026, 1, 1), 30, "m",
        estimate=lambda dates: dict.fromkeys(dates, 1000),
    )  # fmt: skip
    assert budget.season_dates == (D(2024, 12, 3),) and len(budget.dates) == 9
    assert budget.notes == [
        "the row budget (training.snapshots.max_rows 9,500) keeps last year's date of the newest 1 of the 3 "
        "snapshots training.snapshots.seasonal asks for"
    ]
    # A weekly plan that already reaches back a year adds nothing twice.
    weekly = plan_snapshots(SnapshotConfig(max_count=60, seasonal=4), D(2024, 1, 1), D(2026, 1, 1), 30, "m")
    assert (
        weekly.season_dates == ()
        and weekly.seasonal == 4
        and len(set(weekly.dates)) == len(weekly.dates) == 60
    )


def test_too_short_a_history_is_refused_with_its_dates_and_days():
    with pytest.raises(UserError) as refused:
        plan_snapshots(SnapshotConfig(), D(2024, 1, 1), D(2024, 5, 1), 60, "m")
    assert str(refused.value) == (
        "model 'm': the events the features and the outcome use run from 2024-01-01 to 2024-04-30; "
        "3 training snapshots with a 60-day horizon and 90 days of history before the first need the "
        "latest at 2024-03-02 and the first on or after 2024-03-31 (-29 days between them, 2 needed); use "
        "more data, a shorter outcome.horizon_days or a lower training.snapshots.min_history_days"
    )


def test_validation_is_the_last_snapshot_clear_of_the_test_window():
    dates = _weeks(D(2024, 1, 1), 10)
    assert validation_index(dates, 30) == 4  # 2024-01-29 + 30 = 02-28 <= 03-04; 02-05 + 30 > 03-04
    assert validation_index(dates, 7) == 8
    assert validation_index(dates, 100) == 1  # none clear: the earliest with a training snapshot


# --- settling the plan on the population ---------------------------------------------------------


def _plan(dates: list[dt.date]) -> SnapshotPlan:
    return SnapshotPlan(dates, dates[validation_index(dates, 14)], 14, 7, D(2023, 1, 1), D(2024, 6, 1))


def _frame(populations: list[int], dates: list[dt.date]) -> pd.DataFrame:
    rows = [
        {"as_of": pd.Timestamp(d), "profile_id": f"p{i}", "label": int(i % 3 == 0)}
        for d, n in zip(dates, populations, strict=True)
        for i in range(n)
    ]
    return pd.DataFrame(rows, columns=["as_of", "profile_id", "label"])


def test_empty_early_populations_are_dropped_and_said():
    dates = _weeks(D(2024, 1, 1), 8)
    model = load_model_config("configs/models/repeat_purchase.yaml", ProjectConfig())
    settled = _plan(dates).settle(_frame([0, 0, 5, 6, 7, 8, 9, 9], dates), model)
    assert settled.dates == dates[2:] and settled.validation == D(2024, 2, 5)
    assert settled.notes[-1] == (
        "the population rule `purchase_count_365d >= 1` holds no profile at the 2 earliest snapshot(s) "
        "(2024-01-01 .. 2024-01-08); training starts at 2024-01-15"
    )


def test_a_population_empty_at_most_dates_is_refused_with_every_dates_numbers():
    dates = _weeks(D(2024, 1, 1), 4)
    model = load_model_config("configs/models/repeat_purchase.yaml", ProjectConfig())
    with pytest.raises(UserError) as refused:
        _plan(dates).settle(_frame([0, 0, 4, 3], dates), model)
    message = str(refused.value)
    assert "holds no profile at 2 of the 4 snapshot dates" in message
    assert "2024-01-01: 0 (0 positives); 2024-01-08: 0 (0 positives); 2024-01-15: 4 (2 positives)" in message
    assert "start on 2023-01-01" in message


# --- on events: history, refusals, the plan command, the refit ----------------------------------


@pytest.fixture(scope="module")
def purchase_events(tmp_path_factory):
    """2,500 purchase-only customers over 400 days, and one campaign mailing (a custom event
    type) seven weeks before the first basket."""
    root = tmp_path_factory.mktemp("plan")
    events = purchase_only_events(2500, days=400, seed=5, start=D(2024, 1, 1))
    first = events["timestamp"].min()
    mailing = {
        "timestamp": first - pd.Timedelta(days=49),
        "event_type": "campaign_received",
        "crm_id": events["crm_id"].iloc[0],
        "channel": "email",
    }
    events = pd.concat([pd.DataFrame([mailing]), events], ignore_index=True)
    (root / "raw").mkdir()
    events.to_parquet(root / "raw" / "events.parquet", index=False)
    return root / "raw", first.date()


MODEL = """name: repeat_small
population: "purchase_count_365d >= 1"
outcome: {event_type: purchase, horizon_days: 30}
training:
  tuning: {trials: 1}
  min_positives: 50
  min_negatives: 50
  bootstrap_resamples: 100
"""


@pytest.fixture(scope="module")
def model_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "repeat_small.yaml"
    path.write_text(MODEL)
    return str(path)


def test_history_is_measured_on_the_events_the_features_and_outcome_use(purchase_events, model_yaml):
    raw, first_basket = purchase_events
    loaded = load_events(raw, ProjectConfig())
    assert loaded.span()[0] == first_basket - dt.timedelta(days=49)  # the mailing
    plan = plan_jobs.make_plan(load_model_config(model_yaml, ProjectConfig()), loaded, D(2025, 1, 1))
    assert plan.history_start == first_basket
    assert plan.dates[0] >= first_basket + dt.timedelta(days=90)
    assert plan.dates[0] - dt.timedelta(days=7) < first_basket + dt.timedelta(days=90)


def test_plan_command_shows_the_plan_train_uses(purchase_events, model_yaml, runner, tracking):
    raw, _ = purchase_events
    loaded = load_events(raw, ProjectConfig())
    data = train_jobs.training_data(model_yaml, loaded, ProjectConfig(), None)
    result = invoke(runner, "plan", model_yaml, "--events", str(raw))
    assert result.exit_code == 0, result.output
    assert data.plan.summary().split(";")[0] in result.output.replace("\n", " ")
    table = data.plan_table()
    for row in table.itertuples():
        assert row.as_of in result.output
    validation = table[table["role"] == "validation"].iloc[0]
    assert f"{int(validation['population']):,}" in result.output
    quick = invoke(runner, "plan", model_yaml, "--events", str(raw), "--estimate-only")
    assert quick.exit_code == 0 and str(data.plan.validation) in quick.output


def test_thin_population_refusal_names_the_rule_and_the_numbers(purchase_events, tmp_path):
    """Loyal customers (4+ orders a year) before mid-June: a handful at the early dates."""
    raw, _ = purchase_events
    path = tmp_path / "loyal.yaml"
    path.write_text(MODEL.replace(">= 1", ">= 4").replace("50", "100"))
    loaded = load_events(raw, ProjectConfig())
    data = train_jobs.training_data(str(path), loaded, ProjectConfig(), D(2024, 6, 15))
    table = data.plan_table()
    assert list(table["role"]) == ["train", "validation"] + ["refit"] * 4 + ["test"]
    first = table.iloc[0]
    # The latest snapshot 2024-05-16 (cutoff - 30 days), weekly back to 2024-03-31 (history + 90).
    assert (first.as_of, first.population, first.positives) == ("2024-04-04", 16, 12)
    with pytest.raises(UserError) as refused:
        train_jobs.fit(data, time.perf_counter())
    message = str(refused.value)
    assert message.startswith(
        "model 'repeat_small': too few examples to train: 2 positives and 1 negatives in the training "
        "snapshots (need 100 and 100)"
    )
    assert "2024-04-04 train: 16 (12 positives); 2024-04-11 validation: 23 (14 positives)" in message
    assert message.endswith("2024-05-16 test: 70 (38 positives))")


@pytest.mark.parametrize("sampled", [False, True], ids=["every_row", "sampled"])
def test_last_years_season_is_built_and_trains_on_either_build(purchase_events, tmp_path, sampled):
    """training.snapshots.seasonal on 400 days of events: the date 52 weeks before the test
    snapshot is built (its own population and labels) and trains, by the full and the sampled build."""
    raw, first_basket = purchase_events
    path = tmp_path / "seasonal.yaml"
    sampling = "\n  sampling: {rows: 1000, min_rate: 0.5}" if sampled else ""
    path.write_text(
        MODEL.replace("horizon_days: 30", "horizon_days: 14").replace(
            "training:\n",
            "training:\n  snapshots: {count: 4, spacing_days: 14, seasonal: 2, min_history_days: 14}"
            + sampling
            + "\n",
        )
    )
    loaded = load_events(raw, ProjectConfig())
    data = train_jobs.training_data(str(path), loaded, ProjectConfig(), None)
    plan = data.plan
    season = plan.test - dt.timedelta(weeks=52)
    assert plan.season_dates == (season,) and plan.seasonal == 1
    assert season >= first_basket + dt.timedelta(days=14) > season - dt.timedelta(days=14)
    assert "reaches 52 weeks before the newest 1 snapshot(s) only" in plan.notes[0]
    assert (
        data.dates == plan.dates == [season, *(plan.test - dt.timedelta(days=14 * i) for i in (3, 2, 1, 0))]
    )
    table = data.plan_table().set_index("as_of")
    assert table.loc[str(season), "role"] == "train" and table.loc[str(season), "population"] > 0
    assert (data.sampling is not None) == sampled
    fitted = train_jobs.fit(data, time.perf_counter())
    assert season in set(pd.to_datetime(fitted.parts.train["as_of"]).dt.date)


def test_refit_uses_the_early_stopped_rounds_on_every_labelled_snapshot(purchase_events, model_yaml):
    raw, _ = purchase_events
    loaded = load_events(raw, ProjectConfig())
    data = train_jobs.training_data(model_yaml, loaded, ProjectConfig(), None)
    fitted = train_jobs.fit(data, time.perf_counter())
    chosen = fitted.trained.chosen
    record = chosen.model.metadata["refit"]
    # Every snapshot before the test one, the validation snapshot and those after it included.
    assert record["snapshots"] == [str(d) for d in data.plan.dates[:-1]]
    assert str(data.plan.validation) in record["snapshots"]
    rows, _ = refit_rows(data.frame, data.model.training, data.plan.test)
    assert record["rows"] == len(rows) > len(fitted.parts.train)
    assert set(rows["profile_id"]).isdisjoint(set(fitted.parts.test["profile_id"]))
    # Each part of a blend is refitted with what validation settled; BG/NBD on the purchase
    # histories of the newest refit snapshot (not the training snapshot validation compared).
    parts = [chosen]
    if chosen.family == "blend":
        components = chosen.model.components
        parts = [c for c in fitted.trained.candidates if any(c.model is m for m in components)]
    assert parts
    for part in parts:
        done = part.model.metadata["refit"]
        assert done["snapshots"] == record["snapshots"] and done["rows"] == record["rows"]
        if part.family == "lightgbm":
            assert done["rounds"] == part.params["best_iteration"] == part.model.booster.num_trees()
        elif part.family == "logistic":
            assert done["C"] == part.params["C"]
    # BG/NBD (in the blend or not) is refitted on the purchase histories of the newest refit
    # snapshot, not those of the training snapshot validation compared.
    bgnbd = next(c for c in fitted.trained.candidates if c.family == "bgnbd")
    training = data.model.training
    first = fit_bgnbd_model(fitted.parts.train, {}, "first", bgnbd.model.horizon_days, True, training.seed)
    refit(bgnbd, rows, training, None)
    again = fit_bgnbd_model(rows, {}, "again", bgnbd.model.horizon_days, True, training.seed)
    assert np.array_equal(bgnbd.model.parameters, again.parameters)
    assert not np.array_equal(again.parameters, first.parameters)
    assert bgnbd.model.metadata["refit"]["snapshots"] == record["snapshots"]
    # Same data and config, same model bytes.
    again = train_jobs.fit(
        train_jobs.training_data(model_yaml, loaded, ProjectConfig(), None), time.perf_counter()
    )
    assert pickle.dumps(again.trained.chosen.model) == pickle.dumps(chosen.model)
