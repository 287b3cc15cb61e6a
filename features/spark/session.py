"""Spark sessions and files on any Hadoop path, configured the same way for every Spark job.

The Spark jobs (``engine.name: spark``) read and write Parquet wherever Hadoop can reach:
a local path, ``hdfs://``, ``s3a://``, ``abfss://``, ``gs://``. Listing, renaming and small
text files (``manifest.json``) go through the Hadoop FileSystem of the session, so one
code path serves a laptop and a cluster.

Sessions run in UTC, like the DuckDB connections (:mod:`propensity.features.connection`), so
that naive timestamps mean UTC on both engines.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from propensity.core.config import EngineConfig
from propensity.core.errors import UserError
from propensity.features.ingest.inputs import EVENT_FILE_SUFFIXES, hadoop_path, is_remote, resolve_input

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def functions():
    """``pyspark.sql.functions``, imported on first use: this wing's modules load without pyspark
    (the CLI and the DuckDB jobs import them only to type-check or to choose the engine)."""
    from pyspark.sql import functions as spark_functions

    return spark_functions


def spark_session(engine: EngineConfig | None = None) -> SparkSession:
    """The SparkSession for ``engine.spark`` (master, app name, shuffle partitions, conf), in UTC.

    An active session is reused (its static settings cannot change); the runtime SQL
    settings given here are applied to it.
    """
    engine = engine or EngineConfig()
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UserError(
            "engine.name 'spark' needs pyspark: pip install 'propensity[spark]' (and Java 17+)"
        ) from None
    settings = engine.spark
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.master:
        builder = builder.master(settings.master)
    # Without a master and outside spark-submit (which sets the gateway port), pyspark runs
    # locally too.
    local = (
        settings.master.startswith("local") if settings.master else "PYSPARK_GATEWAY_PORT" not in os.environ
    )
    if local and "PYSPARK_PYTHON" not in os.environ:
        # Local executors are processes on this machine: run them with this interpreter (the
        # one with propensity installed), not whatever `python3` is first on the PATH.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    conf: dict[str, str] = {
        "spark.sql.session.timeZone": "UTC",
        # Parquet written by Spark reads back in DuckDB and pandas with no INT96 surprises.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    if settings.shuffle_partitions:
        conf["spark.sql.shuffle.partitions"] = str(settings.shuffle_partitions)
    conf.update({key: _conf_text(value) for key, value in settings.conf.items()})
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # getOrCreate ignores settings when a session already runs; the SQL ones can still be set.
    for key, value in conf.items():
        if key.startswith("spark.sql."):
            spark.conf.set(key, value)
    return spark


def _conf_text(value: str | int | float | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _hadoop_fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def file_uri(spark: SparkSession, path: str) -> str:
    """A file's URI as :func:`normalised_uri` spells Spark's ``_metadata.file_path``."""
    fs, jpath = _hadoop_fs(spark, path)
    return re.sub(r"^file:/+", "file:/", str(fs.makeQualified(jpath).toUri().toString()))


def normalised_uri(column):
    """``_metadata.file_path`` with local files as ``file:/path`` (Hadoop writes ``file:///path``)."""
    from pyspark.sql import functions

    return functions.regexp_replace(column, "^file:/+", "file:/")


def qualified(path: str | Path) -> str:
    """A path Spark can read: remote paths as given, local ones absolute (symlinks kept)."""
    return hadoop_path(path) if is_remote(path) else os.path.abspath(path)


def path_exists(spark: SparkSession, path: str | Path) -> bool:
    """Whether a file or directory exists at ``path`` (local or remote)."""
    fs, jpath = _hadoop_fs(spark, qualified(path))
    return bool(fs.exists(jpath))


def read_text(spark: SparkSession, path: str | Path) -> str:
    """A small text file (``manifest.json``) from any Hadoop path."""
    if not is_remote(path):
        return Path(path).read_text()
    return "\n".join(row.value for row in spark.read.text(hadoop_path(path), wholetext=True).collect())


def _write_small_text(spark: SparkSession, text: str, path: str) -> None:
    if not is_remote(path):
        Path(path).write_text(text)
        return
    fs, jpath = _hadoop_fs(spark, path)
    stream = fs.create(jpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def first_line(spark: SparkSession, path: str) -> str:
    """The first line of a text file (a CSV header) on any Hadoop path, without reading the rest."""
    if not is_remote(path):
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.readline().rstrip("\r\n")
    jvm = spark.sparkContext._jvm
    fs, jpath = _hadoop_fs(spark, hadoop_path(path))
    reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(fs.open(jpath), "UTF-8"))
    try:
        return reader.readLine() or ""
    finally:
        reader.close()


def write_text(spark: SparkSession, text: str, path: str | Path) -> None:
    """Write a small text file (a manifest) on any Hadoop path."""
    _write_small_text(spark, text, qualified(path))


@contextmanager
def atomic_output(spark: SparkSession, path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` whole.

    The rename is atomic on local disks and HDFS; on object stores (S3, ABFS) it is a
    copy, so readers should wait for the job's success rather than poll the directory.
    """
    target = qualified(path)
    parent, name = target.rstrip("/").rsplit("/", 1)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:12]}"
    fs, tmp_path = _hadoop_fs(spark, tmp)
    _, target_path = _hadoop_fs(spark, target)
    fs.mkdirs(_hadoop_fs(spark, parent)[1])
    try:
        yield tmp
        if fs.exists(target_path):
            fs.delete(target_path, True)
        if not fs.rename(tmp_path, target_path):
            raise OSError(f"could not move {tmp} to {target}")
    finally:
        if fs.exists(tmp_path):
            fs.delete(tmp_path, True)


def write_parquet(frame: DataFrame, path: str, partitions: int | None = None) -> None:
    """Write ``frame`` as a Parquet directory (zstd), optionally in ``partitions`` files."""
    if partitions is not None:
        frame = frame.coalesce(partitions)
    frame.write.mode("overwrite").option("compression", "zstd").parquet(path)


def list_files(spark: SparkSession, path: str) -> list[str]:
    """Data files under a remote directory (recursively, hidden ``.``/``_`` names skipped), sorted."""
    fs, jpath = _hadoop_fs(spark, path)
    if not fs.exists(jpath):
        raise UserError(f"{path}: events path does not exist")
    if fs.getFileStatus(jpath).isFile():
        return [path]
    found = []
    files = fs.listFiles(jpath, True)
    while files.hasNext():
        status = files.next()
        file_path = status.getPath()
        relative = file_path.toString()[len(jpath.toString()) :]
        if not any(part.startswith((".", "_")) for part in relative.split("/") if part):
            found.append(file_path.toString())
    return sorted(found)


@dataclass(frozen=True)
class SparkInput:
    """What ``--events PATH`` resolves to, as path strings Spark reads (local or remote)."""

    events: list[str]
    fmt: str  # parquet | csv | json
    profiles: str | None = None
    ingested: str | None = None  # an `ingest` output directory
    ground_truth: str | None = None
    display: str = ""
    sources: tuple[str, ...] = ()  # each file as DuckDB would name it (``--events`` as given)


def resolve_spark_input(spark: SparkSession, path: str | Path) -> SparkInput:
    """The events (and profiles beside them) behind ``--events PATH`` on any Hadoop path.

    Local paths follow :func:`propensity.features.ingest.inputs.resolve_input` exactly; remote
    directories are listed through Hadoop with the same rules (an ``ingest`` output with
    ``manifest.json``, a ``generate`` output with ``events/`` and ``profiles.*``, or files).
    """
    if not is_remote(path):
        local = resolve_input(path)
        return SparkInput(
            events=[qualified(p) for p in local.events],
            fmt=local.fmt,
            profiles=str(local.profiles) if local.profiles else None,
            ingested=str(local.ingested) if local.ingested else None,
            ground_truth=str(local.ground_truth) if local.ground_truth else None,
            display=local.display,
            sources=tuple(str(p) for p in local.events),
        )
    root = hadoop_path(path).rstrip("/")
    if path_exists(spark, f"{root}/manifest.json") and path_exists(spark, f"{root}/events.parquet"):
        return SparkInput(
            events=[f"{root}/events.parquet"], fmt="parquet", ingested=root, display=root, sources=(root,)
        )
    events_root, profiles = root, None
    if path_exists(spark, f"{root}/events"):
        events_root = f"{root}/events"
        profiles = next(
            (
                f"{root}/profiles{suffix}"
                for suffix in EVENT_FILE_SUFFIXES
                if path_exists(spark, f"{root}/profiles{suffix}")
            ),
            None,
        )
    files = [f for f in list_files(spark, events_root) if _suffix(f) in EVENT_FILE_SUFFIXES]
    if not files:
        raise UserError(f"{events_root}: no event files (.parquet, .csv, .jsonl) found")
    formats = {EVENT_FILE_SUFFIXES[_suffix(f)] for f in files}
    if len(formats) > 1:
        raise UserError(f"{events_root}: mixes file types {sorted(formats)}; use one format per directory")
    return SparkInput(
        events=files,
        fmt=formats.pop(),
        profiles=profiles,
        display=events_root,
        sources=tuple(files),
    )


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name[name.rfind(".") :].lower() if "." in name else ""


def to_pandas(frame: DataFrame):
    """A (small) DataFrame as pandas, typed as DuckDB's ``.df()`` types it: decimals as float64,
    dates as datetime64. Through Arrow: PySpark's own ``toPandas`` is far slower per column."""
    import pyarrow as pa

    table = frame.toArrow()
    columns = []
    for field in table.schema:
        if pa.types.is_decimal(field.type):
            columns.append(pa.field(field.name, pa.float64()))
        elif pa.types.is_date(field.type):
            columns.append(pa.field(field.name, pa.timestamp("us")))
        else:
            columns.append(field)
    return table.cast(pa.schema(columns)).to_pandas()
