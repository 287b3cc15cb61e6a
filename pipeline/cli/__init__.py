"""The ``propensity`` command line: one Typer command per step (:mod:`.app`), shared options and
one-line errors (:mod:`.options`), rich tables (:mod:`.printing`), the demo and the docs
commands. Commands import their jobs when run, so ``--help`` stays fast."""
