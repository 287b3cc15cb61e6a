"""Simulated campaigns: random assignment, heterogeneous effects, and each person's true effect.

A campaign (:class:`~.world.CampaignSpec`) is sent on one day to everyone eligible for it:
known (signed up by then), human, not opted out of marketing. Each eligible person is put
in the holdout with probability ``spec.holdout``, at random; the others are treated (they
get a ``campaign_received`` event). Every person is one of four response types, drawn from
their latent traits, with a probability of buying over the horizon when treated and when not:

* ``persuadable``: buys (mostly) only if treated; more so the stronger their affinity to the
  campaign's category;
* ``sure_thing``: buys either way (high intent, existing customers);
* ``lost_cause``: almost never buys;
* ``sleeping_dog``: would buy, but contact puts them off (low e-mail engagement).

Both potential outcomes are drawn from one uniform per person, so each person's outcome under
either arm is known (``converted_if_treated``, ``converted_if_control``); the one observed
depends on the arm. A converting person buys once, on a random day of the horizon, for an
order value drawn around their price level; the same in both arms.

Everything is drawn from the campaign's own random stream (derived from the seed and the
campaign's position), never from the world's streams: the world, its events and its ground
truth are unchanged by adding a campaign; a world without campaigns is byte-identical.

:func:`in_memory_campaign` draws a campaign over freshly drawn traits without simulating a
world, with a pre-period (purchases and revenue in the ``pre_windows`` horizons before, drawn
from each person's untreated probability): fast repetitions for tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

from propensity.features.synthetic.world import (
    CATEGORIES,
    CH,
    ET,
    EVENT_TYPES,
    LUMA_YOGA,
    SKUS_PER_CATEGORY,
    CampaignSpec,
    GeneratorSettings,
    Traits,
    realistic_traits,
    sigmoid,
)

RESPONSE_TYPES = np.array(["persuadable", "sure_thing", "lost_cause", "sleeping_dog"])
PERSUADABLE, SURE_THING, LOST_CAUSE, SLEEPING_DOG = range(4)
ARMS = np.array(["targeted", "holdout"])
CAMPAIGN_RECEIVED = "campaign_received"
# The custom event type's code: the one after the world's own event types.
RECEIVED_CODE = len(EVENT_TYPES)
# Streams of the world are SeedSequence(seed).spawn(4) children (spawn keys 0..3); campaigns
# take keys from here on, so they can never repeat a world stream.
_STREAM_KEY = 1000

__all__ = [
    "ARMS",
    "CAMPAIGN_RECEIVED",
    "LUMA_YOGA",
    "RESPONSE_TYPES",
    "CampaignSpec",
    "CampaignTruth",
    "campaign_rng",
    "draw_campaign",
    "in_memory_campaign",
]


@dataclass
class CampaignTruth:
    """One campaign's eligible people (arrays of one length), their arm and true effect.

    ``revenue`` is what was observed (0 without a purchase); ``p_treated - p_control`` is each
    person's true effect on the chance to buy. ``pre_purchases``/``pre_revenue`` exist only for
    :func:`in_memory_campaign` (a generated world has a real history instead)."""

    spec: CampaignSpec
    send_day: int
    person: np.ndarray  # int32, person ids of the world
    treated: np.ndarray  # bool
    response_type: np.ndarray  # int8 codes into RESPONSE_TYPES
    p_treated: np.ndarray
    p_control: np.ndarray
    converted_if_treated: np.ndarray  # bool
    converted_if_control: np.ndarray  # bool
    order_value: np.ndarray  # what a converting person spends
    outcome_day: np.ndarray  # int32 day of the period a converting person buys (whatever the arm)
    pre_purchases: np.ndarray | None = None
    pre_revenue: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.person)

    @property
    def converted(self) -> np.ndarray:
        """The observed outcome: the potential outcome of the arm each person is in."""
        return np.where(self.treated, self.converted_if_treated, self.converted_if_control)

    @property
    def revenue(self) -> np.ndarray:
        """Observed campaign-window revenue per person (0 without a purchase)."""
        return np.where(self.converted, self.order_value, 0.0)

    def true_lift(self) -> dict[str, float]:
        """The true average effects over the eligible people: on the chance to buy (absolute
        and relative) and on revenue per person (expected, from the probabilities)."""
        effect = self.p_treated - self.p_control
        return {
            "absolute_lift": float(effect.mean()),
            "relative_lift": float(effect.mean() / self.p_control.mean()),
            "revenue_per_member_lift": float((effect * self.order_value).mean()),
        }

    def take(self, index: np.ndarray) -> CampaignTruth:
        """The people at ``index`` (e.g. a segment of the eligible)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in values.items():
            if isinstance(value, np.ndarray):
                values[name] = value[index]
        return CampaignTruth(**values)

    def table(self) -> pa.Table:
        """One row per eligible person: arm, response type, true probabilities, both potential
        outcomes and the observed outcome (the ground truth written with a generated world)."""
        columns = {
            "campaign": pa.array([self.spec.name] * len(self), pa.string()),
            "person_id": self.person.astype(np.int32),
            "arm": ARMS[(~self.treated).astype(int)],
            "response_type": RESPONSE_TYPES[self.response_type],
            "p_treated": self.p_treated,
            "p_control": self.p_control,
            "true_effect": self.p_treated - self.p_control,
            "converted_if_treated": self.converted_if_treated,
            "converted_if_control": self.converted_if_control,
            "converted": self.converted,
            "order_value": self.order_value,
            "revenue": self.revenue,
            "outcome_day": self.outcome_day,
        }
        if self.pre_purchases is not None and self.pre_revenue is not None:
            columns.update(pre_purchases=self.pre_purchases, pre_revenue=self.pre_revenue)
        return pa.table(columns)


