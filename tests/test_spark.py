"""Spark (local mode) against DuckDB on the same events: staged rows, profile ids, features,
labels and scores are equal (counts and ids exactly, floats within 1e-9).

One SparkSession for the module (``local[2]``, two shuffle partitions, no UI). Run with
``make test-spark`` (``pytest -m spark``); skipped only when pyspark or Java is missing, and
never under ``make test`` (``PROPENSITY_REQUIRE_SPARK=1``), which fails instead.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from tests.spark_env import ENGINE, require_spark

pytestmark = pytest.mark.spark

require_spark()

from propensity.core.config import (  # noqa: E402
    IdentityConfig,
    ProjectConfig,
    SnapshotConfig,
    parse_config,
)
from propensity.core.errors import UserError  # noqa: E402
from propensity.features.build import build_registry, sql_compiler, training_frame  # noqa: E402
from propensity.features.build.outcome_rate import NAME as OUTCOME_RATE  # noqa: E402
from propensity.features.build.outcome_rate import outcome_rate_sql, outcome_rates  # noqa: E402
from propensity.features.connection import connect, relation_columns  # noqa: E402
from propensity.features.identity import IdentityGraph  # noqa: E402
from propensity.features.identity import stitching as duck_identity  # noqa: E402
from propensity.features.ingest import resolve_input  # noqa: E402
from propensity.features.ingest import stage_events as duck_stage_events  # noqa: E402
from propensity.features.ingest import stage_profiles as duck_stage_profiles  # noqa: E402
from propensity.features.spark import features as spark_features  # noqa: E402
from propensity.features.spark import identity as spark_identity  # noqa: E402
from propensity.features.spark.as_of import SparkIdentityGraph  # noqa: E402
from propensity.features.spark.ingest import stage_events, stage_profiles  # noqa: E402
from propensity.features.spark.session import (  # noqa: E402
    hadoop_path,
    resolve_spark_input,
    spark_session,
    to_pandas,
)
from propensity.features.spark.sources import duckdb_double_text  # noqa: E402
from propensity.pipeline.cli.options import load_config_for  # noqa: E402
from propensity.pipeline.jobs import events as event_jobs  # noqa: E402
from propensity.pipeline.jobs import features as feature_jobs  # noqa: E402
from propensity.pipeline.jobs import ingest as ingest_jobs  # noqa: E402
from propensity.pipeline.jobs import score as score_jobs  # noqa: E402
from propensity.pipeline.jobs import train as model_jobs  # noqa: E402
from propensity.pipeline.jobs.config_files import load_model_config  # noqa: E402
from tests.conftest import invoke, write_events  # noqa: E402

CONFIG = ProjectConfig(engine=ENGINE)
# Jobs whose point is not the registry itself build fewer features (Spark compiles each
# query it meets: fewer aggregates, less to compile).
LIGHT = {"features": {"windows_days": [30, 365], "categories": ["yoga", "running"]}}
LIGHT_SPARK, LIGHT_DUCKDB = ProjectConfig(engine=ENGINE, **LIGHT), ProjectConfig(**LIGHT)
# Small limits, so that a handful of hand-written events meets every guardrail.
GUARDED = IdentityConfig(max_identities_per_profile=4)


@pytest.fixture(scope="module")
def spark():
    session = spark_session(ENGINE)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    """Same columns in the same order, same rows; floats within 1e-9, everything else exact."""
    assert list(got.columns) == list(expected.columns)
    assert len(got) == len(expected)
    got = got.sort_values(keys).reset_index(drop=True)
    expected = expected.sort_values(keys).reset_index(drop=True)
    for column in expected.columns:
        a, b = got[column], expected[column]
        if column == "as_of" or pd.api.types.is_datetime64_any_dtype(b):
            a, b = pd.to_datetime(a), pd.to_datetime(b)
        if pd.api.types.is_numeric_dtype(b) and not pd.api.types.is_bool_dtype(b):
            x, y = a.astype("float64").to_numpy(), b.astype("float64").to_numpy()
            assert np.allclose(x, y, rtol=0, atol=1e-9, equal_nan=True), column
        else:
            same = (a.astype(object) == b.astype(object)) | (a.isna() & b.isna())
            assert same.all(), (column, a[~same].head(3).tolist(), b[~same].head(3).tolist())


def event(day: int, event_type: str, hour: int = 10, **fields) -> dict:
    return {"timestamp": f"2025-03-{day:02d} {hour:02d}:00:00", "event_type": event_type, **fields}


# Bad rows of every reason, XDM names, raw PII to hash, offsets, derived and repeated ids,
# and an identity graph that meets both guardrails (max 4 identities a profile):
# * C1 and C2 share the tablet T (equally near both: alone) and, through e2, the device B;
# * C9 signs in on six devices: its anonymous identities go, the email stays;
# * C8 has four emails: over the limit with nothing anonymous to let go.
HAND_EVENTS = [
    event(1, "page_view", crm_id="C1", ecid="A1", channel="Web"),
    event(1, "commerce.productViews", ecid="A1", email=" Ann@Example.COM ", product_category="Yoga"),
    {
        "timestamp": "2025-03-02T09:30:00+02:00",
        "event_type": "commerce.purchases",
        "crm_id": "C2",
        "ecid": "A2",
        "revenue": "12345678.9",
        "quantity": "2",
    },
    event(2, "purchase", 11, phone="+1 (555) 123-4567", ecid="A2", revenue="0.00001"),
    event(3, "page_view", crm_id="C1", ecid="T"),
    {"timestamp": "not a date", "event_type": "page_view", "ecid": "E3"},
    event(3, "  ", ecid="E3"),
    event(3, "page_view"),
    event(3, "purchase", ecid="E4", revenue="abc"),
    event(3, "purchase", ecid="E4", revenue="-5"),
    event(3, "add_to_cart", ecid="E4", quantity="x1"),
    {"timestamp": "2030-01-01 00:00:00", "event_type": "page_view", "ecid": "E4"},
    {
        "timestamp": "2025/03/04 08:00:00",
        "event_type": "Custom_Event",
        "ecid": "E5",
        "email_sha256": "ABCDEF",
    },
    {"timestamp": "2025-03-04 24:00:00", "event_type": "page_view", "ecid": "E5", "revenue": "100"},
    event(1, "page_view", crm_id="C1", ecid="A1", channel="Web"),  # a copy: same derived id
    event(5, "email_open", email="ann@example.com", event_id="X1", campaign="c9"),
    event(6, "email_click", email="bob@example.com", event_id="X1"),  # same id, dropped
    event(6, "purchase", ecid="E6", revenue="0.0001", quantity="1e20"),
    event(20, "page_view", crm_id="C2", ecid="T"),
    event(21, "login", email="e2@example.com", ecid="T"),
    event(21, "login", email="e2@example.com", ecid="B"),
    *(event(22, "login", crm_id="C9", ecid=f"D{i}") for i in range(6)),
    event(22, "login", crm_id="C9", email="c9@example.com"),
    *(event(23, "email_open", crm_id="C8", email=f"c8-{i}@example.com") for i in range(4)),
    event(24, "page_view", ecid="L" * 300),  # an implausibly long identity: invalid_identity
]
HAND_PROFILES = [
    {
        "crm_id": "C1",
        "email": "",
        "loyalty_tier": None,
        "consent_marketing": "y",
        "consent_personalization": "yes",
    },
    {
        "crm_id": "",
        "email": "ann@example.com",
        "loyalty_tier": "gold",
        "consent_marketing": "n",
        "consent_personalization": "",
    },
    {
        "crm_id": "C9",
        "email": "",
        "loyalty_tier": "silver",
        "consent_marketing": "1",
        "consent_personalization": "0",
    },
]


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand")
    (root / "events").mkdir()
    # Two files: DuckDB numbers CSV rows across files, in list order.
    write_events(root / "events" / "a.csv", HAND_EVENTS[:10])
    write_events(root / "events" / "b.csv", HAND_EVENTS[10:])
    write_events(root / "profiles.csv", HAND_PROFILES)
    (root / "jsonl").mkdir()
    write_events(root / "jsonl" / "events.jsonl", HAND_EVENTS)
    return root


def _duck_staged(path: Path, identity: IdentityConfig, as_of: dt.date | None = None):
    con = connect()
    staged = duck_stage_events(con, resolve_input(path), identity, as_of)
    return con, staged


@pytest.mark.parametrize("source", ["events", "jsonl"])
def test_staged_and_bad_rows_equal_duckdb(spark, hand, source):
    as_of = dt.date(2025, 3, 31)
    staged = stage_events(spark, resolve_spark_input(spark, hand / source), GUARDED, as_of)
    con, expected = _duck_staged(hand / source, GUARDED, as_of)
    assert staged.summary.bad_by_reason == expected.bad_by_reason
    assert len(expected.bad_by_reason) == 8  # every reason, at least once
    # X1 arrives twice with different payloads: counted apart from the plain copy
    assert staged.summary.rows_conflicting == expected.rows_conflicting == 1
    assert (staged.summary.rows_in, staged.summary.rows_clean, staged.summary.rows_duplicate) == (
        expected.rows_in,
        expected.rows_clean,
        expected.rows_duplicate,
    )
    assert staged.summary.first_bad == expected.first_bad
    assert_same_rows(
        to_pandas(staged.clean),
        con.execute("SELECT * FROM clean_events").df(),
        ["_source_file", "_source_row"],
    )
    assert_same_rows(
        to_pandas(staged.bad), con.execute("SELECT * FROM bad_events").df(), ["_source_file", "_source_row"]
    )


def test_nanosecond_parquet_timestamps_are_named_or_read_as_duckdb_reads_them(spark, tmp_path):
    times = pd.to_datetime(["2025-03-01 10:00:00.123456789", "2025-03-02 00:00:00.000000999"]).as_unit("ns")
    pd.DataFrame({"timestamp": times, "event_type": ["page_view", "login"], "ecid": ["a", "b"]}).to_parquet(
        tmp_path / "events.parquet"
    )
    inputs = resolve_spark_input(spark, tmp_path / "events.parquet")
    with pytest.raises(UserError, match="nanosAsLong"):
        stage_events(spark, inputs, GUARDED)
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
    try:
        staged = stage_events(spark, inputs, GUARDED)
    finally:
        spark.conf.unset("spark.sql.legacy.parquet.nanosAsLong")
    con, _ = _duck_staged(tmp_path / "events.parquet", GUARDED)
    expected = con.execute("SELECT * FROM clean_events").df()
    assert_same_rows(to_pandas(staged.clean), expected, ["_source_row"])


def test_doubles_in_derived_event_ids_are_spelled_as_duckdb_spells_them(spark):
    values = [
        0.0,
        -0.0,
        100.0,
        49.99,
        0.1,
        1e7,
        12345678.9,
        1e15,
        1e16,
        1e-3,
        1e-4,
        1e-5,
        1e20,
        -1.5e-7,
        1e300,
    ]
    values += [float(v) for v in np.random.default_rng(3).uniform(-1e6, 1e6, 200).round(2)]
    frame = spark.createDataFrame([(float(v),) for v in values], "x double")
    got = [r[0] for r in frame.select(duckdb_double_text(frame["x"])).collect()]
    con = duckdb.connect()
    con.register("doubles", pd.DataFrame({"x": np.asarray(values, dtype="float64")}))
    expected = [r[0] for r in con.execute("SELECT CAST(x AS VARCHAR) FROM doubles").fetchall()]
    assert got == expected


@pytest.fixture(scope="module")
def hand_graphs(spark, hand):
    """The hand events and profiles stitched by both engines: (Spark tables, DuckDB connection)."""
    staged = stage_events(spark, resolve_spark_input(spark, hand / "events"), GUARDED)
    attributes, namespaces = stage_profiles(spark, str(hand / "profiles.csv"), "profiles.csv", GUARDED)
    rows = spark_identity.identity_rows(staged.clean, GUARDED, attributes, namespaces)
    graph = spark_identity.stitch(spark, rows, GUARDED)
    events = spark_identity.attribute_events(staged.clean, graph.identity_map, GUARDED).localCheckpoint()
    attributes = spark_identity.anchor_attributes(attributes, graph.identity_map, GUARDED, namespaces)
    profiles = spark_identity.build_profiles(graph.identity_map, events, GUARDED, attributes, namespaces)
    tables = {
        "events": events.drop("_source_file", "_source_row"),
        "profiles": profiles.localCheckpoint(),
        "identity_map": graph.identity_map,
        "identity_links": graph.identity_links,
        "identity_unsettled": graph.identity_unsettled,
        "profile_attributes": attributes.localCheckpoint(),
    }
    con, _ = _duck_staged(hand / "events", GUARDED)
    duck_stage_profiles(con, hand / "profiles.csv", GUARDED)
    result = duck_identity.stitch(con, GUARDED, with_profiles=True)
    duck_identity.attribute_events(con, GUARDED)
    duck_identity.anchor_attributes(con, GUARDED)
    duck_identity.build_profiles(con, GUARDED, with_attributes=True)
    return graph, tables, con, result


def test_identity_graph_equals_duckdbs(hand_graphs):
    """Both guardrails, the links' first-seen times, the unsettled intervals, node keys,
    components, profile ids and keys, anchors and profiles: what DuckDB's ingest makes."""
    graph, tables, con, expected = hand_graphs
    assert graph.result == expected
    assert {c.reason for c in expected.collapses} == {"unique_namespace_conflict", "too_many_identities"}
    assert expected.unsettled_profiles > 0
    for name, keys in (
        ("identity_map", ["node"]),
        ("identity_links", ["a", "b"]),
        ("identity_unsettled", ["component", "until"]),
        ("profile_attributes", ["_source_row"]),
        ("profiles", ["profile_id"]),
    ):
        assert_same_rows(to_pandas(tables[name]), con.table(name).df(), keys)
    assert_same_rows(
        to_pandas(tables["events"]),
        con.execute("SELECT * EXCLUDE (_source_file, _source_row) FROM stitched_events").df(),
        ["event_id"],
    )
    # Consent is conservative across a profile's attribute rows: C1's email said no.
    assert set(to_pandas(tables["profiles"])["consent_marketing"].dropna()) == {"n", "y"}


