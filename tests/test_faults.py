"""Fault injection: killed steps, concurrent runs, interrupted replaces and foreign ``--out`` folders.

Each writing step runs in a subprocess, is killed (SIGKILL) at seeded random moments, and then:
the previous output is intact and readable, no temp file is visible to ``pyarrow.dataset`` or a
DuckDB glob of the output tree, and a re-run gives identical files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from propensity.core import io
from propensity.core.config import DestinationConfig, SegmentConfig
from propensity.core.errors import UserError
from propensity.features.activation import destinations as dest
from propensity.features.activation import segments as seg
from propensity.features.build.rules import parse_rule
from propensity.features.synthetic.simulator import GeneratorSettings
from propensity.features.synthetic.writer import generate
from propensity.pipeline.jobs import ingest as ingest_jobs
from tests.conftest import invoke, write_events

CLI = str(Path(sys.executable).parent / "propensity")
# Files whose bytes legitimately differ between two runs of one step (a run's own clock).
VOLATILE = {io.MARKER}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) -> its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in VOLATILE
    }


def assert_no_visible_temps(root: Path) -> None:
    """Readers of the output tree see only real outputs: no staging, no leftover temp names."""
    names = [p.name for p in root.rglob("*")]
    assert not [n for n in names if n.endswith((".tmp", ".old", ".new", ".scratch", ".lock"))], names
    assert not [n for n in names if n.startswith(".") and n != io.MARKER], names
    staging = root.parent / io.STAGING
    if staging.exists():  # only lock files survive a finished run
        assert all(p.suffix == ".lock" for p in staging.iterdir()), list(staging.iterdir())


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=600)


def killed_at(args: list[str], delay: float, env: dict | None = None) -> int | None:
    """Start the CLI, SIGKILL it after ``delay`` seconds; its exit code if it finished first."""
    proc = subprocess.Popen([CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        return proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def _fresh_entries(temp: Path, since_ns: int) -> int:
    """How many entries of ``temp`` were made after ``since_ns`` (what a killed run left is older;
    inode numbers cannot tell, the file system reuses them at once)."""
    count = 0
    try:
        for entry in temp.iterdir():
            count += entry.lstat().st_ctime_ns > since_ns
    except FileNotFoundError:  # not made yet, or an entry went between the listing and its stat
        pass
    return count


def killed_in_write(
    args: list[str], temp: Path, entries: int, jitter: float, env: dict | None = None
) -> int | None:
    """Start the CLI and SIGKILL it ``jitter`` seconds after its temp folder ``temp`` (an output's
    staging ``.new`` or ``.scratch``) holds ``entries`` (1 or more) entries it made: a kill inside
    the write, however long the start-up before it takes. Its exit code if it finished first."""
    assert entries >= 1  # the folder alone would not do: a killed run's is emptied before it goes
    launched = time.time_ns()
    proc = subprocess.Popen([CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        while _fresh_entries(temp, launched) < entries:
            if proc.poll() is not None:
                return proc.returncode
            time.sleep(0.005)
        return proc.wait(timeout=jitter)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


class WritePoints:
    """Seeded moments inside a write to kill a run at: one of ``stages`` (a temp folder and how
    many entries the run has made in it, see :func:`killed_in_write`), then up to ``most_jitter``
    seconds. The plan ends after ``wanted`` real kills (``attempts`` at most; a run that finishes
    before its moment is not one)."""

    def __init__(self, stages: list[tuple[Path, int]], seed: int, most_jitter: float = 0.5) -> None:
        self.stages, self.rng, self.most_jitter = stages, random.Random(seed), most_jitter
        self.wanted, self.attempts = 3, 8
        self.kills = self.tries = 0

    def __iter__(self):
        while self.kills < self.wanted and self.tries < self.attempts:
            self.tries += 1
            temp, entries = self.rng.choice(self.stages)
            yield temp, entries, self.rng.uniform(0, self.most_jitter)

    def record(self, killed: bool) -> None:
        self.kills += killed


class KillPoints:
    """Seeded moments to kill a run at, across the ``duration`` of a first run. A run that
    finishes before its moment (warm caches make later runs faster than the first) moves the
    later moments earlier, so the plan ends after ``wanted`` real kills (``attempts`` at most)."""

    def __init__(self, duration: float, seed: int, wanted: int = 3, attempts: int = 12) -> None:
        self.duration, self.rng = duration, random.Random(seed)
        self.wanted, self.attempts = wanted, attempts
        self.kills = self.tries = 0

    def __iter__(self):
        while self.kills < self.wanted and self.tries < self.attempts:
            self.tries += 1
            yield self.rng.uniform(0.25, 0.9) * self.duration

    def record(self, delay: float, killed: bool) -> None:
        """Whether the run started for ``delay`` was killed (else it finished sooner)."""
        if killed:
            self.kills += 1
        else:
            self.duration = delay


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "raw"
    generate(GeneratorSettings(profiles=600, days=120, seed=3), out)
    return out


# ---------------------------------------------------------------------------------------------
# defect 1: --out never deletes a folder that is not the step's own output


def test_ingest_refuses_to_overwrite_its_own_input(raw, runner, tmp_path):
    before = tree_digest(raw)
    result = invoke(runner, "ingest", "--events", str(raw), "--out", str(raw))
    assert result.exit_code == 2
    assert "not a ingest output" in result.output or "is a propensity" in result.output
    assert str(raw) in result.output and len(result.output.strip().splitlines()) == 1
    assert tree_digest(raw) == before


def test_steps_refuse_a_work_folder_holding_other_outputs(raw, runner, tmp_path):
    work = tmp_path / "work"
    ingested = work / "ingested"
    assert invoke(runner, "ingest", "--events", str(raw), "--out", str(ingested)).exit_code == 0
    (work / "notes.txt").write_text("mine")
    before = tree_digest(work)
    for args in (
        ["ingest", "--events", str(raw), "--out", str(work)],
        ["features", "--events", str(ingested), "--as-of", "2025-04-01", "--out", str(work)],
        ["generate", "--profiles", "10", "--days", "30", "--out", str(work)],
        ["features", "--events", str(ingested), "--as-of", "2025-04-01", "--out", str(work / "notes.txt")],
    ):
        result = invoke(runner, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "nothing was changed" in result.output and len(result.output.strip().splitlines()) == 1
        assert tree_digest(work) == before, args
    # its own kind of output is replaced as before
    assert invoke(runner, "ingest", "--events", str(raw), "--out", str(ingested)).exit_code == 0
    assert io.output_kind(ingested) == "ingest"


def test_outputs_of_another_kind_are_refused_by_marker(tmp_path):
    scores = tmp_path / "scores"
    with io.atomic_path(scores / "model=m" / "as_of=2025-01-01", root=scores, kind="scores") as tmp:
        tmp.mkdir()
        (tmp / "part-0.parquet").write_bytes(b"x")
    assert io.output_kind(scores) == "scores"
    with pytest.raises(UserError, match="is a propensity scores output, not segments"):
        io.check_output(scores, "segments")
    io.check_output(scores, "scores")
    io.check_output(tmp_path / "absent", "segments")
    (tmp_path / "empty").mkdir()
    io.check_output(tmp_path / "empty", "segments")


def test_outputs_written_before_markers_are_recognised(tmp_path):
    old_scores = tmp_path / "old_scores"
    (old_scores / "model=m" / "as_of=2025-01-01").mkdir(parents=True)
    io.check_output(old_scores, "scores")
    with pytest.raises(UserError):
        io.check_output(old_scores, "exports")
    (old_scores / "stray.csv").write_text("a")
    with pytest.raises(UserError, match="not a scores output"):
        io.check_output(old_scores, "scores")


def test_a_file_output_never_replaces_a_folder(tmp_path):
    folder = tmp_path / "report.html"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(UserError, match="is a folder"), io.atomic_path(folder) as tmp:
        tmp.write_text("page")
    assert (folder / "inside").is_dir()


# ---------------------------------------------------------------------------------------------
# defect 9: the interrupted replace, temps outside the tree, cleaned by the next run


def _write_partition(root: Path, name: str, text: str) -> Path:
    target = root / name
    with io.atomic_path(target, root=root, kind="segments") as tmp:
        tmp.mkdir()
        (tmp / "part-0.parquet").write_text(text)
    return target


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from propensity.core import io
root, mode = Path(sys.argv[1]), sys.argv[2]
io._exchange = lambda a, b: False  # a filesystem without RENAME_EXCHANGE: the two-rename path
real_replace, calls = os.replace, []
def replace(src, dst):
    calls.append(src)
    real_replace(src, dst)
    if mode == "kill" and len(calls) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # killed between the two renames
    if mode == "raise" and len(calls) == 1:
        raise KeyboardInterrupt
io.os.replace = replace
with io.atomic_path(root / "as_of=2025-01-01", root=root, kind="segments") as tmp:
    tmp.mkdir()
    (tmp / "part-0.parquet").write_text("new")
"""


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_an_interrupted_double_rename_is_finished(tmp_path, mode):
    root = tmp_path / "segments"
    target = _write_partition(root, "as_of=2025-01-01", "old")
    done = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(root), mode], capture_output=True)
    assert done.returncode != 0
    if mode == "kill":
        # killed mid-replace: the date is missing for now, the new partition complete outside the tree
        assert not target.exists()
        assert not [p for p in root.rglob("*") if p.name.endswith((".old", ".new"))]
        # the next run of that output finishes the replace before anything else
        with io.output_lock(target, root=root, kind="segments"):
            pass
    assert (target / "part-0.parquet").read_text() == "new"
    assert_no_visible_temps(root)


