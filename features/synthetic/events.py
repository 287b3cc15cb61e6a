"""Turning a simulated day into events: the buffer of event columns and the realistic world's emitter.

Events are held as integer codes (person, device, type, channel, ...) in column chunks; the
writer turns codes into identity strings once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from propensity.features.synthetic.dynamics import Purchases, Sessions, SimState
from propensity.features.synthetic.world import (
    CH,
    ET,
    SKUS_PER_CATEGORY,
    STORE,
    Calendar,
    Traits,
)

SECONDS_PER_DAY = 86_400
MICROS = 1_000_000
COLUMNS = (
    "ts",
    "type",
    "person",
    "device",
    "channel",
    "category",
    "revenue",
    "quantity",
    "campaign",
    "with_email",
    "with_crm",
    "with_phone",
    "sku",
)


class EventBuffer:
    """Column chunks of the events being generated. A disabled buffer drops what it is given
    (a replay still makes every random draw, so the random stream stays the same)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.chunks: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}

    def add(
        self,
        person: np.ndarray,
        ts: np.ndarray,
        etype: int,
        channel: np.ndarray | int,
        device: np.ndarray | int = -1,
        category: np.ndarray | int = -1,
        revenue: np.ndarray | float = np.nan,
        quantity: np.ndarray | float = np.nan,
        campaign: np.ndarray | int = -1,
        with_email: np.ndarray | bool = False,
        with_crm: np.ndarray | bool = False,
        with_phone: np.ndarray | bool = False,
        sku: np.ndarray | int = -1,
    ) -> None:
        n = len(person)
        if n == 0 or not self.enabled:
            return

        def full(value, dtype) -> np.ndarray:
            return np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()

        c = self.chunks
        c["person"].append(person.astype(np.int32))
        c["ts"].append(ts.astype(np.int64))
        c["type"].append(np.full(n, etype, np.int8))
        c["channel"].append(full(channel, np.int8))
        c["device"].append(full(device, np.int64))
        c["category"].append(full(category, np.int8))
        c["revenue"].append(full(revenue, np.float64))
        c["quantity"].append(full(quantity, np.float64))
        c["campaign"].append(full(campaign, np.int32))
        c["with_email"].append(full(with_email, bool))
        c["with_crm"].append(full(with_crm, bool))
        c["with_phone"].append(full(with_phone, bool))
        c["sku"].append(full(sku, np.int32))

    def take_arrays(self) -> dict[str, np.ndarray]:
        """All events, one array per column (empty if there are none); empties the buffer column
        by column, so memory holds one copy of the events at a time."""
        dtypes = {"ts": np.int64, "type": np.int8, "person": np.int32, "device": np.int64}
        out = {}
        for key in COLUMNS:
            chunks = self.chunks.pop(key)
            out[key] = np.concatenate(chunks) if chunks else np.zeros(0, dtypes.get(key, np.float64))
        self.chunks = {k: [] for k in COLUMNS}
        return out


