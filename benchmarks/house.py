"""A house you can read (issue #20): lines written twice across the engines, and the path of the
``events`` argument through ``train``, at the working tree and at older commits.

    python benchmarks/house.py [--rev before=9919be8^ --rev main=ef905fd ...] [--profiles 400]

**Twice-written lines.** Every step that exists once per engine is a *twin group*: the DuckDB
function(s) and the Spark function(s) doing the same job, listed explicitly below per layout
(``TWINS``: the flat layout before the house work, the house layout of ``main`` at ef905fd, and
the working tree). A side's size is its *logic lines*: the source lines of its functions (or
classes) found with ``ast``, less blank lines, comment-only lines and docstrings. A group counts
its smaller side (the lines the larger one repeats); the total is their sum. A group whose step
is written once (one engine-neutral function that both wings call) is not a twin any more and
leaves the list. Old commits are read with ``git show``.

**The path of ``events`` through ``train``.** A tiny generated dataset (raw events, stitched in
memory as ``train`` does) goes to ``train_model("churn", events, ...)`` under ``sys.setprofile``,
until the job hands its training data to ``fit_and_register`` (fitting and MLflow are cut off
there). The path follows the events: a call is on it when one of its arguments is the events
path or an object derived from the events (what a call on the path returned, and that
object's attributes: the loaded events, their connection and identity graph, the feature set,
the training rows; not scalars, paths or the empty tuple, which CPython shares program-wide).
Repeated calls of one function from one caller (loops over dates, rows,
columns) are followed once; module-level code (imports) not at all.
``train_modules_entered``: distinct ``propensity`` modules on the path.
``train_returns``: calls on the path into a module already entered and left before (coming back
to a file already read: ``staging`` and ``inputs`` calling each other, ``labels`` visited five
times). Also shown: ``moves back`` (every step of the path, returns from calls included, into a
module already visited) and the same figures over every call (``all calls``, not only those
carrying the events). Each ``--rev`` runs in a subprocess over ``git archive`` of the commit
(its code and its ``configs/``), on the same generated events.

Prints a table, then one JSON line (the working tree's figures, and each revision's).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "features", "models", "pipeline")

# (group, DuckDB side, Spark side); a reference is "path::name" or "path::Class.method".
TWINS_FLAT = [  # before the house work (9919be8^): every job twice, in pipeline/
    (
        "load",
        ["pipeline/ingest_jobs.py::load_events", "pipeline/ingest_jobs.py::_stage"],
        ["pipeline/spark_jobs.py::load_events", "pipeline/spark_jobs.py::_stage_and_stitch"],
    ),
    ("validate", ["pipeline/ingest_jobs.py::validate"], ["pipeline/spark_jobs.py::validate"]),
    ("breakdown", ["pipeline/ingest_jobs.py::_summarise"], ["pipeline/spark_jobs.py::_summarise"]),
    ("ingest", ["pipeline/ingest_jobs.py::ingest"], ["pipeline/spark_jobs.py::ingest"]),
    (
        "feature table",
        ["pipeline/feature_jobs.py::build_features", "pipeline/feature_jobs.py::feature_set"],
        ["pipeline/spark_jobs.py::build_features", "pipeline/spark_jobs.py::feature_set"],
    ),
    ("loaded events", ["pipeline/ingest_jobs.py::LoadedEvents"], ["pipeline/spark_jobs.py::SparkEvents"]),
    (
        "model inputs",
        ["features/labels.py::population_snapshot_sql", "features/labels.py::training_frame"],
        ["features/spark_features.py::population_snapshot", "features/spark_features.py::training_snapshots"],
    ),
    (
        "train",
        ["pipeline/model_jobs.py::train_model"],
        ["pipeline/spark_jobs.py::training_sample", "pipeline/spark_jobs.py::train_model"],
    ),
    ("score", ["pipeline/score_jobs.py::score_model"], ["pipeline/spark_score_jobs.py::score_model"]),
    (
        "log scoring run",
        ["pipeline/score_jobs.py::_log_scoring_run"],
        ["pipeline/spark_score_jobs.py::_log_scoring_run"],
    ),
    (
        "qualify",
        ["pipeline/segment_jobs.py::qualify_segments", "features/segments.py::qualify"],
        ["pipeline/spark_segment_jobs.py::qualify_segments"],
    ),
    (
        "as-of graph",
        [
            "features/identity_as_of.py::IdentityGraph.sources",
            "features/identity_as_of.py::IdentityGraph.outcomes_sql",
        ],
        [
            "features/spark_as_of.py::SparkIdentityGraph.sources",
            "features/spark_as_of.py::SparkIdentityGraph.outcomes_sql",
        ],
    ),
]

_DUCK, _SPARK = "features/duckdb/engine.py", "features/spark/engine.py"
TWINS_HOUSE = [  # main at ef905fd: one job each, the engine seam, nine twins left
    (
        "load",
        [f"{_DUCK}::DuckDBEngine.load_events", f"{_DUCK}::DuckDBEngine._open_ingested"],
        [
            f"{_SPARK}::SparkEngine.load_events",
            f"{_SPARK}::SparkEngine._open_ingested",
            f"{_SPARK}::SparkEngine._publish",
        ],
    ),
    ("stage", [f"{_DUCK}::DuckDBEngine.stage"], [f"{_SPARK}::SparkEngine.stage"]),
    ("breakdown", [f"{_DUCK}::DuckDBEngine.breakdown"], [f"{_SPARK}::SparkEngine.breakdown"]),
    (
        "write ingest",
        [f"{_DUCK}::DuckDBEngine.write_ingest", f"{_DUCK}::_copy"],
        [f"{_SPARK}::SparkEngine.write_ingest"],
    ),
    (
        "write feature table",
        [f"{_DUCK}::DuckDBEngine.write_feature_table"],
        [f"{_SPARK}::SparkEngine.write_feature_table"],
    ),
    ("loaded events", [f"{_DUCK}::LoadedEvents"], [f"{_SPARK}::SparkEvents"]),
    (
        "model inputs",
        [
            "features/build/model_frames.py::population_snapshot_sql",
            "features/build/model_frames.py::training_frame",
            "features/build/model_frames.py::_check_history",
        ],
        [
            "features/spark/features.py::population_snapshot",
            "features/spark/features.py::training_snapshots",
            "features/spark/features.py::_usual_order_value",
        ],
    ),
    (
        "qualify",
        [f"{_DUCK}::DuckDBEngine.qualify", "features/activation/segments.py::qualify"],
        [f"{_SPARK}::SparkEngine.qualify", "features/spark/qualify.py::qualify"],
    ),
    (
        "as-of graph",
        [
            "features/identity/as_of.py::IdentityGraph.sources",
            "features/identity/as_of.py::IdentityGraph.outcomes_sql",
        ],
        [
            "features/spark/as_of.py::SparkIdentityGraph.sources",
            "features/spark/as_of.py::SparkIdentityGraph.outcomes_sql",
        ],
    ),
]

# The working tree (kept in step with the code). Written once since, so no longer twins:
# model inputs (features/build/model_frames.py: population snapshot, training frame, history
# check, over the events' few primitives; the stacking itself stays the hand-tuned DuckDB build
# and Spark's date-by-date checkpoints, counted in "loaded events"). Smaller since: qualify (the
# flow, features/activation/segments.py's qualify_on, with the query and the writer, is written
# once; each wing says where the query runs: DuckDB's OnConnection, Spark's SparkSegmentRows),
# as-of graph (outcomes_sql once, identity/as_of.py's GraphOutcomes). Smaller before: load (the
# dispatch and manifest check in features/engine.py's SharedSteps), breakdown (its queries and
# assembly there too: each wing gives its rows and views), write ingest (the tables declared
# once, features/ingest/manifest.py's ingest_files), as-of graph (outcomes and identities-as-of
# SQL once, with dialect spellings, in features/identity/as_of.py), breakdown again (whether
# the events have order_id: SharedSteps.breakdown over each wing's column list), write ingest
# again (SharedSteps.write_ingest: every table's query and the quarantine's written once, in
# features/ingest/manifest.py; each wing names its views and writes a query's rows),
# write feature table (SharedSteps.write_feature_table: the atomic output and the counts read
# back; each wing writes the relation with its metadata).
# Smaller since: stage (the step order written once, SharedSteps.stage: stage the events,
# refuse bad rows, stage the profiles file and stitch; each wing gives stage_events and
# stitch), as-of graph (the events as of a date written once, identity/as_of.py's
# events_as_of_sql: settled profiles' events kept, changed ones attributed again; each wing
# names its views and its timestamp literal), load (the views an ingest directory is read
# back as, and the events written before orders were grouped, written once in
# features/ingest/manifest.py: ingested_views, ingested_view_sql).
# Larger since: stage (DuckDB's stitching steps are one entry point in the identity package,
# identity/stitching.py's stitch_events, counted on its side). Smaller since: load (an ingest
# directory's ground truth set with dataclasses.replace).
TWINS_NOW = [
    (
        "load",
        [
            f"{_DUCK}::DuckDBEngine.read_text",
            f"{_DUCK}::DuckDBEngine.open_stitched",
            f"{_DUCK}::DuckDBEngine.open_ingested",
        ],
        [
            f"{_SPARK}::SparkEngine.read_text",
            f"{_SPARK}::SparkEngine.open_stitched",
            f"{_SPARK}::SparkEngine.open_ingested",
            f"{_SPARK}::SparkEngine._publish",
        ],
    ),
    (
        "stage",
        [
            f"{_DUCK}::DuckDBEngine.stage_events",
            f"{_DUCK}::DuckDBEngine.stitch",
            "features/identity/stitching.py::stitch_events",
        ],
        [
            f"{_SPARK}::SparkEngine.stage_events",
            f"{_SPARK}::SparkEngine.stitch",
            "features/spark/ingest.py::SparkStaged.close",
        ],
    ),
    (
        "breakdown",
        [f"{_DUCK}::Stitched.rows", f"{_DUCK}::Stitched.columns"],
        [f"{_SPARK}::Stitched.rows", f"{_SPARK}::Stitched.columns"],
    ),
    (
        "write ingest",
        [f"{_DUCK}::Stitched.with_attributes", f"{_DUCK}::Stitched.view", f"{_DUCK}::Stitched.write"],
        [f"{_SPARK}::Stitched.with_attributes", f"{_SPARK}::Stitched.view", f"{_SPARK}::Stitched.write"],
    ),
    (
        "write feature table",
        [f"{_DUCK}::DuckDBEngine.atomic_output", f"{_DUCK}::DuckDBEngine.write_features"],
        [f"{_SPARK}::SparkEngine.atomic_output", f"{_SPARK}::SparkEngine.write_features"],
    ),
    (
        "loaded events",
        [f"{_DUCK}::LoadedEvents"],
        [f"{_SPARK}::SparkEvents", "features/spark/features.py::stacked_snapshots"],
    ),
    (
        "qualify",
        [f"{_DUCK}::DuckDBEngine.segment_rows", "features/activation/segments.py::OnConnection"],
        [f"{_SPARK}::SparkEngine.segment_rows", "features/spark/qualify.py::SparkSegmentRows"],
    ),
    (
        "as-of graph",
        ["features/identity/as_of.py::IdentityGraph.sources"],
        ["features/spark/as_of.py::SparkIdentityGraph.sources"],
    ),
]

# Which list describes a revision: by a file only that layout has.
LAYOUTS = [("pipeline/spark_jobs.py", TWINS_FLAT)]


def source_at(rev: str | None, path: str) -> str:
    """A file's text in the working tree (``rev`` None) or at a commit."""
    if rev is None:
        return (ROOT / path).read_text()
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def _find(tree: ast.AST, name: str) -> ast.AST:
    node: ast.AST = tree
    for part in name.split("."):
        found = [
            n
            for n in ast.iter_child_nodes(node)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part
        ]
        if not found:
            raise SystemExit(f"benchmarks/house.py: no {name} (missing {part}): update TWINS")
        node = found[0]
    return node


