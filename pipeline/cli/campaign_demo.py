"""The demo's campaign step: Luma's yoga campaign, its holdout, and the incremental revenue
`measure` finds, beside the simulator's truth."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from propensity.core.config import ProjectConfig
from propensity.pipeline.jobs import measure as measure_jobs


def run(data_dir: Path, ingested: Path, config: ProjectConfig, out: Path, console: Console) -> dict[str, Any]:
    """Measure the generated yoga campaign from its own arms (the send log the simulator wrote:
    crm_id and arm) and tell it; returns the headline figures."""
    truth_dir = data_dir / "ground_truth"
    campaign = json.loads((truth_dir / "campaigns.json").read_text())[0]
    request = measure_jobs.MeasureRequest(
        as_of=dt.date.fromisoformat(campaign["sent"]),
        horizon_days=campaign["horizon_days"],
        category=campaign["category"],
        seed=config.seed,
    )
    with console.status("measuring the yoga campaign against its holdout"):
        result = measure_jobs.measure(
            ingested, None, out, request, config, arms_file=truth_dir / "campaign_people.parquet"
        )
    figures = result.table[result.table["breakdown"] == ""].set_index("metric")
    sizes = result.sizes["campaign"]
    true_revenue = campaign["true"]["revenue_per_member_lift"] * sizes["targeted"]

    def show(metric: str, money: bool = False) -> str:
        row = figures.loc[metric]
        unit = "{:,.0f}" if money else "{:.2%}"
        low, high = unit.format(row["low"]), unit.format(row["high"])
        return f"{unit.format(row['estimate'])} (95 % interval {low} to {high})"

    console.print(
        f"Luma's yoga campaign went out on {campaign['sent']} to {sizes['targeted']:,} people; "
        f"{sizes['holdout']:,} were held out at random"
    )
    console.print(
        f"yoga buyers within {campaign['horizon_days']} days: {figures.loc['targeted_rate', 'estimate']:.1%} "
        f"targeted vs {figures.loc['holdout_rate', 'estimate']:.1%} holdout; lift {show('absolute_lift')}"
    )
    console.print(f"incremental revenue: {show('incremental_revenue', True)}")
    console.print(f"adjusted for the pre-period: {show('adjusted_incremental_revenue', True)}")
    console.print(f"the simulator's truth: {true_revenue:,.0f} (expected, from each person's true effect)")
    console.print(f"written to {result.out}")
    return {
        "as_of": campaign["sent"],
        "incremental_revenue": float(figures.loc["incremental_revenue", "estimate"]),
        "adjusted_incremental_revenue": float(figures.loc["adjusted_incremental_revenue", "estimate"]),
        "true_incremental_revenue": true_revenue,
    }
