"""The easy world: the original Luma simulation, kept draw for draw so its output never changes.

Purchases come from a known daily probability of the traits and recent behaviour (a
decaying interest fed by visits and clicks, an open cart, time since the last purchase);
nearly all of that state is visible in the events. Dynamics and events share one random
stream here, so a replay repeats the event draws too (into a disabled buffer).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from propensity.features.synthetic.dynamics import (
    SimState,
    easy_cart_probability,
    easy_click_probability,
    easy_open_probability,
    easy_purchase_probability,
    easy_update,
    easy_visit_probability,
)
from propensity.features.synthetic.events import (
    MICROS,
    SECONDS_PER_DAY,
    EventBuffer,
    choose_category,
)
from propensity.features.synthetic.result import PurchaseLog, Simulation
from propensity.features.synthetic.world import (
    CATEGORIES,
    CH,
    ET,
    ONLINE,
    SKUS_PER_CATEGORY,
    STORE,
    Calendar,
    GeneratorSettings,
    Traits,
    consents,
)


def _easy_traits(settings: GeneratorSettings, rng: np.random.Generator) -> Traits:
    n, days = settings.profiles, settings.days
    intent = rng.normal(0, 1, n)
    activity = 0.75 * intent + 0.65 * rng.normal(0, 1, n)
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.5), n)
    account = rng.random(n)
    # Known already, signs up later, or stays anonymous.
    known_from = np.where(account < 0.45, -1, np.where(account < 0.62, rng.integers(0, days, n), days + 1))
    has_account = known_from <= days
    customer = has_account & (known_from < 0) & (rng.random(n) < 0.55 + 0.2 * (intent > 0))
    has_app = rng.random(n) < 0.35
    app_share = np.where(has_app, rng.beta(3, 2, n), 0.0)
    store_goer = has_account & (rng.random(n) < 0.3)
    price_level = np.exp(rng.normal(4.1, 0.45, n))
    consent_marketing, consent_personal = consents(rng, n)
    email_engagement = rng.normal(-1.7, 0.9, n)
    zeros = np.zeros(n)
    return Traits(
        intent=intent,
        activity=activity,
        affinity=affinity,
        known_from=known_from,
        customer=customer,
        has_app=has_app,
        app_share=app_share,
        store_goer=store_goer,
        price_level=price_level,
        subscribed=has_account & (consent_marketing == "y"),
        email_engagement=email_engagement,
        base_purchase=-7.6 + 1.35 * intent + 1.2 * customer,
        base_visit=-5.8 + 1.0 * activity + 0.5 * customer,
        # Drawn here, in the original order of the random stream.
        n_devices=1 + rng.binomial(2, 0.25, n),
        is_bot=np.zeros(n, bool),
        cycle_days=np.ones(n),
        cycle_shape=np.ones(n, np.int64),
        dropout=zeros,
        sensitivity=zeros,
        offline_share=zeros,
        interest_effect=zeros,
        consent_marketing=consent_marketing,
        consent_personal=consent_personal,
    )


def simulate_easy(
    settings: GeneratorSettings,
    emit: bool = True,
    snapshot_days: frozenset[int] = frozenset(),
    until: int | None = None,
) -> Simulation:
    """Run the easy world day by day up to ``until`` (default: all days).

    ``emit=False`` keeps no events (a replay for the oracle); ``snapshot_days`` are the days
    whose starting state is kept.
    """
    rng = np.random.default_rng(settings.seed)
    n, days = settings.profiles, settings.days
    until = days if until is None else until
    # Not datetime.timestamp(): on a naive datetime it uses the machine's local time zone.
    start_us = (
        int((dt.datetime.combine(settings.start, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds())
        * MICROS
    )
    tr = _easy_traits(settings, rng)
    # Known quirk kept for byte-identical output: SKU codes are computed in int8, so
    # "lifestyle" (4 * 40) overflows and those product views and store purchases have no SKU.
    intent, affinity, known_from = tr.intent, tr.affinity, tr.known_from
    favourite = affinity.argmax(axis=1)
    n_devices = tr.n_devices
    device_offset = np.concatenate([[0], np.cumsum(n_devices)[:-1]])
    # ~1.5 % of people share their first device with someone.
    sharers = np.flatnonzero(rng.random(n) < 0.015)
    share_with = rng.integers(0, n, len(sharers))

    since = np.where(tr.customer, rng.integers(20, 400, n), 1000).astype(np.float64)
    st = SimState(np.zeros(n), np.zeros(n), np.zeros(n), since, np.zeros(n, bool))
    ev = EventBuffer(enabled=emit)
    log = PurchaseLog()
    truth_p = np.empty((days, n), dtype=np.float32) if settings.ground_truth and emit else None
    season_phase = rng.uniform(0, 2 * np.pi)
    weekdays = np.array([(settings.start + dt.timedelta(days=d)).weekday() for d in range(days)])
    season_of = 0.25 * np.sin(2 * np.pi * np.arange(days) / 365 + season_phase) + np.where(
        weekdays >= 5, 0.2, 0.0
    )
    themes = np.full(days, -1)
    states = {}

    def pick_device(people: np.ndarray) -> np.ndarray:
        local = (rng.random(len(people)) * n_devices[people]).astype(np.int64)
        return device_offset[people] + local

    def session_times(day: int, count: int) -> np.ndarray:
        hour = np.clip(rng.normal(15, 4.5, count), 0, 22.5)
        return start_us + day * SECONDS_PER_DAY * MICROS + (hour * 3600 * MICROS).astype(np.int64)

    campaign_id = 0
    for day in range(until):
        if day in snapshot_days:
            states[day] = st.copy()
        weekday = weekdays[day]
        season = season_of[day]
        known = known_from <= day

        # Weekly campaign on Tuesdays, themed on one category; clicks raise interest.
        email_click_today = np.zeros(n, dtype=bool)
        if weekday == 1:
            theme = rng.integers(0, len(CATEGORIES))
            themes[day] = theme
            recipients = np.flatnonzero(tr.subscribed & known)
            opened = recipients[
                rng.random(len(recipients))
                < easy_open_probability(tr.email_engagement[recipients], st.interest[recipients])
            ]
            ev.add(
                opened,
                session_times(day, len(opened)),
                ET["email_open"],
                CH["email"],
                campaign=campaign_id,
                with_email=True,
            )
            click_p = easy_click_probability(affinity[opened, theme], intent[opened])
            clicked = opened[rng.random(len(opened)) < click_p]
            ev.add(
                clicked,
                session_times(day, len(clicked)),
                ET["email_click"],
                CH["email"],
                campaign=campaign_id,
                with_email=True,
            )
            st.interest[clicked] += 1.2
            email_click_today[clicked] = True
            campaign_id += 1

        # Purchase probability: the ground truth of this world.
        p = easy_purchase_probability(tr, st, season)
        if truth_p is not None:
            truth_p[day] = p
        buys = rng.random(n) < p

        # Everyone who buys or signs up today has a session today.
        visits = (
            (rng.random(n) < easy_visit_probability(tr, st, season, email_click_today))
            | buys
            | (known_from == day)
        )
        visitors = np.flatnonzero(visits)
        in_store = tr.store_goer[visitors] & (rng.random(len(visitors)) < 0.25)
        online = visitors[~in_store]
        store = visitors[in_store]

        # Online sessions: device, channel (app or web), a funnel.
        device = pick_device(online)
        on_app = rng.random(len(online)) < tr.app_share[online]
        channel = np.where(on_app, CH["mobile_app"], CH["web"])
        t0 = session_times(day, len(online))

        def step(k: int, t0: np.ndarray = t0) -> np.ndarray:
            """Time of the k-th funnel step in each online session."""
            return t0 + (k * 90 + rng.integers(0, 60, len(t0))) * MICROS

        signed_in = known[online]
        ev.add(
            online[on_app],
            t0[on_app],
            ET["app_launch"],
            CH["mobile_app"],
            device=device[on_app],
            with_crm=signed_in[on_app],
        )
        # Sign-up day: the anonymous history meets the email on one event.
        signing_up = known_from[online] == day
        ev.add(
            online[signing_up],
            step(1)[signing_up],
            ET["signup"],
            channel[signing_up],
            device=device[signing_up],
            with_email=True,
            with_crm=True,
        )
        logging_in = signed_in & ~signing_up & ~on_app & (rng.random(len(online)) < 0.3)
        ev.add(
            online[logging_in],
            step(1)[logging_in],
            ET["login"],
            channel[logging_in],
            device=device[logging_in],
            with_email=True,
        )
        pages = 1 + rng.poisson(0.8, len(online))
        rep = np.repeat(np.arange(len(online)), pages)
        ev.add(
            online[rep],
            step(2)[rep] + rng.integers(0, 600, len(rep)) * MICROS,
            ET["page_view"],
            channel[rep],
            device=device[rep],
            with_crm=(signed_in & on_app)[rep],
            campaign=np.where(email_click_today[online[rep]], campaign_id - 1, -1),
        )
        searching = rng.random(len(online)) < 0.3
        ev.add(
            online[searching], step(3)[searching], ET["search"], channel[searching], device=device[searching]
        )
        views = rng.poisson(0.8 + 0.5 * st.interest[online] + 1.5 * buys[online])
        rep = np.repeat(np.arange(len(online)), views)
        view_cat = choose_category(rng, affinity[online[rep]])
        ev.add(
            online[rep],
            step(4)[rep] + rng.integers(0, 600, len(rep)) * MICROS,
            ET["product_view"],
            channel[rep],
            device=device[rep],
            category=view_cat,
            sku=view_cat * SKUS_PER_CATEGORY + rng.integers(0, SKUS_PER_CATEGORY, len(rep)),
        )
        buying_online = buys[online]
        cart_p = easy_cart_probability(tr.base_purchase[online], st.interest[online])
        carting = buying_online | ((views > 0) & (rng.random(len(online)) < cart_p))
        cart_cat = np.where(buying_online, choose_category(rng, affinity[online]), favourite[online])
        ev.add(
            online[carting],
            step(12)[carting],
            ET["add_to_cart"],
            channel[carting],
            device=device[carting],
            category=cart_cat[carting],
            quantity=1.0,
        )
        removing = carting & ~buying_online & (rng.random(len(online)) < 0.15)
        ev.add(
            online[removing],
            step(14)[removing],
            ET["remove_from_cart"],
            channel[removing],
            device=device[removing],
            category=cart_cat[removing],
            quantity=1.0,
        )
        checking = buying_online | (carting & (rng.random(len(online)) < 0.2))
        ev.add(
            online[checking],
            step(16)[checking],
            ET["checkout"],
            channel[checking],
            device=device[checking],
            with_email=signed_in[checking],
        )
        revenue = np.round(tr.price_level[online] * rng.lognormal(0, 0.35, len(online)), 2)
        qty = 1 + rng.poisson(0.4, len(online))
        ev.add(
            online[buying_online],
            step(18)[buying_online],
            ET["purchase"],
            channel[buying_online],
            device=device[buying_online],
            category=cart_cat[buying_online],
            revenue=revenue[buying_online] * qty[buying_online],
            quantity=qty[buying_online].astype(float),
            with_email=signed_in[buying_online],
            sku=cart_cat[buying_online] * SKUS_PER_CATEGORY
            + rng.integers(0, SKUS_PER_CATEGORY, buying_online.sum()),
        )
        abandoned = online[carting & ~buying_online]
        online_buyers = online[buying_online]
        log.add(day, online_buyers, np.full(len(online_buyers), ONLINE), cart_cat[buying_online])

        # Store visits (loyalty card = crm_id), store purchases and redeemed offers.
        t_store = session_times(day, len(store))
        ev.add(store, t_store, ET["store_visit"], CH["store"], with_crm=True)
        store_buys = store[buys[store]]
        t_buy = session_times(day, len(store_buys))
        s_cat = choose_category(rng, affinity[store_buys])
        ev.add(
            store_buys,
            t_buy,
            ET["purchase"],
            CH["store"],
            category=s_cat,
            with_crm=True,
            revenue=np.round(tr.price_level[store_buys] * rng.lognormal(0.1, 0.35, len(store_buys)), 2),
            quantity=1.0,
            sku=s_cat * SKUS_PER_CATEGORY + rng.integers(0, SKUS_PER_CATEGORY, len(store_buys)),
        )
        log.add(day, store_buys, np.full(len(store_buys), STORE), s_cat)
        redeem = store_buys[st.interest[store_buys] > 0.8]
        ev.add(
            redeem,
            session_times(day, len(redeem)),
            ET["offer_redeemed"],
            CH["store"],
            with_crm=True,
            campaign=max(campaign_id - 1, 0),
        )

        # Push opens for app users; call-centre calls when a cart is stuck.
        # (The open-cart flag here already includes today's abandoned carts.)
        st.cart_days[abandoned] = 4
        pushers = np.flatnonzero(known & tr.has_app & (rng.random(n) < 0.004 * (1 + st.interest)))
        ev.add(
            pushers,
            session_times(day, len(pushers)),
            ET["push_open"],
            CH["push"],
            device=pick_device(pushers),
            with_crm=True,
        )
        callers = np.flatnonzero(known & (rng.random(n) < 0.0006 + 0.01 * (st.cart_days > 0)))
        ev.add(
            callers,
            session_times(day, len(callers)),
            ET["call_center_call"],
            CH["call_center"],
            with_crm=True,
            with_phone=True,
        )

        # State updates: interest decays, browsing and carts feed it, purchases reset it.
        easy_update(st, buys, visits, abandoned)
    if until in snapshot_days:
        states[until] = st.copy()

    calendar = Calendar(
        weekday=weekdays,
        theme=themes,
        campaign=np.where(themes >= 0, np.cumsum(themes >= 0) - 1, -1),
        promo_depth=np.zeros(days),
        promo_category=np.full(days, -1),
        promo_campaign=np.full(days, -1),
        season=season_of,
        appeal=np.ones((days, len(CATEGORIES))),
        email_effect=np.ones(days),
    )
    return Simulation(
        settings=settings,
        traits=tr,
        calendar=calendar,
        device_offset=device_offset,
        sharers=sharers,
        share_with=share_with,
        rng=rng,
        days_run=until,
        events=ev.take_arrays() if emit else {},
        purchases=log.arrays(),
        daily_probability=truth_p,
        states=states,
    )
