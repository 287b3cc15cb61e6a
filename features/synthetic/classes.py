"""Yoga class registrations in the Luma simulation: a custom event type driven by channel touches.

In the realistic omnichannel world (the easy world stays the original generator), Luma runs
yoga classes; people register in the store or book in the app or on the web. A
registration follows a touch: a store visit, a push or email opened, a call to the call
centre, or a yoga product viewed on the web or in the app. Each such touch of a known person
leads to a registration within 36 hours with the chance ``CLASS_EFFECTS[channel]`` times
twice the person's yoga share of interest (capped at 1): yoga-interested people register,
others hardly ever. A person registers at most once a week (a later trigger in the same
week is dropped). After a store visit the registration is made in the store; otherwise in
the store by a store goer half the time, else in the app by app users, else on the web.

The draws come from a stream of their own (the fifth child of the seed's
:class:`numpy.random.SeedSequence`; the simulation uses the first four), and the rows are
added after every other draw of the writer, so every other event of a seed stays the same,
byte for byte. ``expected_by_channel`` is the ground truth of attribution: the expected
registrations each channel's touches trigger (the sum of their chances, before the weekly
limit), written to ``ground_truth/class_registrations.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from propensity.features.synthetic.events import MICROS, SECONDS_PER_DAY
from propensity.features.synthetic.world import CH, ET, YOGA, GeneratorSettings, Traits

CLASS_REGISTRATION = "class_registration"
# The chance that one touch of a person with a yoga share of 1/2 leads to a registration.
CLASS_EFFECTS = {
    "store": 0.2,
    "push": 0.12,
    "mobile_app": 0.08,
    "call_center": 0.06,
    "web": 0.025,
    "email": 0.01,
}
_TOUCH_TYPES = ("store_visit", "push_open", "call_center_call", "email_open", "product_view")
_STREAM = 4  # the SeedSequence child of these draws (the simulation uses 0..3)
_WEEK_US = 7 * SECONDS_PER_DAY * MICROS


@dataclass
class ClassRegistrations:
    """The registration rows (as event codes: person, ts, channel) and their ground truth."""

    person: np.ndarray
    ts: np.ndarray
    channel: np.ndarray
    expected_by_channel: dict[str, float]

    def write_truth(self, path: Path) -> None:
        """The ground truth (:meth:`facts`) as JSON."""
        path.write_text(json.dumps(self.facts(), indent=1, sort_keys=True) + "\n")

    def facts(self) -> dict[str, object]:
        """The ground truth as JSON-ready facts."""
        order = sorted(self.expected_by_channel, key=lambda c: -self.expected_by_channel[c])
        return {
            "event_type": CLASS_REGISTRATION,
            "effects": CLASS_EFFECTS,
            "expected_registrations_by_channel": self.expected_by_channel,
            "true_order": order,
            "registrations": len(self.person),
        }


def class_stream(seed: int, chunk: int = 0) -> np.random.Generator:
    """The registrations' own random stream, independent of the simulation's four; each chunk of
    the population after the first (see ``GeneratorSettings.chunks``) has one of its own."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_STREAM, chunk) if chunk else (_STREAM,))
    )


