"""Safe outputs: an output is either complete or absent, never half-written, never someone else's.

Every step writes through :func:`atomic_path` (or holds :func:`output_lock` around several writes):

- **Its own kind only.** A step's ``--out`` (the output *root*) must be absent, empty, or already
  that step's kind of output, recognised by a marker file (``.propensity-output.json``, hidden, so
  readers skip it) or, for outputs written before markers, by its layout. Anything else is refused
  in one line naming the folder; nothing is deleted.
- **Temp files where no reader globs them.** Work in progress lives in one hidden folder beside the
  root (``PARENT/.propensity-tmp/``), outside the output tree: ``pyarrow.dataset`` skips names
  starting with ``.``, and a glob of the output tree (``scores/**/*.parquet``, DuckDB's included)
  never reaches it. The next run of the same output removes what a killed run left there.
- **Never a moment with neither.** A directory is replaced in one atomic exchange
  (``renameat2(RENAME_EXCHANGE)``, Linux); where that is unsupported, in two renames whose
  interruption the next run completes (or rolls back) before doing anything else.
- **One writer per output.** A lock per output (``filelock``; the OS releases it when a process
  dies, so a killed run never leaves a stale lock) makes a second concurrent run of the same
  partition fail in one line instead of racing the first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from propensity.core.errors import UserError

MARKER = ".propensity-output.json"
STAGING = ".propensity-tmp"
# Names older versions left inside output trees on a crash (``.NAME.xxxx.tmp``, ``.NAME.old``).
_LEGACY_LEFTOVERS = (".{name}.*.tmp", ".{name}.old", ".{name}.tmp-*")


def _ingest_layout(path: Path) -> bool:
    return (path / "manifest.json").is_file() and (path / "events.parquet").exists()


def _generated_layout(path: Path) -> bool:
    names = {p.name for p in path.iterdir() if not p.name.startswith((".", "_"))}
    return "events" in names and names <= {"events", "profiles.csv", "ground_truth"}


def _partitioned(pattern: str) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        names = [p.name for p in path.iterdir() if not p.name.startswith((".", "_"))]
        return bool(names) and all(fnmatch.fnmatch(n, pattern) and (path / n).is_dir() for n in names)

    return check


def _propensity_parquet(path: Path) -> bool:
    import pyarrow.parquet as pq

    if path.is_dir():  # the Spark engine writes a features table as a folder of parts
        return (path / "_propensity.json").is_file()
    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not Parquet at all: not ours
        return False
    return b"propensity" in metadata


#: How each kind of output written before markers existed is recognised.
LEGACY_LAYOUTS: dict[str, Callable[[Path], bool]] = {
    "ingest": _ingest_layout,
    "generated events": _generated_layout,
    "scores": _partitioned("model=*"),
    "segments": _partitioned("as_of=*"),
    "exports": _partitioned("destination=*"),
    "features": _propensity_parquet,
    "journey": lambda path: (path / "journey.json").is_file(),
}


def output_kind(path: str | Path) -> str | None:
    """The kind of propensity output at ``path`` (from its marker), or None."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def check_output(root: str | Path, kind: str) -> None:
    """Refuse ``root`` as the output of a ``kind`` step unless it is absent, an empty folder, or
    already a ``kind`` output. Raises a one-line :class:`UserError` naming the folder."""
    root = Path(root)
    if not root.exists() and not root.is_symlink():
        return
    legacy = LEGACY_LAYOUTS.get(kind)
    if root.is_dir() and not root.is_symlink():
        found = output_kind(root)
        if found == kind or (found is None and not any(root.iterdir())):
            return
        if found is not None:
            raise UserError(
                f"{root}: is a propensity {found} output, not {kind}; "
                "choose another --out (nothing was changed)"
            )
        if legacy is not None and legacy(root):
            return
    elif legacy is not None and root.is_file() and legacy(root):
        return
    raise UserError(
        f"{root}: exists and is not a {kind} output written by propensity; choose another --out "
        "or remove it yourself (nothing was changed)"
    )


def mark_output(path: str | Path, kind: str) -> None:
    """Write the marker that makes ``path`` recognisable as a ``kind`` output."""
    marker = Path(path) / MARKER
    if output_kind(path) != kind:
        marker.write_text(json.dumps({"kind": kind}, sort_keys=True) + "\n")


def _find_root(target: Path) -> Path:
    """The marked output folder ``target`` lies in (itself or an ancestor, a few levels up), else
    ``target``: a partition written without naming its root still stages outside the tree."""
    for candidate in [target, *target.parents][:4]:
        if (candidate / MARKER).is_file():
            return candidate
    return target


def _staging_dir(root: Path) -> Path:
    return root.parent / STAGING


def _in_staging(path: Path) -> bool:
    return STAGING in path.parts


def _slug(root: Path, target: Path) -> str:
    """A file name for ``target``'s temp, lock and backup paths, unique per output and readable."""
    relative = target.relative_to(root.parent).as_posix()
    readable = "".join(c if c.isalnum() or c in "=-_" else "_" for c in relative)[:80]
    return f"{readable}.{hashlib.sha256(relative.encode()).hexdigest()[:10]}"


