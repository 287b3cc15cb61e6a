"""Segments: rule checking, statuses across as-of dates, consent, back-fill, the CLI end to end."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.core.config import ProjectConfig, SegmentConfig
from propensity.core.errors import UserError
from propensity.core.io import MARKER, STAGING
from propensity.features.activation import membership_store
from propensity.features.activation import segments as seg
from propensity.features.sql import column_kind
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs.config_files import load_segments
from tests.conftest import invoke

# One xdist worker runs the whole module (--dist loadgroup), so its module fixtures (the ingested
# small Luma) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("segments")

D1, D2, D3 = dt.date(2025, 3, 1), dt.date(2025, 4, 1), dt.date(2025, 5, 1)
KINDS = {
    "x": "number",
    "days_since_last_purchase": "number",
    "loyalty_tier": "string",
    "is_known": "number",
    "consent_personalization": "string",
}
MODELS = ("upsell", "conversion")


def segment(name: str, rule: str) -> seg.Segment:
    return seg.compile_segments([SegmentConfig(name=name, rule=rule)], KINDS, MODELS, "segments.yaml")[0]


def run(con, segments, rows: dict[str, tuple], out: Path, as_of: dt.date, scores=None) -> seg.Qualification:
    """Qualify hand-written features: profile -> (x, consent_personalization)."""
    frame = pd.DataFrame(
        {
            "profile_id": pd.Series(list(rows), dtype="string"),
            "x": pd.Series([x for x, _ in rows.values()], dtype="float64"),
            "consent_personalization": pd.Series([c for _, c in rows.values()], dtype="string"),
        }
    )
    con.register("feats", frame)
    return seg.qualify(con, segments, "SELECT * FROM feats", scores or {}, out, as_of)


def memberships(out: Path, as_of: dt.date) -> set[tuple]:
    frame = pd.read_parquet(seg.partition_dir(out, as_of) / seg.MEMBERSHIPS_FILE)
    return {
        (r.profile_id, r.segment, r.status, str(r.as_of)[:10], str(r.qualified_at)[:10])
        for r in frame.itertuples()
    }


# -- rules --------------------------------------------------------------------------------

REFUSED = [
    ("lower(loyalty_tier) = 'gold'", r"function calls such as `LOWER\(loyalty_tier\)` are not allowed"),
    ("x > (SELECT max(x) FROM features)", r"subqueries such as .* are not allowed"),
    ("x IN (SELECT 1)", r"subqueries such as `\(SELECT 1\)` are not allowed"),
    ("x > 1; DROP TABLE profiles", r"a rule is one expression; `;` is not allowed"),
    ("x > 1;", r"a rule is one expression; `;` is not allowed in rule `x > 1;`"),
    ("*", r"`\*` is not allowed in a rule"),
    ("revenue_sum_90d > 100", r"unknown column `revenue_sum_90d`"),
    ("churn.score >= 70", r"unknown model `churn` in `churn.score` \(models: conversion, upsell\)"),
    ("upsell.revenue > 1", r"unknown score column `revenue` in `upsell.revenue`"),
    ("loyalty_tier = 3", r"cannot compare text `loyalty_tier` with a number `3`"),
    ("upsell.score >= 'high'", r"cannot compare a number `upsell.score` with text `'high'`"),
    (
        "conversion.bucket > 'medium'",
        r"`conversion.bucket > 'medium'` orders text, which compares only with =",
    ),
    ("loyalty_tier IN ('gold', 1)", r"cannot compare text `loyalty_tier` with a number `1`"),
    ("loyalty_tier + 1 > 2", r"arithmetic needs numbers, not text `loyalty_tier`"),
    ("upsell.score", r"rule `upsell.score` is not a condition"),
    ("x + 1", r"rule `x \+ 1` is not a condition"),
    ("is_known AND x > 1", r"a number `is_known` is not a condition"),
    ("x = NULL", r"`x = NULL` is never true; test for missing values with IS NULL"),
    ("x LIKE '1%'", r"`x LIKE '1%'` is not allowed in a rule"),
    ("CAST(x AS INT) > 1", r"function calls such as `CAST\(x AS INT\)` are not allowed"),
    ("x >", r"cannot parse rule `x >`"),
]


@pytest.mark.parametrize(("rule", "message"), REFUSED, ids=[r for r, _ in REFUSED])
def test_hostile_and_mistaken_rules_are_refused_naming_the_segment(rule, message):
    with pytest.raises(UserError, match=r"^segments\.yaml: segment 'audience': " + message):
        segment("audience", rule)


def test_good_rules_compile_to_sql_over_feature_and_score_columns():
    s = segment(
        "lapsed",
        "upsell.score >= 70 AND days_since_last_purchase > 60 /* lapsed */ "
        "AND loyalty_tier IN ('gold', 'silver')",
    )
    assert s.models == ("upsell",)
    assert s.rule.sql() == (
        '"upsell__score" >= 70 AND "days_since_last_purchase" > 60 '
        "AND \"loyalty_tier\" IN ('gold', 'silver')"
    )
    assert segment("anon", "conversion.bucket = 'high' AND is_known = 0").models == ("conversion",)
    assert segment("missing", "upsell.score IS NULL AND NOT x BETWEEN 1 AND 2").models == ("upsell",)


def test_shipped_segments_file_names_the_use_case_segments():
    names = [s.name for s in load_segments("configs/segments.yaml").segments]
    assert names == [
        "lapsed_yoga_buyers_likely_to_return",
        "high_propensity_prospects",
        "likely_churners",
        "upsell_candidates",
    ]


def test_segments_file_refuses_unknown_keys_and_duplicate_names(tmp_path):
    bad = tmp_path / "segments.yaml"
    bad.write_text("segments:\n  - {name: a, rule: 'x > 1', colour: red}\n")
    with pytest.raises(UserError, match=r"segments\.0\.colour`: unknown key"):
        load_segments(bad)
    bad.write_text("segments:\n  - {name: a, rule: 'x > 1'}\n  - {name: a, rule: 'x > 2'}\n")
    with pytest.raises(UserError, match="segment 'a' is listed twice"):
        load_segments(bad)
    bad.write_text("segments:\n  - {name: 'A b', rule: 'x > 1'}\n")
    with pytest.raises(UserError, match=r"segments\.0\.name"):
        load_segments(bad)


# -- statuses -----------------------------------------------------------------------------


def test_enter_stay_exit_and_re_enter(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    big = [segment("big", "x > 5")]
    first = run(con, big, {"p1": (10, "y"), "p2": (1, "y"), "p3": (7, None)}, out, D1)
    assert first.previous_as_of is None
    assert memberships(out, D1) == {
        ("p1", "big", "realized", "2025-03-01", "2025-03-01"),
        ("p3", "big", "realized", "2025-03-01", "2025-03-01"),
    }
    second = run(con, big, {"p1": (10, "y"), "p2": (9, "y"), "p3": (1, None)}, out, D2)
    assert second.previous_as_of == D1
    assert memberships(out, D2) == {
        ("p1", "big", "existing", "2025-04-01", "2025-03-01"),  # stayed: entry date carried
        ("p2", "big", "realized", "2025-04-01", "2025-04-01"),  # entered
        ("p3", "big", "exited", "2025-04-01", "2025-03-01"),  # left at as_of; its stay began D1
    }
    third = run(con, big, {"p1": (0, "y"), "p2": (9, "y"), "p3": (8, None)}, out, D3)
    assert memberships(out, D3) == {
        ("p1", "big", "exited", "2025-05-01", "2025-03-01"),
        ("p2", "big", "existing", "2025-05-01", "2025-04-01"),
        ("p3", "big", "realized", "2025-05-01", "2025-05-01"),  # re-entered: a new stay
    }
    counts = {c.segment: c for c in third.counts}
    assert (counts["big"].realized, counts["big"].existing, counts["big"].exited, counts["big"].size) == (
        1,
        1,
        1,
        2,
    )
    assert third.stale_later == []


day_rows = st.dictionaries(
    st.sampled_from([f"p{i}" for i in range(8)]),
    st.tuples(st.integers(0, 10), st.sampled_from(["y", "n", None])),
    max_size=8,
)


@settings(max_examples=25, deadline=None)
@given(st.lists(day_rows, min_size=1, max_size=3))
def test_statuses_follow_the_set_definitions_on_any_history(days):
    """realized = now and not before, existing = both (entry date carried), exited = before and
    not now; opted-out profiles appear nowhere."""
    big = [segment("big", "x > 5")]
    dates = [D1, D2, D3][: len(days)]
    stays: dict[str, str] = {}  # member -> date its current stay began
    con = duckdb.connect()
    with tempfile.TemporaryDirectory() as tmp:
        for date, rows in zip(dates, days, strict=True):
            run(con, big, rows, Path(tmp), date)
            opted_out = {p for p, (_, consent) in rows.items() if consent == "n"}
            now = {p for p, (x, consent) in rows.items() if x > 5 and consent != "n"}
            before = {p: began for p, began in stays.items() if p not in opted_out}
            day = str(date)
            expected = {
                (p, "big", "existing" if p in before else "realized", day, before.get(p, day)) for p in now
            }
            expected |= {(p, "big", "exited", day, before[p]) for p in set(before) - now}
            assert memberships(Path(tmp), date) == expected
            stays = {p: before.get(p, day) for p in now}


def test_exited_profiles_are_not_carried_into_the_next_date(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    big = [segment("big", "x > 5")]
    run(con, big, {"p1": (10, "y")}, out, D1)
    run(con, big, {"p1": (0, "y")}, out, D2)
    run(con, big, {"p1": (0, "y")}, out, D3)
    assert memberships(out, D2) == {("p1", "big", "exited", "2025-04-01", "2025-03-01")}
    assert memberships(out, D3) == set()


def test_each_segment_has_its_own_statuses_and_removed_segments_do_not_exit(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    run(con, [segment("big", "x > 5"), segment("small", "x < 5")], {"p1": (10, "y"), "p2": (1, "y")}, out, D1)
    run(con, [segment("big", "x > 5")], {"p1": (1, "y"), "p2": (10, "y")}, out, D2)
    assert memberships(out, D2) == {
        ("p1", "big", "exited", "2025-04-01", "2025-03-01"),
        ("p2", "big", "realized", "2025-04-01", "2025-04-01"),
    }


def test_rerunning_an_as_of_replaces_it_with_identical_files(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    big = [segment("big", "x > 5"), segment("odd", "x IN (1, 7, 9)")]
    rows = {f"p{i}": (i % 11, "y" if i % 3 else None) for i in range(200)}
    run(con, big, rows, out, D1)
    run(con, big, {p: (x + 1, c) for p, (x, c) in rows.items()}, out, D2)
    path = seg.partition_dir(out, D2) / seg.MEMBERSHIPS_FILE
    before = path.read_bytes()
    again = run(con, big, {p: (x + 1, c) for p, (x, c) in rows.items()}, out, D2)
    assert path.read_bytes() == before
    assert again.previous_as_of == D1
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["profile_id", "segment", "status", "as_of", "qualified_at"]
    assert frame.equals(frame.sort_values(["segment", "profile_id"]).reset_index(drop=True))
    # no temporary leftovers: inside the tree only the output's marker, beside it only locks
    assert [p.name for p in out.rglob(".*")] == [MARKER]
    assert all(p.suffix == ".lock" for p in (out.parent / STAGING).iterdir())


def test_back_fill_uses_the_latest_earlier_date_and_flags_later_dates_as_stale(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    big = [segment("big", "x > 5")]
    days = {
        D1: {"p1": (10, "y"), "p2": (9, "y")},
        D2: {"p1": (10, "y"), "p2": (9, "y")},
        D3: {"p2": (9, "y")},
    }
    for date in (D1, D2, D3):
        run(con, big, days[date], out, date)
    assert ("p1", "big", "existing", "2025-04-01", "2025-03-01") in memberships(out, D2)
    # Back-fill a date between D1 and D2 on which p1 had dropped out.
    middle = dt.date(2025, 3, 15)
    filled = run(con, big, {"p1": (0, "y"), "p2": (9, "y")}, out, middle)
    assert filled.previous_as_of == D1
    assert memberships(out, middle) == {
        ("p1", "big", "exited", "2025-03-15", "2025-03-01"),
        ("p2", "big", "existing", "2025-03-15", "2025-03-01"),
    }
    assert filled.stale_later == [D2]  # computed against D1, which no longer precedes it
    restated = run(con, big, days[D2], out, D2)
    assert restated.previous_as_of == middle
    assert ("p1", "big", "realized", "2025-04-01", "2025-04-01") in memberships(out, D2)
    assert restated.stale_later == [D3]  # p1's stay now begins at D2: D3's exit row changes
    assert run(con, big, days[D3], out, D3).stale_later == []
    assert ("p1", "big", "exited", "2025-05-01", "2025-04-01") in memberships(out, D3)


def test_back_fill_before_every_date_becomes_the_first(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    big = [segment("big", "x > 5")]
    run(con, big, {"p1": (10, "y")}, out, D2)
    early = run(con, big, {"p1": (10, "y")}, out, D1)
    assert early.previous_as_of is None
    assert early.stale_later == [D2]
    assert run(con, big, {"p1": (10, "y")}, out, D2).stale_later == []
    assert memberships(out, D2) == {("p1", "big", "existing", "2025-04-01", "2025-03-01")}


# -- consent -------------------------------------------------------------------------------


def test_opted_out_profiles_are_in_no_output_and_counted_as_held_back(tmp_path):
    con, out = duckdb.connect(), tmp_path / "segments"
    both = [segment("big", "x > 5"), segment("all", "x >= 0")]
    result = run(con, both, {"p1": (10, "y"), "p2": (10, "n"), "p3": (1, "n"), "p4": (7, None)}, out, D1)
    assert {m[0] for m in memberships(out, D1)} == {"p1", "p4"}
    counts = {c.segment: c for c in result.counts}
    assert (counts["big"].held_back, counts["all"].held_back) == (1, 2)
    assert (counts["big"].size, counts["all"].size) == (2, 2)
    # p1 opts out: it leaves every segment silently (no `exited` row), and is held back.
    later = run(con, both, {"p1": (10, "n"), "p2": (10, "n"), "p3": (1, "n"), "p4": (7, None)}, out, D2)
    assert {m[0] for m in memberships(out, D2)} == {"p4"}
    assert {c.segment: c.held_back for c in later.counts} == {"big": 2, "all": 3}
    summary = membership_store.read_summary(out, D2)
    assert summary["counts"]["big"]["held_back"] == 2
    # Rules may read the consent columns too (here: explicitly given personalisation consent).
    kinds = {"x": "number", "consent_personalization": "string", "consent_marketing": "string"}
    given = seg.compile_segments(
        [SegmentConfig(name="given", rule="consent_personalization = 'y' AND consent_marketing = 'y'")],
        kinds,
        [],
        "segments.yaml",
    )
    con.register("feats", pd.DataFrame({"profile_id": ["p1", "p2", "p3"], "x": 1,
                                        "consent_personalization": ["y", "y", None],
                                        "consent_marketing": ["y", "n", "y"]}))  # fmt: skip
    seg.qualify(con, given, "SELECT * FROM feats", {}, tmp_path / "given", D1)
    assert memberships(tmp_path / "given", D1) == {("p1", "given", "realized", "2025-03-01", "2025-03-01")}
    assert summary["segments"]["big"] == {"description": "", "rule": "x > 5", "models": []}


# -- scores --------------------------------------------------------------------------------


def write_scores(root: Path, model: str, as_of: dt.date, scores: dict[str, int]) -> list[str]:
    directory = root / f"model={model}" / f"as_of={as_of}"
    directory.mkdir(parents=True, exist_ok=True)
    ids = list(scores)
    values = np.array([scores[p] for p in ids])
    pd.DataFrame(
        {
            "profile_id": ids,
            "model": model,
            "model_version": "1",
            "as_of": as_of,
            "probability": values / 100,
            "score": values,
            "percentile": np.clip(values, 1, 100),
            "bucket": np.where(values >= 70, "high", np.where(values >= 40, "medium", "low")),
        }
    ).to_parquet(directory / "part-0.parquet")
    return [str(directory / "part-0.parquet")]


def test_rules_read_scores_at_the_same_as_of_and_unscored_profiles_do_not_qualify(tmp_path):
    con, out, root = duckdb.connect(), tmp_path / "segments", tmp_path / "scores"
    write_scores(root, "upsell", D1, {"p1": 80, "p2": 30})
    write_scores(root, "conversion", D1, {"p2": 75, "p3": 90})
    segments = [
        segment("upsell_high", "upsell.score >= 70 AND x > 0"),
        segment("prospects", "conversion.bucket = 'high'"),
        segment("unscored", "upsell.score IS NULL"),
    ]
    files = seg.score_files(root, segments, D1)
    assert set(files) == {"upsell", "conversion"}
    run(con, segments, {"p1": (1, "y"), "p2": (1, "y"), "p3": (1, "y"), "p4": (1, "y")}, out, D1, files)
    assert {(m[0], m[1]) for m in memberships(out, D1)} == {
        ("p1", "upsell_high"),
        ("p2", "prospects"),
        ("p3", "prospects"),
        ("p3", "unscored"),
        ("p4", "unscored"),
    }


def test_a_missing_score_partition_names_the_segment_model_and_partition(tmp_path):
    root = tmp_path / "scores"
    write_scores(root, "upsell", D1, {"p1": 80})
    segments = [segment("fine", "upsell.score > 1"), segment("prospects", "conversion.bucket = 'high'")]
    with pytest.raises(UserError) as error:
        seg.score_files(root, segments, D1)
    message = str(error.value)
    assert message.startswith("segment 'prospects': model 'conversion' has no scores at 2025-03-01")
    assert str(root / "model=conversion" / "as_of=2025-03-01") in message
    with pytest.raises(UserError, match="segment 'fine': model 'upsell' has no scores at 2025-04-01"):
        seg.score_files(root, segments[:1], D2)


# -- end to end through the CLI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def luma_ingested(luma_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segments") / "ingested"
    ingest_jobs.ingest(luma_small, out, ProjectConfig(), on_bad_rows="quarantine")
    return out


def luma_scores(ingested: Path, root: Path, dates: list[dt.date]) -> None:
    """Score partitions in the contract's shape for every profile, for the shipped models."""
    ids = pd.read_parquet(ingested / "profiles.parquet", columns=["profile_id"])["profile_id"]
    rng = np.random.default_rng(3)
    for date in dates:
        for model in ("upsell", "conversion", "churn"):
            write_scores(root, model, date, dict(zip(ids, rng.integers(0, 101, len(ids)), strict=True)))