def _touch_chances(
    events: dict[str, np.ndarray], traits: Traits, start_us: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row index and registration chance of every touch of a known person (0 elsewhere)."""
    etype, channel, person = events["type"], events["channel"], events["person"]
    people = len(traits)
    is_touch = np.isin(etype, [ET[t] for t in _TOUCH_TYPES])
    # Product views count only when they are of yoga (a yoga class follows yoga browsing).
    is_touch &= (etype != ET["product_view"]) | (events["category"] == YOGA)
    is_touch &= person < people  # test accounts are no one
    rows = np.flatnonzero(is_touch)
    who = person[rows]
    day = (events["ts"][rows] - start_us) // (SECONDS_PER_DAY * MICROS)
    effect = np.zeros(len(CH))
    for name, value in CLASS_EFFECTS.items():
        effect[CH[name]] = value
    yoga = np.minimum(2 * traits.affinity[who, YOGA], 1.0)
    known = (traits.known_from[who] <= day) & ~traits.is_bot[who]
    return rows, np.where(known, effect[channel[rows]] * yoga, 0.0)


def _where_booked(
    rng: np.random.Generator, traits: Traits, who: np.ndarray, trigger_channel: np.ndarray
) -> np.ndarray:
    """The channel of each registration: in store after a store visit, else by habit."""
    in_store = (trigger_channel == CH["store"]) | (traits.store_goer[who] & (rng.random(len(who)) < 0.5))
    on_app = traits.has_app[who]
    return np.where(in_store, CH["store"], np.where(on_app, CH["mobile_app"], CH["web"])).astype(np.int8)


def _once_a_week(person: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Indices (in (person, time) order) of the registrations kept: a person's first, then
    each one at least a week after the last kept."""
    order = np.lexsort((ts, person))
    kept, last_person, last_ts = [], -1, 0
    for i in order.tolist():
        if person[i] != last_person or ts[i] - last_ts >= _WEEK_US:
            kept.append(i)
            last_person, last_ts = person[i], ts[i]
    return np.asarray(kept, dtype=np.int64)


def class_registrations_for(
    settings: GeneratorSettings, events: dict[str, np.ndarray], traits: Traits, start_us: int, chunk: int = 0
) -> ClassRegistrations | None:
    """The registrations of a realistic omnichannel run (of one chunk of its people, numbered as
    in ``traits``); None elsewhere (a transaction log has no classes, and the easy world stays
    the original generator, digest for digest)."""
    if settings.scenario != "omnichannel" or settings.difficulty != "realistic":
        return None
    return simulate_class_registrations(events, traits, settings.seed, start_us, settings.days, chunk)


def simulate_class_registrations(
    events: dict[str, np.ndarray], traits: Traits, seed: int, start_us: int, days: int, chunk: int = 0
) -> ClassRegistrations:
    """The registrations the simulated events' touches lead to (see the module docstring)."""
    rng = class_stream(seed, chunk)
    rows, chance = _touch_chances(events, traits, start_us)
    channel = events["channel"][rows]
    expected = {name: float(chance[channel == CH[name]].sum()) for name in CLASS_EFFECTS}
    hit = rng.random(len(rows)) < chance
    delay = rng.integers(10 * 60, 36 * 3600, len(rows))
    rows, delay = rows[hit], delay[hit]
    ts = events["ts"][rows] + delay * MICROS
    inside = ts < start_us + days * SECONDS_PER_DAY * MICROS
    rows, ts = rows[inside], ts[inside]
    keep = _once_a_week(events["person"][rows], ts)
    rows, ts = rows[keep], ts[keep]
    who = events["person"][rows].astype(np.int32)
    booked = _where_booked(rng, traits, who, events["channel"][rows])
    return ClassRegistrations(
        person=who, ts=ts.astype(np.int64), channel=booked, expected_by_channel=expected
    )


def with_registrations(
    a: dict[str, np.ndarray],
    device: np.ndarray,
    email_code: np.ndarray,
    event_number: np.ndarray,
    classes: ClassRegistrations,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """The writer's event codes (and the identity codes it drew for them) with the class
    registrations added (yoga, by crm_id only: a booking under the
    account or the loyalty card, no new identity link) and sorted as before: by time, person
    and event number, so the other rows keep their order. Their event numbers follow the
    last one."""
    k = len(classes.person)
    add = {
        "ts": classes.ts,
        "type": np.full(k, ET["class_registration"], np.int8),
        "person": classes.person,
        "device": np.full(k, -1, np.int64),
        "channel": classes.channel,
        "category": np.full(k, YOGA, np.int8),
        "revenue": np.full(k, np.nan),
        "quantity": np.full(k, np.nan),
        "campaign": np.full(k, -1, np.int32),
        "with_email": np.zeros(k, bool),
        "with_crm": np.ones(k, bool),
        "with_phone": np.zeros(k, bool),
        "sku": np.full(k, -1, np.int32),
    }
    a = {key: np.concatenate([a[key], add[key].astype(a[key].dtype)]) for key in a}
    device = np.concatenate([device, add["device"]])
    email_code = np.concatenate([email_code, np.full(k, -1, email_code.dtype)])
    event_number = np.concatenate([event_number, event_number.max(initial=-1) + 1 + np.arange(k)])
    order = np.lexsort((event_number, a["person"], a["ts"]))
    return {key: v[order] for key, v in a.items()}, device[order], email_code[order], event_number[order]
