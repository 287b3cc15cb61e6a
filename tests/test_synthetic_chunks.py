"""The generator in chunks: a population larger than ``chunk_profiles`` is simulated and written one
chunk of people at a time, as one coherent world (one-chunk worlds are the digests in
test_synthetic.py and test_campaigns.py, unchanged)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from propensity.core.errors import UserError
from propensity.features.synthetic import GeneratorSettings, generate, writer
from propensity.features.synthetic.world import LUMA_YOGA
from tests.conftest import invoke

pytestmark = pytest.mark.xdist_group("synthetic")

TWO_CHUNKS = GeneratorSettings(profiles=800, days=60, seed=5, ground_truth=False, chunk_profiles=400)


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """The two-chunk world written twice, each simulation's people and events recorded."""
    out = tmp_path_factory.mktemp("chunks")
    held: list[tuple[int, int]] = []
    simulate = writer.simulate

    def recording(settings, chunk=0):
        sim = simulate(settings, chunk)
        held.append((len(sim.traits), len(sim.events["ts"])))
        return sim

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer, "simulate", recording)
        summary = generate(TWO_CHUNKS, out / "a")
        generate(TWO_CHUNKS, out / "b")
    return out, summary, held


def _chunk_events(directory, part: int) -> pd.DataFrame:
    files = sorted((directory / "events").glob(f"events-*-part{part:04d}.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_each_simulation_holds_one_chunk_of_people(chunked):
    _, summary, held = chunked
    assert [people for people, _ in held] == [400, 400, 400, 400]  # two runs, two chunks each
    # The events of each chunk are simulated apart: neither holds the population's.
    first_run = [events for _, events in held[:2]]
    assert max(first_run) < 0.65 * sum(first_run)
    assert held[:2] == held[2:]
    assert summary.people == 800 and summary.events >= sum(first_run)


def test_two_chunks_are_deterministic_and_one_world(chunked):
    out, _, _ = chunked
    a, b = out / "a", out / "b"
    names = sorted(p.name for p in (a / "events").iterdir())
    assert names == sorted(p.name for p in (b / "events").iterdir())
    for name in names:
        assert (a / "events" / name).read_bytes() == (b / "events" / name).read_bytes()
    assert (a / "profiles.csv").read_bytes() == (b / "profiles.csv").read_bytes()
    assert {n.rsplit("-part", 1)[1] for n in names} == {"0000.parquet", "0001.parquet"}
    assert not (a / "ground_truth").exists()

    events = pd.read_parquet(a / "events")
    # A resent event repeats its event_id (and its time and type); every other event_id is unique.
    same = events.groupby("event_id").agg(rows=("timestamp", "size"), times=("timestamp", "nunique"))
    assert same["rows"].max() == 2 and (same["times"] == 1).all()
    assert (same["rows"] == 2).sum() < 0.01 * len(same)
    first, second = _chunk_events(a, 0), _chunk_events(a, 1)
    for column in ("event_id", "ecid", "email", "crm_id", "phone"):
        shared = set(first[column].dropna().str.strip().str.lower()) & set(
            second[column].dropna().str.strip().str.lower()
        )
        assert not shared, column
    # Each chunk is its own people, not a copy of the first one's lives.
    assert sorted(first["timestamp"]) != sorted(second["timestamp"])
    crm = pd.read_csv(a / "profiles.csv")["crm_id"]
    assert not crm.duplicated().any()
    numbers = crm.str[1:].astype(int) - 100_000
    assert numbers.between(0, 399).any() and numbers.between(400, 799).any()
    assert set(numbers[numbers >= 800]) == {800, 801}  # the test accounts, once, in the last chunk
    # Each chunk's events carry its own people's ids.
    for part, (low, high) in ((first, (0, 399)), (second, (400, 801))):
        people = part["crm_id"].dropna().str[1:].astype(int) - 100_000
        assert people.between(low, high).all() and len(set(people)) > 100


def test_two_chunks_have_the_schema_of_one(chunked, tmp_path):
    out, _, _ = chunked
    generate(GeneratorSettings(profiles=800, days=60, seed=5, ground_truth=False), tmp_path / "one")
    one = pq.read_schema(next((tmp_path / "one" / "events").iterdir()))
    for path in (out / "a" / "events").iterdir():
        assert pq.read_schema(path) == one, path.name
    assert list(pd.read_csv(tmp_path / "one" / "profiles.csv").columns) == list(
        pd.read_csv(out / "a" / "profiles.csv").columns
    )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({}, "--ground-truth"),
        ({"ground_truth": False, "campaigns": (LUMA_YOGA,)}, "campaigns"),
        ({"ground_truth": False, "difficulty": "easy"}, "--difficulty easy"),
    ],
)
def test_several_chunks_refuse_what_needs_the_whole_population(extra, named):
    with pytest.raises(UserError, match=f"more than one chunk.*{named}"):
        GeneratorSettings(profiles=800, days=60, chunk_profiles=400, **extra)
    with pytest.raises(UserError, match="--chunk-profiles must be positive"):
        GeneratorSettings(profiles=800, chunk_profiles=0)


def test_generate_cli_in_chunks(tmp_path, runner):
    args = ["generate", "--profiles", "300", "--days", "40", "--chunk-profiles", "100"]
    result = invoke(runner, *args, "--out", str(tmp_path / "g"), "--no-ground-truth")
    assert result.exit_code == 0, result.output
    parts = {p.name.rsplit("-part", 1)[1] for p in (tmp_path / "g" / "events").iterdir()}
    assert parts == {"0000.parquet", "0001.parquet", "0002.parquet"}
    refused = invoke(runner, *args, "--out", str(tmp_path / "x"))
    assert refused.exit_code == 2 and "--no-ground-truth" in " ".join(refused.output.split())


def test_a_chunked_world_ingests_whole(chunked, tmp_path):
    from propensity.core.config import ProjectConfig
    from propensity.pipeline.jobs import ingest as ingest_jobs

    out, summary, _ = chunked
    ingested = ingest_jobs.ingest(out / "a", tmp_path / "ingested", ProjectConfig(), on_bad_rows="quarantine")
    assert ingested.rows_in == summary.events and ingested.bad_rows == 0
    assert ingested.rows_written == summary.events - ingested.duplicates_dropped
    # People of both chunks become profiles: at least the known ones of profiles.csv.
    assert ingested.known_profiles >= len(pd.read_csv(out / "a" / "profiles.csv")) - 2
