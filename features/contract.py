"""The event contract, declared once: columns, canonical event types, XDM names, channels.

Every other module (staging, identity, the feature registry, the simulator) takes the
vocabulary from here; ARCHITECTURE.md has the prose version.
"""

from __future__ import annotations

import datetime as dt

CANONICAL_EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "search",
    "email_send",
    "email_open",
    "email_click",
    "push_open",
    "app_launch",
    "call_center_call",
    "store_visit",
    "offer_redeemed",
    "login",
    "signup",
)

# Adobe Experience Platform (XDM) eventType values and the canonical names they map to.
XDM_EVENT_TYPES: dict[str, str] = {
    "web.webpagedetails.pageViews": "page_view",
    "commerce.productViews": "product_view",
    "commerce.productListAdds": "add_to_cart",
    "commerce.productListRemovals": "remove_from_cart",
    "commerce.checkouts": "checkout",
    "commerce.purchases": "purchase",
    "directMarketing.emailSent": "email_send",
    "directMarketing.emailOpened": "email_open",
    "directMarketing.emailClicked": "email_click",
    "application.launch": "app_launch",
}

CHANNELS: tuple[str, ...] = (
    "web",
    "mobile_app",
    "email",
    "sms",
    "push",
    "call_center",
    "store",
    "advertising",
)

# Raw PII columns and the hashed namespace each becomes on ingest.
HASHED_IDENTITIES: dict[str, str] = {"email": "email_sha256", "phone": "phone_sha256"}

REQUIRED_COLUMNS: tuple[str, ...] = ("timestamp", "event_type")
STRING_COLUMNS: tuple[str, ...] = ("channel", "product_category", "sku", "campaign")
NUMERIC_COLUMNS: tuple[str, ...] = ("revenue", "quantity")

# Bad-row reasons, in the order they are checked: a row is reported under its first one.
BAD_ROW_REASONS: tuple[str, ...] = (
    "unparseable_timestamp",
    "missing_event_type",
    "no_identity",
    "invalid_identity",
    "invalid_revenue",
    "negative_revenue",
    "invalid_quantity",
    "future_timestamp",
)

# Plausibility limits: an identity value longer than this, or a revenue or quantity that is NaN,
# infinite or larger in magnitude, is a bad row (``invalid_identity`` / ``invalid_revenue`` /
# ``invalid_quantity``): such values are mistakes or abuse, and 1e308 overflows every sum to inf.
MAX_IDENTITY_CHARS = 256
MAX_ABS_REVENUE = 1e9
MAX_ABS_QUANTITY = 1e6
# Without --as-of, an event more than this after the ingest time is a ``future_timestamp`` bad
# row, so one mistyped year can never become the default as-of.
DEFAULT_FUTURE_TOLERANCE_HOURS = 24


def future_limit(as_of: dt.date | None, tolerance_hours: int = DEFAULT_FUTURE_TOLERANCE_HOURS) -> dt.datetime:
    """The first naive-UTC instant an event may not have: the day after ``as_of``, else now
    plus the tolerance."""
    if as_of is not None:
        return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    return now + dt.timedelta(hours=tolerance_hours)


# Profile attributes that are consent flags ('y' / 'n' / NULL = not given): carried for
# segments and exports, never used as features.
CONSENT_COLUMNS: tuple[str, ...] = ("consent_personalization", "consent_marketing")
# The closed vocabulary of consent values (compared trimmed and lower-cased); empty means not
# given. Anything else is refused at validate/ingest, or with quarantine counts as opted out:
# an unrecognised value (``off``, ``revoked``) must never let a profile be exported.
CONSENT_GIVEN: tuple[str, ...] = ("y", "yes", "true", "1")
CONSENT_REFUSED: tuple[str, ...] = ("n", "no", "false", "0")
UNRECOGNISED_CONSENT = "?"  # staged stand-in for a value outside the vocabulary, resolved at once


def consent_message(source: str, column: str, count: int, values: list[str], rows: list[int]) -> str:
    """The one-line refusal of unrecognised consent values (file, column, rows, values)."""
    shown = ", ".join(repr(v[:40]) for v in values)
    return (
        f"{source}: column {column} has {count} unrecognised consent values ({shown}; rows "
        f"{', '.join(map(str, rows))}); use {'/'.join(CONSENT_GIVEN)} for given, "
        f"{'/'.join(CONSENT_REFUSED)} for refused or leave it empty, or pass --on-bad-rows "
        "quarantine to treat them as opted out"
    )


# Event types with their own activity features, in feature-table order (sign-ups are a
# profile fact, not activity).
ACTIVITY_EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "email_send",
    "email_open",
    "email_click",
    "push_open",
    "app_launch",
    "call_center_call",
    "store_visit",
    "offer_redeemed",
    "login",
)