def logic_lines(text: str, name: str) -> int:
    """Lines of one function or class, less blank lines, comment-only lines and docstrings."""
    node = _find(ast.parse(text), name)
    docstrings: set[int] = set()
    for inner in ast.walk(node):
        body = getattr(inner, "body", None)
        if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines = text.splitlines()
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return sum(
        1
        for number in range(start, node.end_lineno + 1)
        if number not in docstrings
        and lines[number - 1].strip()
        and not lines[number - 1].strip().startswith("#")
    )


def twins_for(rev: str | None) -> list[tuple[str, list[str], list[str]]]:
    """The twin list of the layout at ``rev``."""
    for marker, twins in LAYOUTS:
        try:
            source_at(rev, marker)
            return twins
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
    return TWINS_NOW if rev is None else TWINS_HOUSE


def count_twins(rev: str | None) -> list[tuple[str, int, int]]:
    """(group, DuckDB side's lines, Spark side's lines) for every twin group at ``rev``."""
    cache: dict[str, str] = {}

    def side(refs: list[str]) -> int:
        total = 0
        for ref in refs:
            path, name = ref.split("::")
            text = cache.setdefault(path, source_at(rev, path))
            total += logic_lines(text, name)
        return total

    return [(group, side(duck), side(spark)) for group, duck, spark in twins_for(rev)]


