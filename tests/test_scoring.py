"""Batch scoring, explanations and serving: the score table a downstream job relies on."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from propensity.core.config import ProjectConfig
from propensity.features.connection import relation_columns
from propensity.features.duckdb import ranked_write
from propensity.features.duckdb import scoring as duckdb_scoring
from propensity.models import tracking as mlflow_tracking
from propensity.pipeline.jobs import features as feature_jobs
from propensity.pipeline.jobs import score as score_jobs
from tests.conftest import invoke

AS_OF = "2025-11-10"
SCORE_COLUMNS = [
    "profile_id",
    "model",
    "model_version",
    "as_of",
    "probability",
    "score",
    "bucket",
    "factors",
    "crm_id",
    "email_sha256",
    "phone_sha256",
    "ecid",
    "percentile",
    "scored_at",
]


def _partition(root: Path, model: str = "churn", as_of: str = AS_OF) -> pd.DataFrame:
    return pq.read_table(root / f"model={model}" / f"as_of={as_of}").to_pandas()


def test_score_table_follows_the_contract(scored, tracking, luma_ingested):
    run, out = scored
    table = _partition(out)
    assert list(table.columns) == SCORE_COLUMNS
    assert run.scored == len(table) == run.eligible > 100 and run.profiles > run.eligible
    assert table["profile_id"].is_unique and (table["model"] == "churn").all()
    assert (table["model_version"] == run.version).all() and (table["as_of"] == dt.date(2025, 11, 10)).all()
    assert table["probability"].between(0, 1, inclusive="neither").all()
    assert table["score"].between(0, 100).all() and table["percentile"].between(1, 100).all()
    # Buckets follow the model's thresholds on the score; percentiles rank the probability.
    expected = np.where(table["score"] >= 70, "high", np.where(table["score"] >= 40, "medium", "low"))
    assert (table["bucket"] == expected).all()
    ordered = table.sort_values("probability")
    assert ordered["percentile"].is_monotonic_increasing
    assert {b: n for b, n in run.bucket_sizes.items() if n} == table["bucket"].value_counts().to_dict()
    # Every scored profile carries its identities (one value per namespace, the smallest).
    identities = ["crm_id", "email_sha256", "phone_sha256", "ecid"]
    assert table[identities].notna().any(axis=1).all()
    id_map = pd.read_parquet(luma_ingested / "identity_map.parquet")
    crm = id_map[id_map["namespace"] == "crm_id"].groupby("profile_id")["value"].min()
    known = table.dropna(subset=["crm_id"]).set_index("profile_id")["crm_id"]
    assert len(known) > 100 and (known == crm.reindex(known.index)).all()
    # A scoring run in the model's experiment.
    logged = MlflowClient(tracking_uri=tracking).get_run(run.run_id)
    assert logged.data.tags["step"] == "score" and logged.data.metrics["scored"] == len(table)


def test_factors_are_the_exact_strongest_contributions(scored, luma_ingested, tmp_path):
    run, out = scored
    table = _partition(out).set_index("profile_id")
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(ProjectConfig()), "churn", version=run.version
    )
    # The same profiles' features, built independently by the features job, explained by
    # LightGBM's own TreeSHAP.
    built = feature_jobs.build_features(
        luma_ingested, tmp_path / "f.parquet", ProjectConfig(), dt.date.fromisoformat(AS_OF), "churn"
    )
    frame = pd.read_parquet(built.out).sample(300, random_state=0)
    truth = model.booster.predict(model.matrix(frame), pred_contrib=True)[:, :-1]
    # Scoring builds only the features the trees split on (the rest are NULL in its query): the
    # probabilities are still those of every feature.
    assert 0 < len(model.used_features()) < len(model.feature_names)
    probability = table.loc[frame["profile_id"], "probability"].to_numpy()
    assert np.array_equal(probability, model.predict_proba(frame))
    names = np.asarray(model.feature_names)
    for row, profile_id in zip(truth, frame["profile_id"], strict=True):
        factors = table.loc[profile_id, "factors"]
        strongest = np.argsort(-np.abs(row), kind="stable")[: len(factors)]
        assert 0 < len(factors) <= 5
        assert [f["impact"] for f in factors] == pytest.approx(row[strongest], abs=1e-9)
        assert {f["feature"] for f in factors} == set(names[strongest]) or np.isclose(
            np.sort(np.abs(row))[-len(factors)], np.sort(np.abs(row))[-len(factors) - 1]
        )
        assert all(f["label"] == model.feature_labels[f["feature"]] for f in factors)
        # Each factor shows the profile's value: text as it is, numbers to 4 decimals.
        features = frame.set_index("profile_id").loc[profile_id]
        for f in factors:
            raw = features[f["feature"]]
            if pd.isna(raw):
                assert f["value"] is None
            elif isinstance(raw, str):
                assert f["value"] == raw
            else:
                assert float(f["value"]) == pytest.approx(round(float(raw), 4), abs=1e-12)


def test_rescoring_replaces_the_partition_with_identical_rows(scored, luma_ingested, monkeypatch):
    run, out = scored
    before = _partition(out).drop(columns="scored_at")
    # Many chunks and the features built by the stacked build over a third of the profile keys
    # at a time; then by the feature SQL (the build for events without the ingest's keys), a
    # third of the profiles at a time (each partition reading all events), then an eighth (each
    # reading its own events, split once): the same rows as the first run's build.
    assert 3 < duckdb_scoring.SPLIT_FROM_PARTITIONS <= 8
    monkeypatch.setattr(duckdb_scoring, "SPLIT_MAX_MEASURES", 1_000)  # the split, whatever the model
    in_order = ranked_write.write_ranked_in_order
    ranked_in_order = []
    monkeypatch.setattr(
        ranked_write, "write_ranked_in_order", lambda *a: ranked_in_order.append(a) or in_order(*a)
    )
    for partitions, stacked in ((3, True), (3, False), (8, False)):
        monkeypatch.setattr(duckdb_scoring, "stacked_build_applies", lambda con, stacked=stacked: stacked)
        ranked_in_order.clear()
        again = score_jobs.score_model(
            "churn",
            luma_ingested,
            ProjectConfig(scoring={"profile_partitions": partitions}),
            dt.date.fromisoformat(AS_OF),
            out,
            version=run.version,
            chunk_rows=1_000,
        )
        after = _partition(out).drop(columns="scored_at")
        pd.testing.assert_frame_equal(before, after)
        if stacked:  # key ranges in order, each sorted: ranked without DuckDB's sort
            assert len(ranked_in_order) == 1
        assert (again.scored, again.eligible, again.profiles) == (run.scored, run.eligible, run.profiles)
    leftovers = [p.name for p in (out / "model=churn").iterdir()]
    assert leftovers == [f"as_of={AS_OF}"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=300))
def test_percentiles_are_duckdbs_cume_dist_ranks(levels):
    probability = np.asarray(levels, dtype=float) / 20  # many ties
    con = duckdb.connect()
    con.register("t", pd.DataFrame({"probability": probability, "i": range(len(probability))}))
    want = con.execute(
        "SELECT greatest(1, ceil(100 * cume_dist() OVER (ORDER BY probability)))::SMALLINT AS p "
        "FROM t ORDER BY i"
    ).fetchnumpy()["p"]
    got = ranked_write.percentiles(probability)
    assert got.dtype == np.int16 and np.array_equal(got, want)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 20), min_size=1, max_size=400), st.integers(1, 4), st.booleans())
def test_a_run_is_ranked_the_same_written_straight_through_or_sorted_by_duckdb(levels, parts, shuffled):
    import datetime as dt

    import pyarrow as pa

    from propensity.core.score_table import BUCKETS, batch_schema

    n = len(levels)
    ids = [f"p{i:05d}" for i in range(n)]
    order = np.random.default_rng(n).permutation(n) if shuffled else np.arange(n)
    probability = np.asarray(levels, dtype=float) / 20  # many ties
    score = (probability * 100).astype(np.int16)
    bucket = np.asarray(BUCKETS)[np.minimum(score // 40, len(BUCKETS) - 1)]
    rows = pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.array(["m"] * n),
            pa.array(["1"] * n),
            pa.array([dt.date(2026, 1, 1)] * n, pa.date32()),
            pa.array(probability),
            pa.array(score),
            pa.array(bucket),
            pa.array([[]] * n, pa.list_(batch_schema().field("factors").type.value_type)),
            pa.array([dt.datetime(2026, 1, 2, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
        ],
        schema=batch_schema(),
    ).take(order)
    con = duckdb.connect()
    want = con.execute(
        "SELECT greatest(1, ceil(100 * cume_dist() OVER (ORDER BY probability)))::SMALLINT AS p "
        "FROM rows ORDER BY profile_id"
    ).fetchnumpy()["p"]
    with tempfile.TemporaryDirectory() as tmp:
        run = ranked_write.UnrankedRun(Path(tmp) / "unranked.arrow")
        cuts = np.linspace(0, n, parts + 1).astype(int)
        for a, b in itertools.pairwise(cuts):
            run.add(rows.slice(a, b - a) if b > a else None)
        sizes = run.write_ranked(con, Path(tmp) / "out")
        written = pq.read_table(Path(tmp) / "out" / "part-0.parquet")
        assert run.sorted == (not shuffled or n < 2 or list(order) == sorted(order))
    assert written.column_names == [*rows.column_names[:-1], "percentile", "scored_at"]
    assert written.column("profile_id").to_pylist() == ids
    assert np.array_equal(written.column("percentile").to_numpy(), want)
    assert written.drop_columns(["percentile"]).equals(rows.sort_by("profile_id"))
    assert sizes == {b: int((bucket == b).sum()) for b in BUCKETS}


def test_partitions_come_out_in_one_ascending_run_of_profile_ids():
    import pyarrow as pa

    from propensity.features.duckdb.score_build import in_profile_order

    # Three key ranges starting at a, f and m, each in no order; the first also brings
    # profiles built apart ("g2", "z9").
    parts = [["b2", "z9", "a1", "g2"], ["h3", "f1"], ["n2", "m1"]]
    tables = (pa.table({"profile_id": p, "x": [len(i) for i in p]}) for p in parts)
    out = list(in_profile_order(tables, ["a1", "f1", "m1"]))
    ids = [sorted(t.column("profile_id").to_pylist()) for t in out]
    assert ids == [["a1", "b2"], ["f1", "g2", "h3"], ["m1", "n2", "z9"]]  # one run once each is sorted
    assert all(t.column("x").to_pylist() == [len(i) for i in t.column("profile_id").to_pylist()] for t in out)


def test_stacked_partitions_cover_every_profile_key_once():
    from propensity.features.duckdb.score_build import key_ranges

    con = duckdb.connect()
    for keys, partitions in ((10, 3), (10, 1), (3, 8), (1_000_003, 7)):
        con.execute(f"CREATE OR REPLACE TABLE profiles AS SELECT i AS profile_key FROM range({keys}) t(i)")
        ranges = key_ranges(con, partitions)
        assert ranges[0][0] == 0 and ranges[-1][1] == keys and len(ranges) == min(keys, partitions)
        assert all(a < b == c for (a, b), (c, _) in itertools.pairwise(ranges))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1
    con.execute("CREATE OR REPLACE TABLE profiles AS SELECT 1 AS profile_key WHERE false")
    assert key_ranges(con, 4) == []


def test_scoring_mistakes_are_one_clear_line(churn_run, luma_ingested, tracking, runner, tmp_path):
    late = invoke(
        runner,
        "score",
        "churn",
        "--events",
        str(luma_ingested),
        "--as-of",
        "2030-01-01",
        "--alias",
        "challenger",
        "--out",
        str(tmp_path),
    )
    assert late.exit_code == 2 and "is after the data" in late.output
    unknown = invoke(
        runner, "score", "churn", "--events", str(luma_ingested), "--alias", "nobody", "--out", str(tmp_path)
    )
    assert unknown.exit_code == 2 and "has no alias 'nobody'" in unknown.output
    missing = invoke(runner, "score", "spaceships", "--events", str(luma_ingested), "--out", str(tmp_path))
    assert missing.exit_code == 2 and "spaceships" in missing.output
    assert not any(tmp_path.rglob("*.parquet"))


def test_explain_shows_factors_or_the_failed_population_condition(scored, luma_ingested, runner):
    run, out = scored
    table = _partition(out)
    profile = table.sort_values("probability").iloc[-1]
    shown = invoke(
        runner,
        "explain",
        "churn",
        "--profile",
        profile["profile_id"],
        "--events",
        str(luma_ingested),
        "--as-of",
        AS_OF,
        "--version",
        run.version,
    )
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert f"probability {profile['probability']:.3f}" in text and profile["factors"][0]["label"] in text
    # A prospect (no purchase in a year) is outside churn's customer population.
    prospect = next(
        pid
        for pid in pd.read_parquet(luma_ingested / "profiles.parquet")["profile_id"]
        if pid not in set(table["profile_id"])
    )
    refused = invoke(
        runner,
        "explain",
        "churn",
        "--profile",
        prospect,
        "--events",
        str(luma_ingested),
        "--as-of",
        AS_OF,
        "--version",
        run.version,
    )
    text = " ".join(refused.output.split())
    assert refused.exit_code in (0, 2)
    assert "not in the churn population" in text or "has no events" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_champion_serves_over_http(churn_run, luma_ingested, tracking, tmp_path):
    # By version: the challenger alias moves when other tests retrain.
    model, _ = mlflow_tracking.load_propensity_model(
        mlflow_tracking.configure(ProjectConfig()), "churn", version=churn_run.version
    )
    port = _free_port()
    # MLflow starts `uvicorn` by name: the test interpreter's own uvicorn must be on PATH, as it
    # is for a user who activated the virtualenv (a venv sharing another's packages may lack the
    # script, so a shim runs the module with this interpreter).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uvicorn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m uvicorn "$@"\n')
    (bin_dir / "uvicorn").chmod(0o755)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/churn/{churn_run.version}",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking,
            "PATH": os.pathsep.join(
                [str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
            ),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # A server that cannot start (a model that fails to load) is a failure, never a skip.
            assert server.poll() is None, f"mlflow models serve exited: {server.stdout.read()[-2000:]!r}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 120 s")
        example = mlflow.models.Model.load(f"models:/churn/{churn_run.version}").load_input_example()
        body = json.dumps({"dataframe_split": json.loads(example.to_json(orient="split"))}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        served = [row["probability"] for row in answer["predictions"]]
        assert served == pytest.approx(model.predict_proba(example).tolist())
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_factor_lists_skip_no_impact_features_and_show_each_value():
    from types import SimpleNamespace

    import pyarrow as pa

    from propensity.models.scoring import factor_lists

    model = SimpleNamespace(feature_names=["visits", "tier"], feature_labels={"tier": "Loyalty tier"})
    table = pa.table({"visits": pa.array([3, 7, None]), "tier": ["gold", None, "silver"]})
    indices = np.array([[1, 0], [0, 1], [0, 1]])
    impacts = np.array([[0.4, -0.25], [0.0, 0.0], [1.5, 0.0]])  # row 2: no feature moves it
    factors = factor_lists(model, table, indices, impacts).to_pylist()
    assert factors == [
        [
            {"feature": "tier", "label": "Loyalty tier", "value": "gold", "impact": 0.4},
            {"feature": "visits", "label": "visits", "value": "3", "impact": -0.25},
        ],
        [],
        [{"feature": "visits", "label": "visits", "value": None, "impact": 1.5}],
    ]
    assert factor_lists(model, table, indices, np.zeros((3, 2))).to_pylist() == [[], [], []]
    # Given the values the model saw (a categorical as its code, missing as NaN), numeric
    # factors are shown from them and the rest from the table: the same lists.
    model.categories = {"tier": ["bronze", "gold", "silver"]}
    seen = np.array([[3.0, 1.0], [7.0, np.nan], [np.nan, 2.0]])  # (visits, tier) per row
    values = seen[np.arange(3)[:, None], indices]
    assert factor_lists(model, table, indices, impacts, values).to_pylist() == factors
    wide = pa.table({"visits": pa.array([0.123456, 2.5, None]), "tier": ["gold", "bronze", None]})
    wide_seen = np.array([[0.123456, 1.0], [2.5, 0.0], [np.nan, np.nan]])
    dense = np.array([[0.3, 0.2], [0.1, -0.9], [0.5, 0.5]])
    shown = factor_lists(model, wide, indices, dense, wide_seen[np.arange(3)[:, None], indices])
    assert shown.to_pylist() == factor_lists(model, wide, indices, dense).to_pylist()
    assert [f["value"] for f in shown.to_pylist()[0]] == ["gold", "0.1235"]


def test_prefetched_batches_arrive_in_order_and_errors_and_early_stops_reach_the_producer():
    assert list(duckdb_scoring.prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("feature query failed")

    with pytest.raises(ValueError, match="feature query failed"):
        list(duckdb_scoring.prefetched(failing()))

    produced, stopped = [], []

    def endless():
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    batches = duckdb_scoring.prefetched(endless(), depth=2, on_stop=lambda: stopped.append(True))
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    batches.close()  # the consumer gives up (an exception while scoring does the same)
    assert stopped == [True]
    count = len(produced)
    assert count <= 3 + 2 + 1  # never more than `depth` ahead (plus the one being handed over)
    # The producer has stopped and was joined before close() returned.
    assert not any(t.name == "propensity-feature-batches" for t in threading.enumerate())


def test_automatic_partitions_hold_a_bounded_number_of_profile_features():
    con = duckdb.connect()
    con.execute("CREATE TABLE profiles AS SELECT 'p' || i AS profile_id FROM range(1_000_000) t(i)")
    wide = duckdb_scoring.partitions_for(con, "profiles", 232)
    narrow = duckdb_scoring.partitions_for(con, "profiles", 41)
    assert wide == 8 and 1 < narrow < wide  # a model reading fewer features takes more profiles a time
    assert duckdb_scoring.partitions_for(con, "(SELECT * FROM profiles LIMIT 1000)", 232) == 1


def test_partitioned_events_build_the_same_features_as_all_events(luma_ingested, tmp_path):
    # Every registry feature (learned categories and event types too), over the graph at as_of:
    # the features of each partition's events, written once with only the columns the measures
    # read, are the rows and values of one build over all events.
    from propensity.features.build.sql_compiler import snapshot_sql
    from propensity.pipeline.jobs.events import feature_set, load_events

    loaded = load_events(luma_ingested, ProjectConfig())
    con, as_of = loaded.con, dt.date.fromisoformat(AS_OF)
    fs = feature_set(loaded, ProjectConfig(), before=as_of)
    sources = loaded.sources(as_of)
    read = duckdb_scoring.event_columns(fs)
    assert {"event_type", "revenue", "channel", "product_category"} <= set(read)
    assert "event_id" not in read  # what no measure reads stays behind

    def build(events: str) -> pd.DataFrame:
        sql = snapshot_sql(
            fs,
            as_of,
            relation_columns(con, sources.profiles),
            events=events,
            profiles=sources.profiles,
            ordered=False,
        )
        return con.execute(sql).df()

    whole = build(sources.events).sort_values("profile_id", ignore_index=True)
    events_of = duckdb_scoring.partition_events(con, fs, as_of, sources.events, 4, tmp_path / "events")
    parts = [events_of(p) for p in range(4)]
    assert all(p is not None for p in parts)  # a few hundred profiles fill 4 partitions
    built = [build(p) for p in parts]
    assert all(0 < len(b) < len(whole) for b in built)
    together = pd.concat(built, ignore_index=True).sort_values("profile_id", ignore_index=True)
    pd.testing.assert_frame_equal(whole, together)
    assert events_of(4) is None  # a partition with no events has none to read
