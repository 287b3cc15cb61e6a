"""The model report: one self-contained HTML page a marketer and a data scientist can open.

Everything it shows is passed in (figures as PNG bytes, tables as DataFrames); the page
embeds the images as data URIs and needs no server, no script and no network.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from propensity.models.plots import plt  # pyplot, with the backend chosen for batch jobs

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1100px; color: #1f2933; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #d9e2ec; padding-bottom: 0.3rem; }
.meta { color: #52606d; } .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1.2rem; }
figure { margin: 0; } figure img { width: 100%; border: 1px solid #e4e7eb; }
figcaption { color: #52606d; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f5f7fa; }
.note { color: #52606d; font-size: 0.9rem; }
"""


@dataclass(frozen=True)
class Figure:
    """A chart on the page: PNG bytes, a title and what it shows."""

    title: str
    png: bytes
    caption: str = ""


@dataclass
class ReportSection:
    """A titled part of the report: prose, figures and tables."""

    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def png_of(fig: plt.Figure) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def score_distribution_figure(scores: np.ndarray, buckets: tuple[int, int], title: str) -> Figure:
    """Histogram of 0-100 scores with the bucket thresholds marked."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(scores, bins=np.arange(0, 102, 2), color="#4c72b0")
    for threshold, name in zip(buckets, ("medium", "high"), strict=True):
        ax.axvline(threshold, color="#d64545", linestyle="--")
        ax.text(threshold + 1, ax.get_ylim()[1] * 0.92, name, color="#d64545")
    ax.set(xlabel="score (0-100)", ylabel="profiles", title=title)
    return Figure(title, png_of(fig), "Scores of the latest run; dashed lines are the bucket thresholds.")


def history_figure(history: pd.DataFrame) -> Figure:
    """PSI of the score distribution over as-of dates, with the 0.1 / 0.2 warning lines."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(pd.to_datetime(history["as_of"]), history["psi"], marker="o", color="#4c72b0")
    ax.axhline(0.1, color="#f0b429", linestyle="--", label="0.1: watch")
    ax.axhline(0.2, color="#d64545", linestyle="--", label="0.2: investigate")
    ax.set(xlabel="as-of date", ylabel="PSI vs reference", title="Score stability over time")
    ax.legend()
    fig.autofmt_xdate()
    return Figure(
        "Scoring history",
        png_of(fig),
        "Population stability index of each run's scores against the model's reference.",
    )


def _table_html(title: str, frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "" if np.isnan(value) else f"{value:,.4g}"
        if isinstance(value, int | np.integer):
            return f"{value:,}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    caption = f"<p><strong>{html.escape(title)}</strong></p>" if title else ""
    return f"{caption}<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    caption = html.escape(figure.caption or figure.title)
    return (
        f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_report(title: str, subtitle: str, sections: list[ReportSection]) -> str:
    """The whole page as one HTML string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>{html.escape(subtitle)}</p>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p class='note'>{html.escape(section.text)}</p>")
        if section.figures:
            parts.append("<div class='grid'>" + "".join(_figure_html(f) for f in section.figures) + "</div>")
        for table_title, frame in section.tables:
            parts.append(_table_html(table_title, frame))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


_FIGURE = re.compile(
    r'<figure><img alt="(?P<title>[^"]*)" src="data:image/png;base64,(?P<data>[A-Za-z0-9+/=]+)">'
    r"<figcaption>(?P<caption>.*?)</figcaption></figure>"
)


def report_figures(page: str) -> list[Figure]:
    """The charts of a page written by :func:`render_report`, in page order (its inverse for
    figures: what the README's pictures are cut from)."""
    return [
        Figure(html.unescape(m["title"]), base64.b64decode(m["data"]), html.unescape(m["caption"]))
        for m in _FIGURE.finditer(page)
    ]
