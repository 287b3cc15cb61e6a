"""The HTML page of `measure`: each holdout segment's arms and lift, raw and adjusted, as charts.

Rendered by :func:`propensity.models.report.render_report` (self-contained, PNG charts, no
script), like the model report and the journey pages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from propensity.models.plots import plt
from propensity.models.report import Figure, ReportSection, png_of, render_report

BLUE, GREY, ORANGE = "#4c72b0", "#9aa3ad", "#dd8452"


def arms_figure(whole: pd.DataFrame) -> Figure:
    """Outcome rate of each arm per segment, with its 95 % interval."""
    segments = sorted(whole["segment"].unique())
    fig, ax = plt.subplots(figsize=(7, max(2.6, 0.7 * len(segments) + 1.2)))
    y = np.arange(len(segments))[::-1]
    for offset, arm, color in ((0.18, "targeted", BLUE), (-0.18, "holdout", GREY)):
        rows = whole[whole["metric"] == f"{arm}_rate"].set_index("segment").reindex(segments)
        errors = [rows["estimate"] - rows["low"], rows["high"] - rows["estimate"]]
        ax.barh(y + offset, rows["estimate"], height=0.34, color=color, xerr=errors, capsize=3, label=arm)
    ax.set_yticks(y, [s[:36] for s in segments])
    ax.set(xlabel="share with an outcome within the horizon", title="Targeted vs holdout")
    ax.legend(loc="lower right", fontsize=8)
    return Figure(
        "Targeted vs holdout", png_of(fig), "Outcome rate of each arm, with its 95 % bootstrap interval."
    )


def lift_figure(table: pd.DataFrame) -> Figure:
    """Absolute lift, raw and regression-adjusted, per segment and breakdown group."""
    raw = table[table["metric"] == "absolute_lift"].reset_index(drop=True)
    adjusted = table[table["metric"] == "adjusted_absolute_lift"].set_index(["segment", "breakdown", "group"])
    labels = [
        f"{r.segment} · {r.breakdown}={r.group}" if r.breakdown else r.segment for r in raw.itertuples()
    ]
    fig, ax = plt.subplots(figsize=(7, max(2.6, 0.45 * len(raw) + 1.2)))
    y = np.arange(len(raw))[::-1]

    def bars(rows: pd.DataFrame, shift: float, marker: str, color: str, label: str) -> None:
        spread = [rows["estimate"] - rows["low"], rows["high"] - rows["estimate"]]
        ax.errorbar(rows["estimate"], y + shift, xerr=spread, fmt=marker, color=color, capsize=3, label=label)

    bars(raw, 0.12, "o", BLUE, "raw")
    if len(adjusted):
        keys = list(zip(raw["segment"], raw["breakdown"], raw["group"], strict=True))
        bars(adjusted.reindex(keys), -0.12, "s", ORANGE, "adjusted for the pre-period")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [label[:44] for label in labels])
    ax.set(xlabel="absolute lift (targeted - holdout)", title="Lift with 95 % intervals")
    ax.legend(loc="lower right", fontsize=8)
    return Figure(
        "Lift with 95 % intervals",
        png_of(fig),
        "Points are estimates, bars 95 % bootstrap intervals; a bar crossing 0 shows no lift at that level.",
    )


def lift_section(table: pd.DataFrame, sizes: dict, contamination: dict) -> ReportSection:
    """The section: text, the two charts, and the whole-segment figures as a table."""
    whole = table[table["breakdown"] == ""]
    shown = whole[["segment", "metric", "estimate", "low", "high", "p_value"]].round(4)
    lines = [
        f"{segment}: {s['targeted']:,} targeted, {s['holdout']:,} held out; contamination "
        + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in contamination.get(segment, {}).items())
        for segment, s in sizes.items()
    ]
    return ReportSection(
        "Did the campaign change anything?",
        " ".join(lines),
        [arms_figure(whole), lift_figure(table)],
        [("Figures of each whole segment", shown)],
    )


def page(as_of: str, section: ReportSection) -> str:
    """The whole measure page."""
    return render_report("Lift against the holdout", f"campaign as of {as_of}", [section])