@pytest.mark.parametrize("as_of", [dt.date(2025, 3, 3), dt.date(2025, 3, 21), dt.date(2025, 3, 23)])
def test_profiles_as_of_a_date_equal_duckdbs(spark, hand_graphs, as_of):
    """Events, profile attributes and identities as the graph knew them at ``as_of`` (before
    and after C1 and C2 met on the tablet; before C8's emails made it too big)."""
    _, tables, con, _ = hand_graphs
    for name, frame in tables.items():
        frame.createOrReplaceTempView(name)
    graph = SparkIdentityGraph(spark, GUARDED, tables)
    con.execute(
        "CREATE OR REPLACE TEMP VIEW events AS "
        "SELECT * EXCLUDE (_source_file, _source_row) FROM stitched_events"
    )
    duck = IdentityGraph(con, GUARDED)
    got, expected = graph.sources(as_of), duck.sources(as_of)
    for relation, keys in (
        ("events", ["event_id"]),
        ("profiles", ["profile_id"]),
        ("identity_map", ["namespace", "value"]),
    ):
        assert_same_rows(
            to_pandas(spark.table(getattr(got, relation))),
            con.execute(f"SELECT * FROM {getattr(expected, relation)}").df(),
            keys,
        )
    assert len(duck.changed_keys(as_of)) > 0


