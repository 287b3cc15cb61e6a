"""The benchmarks' shared data: N generated Luma profiles, ingested once and reused.

``benchmarks/.data/luma_N`` holds the raw events, ``benchmarks/.data/ingested_N`` the ingest
directory; both are rebuilt only when missing or stale (raw events newer than the ingest, or an
ingest written in an older format).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from propensity.core.config import ProjectConfig
from propensity.features.synthetic import GeneratorSettings, generate
from propensity.pipeline.jobs import ingest as ingest_jobs

DATA = Path(__file__).parent / ".data"
# People simulated at a time beyond one default chunk: ~3.5 GiB peak (about 11 KB a person).
LARGE_CHUNK_PROFILES = 300_000


def generator_settings(profiles: int, days: int) -> GeneratorSettings:
    """The settings of the benchmarks' ``luma_N``: populations up to one default chunk (the 150k
    and 1M data) as one chunk, larger ones ``LARGE_CHUNK_PROFILES`` at a time."""
    default = GeneratorSettings.chunk_profiles
    chunk = default if profiles <= default else LARGE_CHUNK_PROFILES
    return GeneratorSettings(profiles=profiles, days=days, ground_truth=False, chunk_profiles=chunk)


def timed_ingest(raw: Path, ingested: Path, config: ProjectConfig) -> tuple[int, float]:
    """Rows in and seconds of one ingest (DuckDB's progress bars, which a child process
    shows, go nowhere)."""
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        start = time.perf_counter()
        summary = ingest_jobs.ingest(raw, ingested, config, on_bad_rows="quarantine")
    return summary.rows_in, time.perf_counter() - start


def in_child(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process: what it allocates is its own, measured and
    freed apart from the runs before and after it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def ensure_ingested(
    profiles: int, days: int, config: ProjectConfig, force_ingest: bool = False
) -> tuple[Path, Path, float | None]:
    """(raw events dir, ingest dir, ingest seconds or None when the ingest was reused)."""
    raw, ingested = DATA / f"luma_{profiles}", DATA / f"ingested_{profiles}"
    if not (raw / "events").is_dir():
        print(f"generating {profiles:,} profiles ...", flush=True)
        generate(generator_settings(profiles, days), raw)
    manifest = ingested / "manifest.json"
    newest_raw = max(f.stat().st_mtime for f in (raw / "events").iterdir())
    stale = (
        force_ingest
        or not manifest.is_file()
        or manifest.stat().st_mtime < newest_raw
        or json.loads(manifest.read_text()).get("format") != ingest_jobs.INGEST_FORMAT
    )
    if not stale:
        return raw, ingested, None
    print("ingesting ...", flush=True)
    # In a process of its own: what the ingest's engine held does not weigh on the runs after.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows_in, seconds = pool.submit(timed_ingest, raw, ingested, config).result()
    print(f"ingest: {rows_in:,} rows in {seconds:.1f}s", flush=True)
    return raw, ingested, seconds