# Locks this process holds, by lock path: nested writers of one output (a job holding the lock
# around a partition write that takes it again) share it instead of blocking on themselves.
_held: dict[str, int] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def output_lock(
    target: str | Path, *, root: str | Path | None = None, kind: str | None = None
) -> Iterator[Path]:
    """Hold the lock of ``target`` (under the output ``root``, by default ``target`` itself).

    On first entry: checks ``root`` is a ``kind`` output (see :func:`check_output`) and marks it
    when it is a separate folder, takes the lock (one line if another run holds it), finishes or
    rolls back an interrupted replace of ``target`` and removes what a killed run left. Yields the
    staging folder for ``target``'s temp files.
    """
    target = Path(os.path.abspath(target))
    root = Path(os.path.abspath(root)) if root is not None else _find_root(target)
    if kind is not None:
        check_output(root, kind)
    staging = _staging_dir(root)
    slug = _slug(root, target)
    lock_path = staging / f"{slug}.lock"
    key = str(lock_path)
    with _held_guard:
        nested = _held.get(key, 0) > 0
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield staging
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    staging.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"{target}: another propensity run is writing it right now (lock {lock_path}); "
            "wait for it to finish and run again"
        ) from None
    with _held_guard:
        _held[key] = 1
    try:
        _recover(target, staging, slug)
        if kind is not None and root != target:
            root.mkdir(parents=True, exist_ok=True)
            mark_output(root, kind)
        yield staging
    finally:
        with _held_guard:
            _held.pop(key, None)
        lock.release()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _recover(target: Path, staging: Path, slug: str) -> None:
    """Finish an interrupted replace of ``target`` and remove a killed run's temp files."""
    new, old = staging / f"{slug}.new", staging / f"{slug}.old"
    if old.exists() and not target.exists():
        # The old output was moved aside only once the new one was complete: finish the replace.
        os.replace(new if new.exists() else old, target)
    for leftover in staging.glob(f"{slug}.*"):
        if not leftover.name.endswith(".lock"):
            _remove(leftover)
    if target.parent.is_dir():
        for pattern in _LEGACY_LEFTOVERS:
            for leftover in target.parent.glob(pattern.format(name=glob_escape(target.name))):
                if leftover.name == f".{target.name}.old" and not target.exists():
                    os.replace(leftover, target)
                else:
                    _remove(leftover)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped (``as_of=...`` names are plain, but users' are not)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def scratch_dir(target: str | Path, *, root: str | Path | None = None) -> Iterator[Path]:
    """A scratch folder for ``target``'s intermediate files, outside the output tree; removed on
    exit, and by the next run of ``target`` if this one is killed. Hold :func:`output_lock` first."""
    target = Path(os.path.abspath(target))
    root = Path(os.path.abspath(root)) if root is not None else _find_root(target)
    path = _staging_dir(root) / f"{_slug(root, target)}.scratch"
    _remove(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        _remove(path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _replace_dir(new: Path, target: Path, old: Path) -> None:
    if _exchange(new, target):
        _remove(new)  # now the old output
        return
    _two_renames(new, target, old)


def _two_renames(new: Path, target: Path, old: Path) -> None:
    """The fallback replace: a crash between the renames is finished by the next run's recovery."""
    os.replace(target, old)
    os.replace(new, target)
    _remove(old)


@contextlib.contextmanager
def atomic_path(
    target: str | Path, *, root: str | Path | None = None, kind: str | None = None
) -> Iterator[Path]:
    """Yield a free temporary path; on success it replaces ``target`` whole.

    Works for files and directories. ``root`` is the step's output folder (``--out``) when
    ``target`` is a partition inside it, ``kind`` the step's kind of output: an existing ``root``
    of another kind is refused (see :func:`check_output`), and a directory output gets the marker.
    A file output never replaces a directory. On error the temporary path is removed and the old
    ``target`` (if any) is left untouched. The temp path lives outside the output tree.
    """
    target = Path(target)
    if _in_staging(target):  # a file inside another output's temp tree: that one is atomic already
        target.parent.mkdir(parents=True, exist_ok=True)
        yield target
        return
    abs_target = Path(os.path.abspath(target))
    abs_root = Path(os.path.abspath(root)) if root is not None else _find_root(abs_target)
    folder = abs_target.is_dir() and not abs_target.is_symlink()
    if kind is None and folder and abs_root == abs_target and output_kind(abs_target) is None:
        raise UserError(f"{target}: is a folder; choose a file path (nothing was changed)")
    with output_lock(abs_target, root=abs_root, kind=kind) as staging:
        slug = _slug(abs_root, abs_target)
        tmp, old = staging / f"{slug}.new", staging / f"{slug}.old"
        try:
            yield tmp
            if tmp.is_dir() and kind is not None and abs_root == abs_target:
                mark_output(tmp, kind)
            if abs_target.is_dir() and not tmp.is_dir():
                raise UserError(f"{target}: is a folder; a file cannot replace it (nothing was changed)")
            abs_target.parent.mkdir(parents=True, exist_ok=True)
            if abs_target.is_dir() and not abs_target.is_symlink():
                _replace_dir(tmp, abs_target, old)
            else:
                os.replace(tmp, abs_target)
        finally:
            if old.exists() and not abs_target.exists():  # interrupted between the two renames
                os.replace(tmp if tmp.exists() else old, abs_target)
            _remove(tmp)
            _remove(old)


def write_json(data: Any, target: str | Path) -> Path:
    """Write JSON atomically (sorted keys, so re-runs give identical bytes)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return Path(target)