def campaign_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of the ``index``-th campaign of a world seeded with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_KEY + index,)))


def eligible_people(traits: Traits, day: int) -> np.ndarray:
    """Who a campaign sent on ``day`` may reach: known by then, human, not opted out of marketing."""
    ok = (traits.known_from <= day) & ~traits.is_bot & (traits.consent_marketing != "n")
    return np.flatnonzero(ok).astype(np.int32)


def _response_types(spec: CampaignSpec, traits: Traits, rng: np.random.Generator) -> np.ndarray:
    """Each person's response type, drawn from a softmax of trait-driven scores: effects that
    a model can learn from what the events show (intent, category interest, e-mail habits)."""
    affinity = traits.affinity[:, list(CATEGORIES).index(spec.category)]
    customer = traits.customer.astype(float)
    scores = np.stack(
        [
            -0.4 + 5.0 * (affinity - 0.2) + 0.8 * (traits.email_engagement + 1.7),  # persuadable
            -1.2 + 1.1 * traits.intent + 1.0 * customer,  # sure thing
            0.4 - 0.6 * traits.intent - 3.0 * (affinity - 0.2),  # lost cause
            -1.6 - 1.2 * (traits.email_engagement + 1.7) + 0.4 * traits.intent,  # sleeping dog
        ],
        axis=1,
    )
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    cumulative = weights.cumsum(axis=1)
    draw = rng.random((len(weights), 1)) * cumulative[:, -1:]
    return (draw > cumulative).sum(axis=1).astype(np.int8)


