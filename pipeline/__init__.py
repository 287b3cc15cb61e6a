"""Orchestration: the jobs that run each step from files to files (:mod:`.jobs`) and the
Typer command line on top of them (:mod:`.cli`). ``jobs`` never imports ``cli``."""
