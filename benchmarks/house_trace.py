"""The path of the ``events`` argument through ``train``, traced (run by ``benchmarks/house.py``).

    python benchmarks/house_trace.py EVENTS OUT.json

Runs ``train_model("churn", EVENTS, ProjectConfig())`` of whichever ``propensity`` is on the
path (the working tree, or an old commit's on PYTHONPATH) under ``sys.setprofile`` until it
calls ``fit_and_register``, and writes the modules on the path, the calls back into a module
already left, and the path itself (see ``benchmarks/house.py`` for the definitions).
"""

from __future__ import annotations

import json
import pathlib
import sys
from pathlib import Path

PLAIN = (str, bytes, int, float, bool, type(None), pathlib.PurePath)


def _plain(value) -> bool:
    """Values that carry nothing of the events: scalars and paths, and the empty tuple and
    frozenset, which CPython keeps as one object each for the whole program (a ``()`` default
    of an unrelated dataclass is the very object an events-derived ``fs.traits == ()`` is), so
    their ids cannot say where they came from."""
    return isinstance(value, PLAIN) or (isinstance(value, tuple | frozenset) and not value)


class FitReachedError(Exception):
    """Raised where the job would start fitting: the events' part of ``train`` is over."""


def stop(*args, **kwargs):
    raise FitReachedError


class Derived:
    """The objects derived from the events (kept alive, so that their ids stay theirs)."""

    def __init__(self, events: str) -> None:
        self.events, self.kept, self.ids = events, [], set()

    def add(self, value, attributes: bool = True) -> None:
        """``value`` and, one level down, its attributes (or a tuple's items)."""
        if _plain(value) or id(value) in self.ids:
            return
        self.kept.append(value)
        self.ids.add(id(value))
        if isinstance(value, tuple | list):
            for part in value:
                self.add(part, attributes)
        elif attributes:
            for part in list(getattr(value, "__dict__", {}).values()):
                self.add(part, False)

    def carried_by(self, frame) -> bool:
        """Whether one of the frame's arguments is the events path or derived from the events."""
        code = frame.f_code
        for name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            value = frame.f_locals.get(name)
            if id(value) in self.ids or (isinstance(value, str | Path) and str(value) == self.events):
                return True
        return False


class CallPath:
    """The sequence of ``propensity`` modules a run moves through (all calls, or only the calls
    carrying the events), each repeated (caller, callee) pair followed once."""

    def __init__(self, derived: Derived | None) -> None:
        self.derived, self.modules, self.entries = derived, [], []
        self.stack: list[tuple[str | None, bool]] = []  # (module on the path or None, skipped)
        self.edges: set = set()

    def _current(self) -> str | None:
        return next((m for m, _ in reversed(self.stack) if m is not None), None)

    def _note(self) -> None:
        module = self._current()
        if module is not None and (not self.modules or self.modules[-1] != module):
            self.modules.append(module)

    def call(self, frame) -> None:
        if self.stack and self.stack[-1][1]:  # inside a call followed already
            self.stack.append((None, True))
            return
        name = frame.f_globals.get("__name__", "")
        module = name if name.startswith("propensity.") else None
        skip = False
        if module is not None:
            key = (frame.f_back.f_code if frame.f_back else None, frame.f_code)
            skip = frame.f_code.co_name == "<module>" or key in self.edges
            self.edges.add(key)
            if not skip and self.derived is not None and not self.derived.carried_by(frame):
                module = None  # not on the events' path (what it calls may be)
        caller = self._current()
        self.stack.append((None if skip else module, skip))
        if not skip and module is not None and module != caller:
            self.entries.append(module)
        if not skip:
            self._note()

    def ret(self, value) -> None:
        if self.stack:
            module = self.stack.pop()[0]
            if self.derived is not None and module is not None:
                self.derived.add(value)
            self._note()

    def figures(self) -> dict:
        seq, entries = self.modules, self.entries
        return {
            "modules": sorted(set(seq)),
            "returns": sum(1 for i, m in enumerate(entries) if m in entries[:i]),
            "moves_back": sum(1 for i, m in enumerate(seq) if m in seq[:i]),
            "path": seq,
            "entries": entries,
        }


def main() -> None:
    try:
        from propensity.pipeline.jobs import train as job
    except ImportError:  # before the house work
        from propensity.pipeline import model_jobs as job
    from propensity.core.config import ProjectConfig

    events, out = sys.argv[1], Path(sys.argv[2])
    job.fit_and_register = stop
    every, following = CallPath(None), CallPath(Derived(events))

    def profile(frame, event, arg):
        if event == "call":
            every.call(frame)
            following.call(frame)
        elif event == "return":
            every.ret(arg)
            following.ret(arg)

    sys.setrecursionlimit(10_000)
    sys.setprofile(profile)
    try:
        job.train_model("churn", events, ProjectConfig())
    except FitReachedError:
        pass
    finally:
        sys.setprofile(None)
    out.write_text(json.dumps({"all_calls": every.figures(), "events": following.figures()}))


if __name__ == "__main__":
    main()