def _probabilities(
    spec: CampaignSpec, traits: Traits, kind: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(p_treated, p_control) over the horizon for each person, by response type."""
    affinity = traits.affinity[:, list(CATEGORIES).index(spec.category)]
    noise = rng.normal(0, 0.3, len(kind))
    baseline = sigmoid(-3.6 + 0.5 * traits.intent + noise)
    persuaded = sigmoid(-1.6 + 3.0 * affinity + 0.3 * traits.intent + noise)
    sure = sigmoid(-0.3 + 0.7 * traits.intent + noise)
    put_off = sigmoid(-1.0 + 0.5 * traits.intent + noise)
    p_treated = np.choose(kind, [persuaded, sure, np.full(len(kind), 0.004), 0.3 * put_off])
    p_control = np.choose(kind, [baseline, sure, np.full(len(kind), 0.004), put_off])
    return p_treated, p_control


def draw_campaign(
    spec: CampaignSpec, traits: Traits, people: np.ndarray, send_day: int, rng: np.random.Generator
) -> CampaignTruth:
    """Assign ``people`` at random to the campaign's arms and draw their effects and outcomes."""
    mine = traits.take(people)
    treated = rng.random(len(people)) >= spec.holdout
    kind = _response_types(spec, mine, rng)
    p_treated, p_control = _probabilities(spec, mine, kind, rng)
    uniform = rng.random(len(people))
    order_value = np.round(mine.price_level * rng.lognormal(0.0, 0.35, len(people)), 2)
    return CampaignTruth(
        spec=spec,
        send_day=send_day,
        person=people.astype(np.int32),
        treated=treated,
        response_type=kind,
        p_treated=p_treated,
        p_control=p_control,
        converted_if_treated=uniform < p_treated,
        converted_if_control=uniform < p_control,
        order_value=order_value,
        outcome_day=(send_day + 1 + rng.integers(0, spec.horizon_days, len(people))).astype(np.int32),
    )


def simulate_campaigns(settings: GeneratorSettings, traits: Traits) -> list[CampaignTruth]:
    """The campaigns ``settings`` asks for, over the world's people (empty without any)."""
    out = []
    for index, spec in enumerate(settings.campaigns):
        day = spec.day_sent(settings.days)
        rng = campaign_rng(settings.seed, index)
        out.append(draw_campaign(spec, traits, eligible_people(traits, day), day, rng))
    return out


def in_memory_campaign(
    people: int, seed: int, spec: CampaignSpec = LUMA_YOGA, pre_windows: int = 3
) -> CampaignTruth:
    """A campaign over ``people`` freshly drawn (all eligible), with a pre-period: purchases
    in ``pre_windows`` earlier horizons drawn from each person's untreated probability, and
    their revenue. No world is simulated: fast enough for hundreds of seeded repetitions."""
    # No world is simulated: the whole population is one chunk, however large.
    settings = GeneratorSettings(
        profiles=people, days=spec.horizon_days + 8, seed=seed, chunk_profiles=people
    )
    traits_rng, rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    traits = realistic_traits(settings, traits_rng)
    everyone = np.arange(people, dtype=np.int32)
    truth = draw_campaign(spec, traits, everyone, spec.day_sent(settings.days), rng)
    truth.pre_purchases = rng.binomial(pre_windows, truth.p_control).astype(np.int32)
    spend = truth.order_value * rng.lognormal(0.0, 0.3, (pre_windows, people))
    truth.pre_revenue = np.where(np.arange(pre_windows)[:, None] < truth.pre_purchases, spend, 0.0).sum(
        axis=0
    )
    return truth


# Campaign codes of simulated campaigns in the events' ``campaign`` column start here (the
# world's own e-mail campaigns are numbered from 0); the writer names them after the spec.
CAMPAIGN_CODE_BASE = 1_000_000


def campaign_events(
    truths: list[CampaignTruth], device_offset: np.ndarray, start_us: int, seed: int
) -> dict[str, np.ndarray]:
    """The events campaigns leave, as event columns (see ``.events.COLUMNS``): a
    ``campaign_received`` (e-mail, with e-mail and crm_id) for each treated person on the send
    day, and each observed conversion's purchase (web, the campaign's category, its revenue;
    tagged with the campaign only for the treated)."""
    parts = []
    for index, truth in enumerate(truths):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_KEY + index, 1)))
        code = CAMPAIGN_CODE_BASE + index
        sent = np.flatnonzero(truth.treated)
        parts.append(
            _columns(
                truth.person[sent],
                start_us
                + (truth.send_day * 86_400 + rng.integers(8 * 3600, 10 * 3600, len(sent))) * 1_000_000,
                RECEIVED_CODE,
                CH["email"],
                code,
                device=np.full(len(sent), -1, np.int64),
            )
        )
        bought = np.flatnonzero(truth.converted)
        category = list(CATEGORIES).index(truth.spec.category)
        seconds = truth.outcome_day[bought].astype(np.int64) * 86_400 + rng.integers(
            9 * 3600, 22 * 3600, len(bought)
        )
        purchase = _columns(
            truth.person[bought],
            start_us + seconds * 1_000_000,
            ET["purchase"],
            CH["web"],
            code,
            device=device_offset[truth.person[bought]].astype(np.int64),
        )
        purchase.update(
            # Only a treated buyer's purchase can be traced to the campaign (the holdout never saw it).
            campaign=np.where(truth.treated[bought], code, -1).astype(np.int32),
            category=np.full(len(bought), category, np.int8),
            revenue=truth.order_value[bought].astype(np.float64),
            quantity=np.ones(len(bought)),
            sku=(category * SKUS_PER_CATEGORY + rng.integers(0, SKUS_PER_CATEGORY, len(bought))).astype(
                np.int32
            ),
        )
        parts.append(purchase)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}


def _columns(
    person: np.ndarray, ts: np.ndarray, etype: int, channel: int, campaign: int, device: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(person)
    return {
        "ts": ts.astype(np.int64),
        "type": np.full(n, etype, np.int8),
        "person": person.astype(np.int32),
        "device": device,
        "channel": np.full(n, channel, np.int8),
        "category": np.full(n, -1, np.int8),
        "revenue": np.full(n, np.nan),
        "quantity": np.full(n, np.nan),
        "campaign": np.full(n, campaign, np.int32),
        "with_email": np.ones(n, bool),
        "with_crm": np.ones(n, bool),
        "with_phone": np.zeros(n, bool),
        "sku": np.full(n, -1, np.int32),
    }