@pytest.fixture(scope="module")
def ingested(luma_small, tmp_path_factory, runner_module):
    """luma_small ingested by both engines: Spark through the CLI, DuckDB through the job."""
    root = tmp_path_factory.mktemp("ingested")
    project = root / "project.yaml"
    project.write_text(json.dumps({"engine": ENGINE.model_dump()}))
    result = invoke(
        runner_module,
        "ingest",
        "--engine",
        "spark",
        "--config",
        str(project),
        "--events",
        str(luma_small),
        "--out",
        str(root / "spark"),
        "--on-bad-rows",
        "quarantine",
    )
    assert result.exit_code == 0, result.output
    summary = ingest_jobs.ingest(luma_small, root / "duckdb", ProjectConfig(), on_bad_rows="quarantine")
    return root / "spark", root / "duckdb", summary


@pytest.fixture(scope="module")
def runner_module():
    from typer.testing import CliRunner

    return CliRunner()


def test_ingest_writes_what_duckdb_writes(ingested):
    """The same ingest directory: every table (columns, types, rows) and the manifest."""
    spark_dir, duck_dir, duck_summary = ingested
    manifest = json.loads((spark_dir / "manifest.json").read_text())
    expected_manifest = json.loads((duck_dir / "manifest.json").read_text())
    assert {k for k in manifest if manifest[k] != expected_manifest.get(k)} == set()
    assert manifest.keys() == expected_manifest.keys()
    assert duck_summary.unsettled_profiles > 0
    for table, keys in (
        ("events", ["event_id"]),
        ("identity_map", ["namespace", "value"]),
        ("identity_links", ["a", "b"]),
        ("identity_unsettled", ["component", "until"]),
        ("profile_attributes", ["_source_row"]),
        ("profiles", ["profile_id"]),
    ):
        got = duckdb.sql(f"SELECT * FROM read_parquet('{spark_dir / table}.parquet/*.parquet')")
        expected = duckdb.sql(f"SELECT * FROM read_parquet('{duck_dir / table}.parquet')")
        assert got.dtypes == expected.dtypes, table
        assert_same_rows(got.df(), expected.df(), keys)


