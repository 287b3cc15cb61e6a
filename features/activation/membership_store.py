"""Where segment memberships live: one ``OUT/as_of=<date>/`` directory per qualification, and
what is read back from it (the dates present, the previous date, the summary, the fingerprint
of a date's qualified set, and which later dates a back-fill made stale).

The layout and the statuses are described in :mod:`propensity.features.activation.segments`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from propensity.core.errors import UserError
from propensity.features.sql import sql_string

MEMBERSHIPS_FILE, IDENTITIES_FILE, SUMMARY_FILE = "memberships.parquet", "identities.parquet", "summary.json"
_PARTITION = re.compile(r"^as_of=(\d{4}-\d{2}-\d{2})$")


def partition_dir(out_dir: str | Path, as_of: dt.date) -> Path:
    """The directory of one as-of's memberships."""
    return Path(out_dir) / f"as_of={as_of}"


def has_arms(memberships: str | Path) -> bool:
    """Whether a memberships file records holdout arms (only written when a segment has one)."""
    return "arm" in pq.read_schema(memberships).names


def membership_dates(out_dir: str | Path) -> list[dt.date]:
    """The as-of dates with memberships in ``out_dir``, oldest first."""
    root = Path(out_dir)
    if not root.is_dir():
        return []
    dates = []
    for child in root.iterdir():
        match = _PARTITION.match(child.name)
        if match and (child / MEMBERSHIPS_FILE).is_file():
            dates.append(dt.date.fromisoformat(match.group(1)))
    return sorted(dates)


def previous_as_of(out_dir: str | Path, as_of: dt.date) -> dt.date | None:
    """The latest as-of in ``out_dir`` strictly before ``as_of`` (by date), or None."""
    earlier = [d for d in membership_dates(out_dir) if d < as_of]
    return earlier[-1] if earlier else None


def qualified_fingerprint(con: duckdb.DuckDBPyConnection, rows: str) -> str:
    """Count and checksum of the qualified set (realized and existing rows, with qualified_at)
    of ``rows`` (a table, or ``read_parquet(...)``): all the next date's statuses depend on.

    DuckDB's ``hash`` is fast (md5 took 0.9 s for 700k rows, hash 0.05 s); it may change
    between DuckDB versions, which can only make a later date look stale, never hide it.
    """
    count, checksum = con.execute(f"""
        SELECT count(*), coalesce(sum(hash(profile_id, segment, qualified_at)), 0)
        FROM {rows} WHERE status IN ('realized', 'existing')
    """).fetchall()[0]
    return f"{count}:{checksum}"


def read_summary_file(directory: Path) -> dict:
    """A partition's summary.json, or {} when it is missing or unreadable."""
    try:
        return json.loads((directory / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def stored_fingerprint(con: duckdb.DuckDBPyConnection, out_dir: str | Path, as_of: dt.date) -> str:
    """A stored date's fingerprint, from its summary (or its file, for an older summary)."""
    directory = partition_dir(out_dir, as_of)
    stored = read_summary_file(directory).get("fingerprint")
    return stored or qualified_fingerprint(
        con, f"read_parquet({sql_string(str(directory / MEMBERSHIPS_FILE))})"
    )


def stale_later_dates(con: duckdb.DuckDBPyConnection, out_dir: str | Path, as_of: dt.date) -> list[dt.date]:
    """Dates after ``as_of`` whose statuses were computed against a previous date (or content)
    other than the one that now precedes them."""
    dates = membership_dates(out_dir)
    stale = []
    for i, date in enumerate(dates):
        if date <= as_of or i == 0:
            continue
        expected = dates[i - 1]
        recorded = read_summary_file(partition_dir(out_dir, date)).get("previous") or {}
        if recorded.get("as_of") != str(expected) or recorded.get("fingerprint") != stored_fingerprint(
            con, out_dir, expected
        ):
            stale.append(date)
    return stale


def refuse_stale(con: duckdb.DuckDBPyConnection, out_dir: str | Path, as_of: dt.date) -> None:
    """A UserError naming the date to recompute when the statuses at ``as_of`` (or at a date
    before it, which they build on) were computed against a previous date that a back-fill has
    since replaced: exporting them would ship wrong realized/existing/exited rows."""
    stale = [d for d in stale_later_dates(con, out_dir, dt.date.min) if d <= as_of]
    if stale:
        later = f" and then each later date up to {as_of} in order" if stale[0] != as_of else ""
        raise UserError(
            f"{partition_dir(out_dir, stale[0])}: statuses are stale (an earlier date was qualified again "
            f"since); re-run `propensity segments --as-of {stale[0]}`{later} before exporting {as_of}"
        )


def read_summary(out_dir: str | Path, as_of: dt.date) -> dict:
    """The summary of one as-of's memberships; a UserError when that date was never qualified."""
    directory = partition_dir(out_dir, as_of)
    if not (directory / MEMBERSHIPS_FILE).is_file():
        present = ", ".join(str(d) for d in membership_dates(out_dir)) or "none"
        raise UserError(
            f"no memberships at {as_of} in {out_dir} (dates present: {present}); "
            f"run `propensity segments --as-of {as_of}` first"
        )
    summary = read_summary_file(directory)
    if not summary.get("segments"):
        raise UserError(f"{directory / SUMMARY_FILE}: missing or unreadable; re-run the segments job")
    return summary
