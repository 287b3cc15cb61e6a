"""The ground-truth tables a simulated run writes beside its events (``ground_truth/``): the
people's latent traits, the calendar, each day's purchase probability and the campaigns'
people with their arms and effects (:mod:`.writer` writes the rest and calls these)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propensity.features.synthetic.result import Simulation
from propensity.features.synthetic.world import CATEGORIES, Calendar, Traits

PARQUET = {"compression": "zstd"}


def numbered_strings(prefix: str, numbers: np.ndarray, width: int = 0) -> pa.Array:
    """``prefix`` + each number as text, left-padded with zeros to ``width``."""
    text = pc.cast(pa.array(numbers), pa.string())
    if width:
        text = pc.utf8_lpad(text, width=width, padding="0")
    return pc.binary_join_element_wise(prefix, text, "")


def write_campaigns(directory: Path, sim: Simulation, dates: np.ndarray) -> None:
    """Each simulated campaign's eligible people with their arm, response type, true
    probabilities and both potential outcomes (``campaign_people.parquet``, with ``crm_id`` and
    dates), and each campaign's dates, sizes and true average effects (``campaigns.json``)."""
    tables, summary = [], []
    for truth in sim.campaigns:
        table = truth.table()
        table = table.append_column(
            "crm_id", numbered_strings("C", truth.person.astype(np.int64) + 100_000, 7)
        )
        outcome_date = pa.array(dates[truth.outcome_day])
        table = table.set_column(table.schema.get_field_index("outcome_day"), "outcome_date", outcome_date)
        tables.append(table)
        summary.append(
            {
                **dataclasses.asdict(truth.spec),
                "sent": str(dates[truth.send_day]),
                "horizon_end": str(dates[truth.send_day] + np.timedelta64(truth.spec.horizon_days, "D")),
                "members": {"targeted": int(truth.treated.sum()), "holdout": int((~truth.treated).sum())},
                "true": truth.true_lift(),
            }
        )
    pq.write_table(pa.concat_tables(tables), directory / "campaign_people.parquet", **PARQUET)
    (directory / "campaigns.json").write_text(json.dumps(summary, indent=1) + "\n")


def write_daily_probability(
    directory: Path, daily_probability: np.ndarray, dates: np.ndarray, n: int
) -> None:
    """Each person's purchase probability on each day (days x people; the oracle's target)."""
    days = len(dates)
    # Person-major order: Parquet then run-length encodes person_id and day almost for free.
    probability = pa.table(
        {
            "person_id": pa.array(np.repeat(np.arange(n, dtype=np.int32), days)),
            "day": pa.array(np.tile(dates, n)),
            "probability": pa.array(np.ascontiguousarray(daily_probability.T).reshape(-1)),
        }
    )
    pq.write_table(
        probability, directory / "daily_purchase_probability.parquet", row_group_size=4_000_000, **PARQUET
    )


def write_traits(directory: Path, tr: Traits, n: int) -> None:
    """Each person's latent traits."""
    traits = {"person_id": np.arange(n, dtype=np.int32)}
    for i, category in enumerate(CATEGORIES):
        traits[f"affinity_{category}"] = tr.affinity[:, i].astype(np.float32)
    for name in (
        "intent",
        "customer",
        "is_bot",
        "cycle_days",
        "cycle_shape",
        "dropout",
        "sensitivity",
        "offline_share",
    ):
        traits[name] = getattr(tr, name)
    pq.write_table(pa.table(traits), directory / "person_traits.parquet", **PARQUET)


def write_calendar(directory: Path, cal: Calendar, dates: np.ndarray) -> None:
    """The calendar the simulation lived through: weekdays, campaigns, promotions, seasons."""
    calendar = {
        "day": dates,
        "weekday": cal.weekday,
        "campaign": cal.campaign,
        "campaign_theme": np.where(cal.theme >= 0, CATEGORIES[np.maximum(cal.theme, 0)], None),
        "promotion_depth": cal.promo_depth,
        "promotion_category": np.where(
            cal.promo_category >= 0, CATEGORIES[np.maximum(cal.promo_category, 0)], None
        ),
        "season": cal.season,
        "email_effect": cal.email_effect,
    }
    for i, category in enumerate(CATEGORIES):
        calendar[f"appeal_{category}"] = cal.appeal[:, i]
    pq.write_table(pa.table(calendar), directory / "calendar.parquet", **PARQUET)
