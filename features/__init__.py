"""Model inputs: events in, point-in-time profiles, features, labels and segments out.

The shared vocabulary sits at this level: :mod:`.contract` (event columns and types),
:mod:`.sql` (quoting, for both engines) and :mod:`.connection` (the configured DuckDB
connection). Each job has its own sub-package, and imports run one way:

- :mod:`.ingest`: find, read, validate, normalise, hash and de-duplicate the events;
- :mod:`.identity`: stitch identities into profiles, as they were known at any date;
- :mod:`.build`: the feature registry compiled to SQL, labels, populations, stacked snapshots;
- :mod:`.activation`: segment rules over features and scores, memberships, destination exports;
- :mod:`.synthetic`: the Luma simulation and its oracle (depends on ``propensity.core`` only);
- :mod:`.engine`: the seam every job talks to (``Engine``, ``Events``), with two wings behind it:
  :mod:`.duckdb` (the default) and :mod:`.spark` (what is Spark by nature; the only place that
  imports pyspark).
"""
