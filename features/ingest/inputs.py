"""Finding the inputs behind ``--events PATH``, and the DuckDB table function reading them.

A path may be one file, a directory of Parquet / CSV / JSONL files (hive partitions too), a
directory written by ``generate`` or an ``ingest`` output directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from propensity.core.errors import UserError
from propensity.features.sql import sql_string

EVENT_FILE_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
}


# A scheme ("s3a://", "hdfs://", "file:/", "dbfs:/") marks a path Hadoop resolves; anything
# else is local. Two letters at least, so that "C:/data" stays a local path.
REMOTE_PATH = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:/")
# Schemes whose URIs name a host or bucket after "//", which pathlib.Path folds to one "/".
AUTHORITY_SCHEMES = ("s3", "s3a", "s3n", "gs", "hdfs", "webhdfs", "viewfs", "abfs", "abfss", "wasb", "wasbs")


def hadoop_path(path: str | Path) -> str:
    """``path`` as Hadoop reads it, undoing what ``pathlib.Path`` does to a URI given on the
    command line (``s3a://bucket/x`` becomes ``s3a:/bucket/x``)."""
    text = str(path)
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]+):/(?!/)", text)
    if match and match.group(1).lower() in AUTHORITY_SCHEMES:
        return f"{match.group(1)}://{text[match.end() :]}"
    return text


def is_remote(path: str | Path) -> bool:
    """True for ``scheme:/...`` paths (``file:/`` included): Hadoop, not pathlib, reads them."""
    return bool(REMOTE_PATH.match(hadoop_path(path)))


@dataclass(frozen=True)
class InputFiles:
    """What a user's ``--events PATH`` resolves to."""

    events: list[Path]
    fmt: str  # parquet | csv | json
    profiles: Path | None = None
    ground_truth: Path | None = None
    ingested: Path | None = None  # an `ingest` output directory, ready to use
    display: str = ""

    @property
    def hive(self) -> bool:
        """True for a Parquet directory with ``key=value`` partition folders."""
        return self.fmt == "parquet" and any("=" in part for p in self.events for part in p.parts)

    def reader_sql(self) -> str:
        """A DuckDB relation reading the events files (:func:`reader_sql`)."""
        return reader_sql(self.events, self.fmt, self.hive)


def _find_in_dir(directory: Path, stem: str) -> Path | None:
    for candidate in [directory / stem, *(directory / f"{stem}{suffix}" for suffix in EVENT_FILE_SUFFIXES)]:
        if candidate.exists():
            return candidate
    return None


def event_files(path: Path) -> tuple[list[Path], str]:
    """The data files behind a file or directory and their one format, or a UserError."""
    if path.is_file():
        fmt = EVENT_FILE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise UserError(
                f"{path}: unsupported file type '{path.suffix}'; expected .parquet, .csv or .jsonl"
            )
        return [path], fmt
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in EVENT_FILE_SUFFIXES and not p.name.startswith((".", "_"))
    )
    if not files:
        raise UserError(f"{path}: no event files (.parquet, .csv, .jsonl) found")
    formats = {EVENT_FILE_SUFFIXES[p.suffix.lower()] for p in files}
    if len(formats) > 1:
        raise UserError(f"{path}: mixes file types {sorted(formats)}; use one format per directory")
    return files, formats.pop()


def resolve_input(path: str | Path) -> InputFiles:
    """Find the events (and profiles / ground truth beside them) behind ``--events PATH``.

    PATH may be a single file, a directory of Parquet files (hive partitions too), a
    directory written by ``generate`` (``events/``, ``profiles.*``, ``ground_truth/``) or an
    ``ingest`` output directory (``manifest.json``).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: events path does not exist")
    if path.is_dir() and (path / "manifest.json").is_file() and (path / "events.parquet").exists():
        gt = path / "ground_truth"
        return InputFiles(
            events=[path / "events.parquet"],
            fmt="parquet",
            ingested=path,
            profiles=None,
            ground_truth=gt if gt.is_dir() else None,
            display=str(path),
        )
    if path.is_dir():
        events = _find_in_dir(path, "events")
        if events is not None:
            files, fmt = event_files(events)
            gt = path / "ground_truth"
            return InputFiles(
                events=files,
                fmt=fmt,
                profiles=_find_in_dir(path, "profiles"),
                ground_truth=gt if gt.is_dir() else None,
                display=str(events),
            )
    files, fmt = event_files(path)
    return InputFiles(events=files, fmt=fmt, display=str(path))


def reader_sql(files: list[Path], fmt: str, hive: bool = False) -> str:
    """A DuckDB table function reading ``files`` with their file name and row number."""
    names = "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
    if fmt == "parquet":
        return (
            f"read_parquet({names}, union_by_name=true, filename=true, file_row_number=true"
            f"{', hive_partitioning=true' if hive else ''})"
        )
    if fmt == "csv":
        # All text: a bad value in one row must become a bad row, not a failed read.
        return f"read_csv({names}, all_varchar=true, header=true, union_by_name=true, filename=true)"
    return f"read_json({names}, format='newline_delimited', union_by_name=true, filename=true)"