def test_a_crash_before_the_old_output_moved_keeps_it(tmp_path):
    root = tmp_path / "segments"
    target = _write_partition(root, "as_of=2025-01-01", "old")

    def half_written() -> None:
        with io.atomic_path(target, root=root, kind="segments") as tmp:
            tmp.mkdir()
            (tmp / "part-0.parquet").write_text("half")
            raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        half_written()
    assert (target / "part-0.parquet").read_text() == "old"
    assert_no_visible_temps(root)


def test_leftovers_of_older_versions_are_cleaned_and_an_old_backup_restored(tmp_path):
    root = tmp_path / "scores"
    partition = root / "model=m" / "as_of=2025-01-01"
    (root / "model=m" / ".as_of=2025-01-02.abcd.tmp").mkdir(parents=True)
    (root / "model=m" / ".as_of=2025-01-02.abcd.tmp" / "part-0.parquet").write_bytes(b"")
    backup = root / "model=m" / ".as_of=2025-01-01.old"
    backup.mkdir()
    (backup / "part-0.parquet").write_text("kept")
    with io.output_lock(partition, root=root, kind="scores"):
        pass
    with io.output_lock(root / "model=m" / "as_of=2025-01-02", root=root, kind="scores"):
        pass
    assert (partition / "part-0.parquet").read_text() == "kept"
    assert_no_visible_temps(root)


