"""The ingest directory's format, which either engine writes and reads.

``manifest.json`` records the format version; a directory written by an older version is
refused with one line, so no step reads tables whose shape it does not know.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from propensity.core.errors import UserError

OnBadRows = Literal["fail", "quarantine"]
# Bumped whenever the ingest output changes shape (2: events carry new_identities;
# 3: events and profiles carry profile_key; 4: the identity graph keeps when each identity
# and link was first seen, and events their anchor identity, for profiles as of a date).
INGEST_FORMAT = 4
# The identity graph's tables, written by ingest and read back as views of the same name.
GRAPH_TABLES = ("identity_map", "identity_links", "identity_unsettled")
# Every table an ingest directory holds (``profile_attributes`` too, when there were some).
INGEST_TABLES = ("events", "profiles", *GRAPH_TABLES)


def checked_manifest(text: str, directory: Any) -> dict[str, Any]:
    """An ingest directory's manifest, refused when an older format wrote it."""
    manifest = json.loads(text)
    if manifest.get("format") != INGEST_FORMAT:
        raise UserError(
            f"{directory}: written by an older propensity (ingest format "
            f"{manifest.get('format', 1)}, need {INGEST_FORMAT}); run `propensity ingest` again"
        )
    return manifest
