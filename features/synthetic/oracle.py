"""The best achievable prediction on simulated data, to measure a model against.

For a (profile, as_of) row the oracle is the probability of the model's outcome given
everything the simulation knew at the start of ``as_of``: every latent trait, the hidden
state (interest, cart, days since the last purchase including unrecorded ones, whether the
person has lapsed) and the calendar ahead (campaigns, promotions, seasons, drift).

How: the run is replayed from its seed to ``as_of`` (``simulator.replay``; the replay checks
it repeats the written run day by day), then ``replicas`` independent continuations of each
person's day-by-day process are simulated over the horizon, vectorised over (replicas x
people). Rather than averaging a 0/1 outcome per continuation, each continuation carries
the probability that no counted purchase happens on its path: every day it multiplies in
(1 - p q), where p is that day's purchase probability and q the share of purchases the
outcome counts (recorded, and in the category), then continues on the branch where no
counted purchase happened (an uncounted one still may, and resets the cycle). The average
over continuations is an unbiased estimate with far less noise than a 0/1 average
(a Rao-Blackwellised Monte Carlo), so the oracle's AUC is stable with a few dozen replicas.

Simulated campaigns (``settings.campaigns``, e.g. the demo's yoga campaign) add purchases of
their own, drawn apart from the world: the oracle multiplies in the chance that none of them
is counted over the horizon (:func:`no_campaign_purchase_probability`), exactly, from each
person's true probabilities and, once the campaign was sent, their arm. Without it the oracle
missed every campaign purchase, and a model that sees ``campaign_received`` beat it.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from propensity.core.config import OutcomeConfig
from propensity.core.errors import UserError
from propensity.features.synthetic.result import Simulation
from propensity.features.synthetic.simulator import dynamics_for, replay
from propensity.features.synthetic.world import CATEGORIES, CampaignSpec, GeneratorSettings

# Replicas per person; see the module docstring and the tests for how noisy this leaves the AUC.
REPLICAS = 64
# Rows (replicas x people) advanced at once: bounds memory, keeps numpy's loops long.
_CHUNK_ROWS = 400_000
SIMULATOR_VERSIONS = (2,)


def oracle_probabilities(
    con,
    frame: pd.DataFrame,
    outcome: OutcomeConfig,
    ground_truth_dir: str | Path,
    replicas: int = REPLICAS,
    seed: int = 0,
) -> pd.Series:
    """The oracle probability of ``outcome`` for each row of ``frame`` (profile_id, as_of).

    ``con`` must hold the ``identity_map`` view of the ingested events. Only profiles that
    are the whole of one simulated person (one person, and that person in no other profile)
    get a value: a person split over unstitched devices buys on one of them only. Others get
    NaN, as do outcomes the simulation cannot judge (revenue thresholds, non-purchase
    events, unknown categories), as_of dates outside the simulated period, and ground truth
    written by another version of the simulator. Returns a Series aligned with ``frame.index``.
    """
    result = pd.Series(np.nan, index=frame.index, dtype=float)
    judged, category = _judgeable(outcome)
    gt = Path(ground_truth_dir)
    if not judged or not (gt / "simulation.json").is_file():
        return result
    meta = json.loads((gt / "simulation.json").read_text())
    if meta.get("simulator_version") not in SIMULATOR_VERSIONS:
        return result
    settings = _settings(meta["settings"])
    person = _whole_people(con, frame, gt)
    as_of = pd.to_datetime(frame["as_of"]).dt.normalize()
    day = ((as_of - pd.Timestamp(settings.start)).dt.days).to_numpy()
    person_of_row = frame["profile_id"].map(person).to_numpy(dtype=float)
    usable = ~np.isnan(person_of_row) & (day >= 0) & (day < settings.days)
    if not usable.any():
        return result
    days = sorted({int(d) for d in day[usable]})
    simulation = replay(settings, days)
    _check_replay(simulation, meta, gt)
    values = np.full(len(frame), np.nan)
    for d in days:
        rows = np.flatnonzero(usable & (day == d))
        people, inverse = np.unique(person_of_row[rows].astype(np.int64), return_inverse=True)
        rng = np.random.default_rng([settings.seed, seed, d])
        none = no_counted_purchase_probability(
            simulation, d, people, outcome.horizon_days, category, replicas, rng
        )
        # Campaign purchases are drawn apart from the world's (own streams, no feedback), so
        # "no counted purchase" needs none from either.
        none *= no_campaign_purchase_probability(simulation, d, people, outcome.horizon_days, category)
        values[rows] = (1.0 - none if outcome.occurs else none)[inverse]
    result[:] = values
    return result


def no_counted_purchase_probability(
    simulation: Simulation,
    day: int,
    people: np.ndarray,
    horizon_days: int,
    category: int | None,
    replicas: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """P(no recorded purchase (in ``category``, if given) in [day, day + horizon)) per person,
    from the state at the start of ``day`` (``simulation.states[day]``), by ``replicas``
    conditional continuations each. The horizon stops at the end of the simulated period."""
    dynamics = dynamics_for(simulation)
    end = min(day + horizon_days, simulation.settings.days)
    start_state = simulation.states[day]
    out = np.empty(len(people))
    chunk = max(1, _CHUNK_ROWS // replicas)
    for first in range(0, len(people), chunk):
        rows = np.repeat(people[first : first + chunk], replicas)
        traits, state = simulation.traits.take(rows), start_state.take(rows)
        log_none = np.zeros(len(rows))
        for d in range(day, end):
            _, clicked = dynamics.emails(d, traits, state, rng)
            p = dynamics.purchase_probability(d, traits, state)
            counted = p * dynamics.counting_share(d, traits, category)
            log_none += np.log1p(-counted)
            # Continue on the branch where no counted purchase happened today.
            uncounted = rng.random(len(rows)) < (p - counted) / (1.0 - counted)
            purchases = dynamics.uncounted_purchase_kind(d, traits, uncounted, rng, category)
            sessions = dynamics.sessions(d, traits, state, purchases, clicked, rng)
            dynamics.update(traits, state, purchases, sessions, rng)
        out[first : first + chunk] = np.exp(log_none).reshape(-1, replicas).mean(axis=1)
    return out


def no_campaign_purchase_probability(
    simulation: Simulation, day: int, people: np.ndarray, horizon_days: int, category: int | None
) -> np.ndarray:
    """P(no purchase from a simulated campaign counted in [day, day + horizon)) per person, given
    what is known at the start of ``day``: each person's true probabilities under either arm;
    their arm once the campaign was sent (the treated got a ``campaign_received`` event, the
    holdout is the eligible rest), the holdout share before; and whether their campaign purchase
    already happened (then no other comes). A converting person buys on a day drawn uniformly
    from the campaign's horizon (``campaigns.draw_campaign``); campaign purchases are recorded
    (web) and in the campaign's category."""
    none = np.ones(len(people))
    end = min(day + horizon_days, simulation.settings.days)
    index = np.full(simulation.settings.profiles, -1)
    for truth in simulation.campaigns:
        if category is not None and list(CATEGORIES).index(truth.spec.category) != category:
            continue
        first, last = truth.send_day + 1, truth.send_day + truth.spec.horizon_days  # outcome days
        inside = max(0, min(end, last + 1) - max(day, first)) / truth.spec.horizon_days
        before = max(0, min(day, last + 1) - first) / truth.spec.horizon_days
        if inside == 0:
            continue
        index[:] = -1
        index[truth.person] = np.arange(len(truth))
        at = index[people]
        eligible = at >= 0
        at = at[eligible]
        if truth.send_day < day:  # sent (before this day's start): the arm is known
            p = np.where(truth.treated[at], truth.p_treated[at], truth.p_control[at])
        else:
            holdout = truth.spec.holdout
            p = (1 - holdout) * truth.p_treated[at] + holdout * truth.p_control[at]
        bought_before = truth.converted[at] & (truth.outcome_day[at] < day)
        # Given no campaign purchase before the day: p * inside / (1 - p * before).
        q = np.where(bought_before, 0.0, p * inside / (1.0 - p * before))
        none[eligible] *= 1.0 - q
    return none


