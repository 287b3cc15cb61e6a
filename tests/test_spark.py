"""Spark (local mode) against DuckDB on the same events: staged rows, profile ids, features,
labels and scores are equal (counts and ids exactly, floats within 1e-9).

One SparkSession for the module (``local[2]``, two shuffle partitions, no UI). Run with
``make test-spark`` (``pytest -m spark``); skipped only when pyspark or Java is missing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.spark

pytest.importorskip("pyspark", reason="pyspark is not installed: pip install -e '.[spark]'")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Java is not installed: Spark needs Java 17+", allow_module_level=True)

from propensity.core.config import EngineConfig, IdentityConfig, ProjectConfig, parse_config  # noqa: E402
from propensity.core.errors import UserError  # noqa: E402
from propensity.features import identity as duck_identity  # noqa: E402
from propensity.features import spark_features, spark_identity, sql_compiler  # noqa: E402
from propensity.features.engine import connect  # noqa: E402
from propensity.features.inputs import resolve_input  # noqa: E402
from propensity.features.labels import training_frame  # noqa: E402
from propensity.features.registry import build_registry  # noqa: E402
from propensity.features.spark_engine import (  # noqa: E402
    hadoop_path,
    resolve_spark_input,
    spark_session,
    to_pandas,
)
from propensity.features.spark_ingest import stage_events, stage_profiles  # noqa: E402
from propensity.features.spark_sources import duckdb_double_text  # noqa: E402
from propensity.features.staging import stage_events as duck_stage_events  # noqa: E402
from propensity.features.staging import stage_profiles as duck_stage_profiles  # noqa: E402
from propensity.pipeline import feature_jobs, ingest_jobs, score_jobs, spark_jobs, spark_score_jobs  # noqa: E402
from propensity.pipeline.cli_options import load_config_for  # noqa: E402
from propensity.pipeline.config_files import load_model_config  # noqa: E402
from tests.conftest import invoke, write_events  # noqa: E402

ENGINE = EngineConfig(
    name="spark",
    spark={
        "master": "local[2]",
        "app_name": "propensity-tests",
        "shuffle_partitions": 2,
        "conf": {"spark.ui.enabled": False, "spark.sql.adaptive.enabled": False},
    },
)
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
    assert len(expected.bad_by_reason) == 7  # every reason, once
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


def _duck_stitch(hand: Path, identity: IdentityConfig, before: dt.date | None):
    con, _ = _duck_staged(hand / "events", identity)
    duck_stage_profiles(con, hand / "profiles.csv", identity)
    if before is not None:  # the graph as of a date: the events before it
        con.execute(
            f"CREATE TEMP TABLE early AS SELECT * FROM clean_events WHERE timestamp < DATE '{before}'"
        )
        con.execute("CREATE OR REPLACE TEMP VIEW clean_events AS SELECT * FROM early")
    result = duck_identity.stitch(con, identity, with_profiles=True)
    return con, result


@pytest.fixture(scope="module")
def hand_links(spark, hand):
    staged = stage_events(spark, resolve_spark_input(spark, hand / "events"), GUARDED)
    attributes, namespaces = stage_profiles(spark, str(hand / "profiles.csv"), "profiles.csv", GUARDED)
    links = spark_identity.identity_links(staged.clean, GUARDED, attributes, namespaces).localCheckpoint()
    return staged, attributes, namespaces, links


def test_guardrails_split_profiles_as_duckdb_does(spark, hand, hand_links):
    staged, attributes, namespaces, links = hand_links
    identity_map, result = spark_identity.stitch(spark, links, GUARDED)
    con, expected = _duck_stitch(hand, GUARDED, None)
    assert result == expected
    assert {c.reason for c in result.collapses} == {"unique_namespace_conflict", "too_many_identities"}
    assert_same_rows(to_pandas(identity_map), con.execute("SELECT * FROM identity_map").df(), ["node"])
    stitched = spark_identity.attribute_events(staged.clean, identity_map, GUARDED)
    duck_identity.attribute_events(con, GUARDED)
    assert_same_rows(to_pandas(stitched), con.execute("SELECT * FROM stitched_events").df(), ["event_id"])
    profiles = spark_identity.build_profiles(identity_map, stitched, GUARDED, attributes, namespaces)
    duck_identity.build_profiles(con, GUARDED, with_attributes=True)
    got = to_pandas(profiles)
    assert_same_rows(got, con.execute("SELECT * FROM profiles").df(), ["profile_id"])
    # Consent is conservative across a profile's attribute rows: C1's email said no.
    assert set(got["consent_marketing"].dropna()) == {"n", "y"}


def test_a_graph_as_of_a_date_uses_only_links_seen_before_it(spark, hand, hand_links):
    *_, links = hand_links
    before = dt.date(2025, 3, 20)  # before C2 shared the tablet: no conflict yet
    identity_map, result = spark_identity.stitch(spark, spark_identity.links_as_of(links, before), GUARDED)
    con, expected = _duck_stitch(hand, GUARDED, before)
    assert result == expected
    assert "unique_namespace_conflict" not in {c.reason for c in result.collapses}
    assert_same_rows(to_pandas(identity_map), con.execute("SELECT * FROM identity_map").df(), ["node"])


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
    spark_dir, duck_dir, duck_summary = ingested
    manifest = json.loads((spark_dir / "manifest.json").read_text())
    summary = {k: v for k, v in manifest.items() if k in duck_summary.__dataclass_fields__}
    assert summary == json.loads(json.dumps(duck_summary.__dict__))
    for table, keys in (
        ("events", ["event_id"]),
        ("identity_map", ["namespace", "value"]),
        ("profiles", ["profile_id"]),
    ):
        got = duckdb.sql(f"SELECT * FROM read_parquet('{spark_dir / table}.parquet/*.parquet')")
        expected = duckdb.sql(f"SELECT * FROM read_parquet('{duck_dir / table}.parquet')")
        assert got.dtypes == expected.dtypes, table
        assert_same_rows(got.df(), expected.df(), keys)


def test_duckdb_jobs_read_a_spark_ingest(ingested):
    spark_dir, duck_dir, _ = ingested
    fs = build_registry(CONFIG.features, ["yoga", "running"])
    as_of = dt.date(2025, 7, 1)
    frames = []
    for directory in (spark_dir, duck_dir):
        con = ingest_jobs.load_events(directory, ProjectConfig()).con
        frames.append(con.execute(sql_compiler.snapshot_sql(fs, as_of, con)).df())
    assert len(frames[1]) > 100
    assert_same_rows(frames[0], frames[1], ["profile_id"])


def test_feature_snapshot_equals_duckdb(spark, ingested):
    spark_dir, duck_dir, _ = ingested
    fs = build_registry(CONFIG.features, ["yoga", "running"])
    as_of = dt.date(2025, 6, 12)
    spark_jobs.load_events(spark, spark_dir, CONFIG)
    got = to_pandas(spark_features.snapshot(spark, fs, as_of))
    con = ingest_jobs.load_events(duck_dir, ProjectConfig()).con
    expected = con.execute(sql_compiler.snapshot_sql(fs, as_of, con)).df()
    assert len(expected) > 100 and expected["loyalty_tier"].notna().any()
    assert_same_rows(got, expected, ["profile_id"])


def test_labelled_stacked_snapshots_equal_duckdb_training_frame(spark, ingested):
    spark_dir, duck_dir, _ = ingested
    model = load_model_config("conversion", ProjectConfig())
    cutoff = dt.date(2025, 8, 29)
    con = ingest_jobs.load_events(duck_dir, ProjectConfig()).con
    fs = feature_jobs.feature_set(con, ProjectConfig(), before=dt.date(2025, 2, 1))
    expected, dates = training_frame(con, fs, model, cutoff)
    spark_jobs.load_events(spark, spark_dir, CONFIG)
    assert spark_features.learn_categories(spark, dt.date(2025, 2, 1), 8) == fs.categories
    frame, spark_dates = spark_features.training_snapshots(spark, fs, model, cutoff)
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
    got = spark_jobs.build_features(spark_dir, tmp_path / "spark.parquet", LIGHT_SPARK, model="churn")
    expected = feature_jobs.build_features(duck_dir, tmp_path / "duck.parquet", LIGHT_DUCKDB, model="churn")
    assert (got.rows, got.features, got.labelled, got.as_of) == (
        expected.rows,
        expected.features,
        expected.labelled,
        expected.as_of,
    )
    assert feature_jobs.read_feature_metadata(got.out) == feature_jobs.read_feature_metadata(expected.out)
    assert_same_rows(pd.read_parquet(got.out), pd.read_parquet(expected.out), ["profile_id"])


def _duckdb_scores(model, version: str, duck_dir: Path, as_of: dt.date, factors: int) -> pd.DataFrame:
    """What the DuckDB score job writes, built from its parts (features, identities,
    score_batch, percentile) in one batch."""
    from propensity.features.rules import parse_rule
    from propensity.models.scoring import score_batch

    loaded = ingest_jobs.load_events(duck_dir, LIGHT_DUCKDB)
    con = loaded.con
    fs = feature_jobs.feature_set(con, LIGHT_DUCKDB, before=as_of, categories=model.metadata["categories"])
    population = parse_rule(model.metadata["population"], fs.names(model_features_only=False), "population")
    identities, columns = score_jobs._identities_sql(loaded)
    frame = con.execute(f"""
        SELECT f.*{"".join(f", i.{c}" for c in columns)}
        FROM ({sql_compiler.snapshot_sql(fs, as_of, con)}) f LEFT JOIN ({identities}) i USING (profile_id)
        WHERE {population.sql("duckdb", column_prefix="f")} ORDER BY f.profile_id
    """).df()
    table = score_batch(
        model,
        frame,
        model_name="churn",
        model_version=version,
        as_of=as_of,
        factors=factors,
        scored_at=dt.datetime.now(dt.UTC),
        identity_columns=columns,
    )
    con.register("unranked", table)
    return con.execute("""
        SELECT * EXCLUDE (scored_at),
               greatest(1, ceil(100 * cume_dist() OVER (ORDER BY probability)))::SMALLINT AS percentile,
               scored_at
        FROM unranked
    """).df()


def test_train_on_a_spark_sample_then_score_as_duckdb_scores(ingested, tracking, tmp_path):
    import mlflow

    from propensity.models import tracking as model_tracking
    from propensity.models.estimator import PropensityModel

    spark_dir, duck_dir, _ = ingested
    trained = spark_jobs.train_model("churn", spark_dir, LIGHT_SPARK)
    params = mlflow.get_run(trained.run_id).data.params
    assert params["engine"] == "spark" and int(params["sample_rows"]) == int(params["sample_rows_available"])

    # Factors need the exact TreeSHAP of models.estimator; without it scores carry none.
    factors = 3 if hasattr(PropensityModel, "top_contributions") else 0
    run = spark_score_jobs.score_model(
        "churn", spark_dir, LIGHT_SPARK, out=tmp_path / "scores", version=trained.version, factors=factors
    )
    model, _ = model_tracking.load_propensity_model(
        model_tracking.configure(ProjectConfig()), "churn", version=trained.version
    )
    expected = _duckdb_scores(model, trained.version, duck_dir, run.as_of, factors)
    got = pd.read_parquet(run.out)
    assert run.scored == len(expected) > 100 and run.out.name == f"as_of={run.as_of}"
    assert sorted(run.bucket_sizes.items()) == sorted(expected["bucket"].value_counts().to_dict().items())
    assert_same_rows(
        got.drop(columns=["factors", "scored_at"]),
        expected.drop(columns=["factors", "scored_at"]),
        ["profile_id"],
    )
    got, expected = got.sort_values("profile_id"), expected.sort_values("profile_id")
    for mine, theirs in zip(got["factors"], expected["factors"], strict=True):
        assert [f["feature"] for f in mine] == [f["feature"] for f in theirs]
        assert np.allclose([f["impact"] for f in mine], [f["impact"] for f in theirs], rtol=0, atol=1e-9)


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