# Dates at which the identity graph then was not the final one for hundreds of profiles.
AS_OFS = [dt.date(2025, 3, 1), dt.date(2025, 6, 12)]


def test_duckdb_jobs_read_a_spark_ingest(ingested):
    spark_dir, duck_dir, _ = ingested
    fs = build_registry(CONFIG.features, ["yoga", "running"])
    as_of = AS_OFS[1]
    frames = []
    for directory in (spark_dir, duck_dir):
        loaded = event_jobs.load_events(directory, ProjectConfig())
        sources = loaded.sources(as_of)
        con = loaded.con
        sql = sql_compiler.snapshot_sql(
            fs,
            as_of,
            relation_columns(con, sources.profiles),
            events=sources.events,
            profiles=sources.profiles,
        )
        frames.append(con.execute(sql).df())
    assert len(frames[1]) > 100
    assert_same_rows(frames[0], frames[1], ["profile_id"])


@pytest.mark.parametrize("engine_dir", ["spark", "duckdb"])
def test_feature_snapshots_use_the_profiles_duckdb_uses_at_each_date(spark, ingested, engine_dir):
    """Snapshots at dates where the graph then differs from the final one (profiles split,
    not yet joined): the same profile ids and values as DuckDB's, from either engine's ingest."""
    spark_dir, duck_dir, _ = ingested
    fs = build_registry(LIGHT_SPARK.features, ["yoga", "running"])
    loaded = event_jobs.load_events(spark_dir if engine_dir == "spark" else duck_dir, LIGHT_SPARK)
    duck = event_jobs.load_events(duck_dir, ProjectConfig())
    con = duck.con
    for as_of in AS_OFS:
        sources = loaded.sources(as_of)
        got = to_pandas(
            spark_features.snapshot(spark, fs, as_of, events=sources.events, profiles=sources.profiles)
        )
        expected_sources = duck.sources(as_of)
        expected = con.execute(
            sql_compiler.snapshot_sql(
                fs,
                as_of,
                relation_columns(con, expected_sources.profiles),
                events=expected_sources.events,
                profiles=expected_sources.profiles,
            )
        ).df()
        assert len(expected) > 100 and expected["loyalty_tier"].notna().any()
        assert len(duck.graph.changed_keys(as_of)) > 100
        assert_same_rows(got, expected, ["profile_id"])


def test_population_outcome_rate_equals_duckdbs(spark, ingested):
    """The outcome-rate query transpiled for Spark gives DuckDB's rates (a label's event at an
    as-of date, churn's inversion, a category), and a Spark snapshot carries the rate of its date."""
    spark_dir, duck_dir, _ = ingested
    duck = event_jobs.load_events(duck_dir, LIGHT_DUCKDB)
    spark_loaded = event_jobs.load_events(spark_dir, LIGHT_SPARK)
    dates = [dt.date(2025, 1, 2), dt.date(2025, 6, 1), dt.date(2025, 8, 1)]
    for name in ("conversion", "upsell", "churn"):
        outcome = load_model_config(name, ProjectConfig()).outcome
        sql = outcome_rate_sql(outcome, dates)
        expected = outcome_rates(duck.rows(sql), outcome.occurs)
        got = outcome_rates(spark_loaded.rows(sql), outcome.occurs)
        assert list(got) == list(expected) == dates
        assert 0 < expected[dates[1]] < 1
        for day in dates:
            assert got[day] == (None if expected[day] is None else pytest.approx(expected[day], abs=1e-12))
    as_of = dates[-1]
    fs = event_jobs.feature_set(spark_loaded, LIGHT_SPARK, before=as_of)
    fs = event_jobs.model_feature_set(fs, spark_loaded, outcome, [as_of], outcome_rate=True)
    frame = spark_loaded.frame(spark_loaded.snapshot(fs, as_of))
    assert len(frame) > 100
    np.testing.assert_allclose(frame[OUTCOME_RATE].to_numpy(dtype=float), expected[as_of], rtol=1e-12)


