"""The jobs: each step from files to files, returning typed results (no printing).

``ingest`` (validate, ingest, load events), ``features``, ``train`` (train, evaluate, promote),
``score`` (score, explain), ``segments`` (segments, export, monitor), ``report``,
``inspection`` (for notebooks) and ``config_files`` (the YAML configs). Modules are imported on
use: the face stays light because the CLI imports it for every command.
"""
