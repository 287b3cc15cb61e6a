"""The score-table contract (ARCHITECTURE.md "Score table"), declared once.

``models.scoring`` builds batches in :data:`BATCH_SCHEMA`; either engine adds the
``percentile`` (which needs the whole scored population) just before ``scored_at`` and carries
the :data:`IDENTITY_COLUMNS` present; segment rules read :data:`RULE_COLUMNS`. It sits in
``core`` because ``models`` (which writes it) and ``features`` (whose engines rank and whose
rules read it) may not import each other.
"""

from __future__ import annotations

import pyarrow as pa

FACTOR_TYPE = pa.struct(
    [
        pa.field("feature", pa.string()),
        pa.field("label", pa.string()),
        pa.field("value", pa.string()),  # the profile's value as shown to a person ("12", "gold")
        # log-odds contribution (exact TreeSHAP); an uplift model's: to its uplift (models.uplift)
        pa.field("impact", pa.float64()),
    ]
)
# One scored batch, before the percentile and the identity columns.
BATCH_SCHEMA = pa.schema(
    [
        pa.field("profile_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("as_of", pa.date32()),
        pa.field("probability", pa.float64()),
        pa.field("score", pa.int16()),
        pa.field("bucket", pa.string()),
        pa.field("factors", pa.list_(FACTOR_TYPE)),
        pa.field("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)
# Uplift models (a model config with a `treatment`) add this column after `bucket`: the change in
# the outcome's probability that contacting the profile makes (README "Uplift models").
UPLIFT = pa.field("uplift", pa.float64())
# 1-100 within the scored population: ceil(100 * cume_dist) over probability, ties share one.
PERCENTILE = pa.field("percentile", pa.int16())
# Identity namespaces carried on the score table: one representative value each (the
# smallest); every identity of a profile is in the ingest's identity_map.
IDENTITY_COLUMNS = ("crm_id", "email_sha256", "phone_sha256", "ecid")
BUCKETS = ("high", "medium", "low")
# Columns a segment rule may read, as `<model>.<column>`, with the kind it compares.
RULE_COLUMNS: dict[str, str] = {
    "probability": "number",
    "score": "number",
    "percentile": "number",
    "bucket": "string",
    "uplift": "number",  # uplift models only: a rule reading it on another model is refused
}


def batch_schema(identity_columns: list[str] | tuple[str, ...] = (), uplift: bool = False) -> pa.Schema:
    """A scored batch's schema with ``identity_columns`` (strings) after ``scored_at``, and with
    :data:`UPLIFT` after ``bucket`` for an uplift model."""
    schema = BATCH_SCHEMA
    if uplift:
        schema = schema.insert(schema.get_field_index("bucket") + 1, UPLIFT)
    for column in identity_columns:
        schema = schema.append(pa.field(column, pa.string()))
    return schema


def histogram_bins() -> list[int]:
    """The score histogram's bin edges: [0, 5), [5, 10), ... [95, 100]."""
    return list(range(0, 101, 5))