def test_labelled_stacked_snapshots_equal_duckdb_training_frame(spark, ingested):
    """Labels attributed through the identity known at each as_of, as DuckDB attributes them."""
    spark_dir, duck_dir, _ = ingested
    model = load_model_config("conversion", ProjectConfig())
    snapshots = model.training.snapshots.model_copy(update={"count": 3})
    model = model.model_copy(update={"training": model.training.model_copy(update={"snapshots": snapshots})})
    cutoff = dt.date(2025, 8, 29)
    loaded = event_jobs.load_events(duck_dir, LIGHT_DUCKDB)
    fs = event_jobs.feature_set(loaded, LIGHT_DUCKDB, before=dt.date(2025, 2, 1))
    rows = loaded.training_rows(fs, model, cutoff)
    expected, dates = rows.frame, rows.dates
    spark_loaded = event_jobs.load_events(spark_dir, LIGHT_SPARK)
    assert (
        spark_features.learn_categories(spark, dt.date(2025, 2, 1), 8)
        == event_jobs.feature_set(loaded, ProjectConfig(), before=dt.date(2025, 2, 1)).categories
    )
    frame, spark_dates = training_frame(spark_loaded, fs, model, cutoff)
    assert spark_dates == dates
    frame = frame.persist()
    got = to_pandas(frame)
    assert expected["label"].sum() > 20 and (expected["label"] == 0).sum() > 20
    assert_same_rows(got, expected, ["as_of", "profile_id"])

    # One machine trains on at most max_rows rows, the same share of each label, reproducibly.
    cap = len(expected) // 3
    sample = spark_features.sample_by_label(frame, max_rows=cap, seed=5)
    assert len(sample.frame) == cap and sample.fraction == pytest.approx(cap / len(expected))
    assert sample.frame["label"].sum() == round(expected["label"].sum() * sample.fraction)
    assert_same_rows(
        sample.frame, sample.frame.merge(expected[["as_of", "profile_id"]]), ["as_of", "profile_id"]
    )
    again = spark_features.sample_by_label(frame, max_rows=cap, seed=5)
    pd.testing.assert_frame_equal(again.frame, sample.frame)
    other = spark_features.sample_by_label(frame, max_rows=cap, seed=6)
    assert set(other.frame["profile_id"]) != set(sample.frame["profile_id"])
    everything = spark_features.sample_by_label(frame, max_rows=len(expected), seed=5)
    assert everything.fraction == 1.0 and len(everything.frame) == len(expected)


def test_feature_job_writes_the_duckdb_table(ingested, tmp_path):
    spark_dir, duck_dir, _ = ingested
    got = feature_jobs.build_features(spark_dir, tmp_path / "spark.parquet", LIGHT_SPARK, model="churn")
    expected = feature_jobs.build_features(duck_dir, tmp_path / "duck.parquet", LIGHT_DUCKDB, model="churn")
    assert (got.rows, got.features, got.labelled, got.as_of, got.feature_note, got.warnings) == (
        expected.rows,
        expected.features,
        expected.labelled,
        expected.as_of,
        expected.feature_note,
        expected.warnings,
    )
    assert feature_jobs.read_feature_metadata(got.out) == feature_jobs.read_feature_metadata(expected.out)
    assert_same_rows(pd.read_parquet(got.out), pd.read_parquet(expected.out), ["profile_id"])


@pytest.fixture(scope="module")
def scored(ingested, tracking, tmp_path_factory):
    """churn trained on a Spark sample, then scored by both engines' score jobs."""
    spark_dir, duck_dir, _ = ingested
    root = tmp_path_factory.mktemp("scored")
    # The shipped churn model on three snapshots instead of six (and so fewer examples to ask
    # for): less to build, the same code.
    models = root / "models"
    models.mkdir()
    shipped = Path("configs/models/churn.yaml").read_text()
    fewer = "{count: 3, spacing_days: 28}\n  min_positives: 20\n  min_negatives: 20"
    (models / "churn.yaml").write_text(shipped.replace("{count: 6, spacing_days: 28}", fewer))
    assert "{count: 3," in (models / "churn.yaml").read_text()
    spark_config, duck_config = (
        c.model_copy(update={"models_dir": str(models)}) for c in (LIGHT_SPARK, LIGHT_DUCKDB)
    )
    trained = model_jobs.train_model("churn", spark_dir, spark_config)
    version = trained.version
    spark_run = score_jobs.score_model(
        "churn", spark_dir, spark_config, out=root / "spark", version=version, factors=3
    )
    duck_run = score_jobs.score_model(
        "churn", duck_dir, duck_config, out=root / "duckdb", version=version, factors=3
    )
    return trained, spark_run, duck_run


def test_training_on_spark_logs_its_sample(scored):
    import mlflow

    trained, *_ = scored
    params = mlflow.get_run(trained.run_id).data.params
    assert params["engine"] == "spark" and int(params["sample_rows"]) == int(params["sample_rows_available"])
    assert trained.model_family in ("lightgbm", "logistic", "bgnbd", "blend")


