"""The DuckDB engine: every job's steps on one embedded connection (the default engine).

:class:`DuckDBEngine` and :class:`LoadedEvents` satisfy :mod:`propensity.features.engine`'s
``Engine`` and ``Events``; the steps themselves are the DuckDB code of ``ingest``,
``identity``, ``build`` and ``activation``. Scoring's hand-tuned path (profile partitions, a
prefetch thread, the ranked partition) is in :mod:`.scoring`.
"""

from propensity.features.duckdb.engine import DuckDBEngine, LoadedEvents

__all__ = ["DuckDBEngine", "LoadedEvents"]
