"""Charts and the HTML section of the journey commands (funnel, paths, attribution).

Pages are rendered by :func:`propensity.models.report.render_report`: self-contained, charts
embedded as PNG, no script and no network.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from propensity.models.plots import plt
from propensity.models.report import Figure, ReportSection, png_of, render_report

BLUE, GREY, RED = "#4c72b0", "#c5cbd3", "#d64545"


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def funnel_figure(steps: pd.DataFrame, title: str) -> Figure:
    """Entrants per step (bars), units still in progress on top (light), conversion from the first."""
    table = steps[steps["group"] == steps["group"].iloc[0]] if "group" in steps else steps
    n = len(table)
    fig, ax = plt.subplots(figsize=(7, max(2.8, 0.45 * n + 1.2)))
    y = np.arange(n)[::-1]
    ax.barh(y, table["entrants"], color=BLUE, label="reached the step")
    ax.barh(y, table["in_progress"], left=table["entrants"], color=GREY, label="still in progress")
    for yi, (_, row) in zip(y, table.iterrows(), strict=True):
        rate = row["conversion_from_first"]
        text = f" {row['entrants']:,}" + (f"  ({rate:.1%} of step 1)" if rate == rate else "")
        ax.text(row["entrants"] + row["in_progress"], yi, text, va="center", fontsize=8)
    ax.set_yticks(y, [f"{int(s)}. {name}"[:40] for s, name in zip(table["step"], table["name"], strict=True)])
    ax.set(xlabel="units", title=title)
    ax.set_xlim(0, max(1, float((table["entrants"] + table["in_progress"]).max())) * 1.35)
    ax.legend(loc="lower right", fontsize=8)
    return Figure(
        title, png_of(fig), "Units reaching each step; light bars are units whose window is still open."
    )


def _squash(links: pd.DataFrame, nodes_per_column: int) -> pd.DataFrame:
    """The links with their positions, the biggest nodes of each column kept and the rest one
    ``other`` node per column."""
    frame = links.copy()
    frame["s_pos"] = frame["source"].str.split(":", n=1).str[0].astype(int)
    frame["t_pos"] = frame["target"].str.split(":", n=1).str[0].astype(int)
    # Keep the biggest nodes of each column; the rest are one "other" node.
    inflow = (
        pd.concat(
            [
                frame[["source", "profiles"]].rename(columns={"source": "node"}),
                frame[["target", "profiles"]].rename(columns={"target": "node"}),
            ]
        )
        .groupby("node")["profiles"]
        .max()
    )
    position = inflow.index.str.split(":", n=1).str[0].astype(int)
    keep: set[str] = set()
    for pos in sorted(set(position)):
        column = inflow[position == pos].sort_values(ascending=False, kind="stable")
        keep.update(column.index[:nodes_per_column])

    def squash(node: str) -> str:
        return node if node in keep else node.split(":", 1)[0] + ":other"

    frame["source"], frame["target"] = frame["source"].map(squash), frame["target"].map(squash)
    frame = frame.groupby(["source", "target", "s_pos", "t_pos"], as_index=False)["profiles"].sum()
    return frame


def flow_figure(links: pd.DataFrame, title: str, nodes_per_column: int = 8) -> Figure:
    """A Sankey-style flow: one column per position, bands as wide as the profiles moving."""
    frame = _squash(links, nodes_per_column)
    positions = sorted(set(frame["s_pos"]) | set(frame["t_pos"]))
    size = pd.concat(
        [frame.groupby("source")["profiles"].sum(), frame.groupby("target")["profiles"].sum()], axis=1
    ).max(axis=1)
    total = float(max(size.groupby(size.index.str.split(":", n=1).str[0]).sum().max(), 1))
    fig, ax = plt.subplots(figsize=(9, 5))
    gap = 0.02
    place: dict[str, list[float]] = {}
    for x, pos in enumerate(positions):
        column = size[[n for n in size.index if int(n.split(":", 1)[0]) == pos]].sort_values(ascending=False)
        top = 1.0
        for node, value in column.items():
            height = value / total * (1 - gap * len(column))
            place[node] = [x, top, top - height, top, top]  # x, top, bottom, next out, next in
            ax.add_patch(plt.Rectangle((x - 0.03, top - height), 0.06, height, color=BLUE))
            label = node.split(":", 1)[1]
            ax.text(x + 0.05, top - height / 2, f"{label} ({int(value):,})", va="center", fontsize=7)
            top -= height + gap
    curve = np.linspace(0, 1, 30)
    ease = 3 * curve**2 - 2 * curve**3
    for _, row in frame.sort_values("profiles", ascending=False).iterrows():
        s, t = place[row["source"]], place[row["target"]]
        height = row["profiles"] / total * (1 - gap * 8)
        s_top, t_top = s[3], t[4]
        xs = s[0] + 0.03 + curve * (t[0] - s[0] - 0.06)
        upper = s_top + (t_top - s_top) * ease
        ax.fill_between(xs, upper - height, upper, color=BLUE, alpha=0.25, linewidth=0)
        s[3] -= height
        t[4] -= height
    ax.set_xlim(-0.2, len(positions) - 0.4)
    ax.set_ylim(min(p[2] for p in place.values()) - 0.05, 1.05)
    ax.set_xticks(range(len(positions)), [str(p) for p in positions])
    ax.set_yticks([])
    ax.set(xlabel="position (0 = the event)", title=title)
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    return Figure(title, png_of(fig), "Where profiles come from (or go): bands are as wide as the profiles.")


def attribution_figure(credit: pd.DataFrame, title: str) -> Figure:
    """Share of credit per channel under each method, with bootstrap intervals."""
    methods = list(dict.fromkeys(credit["method"]))
    channels = sorted(set(credit["channel"]))
    fig, ax = plt.subplots(figsize=(9, max(3.5, 0.5 * len(channels) * len(methods) / 3)))
    width = 0.8 / max(len(methods), 1)
    colours = plt.get_cmap("tab10")
    for m, method in enumerate(methods):
        rows = credit[credit["method"] == method].set_index("channel").reindex(channels)
        total = rows["credit"].sum()
        share = rows["credit"] / total if total else rows["credit"] * 0
        err = None
        if rows["low"].notna().all() and total:
            err = np.vstack(
                [(share - rows["low"] / total).clip(lower=0), (rows["high"] / total - share).clip(lower=0)]
            )
        ax.barh(
            np.arange(len(channels)) + m * width - 0.4 + width / 2,
            share,
            height=width,
            xerr=err,
            color=colours(m % 10),
            label=method,
            error_kw={"elinewidth": 0.6, "capsize": 1.5},
        )
    ax.set_yticks(np.arange(len(channels)), channels)
    ax.invert_yaxis()
    ax.set(xlabel="share of the credit", title=title)
    ax.legend(fontsize=7, ncol=2, loc="center right")
    return Figure(
        title, png_of(fig), "Each method's share of the touched conversions, with 95 % bootstrap intervals."
    )


def funnel_section(steps: pd.DataFrame, fallout: pd.DataFrame, title: str, text: str) -> ReportSection:
    """The funnel as a report section: chart, step table and where fallen units went."""
    shown = steps.copy()
    shown["median"] = shown["median_seconds"].map(_duration)
    shown["p90"] = shown["p90_seconds"].map(_duration)
    columns = [
        "group",
        "step",
        "name",
        "entrants",
        "in_progress",
        "fallout",
        "conversion_from_previous",
        "conversion_from_previous_low",
        "conversion_from_previous_high",
        "conversion_from_first",
        "median",
        "p90",
    ]
    figures = [
        funnel_figure(steps[steps["group"] == g], f"Funnel: {g}")
        for g in list(dict.fromkeys(steps["group"]))[:4]
    ]
    return ReportSection(
        title,
        text,
        figures,
        [("Steps", shown[columns]), ("Where units that fell out went next", fallout)],
    )


def page(title: str, subtitle: str, sections: list[ReportSection]) -> str:
    """A whole journey page."""
    return render_report(title, subtitle, sections)