def test_the_exchange_is_atomic_and_used(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert io._exchange(a, b)  # Linux: one renameat2 call, no moment without ``b``
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


# ---------------------------------------------------------------------------------------------
# kills at random points: previous output intact, nothing visible, re-run identical


def _visible_parquet(root: Path) -> tuple[int, set[str]]:
    """Rows pyarrow.dataset reads from the tree and the files DuckDB's ``**`` glob finds."""
    files = set(ds.dataset(root, format="parquet").files)
    duck = {r[0] for r in duckdb.sql(f"SELECT file FROM glob('{root}/**')").fetchall()}
    return len(files), duck


@pytest.mark.slow
@pytest.mark.parametrize(
    "step",
    ["generate", "ingest", "features"],
)
def test_killing_a_step_keeps_the_previous_output(raw, tmp_path, step):
    if step == "generate":
        out = tmp_path / "generated"
        args = ["generate", "--profiles", "400", "--days", "60", "--seed", "5", "--out", str(out)]
    elif step == "ingest":
        out = tmp_path / "ingested"
        args = ["ingest", "--events", str(raw), "--out", str(out)]
    else:
        out = tmp_path / "features.parquet"
        args = ["features", "--events", str(raw), "--as-of", "2025-04-01", "--out", str(out)]
    started = time.perf_counter()
    first = run_cli(*args)
    duration = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    root = out if out.is_dir() else out.parent
    reference = tree_digest(root)
    visible = _visible_parquet(root) if out.is_dir() else None
    plan = KillPoints(duration, seed=21)
    for delay in plan:
        code = killed_at(args, delay)
        assert code in (None, 0)
        plan.record(delay, code is None)
        # the previous output is intact: the same bytes, the same rows for readers
        current = {k: v for k, v in tree_digest(root).items() if io.STAGING not in k}
        assert current == {k: v for k, v in reference.items() if io.STAGING not in k}
        if visible is not None:
            assert _visible_parquet(root) == visible
            assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name != io.MARKER]
    assert plan.kills == plan.wanted
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert {k: v for k, v in tree_digest(root).items() if io.STAGING not in k} == {
        k: v for k, v in reference.items() if io.STAGING not in k
    }
    if out.is_dir():
        assert_no_visible_temps(out)
    else:  # a file output: beside it only the staging folder, holding only locks
        assert sorted(p.name for p in root.iterdir()) == sorted([io.STAGING, out.name])
        assert all(p.suffix == ".lock" for p in (root / io.STAGING).iterdir())


# ---------------------------------------------------------------------------------------------
# defect 10: two runs of the same output at once


def test_a_second_concurrent_run_fails_in_one_line(raw, tmp_path):
    out = tmp_path / "ingested"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from propensity.core import io\n"
            f"with io.output_lock({str(out)!r}, kind='ingest'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli("ingest", "--events", str(raw), "--out", str(out))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "another propensity run is writing it" in lines[0], result.stderr
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: the next run goes ahead
    assert run_cli("ingest", "--events", str(raw), "--out", str(out)).returncode == 0