def _judgeable(outcome: OutcomeConfig) -> tuple[bool, int | None]:
    """Whether the simulation knows the outcome's law, and its category index (None = any)."""
    if (
        outcome.event_type != "purchase"
        or outcome.min_revenue is not None
        or outcome.above_average_order_value
    ):
        return False, None
    if not outcome.category:
        return True, None
    names = list(CATEGORIES)
    category = outcome.category.lower()
    return (True, names.index(category)) if category in names else (False, None)


def _settings(raw: dict) -> GeneratorSettings:
    campaigns = tuple(CampaignSpec(**c) for c in raw.get("campaigns", ()))
    return GeneratorSettings(**{**raw, "start": dt.date.fromisoformat(raw["start"]), "campaigns": campaigns})


def _check_replay(simulation: Simulation, meta: dict, gt: Path) -> None:
    """The replay must draw the purchases the written run drew, day by day."""
    replayed = np.bincount(simulation.purchases["day"], minlength=simulation.settings.days)
    written = np.asarray(meta["daily_purchases"])
    last = simulation.days_run
    if not np.array_equal(replayed[:last], written[:last]):
        first = int(np.flatnonzero(replayed[:last] != written[:last])[0])
        raise UserError(
            f"{gt}: replaying the simulation differs from the written run from day {first}; "
            "the ground truth was written by another version of the generator: generate the data again"
        )


def _whole_people(con, frame: pd.DataFrame, gt: Path) -> pd.Series:
    """profile_id -> person_id for the frame's profiles that are exactly one whole person."""
    con.register("_oracle_profiles", frame[["profile_id"]].drop_duplicates())
    try:
        pairs = con.execute(f"""
            WITH pairs AS (
                SELECT DISTINCT m.profile_id, g.person_id
                FROM identity_map m
                JOIN read_parquet('{gt / "person_identities.parquet"}') g
                  ON g.namespace = m.namespace AND g.value = m.value
            ), whole AS (
                SELECT person_id FROM pairs GROUP BY person_id HAVING count(DISTINCT profile_id) = 1
            )
            SELECT p.profile_id, min(p.person_id) AS person_id
            FROM pairs p JOIN _oracle_profiles f ON f.profile_id = p.profile_id
            GROUP BY p.profile_id
            HAVING count(DISTINCT p.person_id) = 1 AND min(p.person_id) IN (SELECT person_id FROM whole)
        """).df()
    finally:
        con.unregister("_oracle_profiles")
    return pairs.set_index("profile_id")["person_id"]
