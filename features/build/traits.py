"""Traits: profile attribute columns a project declares (``features.traits``: age band,
household size, store region), joined to the feature table after aggregation, point in time.

``profiles.csv`` is today's view of each profile. A trait is seen at an as-of date only when
its row says it held then: its ``updated_at`` before the as-of date, else (without that
column) its ``signup_date`` before it, else always. A numeric trait is read as a number (text
that is not one is NULL); a categorical one as text. Sensitive traits ride along for segment
rules but are never model features (:mod:`propensity.features.build.selection`).
"""

from __future__ import annotations

from propensity.core.config import FeatureConfig
from propensity.core.errors import UserError
from propensity.features.build.feature_set import Trait
from propensity.features.sql import Dialect

# The profile column that says when a row's traits were last set (optional).
UPDATED_AT = "updated_at"


def declared_traits(config: FeatureConfig, feature_names: set[str]) -> tuple[Trait, ...]:
    """The project's traits, each refused when it takes a feature's name."""
    out = []
    for name, trait in config.traits.items():
        if name in feature_names:
            raise UserError(f"features.traits: trait `{name}` has the name of a feature; rename the column")
        label = trait.label or name.replace("_", " ").capitalize()
        out.append(Trait(name, trait.kind, label, trait.governance == "sensitive"))
    return tuple(out)


def trait_columns(traits: tuple[Trait, ...], available: set[str], dialect: Dialect) -> list[str]:
    """SELECT items for each trait over profiles ``p`` joined to features ``f`` (``as_of_day``);
    a declared trait the profiles do not carry is a UserError naming it."""
    if not traits:
        return []
    missing = [t.name for t in traits if t.name not in available]
    if missing:
        given = ", ".join(sorted(c for c in available if not c.endswith("_count"))) or "no profiles file"
        raise UserError(
            f"features.traits declares `{missing[0]}` but the profile attributes have no such column "
            f"(columns: {given}); add it to profiles.csv or remove the trait"
        )
    as_of_date = dialect.date("f.as_of_day")
    when = UPDATED_AT if UPDATED_AT in available else "signup_date" if "signup_date" in available else None
    seen = f"TRY_CAST(p.{when} AS DATE) < {as_of_date}" if when else "TRUE"
    columns = []
    for t in traits:
        value = (
            f"TRY_CAST(p.{dialect.ident(t.name)} AS DOUBLE)"
            if t.kind == "numeric"
            else (f"CAST(p.{dialect.ident(t.name)} AS {dialect.string_type})")
        )
        target = "DOUBLE" if t.kind == "numeric" else dialect.string_type
        columns.append(f"CAST(CASE WHEN {seen} THEN {value} END AS {target}) AS {dialect.ident(t.name)}")
    return columns
