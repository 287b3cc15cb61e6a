"""The demo's journeys step: the yoga funnel and its fallout (by upsell score bucket), the paths
to a yoga purchase, and what drives yoga purchases and yoga class registrations (a custom event
type of the simulation) across web, app, email, push, call centre and store (every credit
method side by side)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from propensity.core.config import ProjectConfig
from propensity.pipeline.jobs import journeys

YOGA_FUNNEL = "product_view[category=yoga] > add_to_cart > checkout > purchase[category=yoga]"
YOGA_PURCHASE = "purchase[category=yoga]"
CLASS_REGISTRATION = "class_registration"


def _print_funnel(funnel: journeys.FunnelResult, as_of: dt.date, console: Console) -> None:
    """The funnel per score bucket, and where those who viewed yoga but did not add to cart went."""
    table = Table(title=f"Yoga funnel as of {as_of} (14-day window), by upsell score bucket")
    table.add_column("step")
    groups = list(dict.fromkeys(funnel.steps["group"]))
    for group in groups:
        table.add_column(f"{group}: entrants (from first)", justify="right")
    for step, rows in funnel.steps.groupby("step", sort=True):
        cells = []
        for group in groups:
            row = rows[rows["group"] == group]
            if row.empty:
                cells.append("")
                continue
            r = row.iloc[0]
            cells.append(f"{r['entrants']:,} ({r['conversion_from_first']:.0%})")
        table.add_row(f"{step}. {rows['name'].iloc[0]}", *cells)
    console.print(table)
    fallout = funnel.fallout[(funnel.fallout["step"] == 2) & (funnel.fallout["kind"] == "event_type")]
    if len(fallout):
        went = ", ".join(f"{r.next} {r.share:.0%}" for r in fallout.head(4).itertuples())
        console.print(f"viewed yoga but did not add to cart; their next event: {went}")


def _print_credit(
    credit: journeys.AttributionResult, console: Console, what: str = "yoga purchases"
) -> pd.DataFrame:
    """Each method's share of credit per channel (channels by Shapley credit); returns the shares."""
    wide = credit.credit.pivot(index="channel", columns="method", values="share")
    table = Table(
        title=f"What drives {what}: share of credit ({credit.conversions:,} {what}, "
        f"{credit.conversions_without_touch:,} with no touchpoint in the 30 days before)"
    )
    table.add_column("channel")
    methods = ["first", "last", "linear", "time_decay", "position", "markov", "shapley"]
    for method in methods:
        table.add_column(method, justify="right")
    for channel, row in wide.sort_values("shapley", ascending=False).iterrows():
        table.add_row(str(channel), *(f"{row[m]:.0%}" for m in methods))
    console.print(table)
    return wide


def run(
    ingested: Path, config: ProjectConfig, out: Path, scores: Path, as_of: dt.date, console: Console
) -> dict[str, Any]:
    """Funnel, paths and attribution on the demo's data; prints them and returns the figures."""
    with console.status("yoga funnel"):
        funnel = journeys.run_funnel(
            ingested, out / "funnel", config, YOGA_FUNNEL, window="14d", by=f"{scores}:bucket", as_of=as_of
        )
    _print_funnel(funnel, as_of, console)

    with console.status("paths to a yoga purchase"):
        paths = journeys.run_paths(
            ingested, out / "paths", config, YOGA_PURCHASE, depth=3, by="channel", as_of=as_of
        )
    top = paths.paths.head(3)
    console.print(
        "most frequent channel paths to a yoga purchase: "
        + "; ".join(f"{r.path} ({r.profiles:,})" for r in top.itertuples())
    )

    credits = {}
    for name, outcome, what in (
        ("attribution", YOGA_PURCHASE, "yoga purchases"),
        ("attribution_classes", CLASS_REGISTRATION, "yoga class registrations"),
    ):
        with console.status(f"attributing {what}"):
            credits[name] = journeys.run_attribution(
                ingested,
                out / name,
                config,
                outcome,
                lookback="30d",
                since=as_of - dt.timedelta(days=90),
                bootstrap=100,
                as_of=as_of,
            )
        _print_credit(credits[name], console, what)
    wide = credits["attribution"].credit.pivot(index="channel", columns="method", values="share")
    classes = credits["attribution_classes"].credit.pivot(index="channel", columns="method", values="share")
    pages = [funnel.out, paths.out, *(c.out for c in credits.values())]
    console.print("journey pages: " + ", ".join(str(p / "journey.html") for p in pages))
    whole = funnel.steps[funnel.steps["group"] == "all"]
    return {
        "funnel_entrants": whole["entrants"].tolist(),
        "funnel_conversion": float(whole["conversion_from_first"].iloc[-1]),
        "attribution_shapley": {str(k): float(v) for k, v in wide["shapley"].items()},
        "attribution_markov": {str(k): float(v) for k, v in wide["markov"].items()},
        "class_registrations": credits["attribution_classes"].conversions,
        "class_attribution_shapley": {str(k): float(v) for k, v in classes["shapley"].items()},
        "out": str(out),
    }
