"""The Spark wing: what is Spark by nature, and the only code that imports pyspark.

Sessions and Hadoop file systems (:mod:`.session`), reading sources as DuckDB does
(:mod:`.sources`), Column-API staging (:mod:`.ingest`), large-star/small-star components
(:mod:`.graph`, :mod:`.identity`), the as-of identity graph (:mod:`.as_of`), feature tables and
labels in the SPARK dialect (:mod:`.features`) and whole-frame order statistics
(:mod:`.ordering`). Nothing outside this package imports it at module level: pyspark is an
optional extra, loaded only when ``engine.name`` is ``spark``.
"""