def test_scores_and_factors_equal_duckdb_score_job(scored):
    """Same partition, probabilities, scores, buckets, percentiles, identities and TreeSHAP
    factors (the model's top_contributions) as the DuckDB score job."""
    _, spark_run, duck_run = scored
    assert (spark_run.as_of, spark_run.profiles, spark_run.eligible, spark_run.scored) == (
        duck_run.as_of,
        duck_run.profiles,
        duck_run.eligible,
        duck_run.scored,
    )
    assert spark_run.scored > 100 and spark_run.bucket_sizes == duck_run.bucket_sizes
    assert spark_run.out.relative_to(spark_run.out.parents[1]) == duck_run.out.relative_to(
        duck_run.out.parents[1]
    )
    got, expected = pd.read_parquet(spark_run.out), pd.read_parquet(duck_run.out)
    assert_same_rows(
        got.drop(columns=["factors", "scored_at"]),
        expected.drop(columns=["factors", "scored_at"]),
        ["profile_id"],
    )
    got, expected = got.sort_values("profile_id"), expected.sort_values("profile_id")
    assert any(len(f) == 3 for f in expected["factors"])
    for mine, theirs in zip(got["factors"], expected["factors"], strict=True):
        assert [(f["feature"], f["label"], f["value"]) for f in mine] == [
            (f["feature"], f["label"], f["value"]) for f in theirs
        ]
        assert np.allclose([f["impact"] for f in mine], [f["impact"] for f in theirs], rtol=0, atol=1e-9)


def test_segment_memberships_equal_duckdbs(ingested, scored, tmp_path, runner_module):
    """Two dates of memberships (realized / existing / exited, consent hold-back, a score rule
    and feature rules) and identities, summaries and fingerprints: the DuckDB job's files."""
    from propensity.pipeline.jobs import segments as segment_jobs

    spark_dir, duck_dir, _ = ingested
    _, spark_run, duck_run = scored
    features_only = tmp_path / "first.yaml"
    features_only.write_text(
        "segments:\n"
        "  - {name: recent_buyers, rule: 'days_since_last_purchase <= 60 AND purchase_count_365d >= 1'}\n"
        "  - {name: active_known, rule: 'is_known = 1 AND days_since_last_event <= 30'}\n"
    )
    with_scores = tmp_path / "second.yaml"
    with_scores.write_text(
        features_only.read_text()
        + "  - {name: likely_churners, rule: 'churn.score >= 50 AND purchase_count_365d >= 1'}\n"
    )
    results = {}
    project = tmp_path / "project.yaml"
    project.write_text(json.dumps({"engine": ENGINE.model_dump(), **LIGHT}))
    for as_of, segments_file in ((AS_OFS[1], features_only), (spark_run.as_of, with_scores)):
        expected = segment_jobs.qualify_segments(
            duck_dir, duck_run.out.parents[1], as_of, segments_file, tmp_path / "duckdb", LIGHT_DUCKDB
        )
        if as_of == AS_OFS[1]:
            got = segment_jobs.qualify_segments(
                spark_dir, spark_run.out.parents[1], as_of, segments_file, tmp_path / "spark", LIGHT_SPARK
            )
            assert got.segments == expected.segments and (got.rows, got.profiles) == (
                expected.rows,
                expected.profiles,
            )
        else:  # through the CLI: `segments --engine spark`
            result = invoke(
                runner_module,
                *("segments", "--engine", "spark", "--config", str(project), "--events", str(spark_dir)),
                *("--scores", str(spark_run.out.parents[1]), "--as-of", str(as_of)),
                *("--segments", str(segments_file), "--out", str(tmp_path / "spark")),
            )
            assert result.exit_code == 0, result.output
        results[as_of] = expected
        mine_dir = tmp_path / "spark" / f"as_of={as_of}"
        for name in ("memberships.parquet", "identities.parquet"):
            pd.testing.assert_frame_equal(
                pd.read_parquet(mine_dir / name), pd.read_parquet(expected.out / name)
            )
        assert json.loads((mine_dir / "summary.json").read_text()) == json.loads(
            (expected.out / "summary.json").read_text()
        )
    last = results[spark_run.as_of].segments
    assert all(c.exited > 0 and c.existing > 0 for c in last[:2]) and last[2].realized > 0
    assert sum(c.held_back for c in last) > 0