def test_segments_and_export_end_to_end_through_the_cli(runner, luma_ingested, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # whole segment names in the summary table
    scores, out, exports = tmp_path / "scores", tmp_path / "segments", tmp_path / "exports"
    dates = [dt.date(2025, 7, 1), dt.date(2025, 8, 1)]
    luma_scores(luma_ingested, scores, dates)
    common = ["--events", str(luma_ingested), "--scores", str(scores), "--out", str(out)]
    for date in dates:
        result = invoke(runner, "segments", *common, "--as-of", str(date))
        assert result.exit_code == 0, result.output
    assert "statuses against 2025-07-01" in result.output
    assert "lapsed_yoga" in result.output  # the name may wrap in an 80-column table
    summary = membership_store.read_summary(out, dates[1])
    assert set(summary["segments"]) == {
        "lapsed_yoga_buyers_likely_to_return",
        "high_propensity_prospects",
        "likely_churners",
        "upsell_candidates",
    }
    assert summary["segments"]["likely_churners"]["models"] == ["churn"]
    frame = pd.read_parquet(seg.partition_dir(out, dates[1]) / seg.MEMBERSHIPS_FILE)
    assert set(frame["status"]) == {"realized", "existing", "exited"}
    profiles = pd.read_parquet(luma_ingested / "profiles.parquet")
    opted_out = set(profiles.loc[profiles["consent_personalization"] == "n", "profile_id"])
    assert opted_out and not opted_out & set(frame["profile_id"])
    assert sum(c["held_back"] for c in summary["counts"].values()) > 0
    # Anonymous profiles qualify too (high_propensity_prospects reads only the conversion score).
    anonymous = set(profiles.loc[~profiles["is_known"], "profile_id"])
    assert anonymous & set(frame.loc[frame["segment"] == "high_propensity_prospects", "profile_id"])

    result = invoke(
        runner, "export", "--memberships", str(out), "--as-of", str(dates[1]), "--out", str(exports)
    )
    assert result.exit_code == 0, result.output
    email = pd.read_csv(
        exports / "destination=email_platform" / "as_of=2025-08-01" / "segment=upsell_candidates.csv"
    )
    assert set(email["namespace"]) == {"crm_id"}
    assert set(email["status"]) <= {"realized", "existing"}
    identity_map = pd.read_parquet(luma_ingested / "identity_map.parquet")
    crm = identity_map[identity_map["namespace"] == "crm_id"]
    assert set(email["value"]) <= set(crm["value"])
    exported = set(crm.loc[crm["value"].isin(email["value"]), "profile_id"])
    assert not exported & opted_out
    personalization = pd.read_parquet(
        exports / "destination=personalization" / "as_of=2025-08-01" / "segment=upsell_candidates.parquet"
    )
    assert set(personalization["namespace"]) == {"ecid"} and "exited" in set(personalization["status"])


def test_cli_errors_exit_2_with_one_line(runner, luma_ingested, tmp_path):
    bad = tmp_path / "segments.yaml"
    bad.write_text("segments:\n  - {name: sneaky, rule: 'is_known = 1; DROP TABLE events'}\n")
    out, none = str(tmp_path / "o"), str(tmp_path / "none")
    result = invoke(
        runner, "segments", "--events", str(luma_ingested), "--segments", str(bad), "--out", out,
        "--scores", none, "--as-of", "2025-08-01",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "segment 'sneaky': a rule is one expression; `;` is not allowed" in result.output
    assert not (tmp_path / "o").exists()
    result = invoke(runner, "segments", "--events", str(luma_ingested), "--scores", str(tmp_path / "none"),
                    "--out", str(tmp_path / "o"), "--as-of", "2025-08-01")  # fmt: skip
    assert result.exit_code == 2
    assert "model 'upsell' has no scores at 2025-08-01" in result.output
    result = invoke(runner, "export", "--memberships", str(tmp_path / "o"), "--out", str(tmp_path / "e"))
    assert result.exit_code == 2 and "no memberships" in result.output
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


@pytest.mark.parametrize(
    ("type_name", "kind"),
    [
        ("VARCHAR", "string"),
        ("string", "string"),
        ("BOOLEAN", "boolean"),
        ("boolean", "boolean"),
        ("INTEGER", "number"),
        ("UBIGINT", "number"),
        ("HUGEINT", "number"),
        ("DECIMAL(18,2)", "number"),
        ("int", "number"),
        ("bigint", "number"),
        ("double", "number"),
        ("decimal(38,4)", "number"),
        ("DATE", None),
        ("timestamp", None),
        ("UUID", None),
        ("INTEGER[]", None),
        ("array<int>", None),
    ],
)
def test_one_column_kind_for_both_engines(type_name, kind):
    """DuckDB's and Spark's type names map to the kinds rules compare through one function."""
    assert column_kind(type_name) == kind


def test_column_kinds_of_a_duckdb_query():
    con = duckdb.connect()
    sql = (
        "SELECT 'p' AS profile_id, 1 AS n, 1.5::DECIMAL(9,2) AS d, 'a' AS s, TRUE AS b, "
        "DATE '2025-01-01' AS t"
    )
    assert seg.column_kinds(con, sql) == {"n": "number", "d": "number", "s": "string", "b": "boolean"}
