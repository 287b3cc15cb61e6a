"""Yoga class registrations in the Luma simulation (features/synthetic/classes.py): a custom event
type that leaves every other event of a seed as it was, follows channel touches of yoga-interested
people, survives ingest and can be attributed."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from propensity.core.config import ProjectConfig
from propensity.features.synthetic import classes, writer
from propensity.features.synthetic.classes import CLASS_EFFECTS, simulate_class_registrations
from propensity.features.synthetic.events import MICROS
from propensity.features.synthetic.simulator import simulate
from propensity.features.synthetic.world import CH, ET, YOGA, GeneratorSettings
from propensity.pipeline.jobs import ingest as ingest_jobs
from propensity.pipeline.jobs import journeys as journey_jobs

SETTINGS = GeneratorSettings(profiles=800, days=150, seed=3)


def _events_in_file_order(directory) -> pd.DataFrame:
    """Every written event, files in name order, rows in file order, values decoded."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted((directory / "events").glob("*.parquet"))])
    decoded = {
        name: column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
        for name, column in zip(table.column_names, table.columns, strict=True)
    }
    return pa.table(decoded).to_pandas()


def test_registrations_leave_every_other_event_byte_identical(tmp_path, monkeypatch):
    writer.generate(SETTINGS, tmp_path / "with")
    # The same seed without registrations: what the generator wrote before they existed.
    monkeypatch.setattr(writer, "class_registrations_for", lambda *args: None)
    writer.generate(SETTINGS, tmp_path / "without")
    with_, without = _events_in_file_order(tmp_path / "with"), _events_in_file_order(tmp_path / "without")
    registered = with_["event_type"] == "class_registration"
    assert registered.sum() > 10 and not (without["event_type"] == "class_registration").any()
    others = with_[~registered].reset_index(drop=True)
    pd.testing.assert_frame_equal(others.astype(str), without.astype(str))
    pd.testing.assert_frame_equal(others, without)
    for name in ("profiles.csv", "ground_truth/simulation.json", "ground_truth/purchases.parquet"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes(), name
    truth = json.loads((tmp_path / "with" / "ground_truth" / "class_registrations.json").read_text())
    assert truth["registrations"] == registered.sum()
    assert set(truth["true_order"]) == set(CLASS_EFFECTS)
    # Event ids stay unique: the registrations' numbers follow the last one.
    assert with_.loc[registered, "event_id"].is_unique
    assert not with_.loc[registered, "event_id"].isin(others["event_id"]).any()


def test_registrations_follow_touches_of_known_yoga_people():
    settings = GeneratorSettings(profiles=3000, days=200, seed=5)
    sim = simulate(settings)
    start_us = writer._start_micros(settings)
    regs = simulate_class_registrations(sim.events, sim.traits, settings.seed, start_us, settings.days)
    again = simulate_class_registrations(sim.events, sim.traits, settings.seed, start_us, settings.days)
    np.testing.assert_array_equal(regs.ts, again.ts)  # its own seeded stream: repeatable
    assert len(regs.person) > 80
    traits, ev = sim.traits, sim.events
    day = (regs.ts - start_us) // (86_400 * MICROS)
    assert (traits.known_from[regs.person] <= day).all() and not traits.is_bot[regs.person].any()
    assert set(np.unique(regs.channel).tolist()) <= {CH["store"], CH["mobile_app"], CH["web"]}
    # Each follows a touch of the same person 10 minutes to 36 hours before it.
    touch_types = [
        ET[t] for t in ("store_visit", "push_open", "call_center_call", "email_open", "product_view")
    ]
    touches = pd.DataFrame(
        {"person": ev["person"], "ts": ev["ts"], "type": ev["type"], "cat": ev["category"]}
    )
    touches = touches[touches["type"].isin(touch_types)]
    touches = touches[(touches["type"] != ET["product_view"]) | (touches["cat"] == YOGA)]
    pairs = pd.DataFrame({"person": regs.person, "rts": regs.ts, "r": np.arange(len(regs.ts))}).merge(
        touches, on="person"
    )
    lag = pairs["rts"] - pairs["ts"]
    followed = pairs[(lag >= 600 * MICROS) & (lag < 36 * 3600 * MICROS)]["r"].nunique()
    assert followed == len(regs.ts)
    # At most one a week per person.
    frame = pd.DataFrame({"person": regs.person, "ts": regs.ts}).sort_values(["person", "ts"])
    gaps = frame.groupby("person")["ts"].diff().dropna()
    assert (gaps >= 7 * 86_400 * MICROS).all()
    # Yoga-interested people register; people with little yoga interest hardly do.
    yoga = traits.affinity[:, YOGA]
    counts = np.bincount(regs.person, minlength=len(yoga))
    known = traits.known_from <= settings.days
    keen, cold = known & (yoga >= 0.4), known & (yoga < 0.05)
    assert counts[keen].mean() > 10 * counts[cold].mean()
    # The ground truth: expected registrations per channel add up to about what happened (the
    # weekly limit and the end of the period take a few).
    expected = sum(regs.expected_by_channel.values())
    assert 0.7 * expected <= len(regs.person) <= expected + 4 * np.sqrt(expected)


def test_ingest_keeps_class_registrations_and_attribution_credits_them(luma_small, tmp_path):
    raw = pd.read_parquet(luma_small / "events", columns=["event_type", "crm_id", "channel"])
    registrations = raw[raw["event_type"] == "class_registration"]
    assert len(registrations) > 50 and registrations["crm_id"].notna().all()
    ingest_jobs.ingest(luma_small, tmp_path / "ingested", ProjectConfig())
    con = duckdb.connect()
    kept = con.execute(
        "SELECT count(*), count(DISTINCT profile_id) FROM read_parquet(?) "
        "WHERE event_type = 'class_registration'",
        [str(tmp_path / "ingested" / "events.parquet")],
    ).fetchone()
    assert kept[0] == len(registrations)
    assert 0 < kept[1] <= registrations["crm_id"].nunique()
    credit = journey_jobs.run_attribution(
        tmp_path / "ingested",
        tmp_path / "credit",
        ProjectConfig(),
        classes.CLASS_REGISTRATION,
        since=dt.date(2025, 5, 1),
        bootstrap=0,
        track=False,
    )
    assert credit.conversions > 20
    shares = credit.credit[credit.credit["method"] == "shapley"].set_index("channel")["share"]
    assert shares.sum() == pytest.approx(1.0) and shares.get("store", 0) > 0