def choose_category(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One category per row, drawn in proportion to the row's weights."""
    cumulative = weights.cumsum(axis=1)
    draw = rng.random((len(weights), 1)) * cumulative[:, -1:]
    return (draw > cumulative).sum(axis=1).astype(np.int8)


@dataclass
class DayClock:
    """Timestamps of sessions on one simulated day."""

    start_us: int
    rng: np.random.Generator

    def sessions(self, day: int, count: int) -> np.ndarray:
        hour = np.clip(self.rng.normal(15, 4.5, count), 0, 22.5)
        return self.start_us + day * SECONDS_PER_DAY * MICROS + (hour * 3600 * MICROS).astype(np.int64)


def pick_device(
    rng: np.random.Generator, people: np.ndarray, n_devices: np.ndarray, device_offset: np.ndarray
) -> np.ndarray:
    local = (rng.random(len(people)) * n_devices[people]).astype(np.int64)
    return device_offset[people] + local


def emit_realistic_day(
    ev: EventBuffer,
    day: int,
    calendar: Calendar,
    traits: Traits,
    state: SimState,
    emails: tuple[np.ndarray, np.ndarray],
    purchases: Purchases,
    sessions: Sessions,
    device_offset: np.ndarray,
    clock: DayClock,
) -> None:
    """The events a realistic day leaves: emails, online sessions with their funnel, store
    visits and purchases, redeemed offers, push opens and calls. Offline purchases leave none.

    The steps run in this order because they share one random stream (a replay must draw the
    same numbers in the same order)."""
    opened, clicked = np.flatnonzero(emails[0]), np.flatnonzero(emails[1])
    campaign = int(calendar.campaign[day])
    _emit_email_engagement(ev, day, opened, clicked, campaign, clock)
    known = traits.known_from <= day
    visits = _open_visits(day, traits, sessions, known, device_offset, clock)
    _emit_sign_ins(ev, visits, day, traits)
    _emit_browsing(ev, visits, day, calendar, traits, sessions, clicked, campaign)
    promo_campaign = int(calendar.promo_campaign[day])
    _emit_cart_to_purchase(ev, visits, day, calendar, traits, purchases, sessions, promo_campaign)
    _emit_store(ev, day, calendar, traits, state, purchases, sessions, clock, promo_campaign)
    _emit_pushes_and_calls(ev, day, traits, state, known, device_offset, clock)


def _emit_email_engagement(
    ev: EventBuffer, day: int, opened: np.ndarray, clicked: np.ndarray, campaign: int, clock: DayClock
) -> None:
    """Opens and clicks of the day's campaign email."""
    ev.add(
        opened,
        clock.sessions(day, len(opened)),
        ET["email_open"],
        CH["email"],
        campaign=campaign,
        with_email=True,
    )
    ev.add(
        clicked,
        clock.sessions(day, len(clicked)),
        ET["email_click"],
        CH["email"],
        campaign=campaign,
        with_email=True,
    )


@dataclass
class _Visits:
    """The day's online sessions: who, on which device and channel, starting when."""

    online: np.ndarray
    device: np.ndarray
    on_app: np.ndarray
    channel: np.ndarray
    t0: np.ndarray
    signed_in: np.ndarray
    rng: np.random.Generator

    def step(self, k: int, spread: int = 60) -> np.ndarray:
        """The time of the session's ``k``-th step (90 s apart, jittered)."""
        return self.t0 + (k * 90 + self.rng.integers(0, spread, len(self.t0))) * MICROS


def _open_visits(
    day: int,
    traits: Traits,
    sessions: Sessions,
    known: np.ndarray,
    device_offset: np.ndarray,
    clock: DayClock,
) -> _Visits:
    """Each online session's device, app or web, and start time."""
    rng = clock.rng
    online = sessions.online
    device = pick_device(rng, online, traits.n_devices, device_offset)
    on_app = rng.random(len(online)) < traits.app_share[online]
    channel = np.where(on_app, CH["mobile_app"], CH["web"])
    t0 = clock.sessions(day, len(online))
    return _Visits(online, device, on_app, channel, t0, known[online], rng)


def _emit_sign_ins(ev: EventBuffer, v: _Visits, day: int, traits: Traits) -> None:
    """App launches, the day's sign-ups and log-ins on the web."""
    online, on_app, device, channel, rng = v.online, v.on_app, v.device, v.channel, v.rng
    ev.add(
        online[on_app], v.t0[on_app], ET["app_launch"], CH["mobile_app"], device=device[on_app], with_crm=True
    )
    signing_up = traits.known_from[online] == day
    ev.add(
        online[signing_up],
        v.step(1)[signing_up],
        ET["signup"],
        channel[signing_up],
        device=device[signing_up],
        with_email=True,
        with_crm=True,
    )
    logging_in = v.signed_in & ~signing_up & ~on_app & (rng.random(len(online)) < 0.3)
    ev.add(
        online[logging_in],
        v.step(1)[logging_in],
        ET["login"],
        channel[logging_in],
        device=device[logging_in],
        with_email=True,
    )


def _emit_browsing(
    ev: EventBuffer,
    v: _Visits,
    day: int,
    calendar: Calendar,
    traits: Traits,
    sessions: Sessions,
    clicked: np.ndarray,
    campaign: int,
) -> None:
    """Page views (bots view many; a click in the day's email tags them), searches and product
    views of categories the person likes, as the day's calendar favours them."""
    online, device, channel, rng = v.online, v.device, v.channel, v.rng
    bot = traits.is_bot[online]
    pages = 1 + rng.poisson(np.where(bot, 3.0, 0.8))
    rep = np.repeat(np.arange(len(online)), pages)
    came_by_email = np.zeros(len(traits), bool)
    came_by_email[clicked] = True
    ev.add(
        online[rep],
        v.step(2)[rep] + rng.integers(0, 600, len(rep)) * MICROS,
        ET["page_view"],
        channel[rep],
        device=device[rep],
        with_crm=(v.signed_in & v.on_app)[rep],
        campaign=np.where(came_by_email[online[rep]], campaign, -1),
    )
    searching = rng.random(len(online)) < np.where(bot, 0.9, 0.3)
    ev.add(
        online[searching], v.step(3)[searching], ET["search"], channel[searching], device=device[searching]
    )
    rep = np.repeat(np.arange(len(online)), sessions.views)
    view_cat = choose_category(rng, traits.affinity[online[rep]] * calendar.appeal[day])
    ev.add(
        online[rep],
        v.step(4)[rep] + rng.integers(0, 600, len(rep)) * MICROS,
        ET["product_view"],
        channel[rep],
        device=device[rep],
        category=view_cat,
        sku=_skus(rng, view_cat),
    )


def _emit_cart_to_purchase(
    ev: EventBuffer,
    v: _Visits,
    day: int,
    calendar: Calendar,
    traits: Traits,
    purchases: Purchases,
    sessions: Sessions,
    promo_campaign: int,
) -> None:
    """Carts (some emptied again), checkouts and the online purchases, in the bought category."""
    online, device, channel, rng = v.online, v.device, v.channel, v.rng
    buying = sessions.buying_online
    carting = sessions.carting
    cart_cat = np.where(buying, purchases.category[online], choose_category(rng, traits.affinity[online]))
    for etype, k, mask in (
        (ET["add_to_cart"], 12, carting),
        (ET["remove_from_cart"], 14, carting & ~buying & (rng.random(len(online)) < 0.15)),
    ):
        ev.add(
            online[mask],
            v.step(k)[mask],
            etype,
            channel[mask],
            device=device[mask],
            category=cart_cat[mask],
            quantity=1.0,
        )
    checking = buying | (carting & (rng.random(len(online)) < 0.2))
    ev.add(
        online[checking],
        v.step(16)[checking],
        ET["checkout"],
        channel[checking],
        device=device[checking],
        with_email=v.signed_in[checking],
    )
    price = _prices(day, calendar, traits, purchases, online, rng)
    qty = 1 + rng.poisson(0.4, len(online))
    ev.add(
        online[buying],
        v.step(18)[buying],
        ET["purchase"],
        channel[buying],
        device=device[buying],
        category=cart_cat[buying],
        revenue=np.round(price[buying] * qty[buying], 2),
        quantity=qty[buying].astype(float),
        with_email=v.signed_in[buying],
        campaign=promo_campaign,
        sku=_skus(rng, cart_cat[buying]),
    )


def _emit_store(
    ev: EventBuffer,
    day: int,
    calendar: Calendar,
    traits: Traits,
    state: SimState,
    purchases: Purchases,
    sessions: Sessions,
    clock: DayClock,
    promo_campaign: int,
) -> None:
    """Store visits and purchases (loyalty card = crm_id); promotions and strong interest come
    with a redeemed offer."""
    rng = clock.rng
    store = sessions.store
    ev.add(store, clock.sessions(day, len(store)), ET["store_visit"], CH["store"], with_crm=True)
    store_buys = store[purchases.buys[store] & (purchases.channel[store] == STORE)]
    s_cat = purchases.category[store_buys]
    price = _prices(day, calendar, traits, purchases, store_buys, rng)
    ev.add(
        store_buys,
        clock.sessions(day, len(store_buys)),
        ET["purchase"],
        CH["store"],
        category=s_cat,
        with_crm=True,
        revenue=np.round(price, 2),
        quantity=1.0,
        campaign=promo_campaign,
        sku=_skus(rng, s_cat),
    )
    last_campaign = int(calendar.campaign[: day + 1].max(initial=0))
    redeeming = (promo_campaign >= 0) | (state.interest[store_buys] > 0.8)
    ev.add(
        store_buys[redeeming],
        clock.sessions(day, int(redeeming.sum())),
        ET["offer_redeemed"],
        CH["store"],
        with_crm=True,
        campaign=promo_campaign if promo_campaign >= 0 else last_campaign,
    )


def _emit_pushes_and_calls(
    ev: EventBuffer,
    day: int,
    traits: Traits,
    state: SimState,
    known: np.ndarray,
    device_offset: np.ndarray,
    clock: DayClock,
) -> None:
    """Push opens of known app users and calls to the call centre (more with a cart open)."""
    rng = clock.rng
    n = len(traits)
    pushers = np.flatnonzero(known & traits.has_app & (rng.random(n) < 0.004 * (1 + state.interest)))
    ev.add(
        pushers,
        clock.sessions(day, len(pushers)),
        ET["push_open"],
        CH["push"],
        device=pick_device(rng, pushers, traits.n_devices, device_offset),
        with_crm=True,
    )
    callers = np.flatnonzero(known & (rng.random(n) < 0.0006 + 0.01 * (state.cart_days > 0)))
    ev.add(
        callers,
        clock.sessions(day, len(callers)),
        ET["call_center_call"],
        CH["call_center"],
        with_crm=True,
        with_phone=True,
    )


def _skus(rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
    """A product of each category (int32: category codes are int8, and 4 * 40 overflows them)."""
    return categories.astype(np.int32) * SKUS_PER_CATEGORY + rng.integers(
        0, SKUS_PER_CATEGORY, len(categories)
    )


def _prices(
    day: int,
    calendar: Calendar,
    traits: Traits,
    purchases: Purchases,
    people: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Unit price paid: the person's price level, noise, and the promotion's discount if it applies."""
    depth = calendar.promo_depth[day]
    category = int(calendar.promo_category[day])
    applies = (category < 0) | (purchases.category[people] == category)
    discount = np.where(applies, 1 - depth, 1.0)
    return np.round(traits.price_level[people] * rng.lognormal(0, 0.35, len(people)) * discount, 2)