# --- the path of `events` through `train` -----------------------------------------------------


def _tree_for(rev: str, work: Path) -> Path:
    """``git archive`` of ``rev`` laid out as the ``propensity`` package; the directory for PYTHONPATH."""
    archive = subprocess.run(
        ["git", "archive", rev, *PACKAGES, "configs"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    src = work / "src"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    package = work / "pkg" / "propensity"
    package.mkdir(parents=True)
    for name in PACKAGES:
        (package / name).symlink_to(src / name, target_is_directory=True)
    return work / "pkg"


def trace_train(rev: str | None, events: Path, work: Path) -> dict:
    """Modules on the path of ``events`` through ``train``, and returns to a module already left."""
    work.mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    cwd = ROOT
    if rev is not None:  # the commit's code and its configs/
        env["PYTHONPATH"] = str(_tree_for(rev, work))
        cwd = work / "src"
    script, out = Path(__file__).with_name("house_trace.py"), work / "trace.json"
    subprocess.run([sys.executable, str(script), str(events), str(out)], cwd=cwd, env=env, check=True)
    return json.loads(out.read_text())


def generate_events(out: Path, profiles: int) -> None:
    from propensity.features.synthetic import GeneratorSettings, generate

    generate(GeneratorSettings(profiles=profiles, days=330, seed=11), out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rev",
        action="append",
        metavar="NAME=COMMIT",
        help="also measure a commit (default: before=9919be8^ and main=ef905fd)",
    )
    parser.add_argument("--profiles", type=int, default=400, help="profiles in the generated events")
    parser.add_argument("--no-trace", action="store_true", help="count twin lines only")
    args = parser.parse_args()
    revs = [r.split("=", 1) for r in (args.rev or ["before=9919be8^", "main=ef905fd"])]
    measured: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="house-") as tmp:
        work = Path(tmp)
        if not args.no_trace:
            generate_events(work / "events", args.profiles)
        for label, rev in [*revs, ("now", None)]:
            groups = count_twins(rev)
            figures = {
                "commit": rev or "working tree",
                "twice_written_lines": sum(min(d, s) for _, d, s in groups),
                "twin_groups": len(groups),
                "groups": {g: [d, s] for g, d, s in groups},
            }
            if not args.no_trace:
                traced = trace_train(rev, work / "events", work / f"trace-{label}")
                figures["train_modules_entered"] = len(traced["events"]["modules"])
                figures["train_returns"] = traced["events"]["returns"]
                figures["train_path"] = traced["events"]["path"]
                figures["train_moves_back"] = traced["events"]["moves_back"]
                figures["all_calls_modules"] = len(traced["all_calls"]["modules"])
                figures["all_calls_returns"] = traced["all_calls"]["returns"]
            measured[label] = figures
    _print(measured)
    now = measured["now"]
    line = {
        k: now[k]
        for k in ("twice_written_lines", "twin_groups", "train_modules_entered", "train_returns")
        if k in now
    }
    line["revisions"] = {
        label: {k: v for k, v in f.items() if k not in ("groups", "train_path")}
        for label, f in measured.items()
    }
    print(json.dumps(line))


def _print(measured: dict[str, dict]) -> None:
    for label, figures in measured.items():
        print(
            f"\n{label} ({figures['commit']}): twin groups, logic lines DuckDB / Spark (smaller side counts)"
        )
        for group, (duck, spark) in figures["groups"].items():
            print(f"  {group:<22} {duck:>5} {spark:>5}   {min(duck, spark):>5}")
    head = ("twice-written", "twin groups", "train modules", "train returns", "moves back", "all calls")
    print("\n" + f"{'':<8}" + "".join(f"{h:>15}" for h in head))
    for label, f in measured.items():
        every = f"{f['all_calls_modules']} / {f['all_calls_returns']}" if "all_calls_modules" in f else "-"
        keys = (
            "twice_written_lines",
            "twin_groups",
            "train_modules_entered",
            "train_returns",
            "train_moves_back",
        )
        print(f"{label:<8}" + "".join(f"{f.get(k, '-'):>15}" for k in keys) + f"{every:>15}")


if __name__ == "__main__":
    main()