def test_holdout_arms_equal_duckdbs(ingested, tmp_path):
    """A holdout segment qualified on two dates by each engine: the same arms, arm dates and
    holdout counts (the split runs on the qualification's rows, whichever engine made them)."""
    from propensity.pipeline.jobs import segments as segment_jobs

    spark_dir, duck_dir, _ = ingested
    segments_file = tmp_path / "holdout.yaml"
    segments_file.write_text(
        "segments:\n"
        "  - {name: known, rule: 'is_known = 1', holdout: 0.3, holdout_minimum: 20, holdout_salt: spring}\n"
    )
    for as_of in AS_OFS:
        expected = segment_jobs.qualify_segments(
            duck_dir, tmp_path / "no_scores", as_of, segments_file, tmp_path / "duckdb", LIGHT_DUCKDB
        )
        segment_jobs.qualify_segments(
            spark_dir, tmp_path / "no_scores", as_of, segments_file, tmp_path / "spark", LIGHT_SPARK
        )
        mine = pd.read_parquet(tmp_path / "spark" / f"as_of={as_of}" / "memberships.parquet")
        theirs = pd.read_parquet(expected.out / "memberships.parquet")
        pd.testing.assert_frame_equal(mine, theirs)
        assert set(theirs["arm"]) == {"targeted", "holdout"}
        summaries = [
            json.loads((d / f"as_of={as_of}" / "summary.json").read_text())
            for d in (tmp_path / "spark", tmp_path / "duckdb")
        ]
        assert summaries[0]["holdout"] == summaries[1]["holdout"]
    later = pd.read_parquet(tmp_path / "spark" / f"as_of={AS_OFS[1]}" / "memberships.parquet")
    assert (
        later.loc[later["status"] == "existing", "arm_since"].astype(str).str[:10] == str(AS_OFS[0])
    ).all()


def test_engine_settings_and_paths():
    config = load_config_for(None, "spark")
    assert config.engine.name == "spark"
    with pytest.raises(UserError, match="--engine"):
        load_config_for(None, "flink")
    assert hadoop_path(Path("s3a://bucket/events")) == "s3a://bucket/events"
    assert (
        hadoop_path("abfss://c@account.dfs.core.windows.net/x") == "abfss://c@account.dfs.core.windows.net/x"
    )
    assert hadoop_path("data/luma") == "data/luma"
    with pytest.raises(UserError, match="unknown key"):
        parse_config(ProjectConfig, {"engine": {"spark": {"mastr": "local"}}}, "project.yaml")


def test_rule_arithmetic_is_null_safe_on_spark_as_on_duckdb(spark):
    """Division by zero, NaN and overflow never qualify anyone, on Spark exactly as on DuckDB."""
    from propensity.features.build.rules import parse_rule

    rows = [(1, 0.0, 0.0), (2, 50.0, 0.0), (3, 500.0, 2.0), (4, 150.0, 2.0), (5, float("nan"), 1.0)]
    rows += [(6, float("inf"), 1.0), (7, 1e308, 1e-300), (8, None, 1.0)]
    frame = spark.createDataFrame(rows, "id int, revenue double, purchases double")
    duck = duckdb.connect()
    duck.register("t", pd.DataFrame(rows, columns=["id", "revenue", "purchases"]))
    kinds = {"revenue": "number", "purchases": "number"}
    for text, expected in [
        ("revenue / purchases > 100", [3]),
        ("revenue / purchases <= 100", [4]),
        ("revenue * 10 > 100", [2, 3, 4]),
        ("revenue / purchases IS NULL", [1, 2, 5, 6, 7, 8]),
    ]:
        rule = parse_rule(text, kinds, "test")
        on_spark = sorted(r["id"] for r in frame.where(rule.sql("spark")).collect())
        on_duckdb = [
            r[0] for r in duck.execute(f"SELECT id FROM t WHERE {rule.sql()} ORDER BY id").fetchall()
        ]
        assert on_spark == on_duckdb == expected, text


def test_unrecognised_consent_refused_or_opted_out_as_on_duckdb(spark, tmp_path):
    """A consent value outside the vocabulary: the same one-line refusal as DuckDB, or with
    quarantine the same opted-out flags."""
    from propensity.features.spark.ingest import stage_profiles as spark_stage_profiles

    path = write_events(
        tmp_path / "profiles.csv",
        [
            {"crm_id": "C1", "consent_personalization": "y", "consent_marketing": "Yes "},
            {"crm_id": "C2", "consent_personalization": "off", "consent_marketing": "n"},
            {"crm_id": "C3", "consent_personalization": "", "consent_marketing": "FALSE"},
            {"crm_id": "C4", "consent_personalization": "revoked", "consent_marketing": "1"},
        ],
    )
    identity = IdentityConfig()
    with pytest.raises(UserError) as on_spark:
        spark_stage_profiles(spark, str(path), str(path), identity)
    with pytest.raises(UserError) as on_duckdb:
        duck_stage_profiles(connect(), path, identity)
    assert str(on_spark.value) == str(on_duckdb.value)
    assert (
        "column consent_personalization has 2 unrecognised consent values ('off', 'revoked'; rows 2, 4)"
        in str(on_spark.value)
    )
    staged, _ = spark_stage_profiles(spark, str(path), str(path), identity, "quarantine")
    con = connect()
    duck_stage_profiles(con, path, identity, "quarantine")
    columns = ["_source_row", "consent_personalization", "consent_marketing"]
    expected = con.execute(f"SELECT {', '.join(columns)} FROM profile_attributes").df()
    assert_same_rows(to_pandas(staged.select(*columns)), expected, ["_source_row"])
    assert expected.sort_values("_source_row")["consent_personalization"].fillna("-").tolist() == [
        "y",
        "n",
        "-",
        "n",
    ]