def test_three_concurrent_runs_end_cleanly(raw, tmp_path):
    out = tmp_path / "ingested"
    procs = [
        subprocess.Popen(
            [CLI, "ingest", "--events", str(raw), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code in (0, 2), err
        assert "Traceback" not in err
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and "another propensity run" in err
    assert io.output_kind(out) == "ingest"


# ---------------------------------------------------------------------------------------------
# defects 2 and 11: NULL-safe rule arithmetic, size limits

RULE_ROWS = (
    "(VALUES (1, 0.0, 0.0), (2, 50.0, 0.0), (3, 500.0, 2.0), (4, 150.0, 2.0), (5, 'nan'::DOUBLE, 1.0), "
    "(6, 'inf'::DOUBLE, 1.0), (7, 1e308, 1e-300), (8, NULL, 1.0))"
)
RULE_KINDS = {"revenue": "number", "purchases": "number"}


def qualifying(rule_text: str) -> list[int]:
    rule = parse_rule(rule_text, RULE_KINDS, "test")
    sql = f"SELECT id FROM {RULE_ROWS} t(id, revenue, purchases) WHERE {rule.sql('duckdb')} ORDER BY id"
    return [r[0] for r in duckdb.sql(sql).fetchall()]


def test_division_by_zero_nan_and_inf_never_qualify():
    # 0/0 and x/0 would be NaN and inf (greater than any number): only the genuine 250 qualifies
    assert qualifying("revenue / purchases > 100") == [3]
    assert qualifying("revenue / purchases <= 100") == [4]
    assert qualifying("revenue + 0 > 100") == [3, 4, 7]  # NaN and inf results count as missing
    assert qualifying("revenue * 10 > 100") == [2, 3, 4]  # 1e308 * 10 overflows to inf: missing
    assert qualifying("revenue / purchases IS NULL") == [1, 2, 5, 6, 7, 8]
    assert qualifying("-revenue < 0") == [2, 3, 4, 7]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (" AND ".join(f"revenue > {i}" for i in range(10_000)), "longer than 20,000 characters"),
        (" OR ".join("revenue > 1" for _ in range(1_000)), "too large (over 100 levels of nesting"),
        ("(" * 600 + "revenue > 1" + ")" * 600, "nests too deeply"),
    ],
)
def test_huge_rules_end_in_one_clear_line(text, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        parse_rule(text, RULE_KINDS, "segments.yaml: segment 'big'")
    assert len(str(error.value)) < 500 and "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# defect 3: consent values outside the vocabulary


def _consent_input(tmp_path: Path) -> Path:
    root = tmp_path / "consent"
    (root / "events").mkdir(parents=True)
    write_events(
        root / "events" / "a.csv",
        [{"timestamp": f"2025-03-0{i}", "event_type": "page_view", "crm_id": f"C{i}"} for i in range(1, 5)],
    )
    write_events(
        root / "profiles.csv",
        [
            {"crm_id": "C1", "consent_personalization": "y", "consent_marketing": "Yes "},
            {"crm_id": "C2", "consent_personalization": "off", "consent_marketing": "n"},
            {"crm_id": "C3", "consent_personalization": "", "consent_marketing": "FALSE"},
            {"crm_id": "C4", "consent_personalization": "revoked", "consent_marketing": "1"},
        ],
    )
    return root


def test_unrecognised_consent_is_refused_naming_file_column_rows(tmp_path, config, runner):
    root = _consent_input(tmp_path)
    with pytest.raises(UserError) as error:
        ingest_jobs.ingest(root, tmp_path / "out", config)
    message = str(error.value)
    assert "profiles.csv: column consent_personalization has 2 unrecognised consent values" in message
    assert "'off', 'revoked'; rows 2, 4" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    # validate says so too, in one line, exit 2
    result = invoke(runner, "validate", "--events", str(root))
    assert result.exit_code == 2 and "unrecognised consent values" in result.output


def test_with_quarantine_unrecognised_consent_counts_as_opted_out(tmp_path, config):
    root = _consent_input(tmp_path)
    ingest_jobs.ingest(root, tmp_path / "out", config, on_bad_rows="quarantine")
    attributes = pd.read_parquet(tmp_path / "out" / "profile_attributes.parquet").sort_values("_source_row")
    assert attributes["consent_personalization"].fillna("-").tolist() == ["y", "n", "-", "n"]
    assert attributes["consent_marketing"].tolist() == ["y", "n", "n", "y"]


# ---------------------------------------------------------------------------------------------
# defect 4: a consent withdrawal reaches destinations that sync exits


def _qualify_people(con, out: Path, as_of: dt.date, consent: dict[str, str | None]) -> None:
    people = {"p1": ["e1"], "p2": ["e2"], "p3": ["e3"]}
    con.register(
        "profiles",
        pd.DataFrame({"profile_id": list(consent), "consent_personalization": list(consent.values())}),
    )
    con.register(
        "identity_map",
        pd.DataFrame(
            [
                {"namespace": "email_sha256", "value": v, "profile_id": p}
                for p, vs in people.items()
                for v in vs
            ]
        ),
    )
    con.register(
        "feats",
        pd.DataFrame(
            {"profile_id": list(consent), "x": 10, "consent_personalization": list(consent.values())}
        ),
    )
    segments = seg.compile_segments(
        [SegmentConfig(name="all", rule="x > 5")],
        {"x": "number", "consent_personalization": "string"},
        [],
        "s.yaml",
    )
    seg.qualify(con, segments, "SELECT * FROM feats", {}, out, as_of, identity_namespaces=["email_sha256"])


@pytest.mark.parametrize("include_exited", [True, False])
def test_a_consent_withdrawal_is_exported_as_an_exit(tmp_path, include_exited):
    con, out = duckdb.connect(), tmp_path / "segments"
    d1, d2, d3 = dt.date(2025, 3, 1), dt.date(2025, 4, 1), dt.date(2025, 5, 1)
    _qualify_people(con, out, d1, {"p1": "y", "p2": "y", "p3": "n"})
    _qualify_people(con, out, d2, {"p1": "y", "p2": "n", "p3": "n"})  # p2 withdraws
    _qualify_people(con, out, d3, {"p1": "y", "p2": "n", "p3": "n"})
    destination = DestinationConfig(
        name="ads", identities=["email_sha256"], marketing_action="personalization", segments=["all"],
        include_exited=include_exited,
    )  # fmt: skip
    rows = {}
    for as_of in (d2, d3):
        result = dest.export_destination(duckdb.connect(), out, as_of, destination, tmp_path / "exports")
        frame = pd.read_csv(result.segments[0].path)
        rows[as_of] = sorted(zip(frame["value"], frame["status"], strict=True))
        if as_of == d2:
            assert result.segments[0].exited_withdrawn == (1 if include_exited else 0)
    # the opted-out p2 is in no membership (p3 never was), but the audience learns p2 left
    assert "p2" not in set(pd.read_parquet(seg.partition_dir(out, d2) / seg.MEMBERSHIPS_FILE)["profile_id"])
    assert rows[d2] == ([("e1", "existing"), ("e2", "exited")] if include_exited else [("e1", "existing")])
    assert rows[d3] == [("e1", "existing")]  # an exit is sent once


# ---------------------------------------------------------------------------------------------
# defects 5 and 7, plausibility: future events, NaN/inf/huge numbers, long identities

IMPLAUSIBLE = [
    {"timestamp": "2025-03-01", "event_type": "purchase", "crm_id": "C1", "revenue": "10"},  # row 1: good
    {"timestamp": "2099-06-01", "event_type": "page_view", "crm_id": "C1"},  # row 2: far future
    {"timestamp": "2025-03-02", "event_type": "purchase", "crm_id": "C1", "revenue": "nan"},  # row 3
    {"timestamp": "2025-03-02", "event_type": "purchase", "crm_id": "C1", "revenue": "inf"},  # row 4
    {"timestamp": "2025-03-02", "event_type": "purchase", "crm_id": "C1", "revenue": "1e308"},  # row 5
    {"timestamp": "2025-03-02", "event_type": "purchase", "crm_id": "C1", "quantity": "1e308"},  # row 6
    {"timestamp": "2025-03-02", "event_type": "page_view", "crm_id": "C" * 10_000},  # row 7
    {"timestamp": "2025-03-03", "event_type": "purchase", "crm_id": "C2", "revenue": "-inf"},  # row 8
]


def test_implausible_events_are_bad_rows_with_their_reason(tmp_path, config):
    path = write_events(tmp_path / "events.csv", IMPLAUSIBLE)
    summary = ingest_jobs.ingest(path, tmp_path / "out", config, on_bad_rows="quarantine")
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine.parquet").sort_values("source_row")
    assert list(zip(quarantine["source_row"], quarantine["reason"], strict=True)) == [
        (2, "future_timestamp"),
        (3, "invalid_revenue"),
        (4, "invalid_revenue"),
        (5, "invalid_revenue"),
        (6, "invalid_quantity"),
        (7, "invalid_identity"),
        (8, "invalid_revenue"),
    ]
    assert summary.rows_written == 1 and summary.last_event.startswith("2025-03-01")


def test_the_default_as_of_never_lies_in_the_future(tmp_path, runner):
    path = write_events(tmp_path / "events.csv", IMPLAUSIBLE)
    result = invoke(runner, "validate", "--events", str(path))
    assert result.exit_code == 2 and "future_timestamp: 1" in " ".join(result.output.split())
    out = tmp_path / "f.parquet"
    config = tmp_path / "propensity.yaml"
    config.write_text("ingest:\n  on_bad_rows: quarantine\n")
    result = invoke(runner, "features", "--events", str(path), "--out", str(out), "--config", str(config))
    assert result.exit_code == 0, result.output
    import json

    import pyarrow.parquet as pq

    metadata = json.loads(pq.read_schema(out).metadata[b"propensity"])
    assert metadata["as_of"] == "2025-03-02"  # the day after the last good event, not 2099


def test_a_tolerance_lets_slightly_early_clocks_through(tmp_path):
    from propensity.features.contract import future_limit

    limit = future_limit(None, 24)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert dt.timedelta(hours=23) < limit - now <= dt.timedelta(hours=24)
    assert future_limit(dt.date(2025, 3, 1)) == dt.datetime(2025, 3, 2)


# ---------------------------------------------------------------------------------------------
# defect 6: export refuses memberships a back-fill made stale


def test_export_refuses_stale_memberships_naming_the_date(tmp_path):
    from propensity.core.config import ProjectConfig
    from propensity.pipeline.jobs import export as export_jobs

    con, out = duckdb.connect(), tmp_path / "segments"
    d1, d2, d3 = dt.date(2025, 3, 1), dt.date(2025, 4, 1), dt.date(2025, 5, 1)
    _qualify_people(con, out, d1, {"p1": "y", "p2": "y", "p3": "y"})
    _qualify_people(con, out, d3, {"p1": "y", "p2": "n", "p3": "y"})
    destinations = tmp_path / "destinations.yaml"
    destinations.write_text(
        "destinations:\n  - name: ads\n    identities: [email_sha256]\n"
        "    marketing_action: personalization\n    include_exited: true\n    segments: [all]\n"
    )
    exports = tmp_path / "exports"
    export_jobs.export_segments(out, d3, destinations, exports, ProjectConfig())
    before = tree_digest(exports)
    _qualify_people(con, out, d2, {"p1": "y", "p2": "n", "p3": "n"})  # a back-fill: d3 is now stale
    with pytest.raises(
        UserError, match=r"as_of=2025-05-01: statuses are stale .* segments --as-of 2025-05-01"
    ):
        export_jobs.export_segments(out, d3, destinations, exports, ProjectConfig())
    assert tree_digest(exports) == before  # nothing shipped
    export_jobs.export_segments(out, d2, destinations, exports, ProjectConfig())  # d2 itself is fine
    _qualify_people(con, out, d3, {"p1": "y", "p2": "n", "p3": "y"})
    export_jobs.export_segments(out, d3, destinations, exports, ProjectConfig())


# ---------------------------------------------------------------------------------------------
# defect 8: YAML alias bombs and huge echoes

LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
destinations: *h
"""


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, runner):
    from propensity.pipeline.jobs.config_files import load_destinations

    path = tmp_path / "destinations.yaml"
    path.write_text(LAUGHS)
    started = time.perf_counter()
    with pytest.raises(UserError, match="expands to more than 100,000 values") as error:
        load_destinations(path)
    assert time.perf_counter() - started < 5 and len(str(error.value)) < 300


def test_validation_errors_quote_a_few_hundred_characters_at_most(tmp_path):
    from propensity.pipeline.jobs.config_files import load_destinations

    path = tmp_path / "destinations.yaml"
    # 4,000 aliases of a 500-character string: well under the value limit, 2 MB if echoed whole
    path.write_text("x: &x " + "y" * 500 + "\ndestinations:\n" + "".join("  - *x\n" for _ in range(4000)))
    with pytest.raises(UserError) as error:
        load_destinations(path)
    assert len(str(error.value)) < 2_500 and "more problems" in str(error.value)


# ---------------------------------------------------------------------------------------------
# defect 12: error text is printed as written


def test_error_messages_keep_bracketed_text(runner, tmp_path):
    path = tmp_path / "models" / "x.yaml"
    path.parent.mkdir()
    path.write_text("name: Bad-Name[a-z]\n")
    result = invoke(runner, "validate", "--events", str(tmp_path / "[a-z]{0,63}" / "events.csv"))
    assert result.exit_code == 2
    assert "[a-z]{0,63}" in result.output  # rich markup would have swallowed `[a-z]`


# ---------------------------------------------------------------------------------------------
# risk: loading a model can run code


def _tiny_model():
    import lightgbm as lgb

    from propensity.models.calibration import Calibrator
    from propensity.models.estimator import PropensityModel

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    y = (frame["a"] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_leaves": 4}, lgb.Dataset(frame, y), 5)
    calibrator = Calibrator("isotonic").fit(booster.predict(frame, raw_score=True), y.to_numpy())
    return PropensityModel(
        "m", ["a", "b"], {"a": "A", "b": "B"}, {}, booster.model_to_string(), calibrator
    ), frame


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/propensity-pwned-by-pickle",))


def test_models_are_stored_without_pickle_and_load_equal(tmp_path):
    import zipfile

    from propensity.models.estimator import PropensityModel, load_model

    model, frame = _tiny_model()
    path = model.save(tmp_path / "propensity_model.skops")
    assert zipfile.is_zipfile(path) and b"booster_text" in zipfile.ZipFile(path).read("schema.json")
    np.testing.assert_array_equal(load_model(path).predict_proba(frame), model.predict_proba(frame))
    assert type(PropensityModel.load(path)) is PropensityModel


def test_a_model_file_that_would_run_code_is_refused(tmp_path):
    import pickle

    import skops.io as sio

    from propensity.models.estimator import load_model

    marker = Path("/tmp/propensity-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    pickled = tmp_path / "propensity_model.joblib"
    pickled.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(UserError, match=r"references posix\.system, which no model holds"):
        load_model(pickled)
    assert not marker.exists()
    foreign = tmp_path / "foreign.skops"
    model, _ = _tiny_model()
    model.metadata["x"] = Fraction(1, 3)  # any type outside the allow-list
    sio.dump(model, foreign)
    with pytest.raises(UserError, match=r"types outside the allow-list \(fractions\.Fraction\)"):
        load_model(foreign)


def test_the_registry_checksum_is_verified_at_load(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from propensity.models import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        model, frame = _tiny_model()
        mlflow.set_experiment("checksum")
        with mlflow.start_run():
            _, version = tracking.log_model(model, frame, "tiny")
        client = MlflowClient()
        loaded, mv = tracking.load_propensity_model(client, "tiny", version=version)
        np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
        assert len(mv.tags[tracking.CHECKSUM_TAG]) == 64
        # someone with write access to the artifact store swaps the model file
        client.set_model_version_tag("tiny", version, tracking.CHECKSUM_TAG, "0" * 64)
        with pytest.raises(UserError, match="does not match the SHA-256 the registry recorded"):
            tracking.load_propensity_model(client, "tiny", version=version)
    finally:
        mlflow.set_tracking_uri(previous)


# ---------------------------------------------------------------------------------------------
# risk: exports holding identities readable by every local user


@pytest.mark.parametrize(("setting", "file_mode", "dir_mode"), [(None, 0o600, 0o700), ("0640", 0o640, 0o750)])
def test_exports_are_private_by_default(tmp_path, setting, file_mode, dir_mode):
    con, out = duckdb.connect(), tmp_path / "segments"
    _qualify_people(con, out, dt.date(2025, 3, 1), {"p1": "y", "p2": "y", "p3": "y"})
    extra = {"file_mode": setting} if setting else {}
    destination = DestinationConfig(
        name="ads", identities=["email_sha256"], marketing_action="personalization", segments=["all"], **extra
    )
    result = dest.export_destination(
        duckdb.connect(), out, dt.date(2025, 3, 1), destination, tmp_path / "exports"
    )
    assert result.directory.stat().st_mode & 0o777 == dir_mode
    files = list(result.directory.iterdir())
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == file_mode for f in files)


def test_conflicting_duplicates_are_counted_apart(tmp_path, config, runner):
    rows = [
        {
            "timestamp": "2025-03-01",
            "event_type": "purchase",
            "crm_id": "C1",
            "event_id": "x",
            "revenue": "10",
        },
        {
            "timestamp": "2025-03-01",
            "event_type": "purchase",
            "crm_id": "C1",
            "event_id": "x",
            "revenue": "10",
        },
        {
            "timestamp": "2025-03-01",
            "event_type": "purchase",
            "crm_id": "C1",
            "event_id": "x",
            "revenue": "99",
        },
        {"timestamp": "2025-03-02", "event_type": "page_view", "crm_id": "C2", "event_id": "y"},
        {"timestamp": "2025-03-02", "event_type": "page_view", "crm_id": "C3", "event_id": "y"},
    ]
    path = write_events(tmp_path / "events.csv", rows)
    summary = ingest_jobs.validate(path, config)
    assert (summary.duplicates_dropped, summary.conflicting_duplicates) == (3, 2)
    result = invoke(runner, "validate", "--events", str(path))
    assert "of which conflicting" in result.output


# ---------------------------------------------------------------------------------------------
# guard: email_sha256 is what advertising destinations match on


def test_email_sha256_is_the_sha256_of_the_normalised_email(tmp_path, config):
    rows = [
        {"timestamp": "2025-03-01", "event_type": "page_view", "email": "  Sarah.Lee@Example.COM "},
        {"timestamp": "2025-03-01", "event_type": "page_view", "phone": "+1 (555) 123-4567"},
    ]
    path = write_events(tmp_path / "events.csv", rows)
    ingest_jobs.ingest(path, tmp_path / "out", config)
    identity = pd.read_parquet(tmp_path / "out" / "identity_map.parquet")
    values = dict(zip(identity["namespace"], identity["value"], strict=True))
    assert values["email_sha256"] == hashlib.sha256(b"sarah.lee@example.com").hexdigest()
    assert values["phone_sha256"] == hashlib.sha256(b"+15551234567").hexdigest()


QUALIFY_AND_EXPORT = """
import datetime as dt, sys
from pathlib import Path
import duckdb, pandas as pd
from propensity.core.config import DestinationConfig, SegmentConfig
from propensity.features.activation import destinations as dest, segments as seg
out, exports, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
con = duckdb.connect()
ids = [f"p{i}" for i in range(n)]
con.register("profiles", pd.DataFrame({"profile_id": ids, "consent_personalization": "y"}))
emails = [f"e{i}" for i in range(n)]
con.register("identity_map", pd.DataFrame({"namespace": "email_sha256", "value": emails, "profile_id": ids}))
x = [i % 100 for i in range(n)]
con.register("feats", pd.DataFrame({"profile_id": ids, "x": x, "consent_personalization": "y"}))
kinds = {"x": "number", "consent_personalization": "string"}
rules = [SegmentConfig(name="big", rule="x > 10"), SegmentConfig(name="odd", rule="x IN (1, 3, 5)")]
segments = seg.compile_segments(rules, kinds, [], "s.yaml")
as_of = dt.date(2025, 3, 1)
seg.qualify(con, segments, "SELECT * FROM feats", {}, out, as_of, identity_namespaces=["email_sha256"])
destination = DestinationConfig(
    name="ads", identities=["email_sha256"], marketing_action="personalization", segments=["big", "odd"]
)
dest.export_destination(con, out, as_of, destination, exports)
"""


@pytest.mark.slow
def test_killing_segments_and_export_keeps_the_previous_output(tmp_path):
    out, exports = tmp_path / "segments", tmp_path / "exports"
    args = [str(out), str(exports), "300000"]
    started = time.perf_counter()
    first = subprocess.run([sys.executable, "-c", QUALIFY_AND_EXPORT, *args], capture_output=True, text=True)
    duration = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    reference = {root: tree_digest(root) for root in (out, exports)}
    rows = {root: _visible_parquet(root)[0] for root in (out,)}
    plan = KillPoints(duration, seed=9)
    for delay in plan:
        proc = subprocess.Popen([sys.executable, "-c", QUALIFY_AND_EXPORT, *args], stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
            plan.record(delay, killed=False)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            plan.record(delay, killed=True)
        for root in (out, exports):
            assert tree_digest(root) == reference[root]  # the previous output, byte for byte
        assert _visible_parquet(out)[0] == rows[out]
        assert not [p for p in exports.rglob("*") if p.name.startswith(".") and p.name != io.MARKER]
    assert plan.kills == plan.wanted
    again = subprocess.run([sys.executable, "-c", QUALIFY_AND_EXPORT, *args], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    for root in (out, exports):
        assert tree_digest(root) == reference[root]
        assert_no_visible_temps(root)


def test_scoring_without_factors_gives_the_same_probabilities():
    """``scoring.factors: 0`` (no explanations) is a supported setting, not only the default 5."""
    import pyarrow as pa

    model, frame = _tiny_model()
    probability, indices, impacts = model.predict_and_explain(pa.Table.from_pandas(frame), 0)
    np.testing.assert_array_equal(probability, model.predict_proba(frame))
    assert indices.shape == impacts.shape == (len(frame), 0)
    with_factors, top, _ = model.predict_and_explain(pa.Table.from_pandas(frame), 2)
    np.testing.assert_array_equal(with_factors, probability)
    assert top.shape == (len(frame), 2)


@pytest.mark.slow
def test_killing_score_keeps_the_previous_partition(tmp_path, monkeypatch, request):
    """``score`` (DuckDB) killed inside its write (while it scores into its scratch folder or writes
    the ranked partition, the moment seeded): the previous partition keeps its bytes, readers of
    the scores folder see only it, and a re-run gives the same rows as the first run. The setup is
    the CLI in this process; every score run is its own process."""
    import mlflow
    from typer.testing import CliRunner

    raw, ingested, scores = tmp_path / "raw", tmp_path / "ingested", tmp_path / "scores"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    # MLflow's process-wide URIs point at this test's database until it ends, then back at what
    # they were (the next test's jobs set their own).
    # Put back MLflow's process-wide URIs exactly as they were (usually unset): setting them to
    # what get_tracking_uri() resolved now would pin this test's view over later tests' env.
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri, registry_utils._registry_uri

    def restore() -> None:
        tracking_utils._tracking_uri, registry_utils._registry_uri = previous

    request.addfinalizer(restore)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    runner = CliRunner()
    # The shipped churn model with LightGBM's defaults (tuning.trials 1, not 12): the model only
    # has to score; the search is not what this test checks.
    models = tmp_path / "models"
    models.mkdir()
    shipped = (Path(__file__).resolve().parents[1] / "configs/models/churn.yaml").read_text()
    (models / "churn.yaml").write_text(shipped.replace("  seed: 42\n", "  seed: 42\n  tuning: {trials: 1}\n"))
    assert "tuning: {trials: 1}" in (models / "churn.yaml").read_text()
    project = tmp_path / "project.yaml"
    project.write_text(json.dumps({"models_dir": str(models)}))
    args = ["score", "churn", "--events", str(ingested), "--version", "1", "--out", str(scores)]
    args += ["--as-of", "2025-11-01", "--config", str(project)]
    for step in (
        ["generate", "--profiles", "2000", "--days", "330", "--seed", "3", "--out", str(raw)],
        ["ingest", "--events", str(raw), "--out", str(ingested)],
        ["train", "churn", "--events", str(ingested), "--config", str(project)],
    ):
        done = invoke(runner, *step)
        assert done.exit_code == 0, done.output
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    partition = scores / "model=churn" / "as_of=2025-11-01"

    def rows() -> pd.DataFrame:
        frame = pd.read_parquet(partition).drop(columns=["scored_at"])
        frame["factors"] = frame["factors"].map(lambda f: [tuple(sorted(x.items())) for x in f])
        return frame.sort_values("profile_id").reset_index(drop=True)

    reference, expected = tree_digest(scores), rows()
    visible = _visible_parquet(scores)
    assert visible[0] == 1 and len(expected) > 500
    (lock,) = (tmp_path / io.STAGING).glob("scores_model=churn_as_of=2025-11-01.*.lock")
    stages = [(lock.with_suffix(".scratch"), 1), (lock.with_suffix(".new"), 1)]
    plan = WritePoints(stages, seed=5)
    for temp, entries, jitter in plan:
        code = killed_in_write(args, temp, entries, jitter, env=env)
        assert code in (None, 0)
        plan.record(code is None)
        # the previous partition (or, killed after its replace, the new one), never a mix: the
        # same files and rows; only ``scored_at`` (the run's clock) may differ
        assert tree_digest(scores).keys() == reference.keys()
        pd.testing.assert_frame_equal(rows(), expected)
        assert _visible_parquet(scores) == visible  # no temp file a reader or `**` glob finds
        assert not [p for p in scores.rglob("*") if p.name.startswith(".") and p.name != io.MARKER]
    assert plan.kills == plan.wanted
    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert tree_digest(scores).keys() == reference.keys()
    pd.testing.assert_frame_equal(rows(), expected)  # same probabilities, scores and factors
    assert _visible_parquet(scores) == visible
    assert_no_visible_temps(scores)
