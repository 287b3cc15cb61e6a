"""The bottom layer every other package may import: errors, atomic I/O, config schemas.

It imports nothing of ``propensity.features``, ``propensity.models`` or
``propensity.pipeline`` (checked by import-linter in ``make test``).
"""