def test_spark_ingest_refuses_a_foreign_out_and_stages_outside_the_tree(
    spark, ingested, luma_small, runner_module, tmp_path
):
    """--out of another kind (here the raw events themselves) is refused in one line with
    nothing deleted; a finished Spark output has only its marker beside the tables."""
    spark_dir, _, _ = ingested
    before = sorted(p.name for p in luma_small.rglob("*"))
    project = tmp_path / "project.yaml"
    project.write_text(json.dumps({"engine": ENGINE.model_dump()}))
    args = [
        "--engine",
        "spark",
        "--config",
        str(project),
        "--events",
        str(luma_small),
        "--out",
        str(luma_small),
    ]
    result = invoke(runner_module, "ingest", *args)
    assert result.exit_code == 2 and "not ingest; choose another --out" in result.output, result.output
    assert sorted(p.name for p in luma_small.rglob("*")) == before
    # Hadoop's own checksum files aside, the only hidden name is the marker: no temp in the tree.
    hidden = [p.name for p in spark_dir.rglob(".*") if not p.name.endswith(".crc")]
    assert hidden == [".propensity-output.json"]
    staging = spark_dir.parent / ".propensity-tmp"
    assert all(p.suffix == ".lock" for p in staging.iterdir())


def _spark_rows(root: Path) -> dict[str, str]:
    """Each table of a Spark ingest output as the SHA-256 of its sorted rows (part-file names carry
    a run's own id, so bytes differ between two identical runs; rows do not), and the manifest."""
    import hashlib

    import pyarrow.dataset as ds

    digests = {}
    for table in sorted(p for p in root.iterdir() if p.suffix == ".parquet"):
        frame = ds.dataset(table, format="parquet").to_table().to_pandas()
        frame = frame.sort_values(list(frame.columns)).reset_index(drop=True)
        digests[table.name] = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()
    digests["manifest.json"] = hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
    return digests


@pytest.mark.slow
def test_killing_a_spark_ingest_keeps_the_previous_output(spark, hand, runner_module, tmp_path):
    """Defect 9 on Spark: ingest killed inside its write (while its k-th table is written, k and
    the moment seeded) leaves the previous output whole, nothing hidden in the tree but the
    marker, and the re-run writes the same rows. The first run and the re-run are the CLI in this
    process (this module's JVM); each killed run is its own process, killed once its write began."""
    from propensity.core import io
    from tests.test_faults import WritePoints, killed_in_write

    project = tmp_path / "project.yaml"
    project.write_text(json.dumps({"engine": ENGINE.model_dump()}))
    out = tmp_path / "spark_ingest"
    args = ["ingest", "--engine", "spark", "--config", str(project), "--events", str(hand / "events")]
    args += ["--out", str(out), "--on-bad-rows", "quarantine"]
    first = invoke(runner_module, *args)
    assert first.exit_code == 0, first.output
    reference = _spark_rows(out)
    tables = [p for p in out.iterdir() if p.suffix == ".parquet"]
    assert len(tables) >= 6 and "quarantine.parquet" in reference  # every table, bad rows too
    (lock,) = (tmp_path / io.STAGING).glob("*.lock")
    new = lock.with_suffix(".new")
    plan = WritePoints([(new, k) for k in range(1, len(tables))], seed=13)
    for temp, entries, jitter in plan:
        code = killed_in_write(args, temp, entries, jitter)
        assert code in (None, 0)
        plan.record(code is None)
        # the previous output (or, killed after its replace, the new one, with the same rows)
        assert _spark_rows(out) == reference
        hidden = [p.name for p in out.rglob(".*") if not p.name.endswith(".crc")]
        assert hidden == [io.MARKER]
    assert plan.kills == plan.wanted
    again = invoke(runner_module, *args)
    assert again.exit_code == 0, again.output
    assert _spark_rows(out) == reference
    assert all(p.suffix == ".lock" for p in (tmp_path / io.STAGING).iterdir())


def test_snapshot_plan_equals_duckdb_and_the_plan_command_runs_on_spark(
    spark, ingested, runner_module, tmp_path
):
    """History start and the row budget's estimate are one query each on either engine: the
    same plan, and `propensity plan --engine spark` prints it."""
    from propensity.pipeline.jobs import plan as plan_jobs

    spark_dir, duck_dir, _ = ingested
    model = load_model_config("conversion", ProjectConfig())
    model = model.model_copy(
        update={"training": model.training.model_copy(update={"snapshots": SnapshotConfig(max_rows=3000)})}
    )
    cutoff = dt.date(2025, 8, 29)
    expected = plan_jobs.make_plan(model, event_jobs.load_events(duck_dir, LIGHT_DUCKDB), cutoff)
    got = plan_jobs.make_plan(model, event_jobs.load_events(spark_dir, LIGHT_SPARK), cutoff)
    assert got == expected
    assert len(expected.estimated_rows) > len(expected.dates) >= 3  # the budget cut some dates
    assert "the row budget (training.snapshots.max_rows 3,000)" in expected.notes[0]
    project = tmp_path / "project.yaml"
    project.write_text(json.dumps({"engine": ENGINE.model_dump()}))
    result = invoke(
        runner_module,
        *("plan", "conversion", "--engine", "spark", "--config", str(project)),
        *("--events", str(spark_dir), "--as-of", str(cutoff), "--estimate-only"),
    )
    assert result.exit_code == 0, result.output
    # The command plans the shipped config (8 snapshots 21 days apart, adapted to the data).
    shipped = plan_jobs.make_plan(
        load_model_config("conversion", ProjectConfig()),
        event_jobs.load_events(duck_dir, LIGHT_DUCKDB),
        cutoff,
    )
    assert shipped.summary().split(" (history")[0] in result.output
    for as_of in shipped.dates:
        assert str(as_of) in result.output
