"""The Spark wing: what is Spark by nature, and the only code that imports pyspark.

Sessions and Hadoop file systems (:mod:`.session`), reading sources as DuckDB does
(:mod:`.sources`), Column-API staging (:mod:`.ingest`), large-star/small-star components
(:mod:`.graph`, :mod:`.identity`), the as-of identity graph (:mod:`.as_of`), feature tables and
labels in the SPARK dialect (:mod:`.features`), whole-frame order statistics (:mod:`.ordering`),
scoring in ``mapInArrow`` (:mod:`.scoring`), segment rules as Spark SQL (:mod:`.qualify`) and
the engine the jobs talk to (:mod:`.engine`, ``features.engine``'s protocols). Only
``pipeline.jobs.events.engine_for`` imports it, when ``engine.name`` is ``spark``: pyspark is
an optional extra.
"""
