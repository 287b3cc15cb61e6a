"""The jobs: each step from files to files, returning typed results (no printing).

Each job is written once and asks :func:`.events.engine_for` for the engine (DuckDB or Spark,
behind :mod:`propensity.features.engine`): ``events`` (the engine, events opened once, the
feature set), ``ingest`` (validate, ingest), ``features``, ``train``, ``evaluate`` (evaluate,
promote), ``score``, ``explain``, ``segments``, ``export``, ``monitor``, ``report``,
``inspection`` (for notebooks) and ``config_files`` (the YAML configs). ``explain``,
``evaluate``, ``export`` and ``monitor`` run on DuckDB whatever the engine. Modules are imported
on use: the face stays light because the CLI imports it for every command.
"""
