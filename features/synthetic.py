"""Synthetic omnichannel events for "Luma", a sports-apparel retailer.

People have latent traits (purchase intent, browsing activity, category affinities, channel
preferences, price level). Each day, vectorised over all people, the simulation draws
visits, funnels (view -> cart -> checkout -> purchase), cart abandonment, weekly email
campaigns, push, call-centre calls and store visits. Purchases are drawn from a known daily
probability that depends on the traits and the recent behaviour (a decaying interest that
rises with visits and clicks, an open cart, time since the last purchase); that
probability is written as ground truth, so the best achievable AUC of any model for any
as-of and horizon can be computed.

Identities behave like real ones: many people browse anonymously (``ecid`` only) and sign
in later (``ecid`` + email on one event), a few devices are shared by two people, and a few
test accounts sign in on hundreds of devices, which the stitching guardrails must catch.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from propensity.core.io import atomic_path

CATEGORIES = np.array(["yoga", "running", "hiking", "training", "lifestyle"])
TIERS = np.array(["none", "bronze", "silver", "gold"])
SECONDS_PER_DAY = 86_400
MICROS = 1_000_000


@dataclass(frozen=True)
class GeneratorSettings:
    profiles: int = 20_000
    days: int = 365
    seed: int = 42
    start: dt.date = dt.date(2025, 1, 1)
    ground_truth: bool = True
    duplicate_rate: float = 0.003
    test_accounts: int = 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _strings(prefix: str, numbers: np.ndarray, width: int = 0) -> pa.Array:
    text = pc.cast(pa.array(numbers), pa.string())
    if width:
        text = pc.utf8_lpad(text, width=width, padding="0")
    return pc.binary_join_element_wise(prefix, text, "")


class _Events:
    """Column chunks of the events being generated (codes, not Python strings)."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {
            k: []
            for k in (
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
        }

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
        if n == 0:
            return
        full = lambda v, dtype: np.broadcast_to(np.asarray(v, dtype=dtype), (n,)).copy()  # noqa: E731
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

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.chunks.items()}


EVENT_TYPES = np.array(
    [
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "checkout",
        "purchase",
        "email_open",
        "email_click",
        "push_open",
        "app_launch",
        "call_center_call",
        "store_visit",
        "offer_redeemed",
        "login",
        "signup",
        "remove_from_cart",
    ]
)
ET = {name: i for i, name in enumerate(EVENT_TYPES)}
CHANNEL_NAMES = np.array(["web", "mobile_app", "email", "push", "call_center", "store", "advertising"])
CH = {name: i for i, name in enumerate(CHANNEL_NAMES)}


def generate(settings: GeneratorSettings, out_dir: str | Path) -> dict:
    """Simulate Luma and write ``events/``, ``profiles.csv`` and ``ground_truth/`` to ``out_dir``.

    Deterministic for a seed. Returns a summary (people, events, purchases, ...).
    """
    rng = np.random.default_rng(settings.seed)
    n, days = settings.profiles, settings.days
    # Not datetime.timestamp(): on a naive datetime it uses the machine's local time zone.
    start_us = (
        int((dt.datetime.combine(settings.start, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds())
        * MICROS
    )

    # --- latent traits -----------------------------------------------------------------
    intent = rng.normal(0, 1, n)
    activity = 0.75 * intent + 0.65 * rng.normal(0, 1, n)
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.5), n)
    favourite = affinity.argmax(axis=1)
    account = rng.random(n)
    known_from = np.where(
        account < 0.45,
        -1,  # known already
        np.where(
            account < 0.62,
            rng.integers(0, days, n),  # signs up later
            days + 1,
        ),
    )  # stays anonymous
    has_account = known_from <= days
    customer = has_account & (known_from < 0) & (rng.random(n) < 0.55 + 0.2 * (intent > 0))
    has_app = rng.random(n) < 0.35
    app_share = np.where(has_app, rng.beta(3, 2, n), 0.0)
    store_goer = has_account & (rng.random(n) < 0.3)
    price_level = np.exp(rng.normal(4.1, 0.45, n))
    consent_marketing = np.where(rng.random(n) < 0.72, "y", np.where(rng.random(n) < 0.7, "n", ""))
    consent_personal = np.where(rng.random(n) < 0.86, "y", np.where(rng.random(n) < 0.7, "n", ""))
    subscribed = has_account & (consent_marketing == "y")
    email_engagement = rng.normal(-1.7, 0.9, n)
    base_purchase = -7.6 + 1.35 * intent + 1.2 * customer
    base_visit = -5.8 + 1.0 * activity + 0.5 * customer

    # Devices: 1-3 per person; ~1.5 % of people share their first device with someone.
    n_devices = 1 + rng.binomial(2, 0.25, n)
    device_offset = np.concatenate([[0], np.cumsum(n_devices)[:-1]])
    total_devices = int(n_devices.sum())
    sharers = np.flatnonzero(rng.random(n) < 0.015)
    share_with = rng.integers(0, n, len(sharers))

    # --- daily simulation ------------------------------------------------------------------
    interest = np.zeros(n)
    cart_open = np.zeros(n)  # days left in which an abandoned cart still pulls
    since_purchase = np.where(customer, rng.integers(20, 400, n), 1000).astype(np.float64)
    ev = _Events()
    truth_p = np.empty((days, n), dtype=np.float32) if settings.ground_truth else None
    season_phase = rng.uniform(0, 2 * np.pi)
    sku_per_category = 40

    def pick_device(people: np.ndarray) -> np.ndarray:
        local = (rng.random(len(people)) * n_devices[people]).astype(np.int64)
        device = device_offset[people] + local
        return device

    def session_times(day: int, count: int) -> np.ndarray:
        hour = np.clip(rng.normal(15, 4.5, count), 0, 22.5)
        return start_us + day * SECONDS_PER_DAY * MICROS + (hour * 3600 * MICROS).astype(np.int64)

    campaign_id = 0
    for day in range(days):
        weekday = (settings.start + dt.timedelta(days=day)).weekday()
        season = 0.25 * np.sin(2 * np.pi * day / 365 + season_phase) + (0.2 if weekday >= 5 else 0.0)
        known = known_from <= day

        # Weekly campaign on Tuesdays, themed on one category; clicks raise interest.
        email_click_today = np.zeros(n, dtype=bool)
        if weekday == 1:
            theme = rng.integers(0, len(CATEGORIES))
            recipients = np.flatnonzero(subscribed & known)
            opened = recipients[
                rng.random(len(recipients))
                < _sigmoid(email_engagement[recipients] + 0.3 * interest[recipients])
            ]
            t_open = session_times(day, len(opened))
            ev.add(opened, t_open, ET["email_open"], CH["email"], campaign=campaign_id, with_email=True)
            click_p = 0.12 + 0.25 * affinity[opened, theme] + 0.1 * _sigmoid(intent[opened])
            clicked = opened[rng.random(len(opened)) < click_p]
            ev.add(
                clicked,
                session_times(day, len(clicked)),
                ET["email_click"],
                CH["email"],
                campaign=campaign_id,
                with_email=True,
            )
            interest[clicked] += 1.2
            email_click_today[clicked] = True
            campaign_id += 1

        # Purchase probability: the ground truth of this simulation.
        refractory = 1.5 * np.exp(-since_purchase / 10.0)
        logit = base_purchase + 1.3 * interest + 1.4 * (cart_open > 0) + season - refractory
        p = _sigmoid(logit)
        if truth_p is not None:
            truth_p[day] = p
        buys = rng.random(n) < p

        visit_p = _sigmoid(
            base_visit + 1.2 * interest + 1.0 * (cart_open > 0) + season + 2.5 * email_click_today
        )
        # Everyone who buys or signs up today has a session today.
        visits = (rng.random(n) < visit_p) | buys | (known_from == day)
        visitors = np.flatnonzero(visits)
        in_store = store_goer[visitors] & (rng.random(len(visitors)) < 0.25)
        online = visitors[~in_store]
        store = visitors[in_store]

        # Online sessions: device, channel (app or web), a funnel.
        device = pick_device(online)
        on_app = rng.random(len(online)) < app_share[online]
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
        views = rng.poisson(0.8 + 0.5 * interest[online] + 1.5 * buys[online])
        rep = np.repeat(np.arange(len(online)), views)
        view_cat = _choose_category(rng, affinity[online[rep]])
        ev.add(
            online[rep],
            step(4)[rep] + rng.integers(0, 600, len(rep)) * MICROS,
            ET["product_view"],
            channel[rep],
            device=device[rep],
            category=view_cat,
            sku=view_cat * sku_per_category + rng.integers(0, sku_per_category, len(rep)),
        )
        buying_online = buys[online]
        cart_p = _sigmoid(base_purchase[online] + 5.2 + 0.8 * interest[online])
        carting = buying_online | ((views > 0) & (rng.random(len(online)) < cart_p))
        cart_cat = np.where(buying_online, _choose_category(rng, affinity[online]), favourite[online])
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
        revenue = np.round(price_level[online] * rng.lognormal(0, 0.35, len(online)), 2)
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
            sku=cart_cat[buying_online] * sku_per_category
            + rng.integers(0, sku_per_category, buying_online.sum()),
        )
        abandoned = carting & ~buying_online
        cart_open[online[abandoned]] = 4

        # Store visits (loyalty card = crm_id), store purchases and redeemed offers.
        t_store = session_times(day, len(store))
        ev.add(store, t_store, ET["store_visit"], CH["store"], with_crm=True)
        store_buys = store[buys[store]]
        t_buy = session_times(day, len(store_buys))
        s_cat = _choose_category(rng, affinity[store_buys])
        ev.add(
            store_buys,
            t_buy,
            ET["purchase"],
            CH["store"],
            category=s_cat,
            with_crm=True,
            revenue=np.round(price_level[store_buys] * rng.lognormal(0.1, 0.35, len(store_buys)), 2),
            quantity=1.0,
            sku=s_cat * sku_per_category + rng.integers(0, sku_per_category, len(store_buys)),
        )
        redeem = store_buys[interest[store_buys] > 0.8]
        ev.add(
            redeem,
            session_times(day, len(redeem)),
            ET["offer_redeemed"],
            CH["store"],
            with_crm=True,
            campaign=max(campaign_id - 1, 0),
        )

        # Push opens for app users; call-centre calls when a cart is stuck.
        pushers = np.flatnonzero(known & has_app & (rng.random(n) < 0.004 * (1 + interest)))
        ev.add(
            pushers,
            session_times(day, len(pushers)),
            ET["push_open"],
            CH["push"],
            device=pick_device(pushers),
            with_crm=True,
        )
        callers = np.flatnonzero(known & (rng.random(n) < 0.0006 + 0.01 * (cart_open > 0)))
        ev.add(
            callers,
            session_times(day, len(callers)),
            ET["call_center_call"],
            CH["call_center"],
            with_crm=True,
            with_phone=True,
        )

        # State updates: interest decays, browsing and carts feed it, purchases reset it.
        interest = interest * 0.86 + 0.25 * visits + 0.2 * (cart_open > 0)
        interest[buys] *= 0.3
        cart_open = np.maximum(cart_open - 1, 0)
        cart_open[buys] = 0
        since_purchase = np.where(buys, 0, since_purchase + 1)

    arrays = ev.arrays()
    arrays = _add_test_accounts(rng, arrays, settings, start_us, n, total_devices)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        events = _events_table(rng, arrays, settings, n, total_devices, sharers, share_with, device_offset)
        (tmp / "events").mkdir()
        _write_partitioned(events, tmp / "events")
        profiles = _profiles_table(
            rng, n, settings, known_from, customer, intent, consent_marketing, consent_personal
        )
        _write_csv(profiles, tmp / "profiles.csv")
        if truth_p is not None:
            gt = tmp / "ground_truth"
            gt.mkdir()
            _write_ground_truth(gt, truth_p, affinity, settings, n, n_devices, known_from)
    purchases = int((arrays["type"] == ET["purchase"]).sum())
    return {
        "people": n,
        "days": days,
        "events": int(events.num_rows),
        "purchases": purchases,
        "known_people": int(has_account.sum()),
        "out": str(out_dir),
    }


def _device_ids(count: int) -> pa.Array:
    """ecid strings for device numbers 0..count-1; events and ground truth must agree on them."""
    return _strings("ecid-", (np.arange(count) * 2654435761 + 97) % 10**12, 12)


def _choose_category(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    cumulative = affinity.cumsum(axis=1)
    draw = rng.random((len(affinity), 1)) * cumulative[:, -1:]
    return (draw > cumulative).sum(axis=1).astype(np.int8)


def _add_test_accounts(rng, arrays, settings, start_us, n, total_devices):
    """Test/kiosk accounts: one crm_id + email signed in on ~120 store tablets each."""
    extra = {k: [v] for k, v in arrays.items()}
    for k in range(settings.test_accounts):
        devices = total_devices + k * 1000 + np.arange(120)
        times = start_us + rng.integers(0, settings.days * SECONDS_PER_DAY, len(devices)) * MICROS
        person = np.full(len(devices), n + k, np.int32)
        add = {
            "ts": times,
            "type": np.full(len(devices), ET["login"], np.int8),
            "person": person,
            "device": devices.astype(np.int64),
            "channel": np.full(len(devices), CH["web"], np.int8),
            "category": np.full(len(devices), -1, np.int8),
            "revenue": np.full(len(devices), np.nan),
            "quantity": np.full(len(devices), np.nan),
            "campaign": np.full(len(devices), -1, np.int32),
            "with_email": np.ones(len(devices), bool),
            "with_crm": np.ones(len(devices), bool),
            "with_phone": np.zeros(len(devices), bool),
            "sku": np.full(len(devices), -1, np.int32),
        }
        for key, value in add.items():
            extra[key].append(value)
    return {k: np.concatenate(v) for k, v in extra.items()}


def _dictionary(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    mask = codes < 0
    return pa.DictionaryArray.from_arrays(
        pa.array(np.where(mask, 0, codes).astype(np.int32), mask=mask), dictionary
    )


def _events_table(rng, a, settings, n, total_devices, sharers, share_with, device_offset) -> pa.Table:
    # Trackers resend: a few events arrive twice with the same event_id.
    rows = len(a["ts"])
    event_number = np.arange(rows)
    dup = np.flatnonzero(rng.random(rows) < settings.duplicate_rate)
    a = {k: np.concatenate([v, v[dup]]) for k, v in a.items()}
    event_number = np.concatenate([event_number, dup])
    order = np.lexsort((event_number, a["person"], a["ts"]))
    a = {k: v[order] for k, v in a.items()}
    event_number = event_number[order]
    rows = len(a["ts"])
    people = n + settings.test_accounts
    # Identity values are dictionary-encoded: building 20M Python strings would dominate.
    ecids = _device_ids(total_devices + settings.test_accounts * 1000)
    device = a["device"].copy()
    # A shared device: the sharer's sessions sometimes happen on the other person's first device.
    person_is_sharer = np.zeros(people, dtype=np.int64) - 1
    person_is_sharer[sharers] = device_offset[share_with]
    shared = (device >= 0) & (person_is_sharer[a["person"]] >= 0) & (rng.random(rows) < 0.5)
    device[shared] = person_is_sharer[a["person"][shared]]
    crm = _strings("C", np.arange(people) + 100_000, 7)
    emails = pc.binary_join_element_wise(_strings("user", np.arange(people), 7), "@example.com", "")
    # Every 7th email is typed with capitals and spaces: normalisation must make them one.
    messy = pc.binary_join_element_wise(" ", pc.utf8_upper(emails), " ", "")
    email_dict = pa.concat_arrays([emails, messy])
    email_code = np.where(a["with_email"], a["person"] + people * (rng.random(rows) < 1 / 7), -1)
    phone = pc.binary_join_element_wise("+1 (555) ", _strings("", np.arange(people) % 10**7, 7), "")
    campaign_names = _strings("cmp-", np.arange(max(int(a["campaign"].max()) + 1, 1)), 3)
    sku_names = _strings("SKU-", np.arange(len(CATEGORIES) * 40), 4)
    revenue = pa.array(a["revenue"], mask=np.isnan(a["revenue"]))
    quantity = pa.array(a["quantity"], mask=np.isnan(a["quantity"]))
    table = pa.table(
        {
            "event_id": _strings("evt-", event_number, 9),
            "timestamp": pa.array(a["ts"], type=pa.timestamp("us")),
            "event_type": _dictionary(a["type"].astype(np.int32), pa.array(EVENT_TYPES)),
            "ecid": _dictionary(device, ecids),
            "email": _dictionary(email_code, email_dict),
            "crm_id": _dictionary(np.where(a["with_crm"], a["person"], -1), crm),
            "phone": _dictionary(np.where(a["with_phone"], a["person"], -1), phone),
            "channel": _dictionary(a["channel"].astype(np.int32), pa.array(CHANNEL_NAMES)),
            "product_category": _dictionary(a["category"].astype(np.int32), pa.array(CATEGORIES)),
            "sku": _dictionary(a["sku"], sku_names),
            "revenue": revenue,
            "quantity": quantity,
            "campaign": _dictionary(a["campaign"], campaign_names),
        }
    )
    return table


def _write_partitioned(table: pa.Table, directory: Path) -> None:
    """One Parquet file per month (events are sorted by time), so readers can prune by date."""
    micros = table["timestamp"].cast(pa.int64()).to_numpy()
    month = micros.astype("datetime64[us]").astype("datetime64[M]")
    bounds = np.flatnonzero(np.concatenate([[True], month[1:] != month[:-1], [True]]))
    # event_id is unique: trying a dictionary for it first only wastes the writer's time.
    dictionary_columns = [
        c for c in table.column_names if c not in ("event_id", "timestamp", "revenue", "quantity")
    ]
    for start, stop in itertools.pairwise(bounds):
        pq.write_table(
            table.slice(start, stop - start),
            directory / f"events-{month[start]}.parquet",
            compression="zstd",
            compression_level=1,
            row_group_size=1_000_000,
            use_dictionary=dictionary_columns,
        )


def _profiles_table(
    rng, n, settings, known_from, customer, intent, consent_marketing, consent_personal
) -> pa.Table:
    people = np.flatnonzero(known_from <= settings.days)
    tier_score = intent[people] + 1.2 * customer[people] + rng.normal(0, 0.5, len(people))
    tier = np.digitize(tier_score, [0.0, 0.9, 1.8])
    signup = np.where(known_from[people] < 0, -rng.integers(30, 1500, len(people)), known_from[people])
    start = np.datetime64(settings.start)
    test = np.arange(n, n + settings.test_accounts)
    ids = np.concatenate([people, test])
    crm = _strings("C", ids + 100_000, 7)
    emails = pc.binary_join_element_wise(_strings("user", ids, 7), "@example.com", "")
    phone = pc.binary_join_element_wise("+1 (555) ", _strings("", ids % 10**7, 7), "")
    marketing = np.concatenate([consent_marketing[people], np.full(len(test), "n")])
    personal = np.concatenate([consent_personal[people], np.full(len(test), "n")])
    return pa.table(
        {
            "crm_id": crm,
            "email": emails,
            "phone": phone,
            "loyalty_tier": np.concatenate([TIERS[tier], np.full(len(test), "none")]),
            "signup_date": pa.array(
                np.concatenate([start + signup.astype("timedelta64[D]"), np.full(len(test), start)]).astype(
                    "datetime64[D]"
                )
            ),
            "consent_personalization": pa.array(personal, mask=personal == ""),
            "consent_marketing": pa.array(marketing, mask=marketing == ""),
        }
    )


def _write_csv(table: pa.Table, path: Path) -> None:
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, path)


def _write_ground_truth(
    directory: Path,
    truth_p: np.ndarray,
    affinity: np.ndarray,
    settings: GeneratorSettings,
    n: int,
    n_devices: np.ndarray,
    known_from: np.ndarray,
) -> None:
    """Daily purchase probability per person, and how persons map to identities."""
    days = truth_p.shape[0]
    dates = np.datetime64(settings.start) + np.arange(days).astype("timedelta64[D]")
    # Person-major order: Parquet then run-length encodes person_id and day almost for free.
    table = pa.table(
        {
            "person_id": pa.array(np.repeat(np.arange(n, dtype=np.int32), days)),
            "day": pa.array(np.tile(dates, n)),
            "probability": pa.array(np.ascontiguousarray(truth_p.T).reshape(-1)),
        }
    )
    pq.write_table(
        table, directory / "daily_purchase_probability.parquet", compression="zstd", row_group_size=4_000_000
    )
    traits = {"person_id": np.arange(n, dtype=np.int32)}
    for i, category in enumerate(CATEGORIES):
        traits[f"affinity_{category}"] = affinity[:, i].astype(np.float32)
    pq.write_table(pa.table(traits), directory / "person_traits.parquet", compression="zstd")
    ecids = _device_ids(int(n_devices.sum()))
    person_of_device = np.repeat(np.arange(n, dtype=np.int32), n_devices)
    known = np.flatnonzero(known_from <= settings.days)
    identities = pa.table(
        {
            "person_id": pa.concat_arrays([pa.array(person_of_device), pa.array(known.astype(np.int32))]),
            "namespace": pa.array(["ecid"] * len(person_of_device) + ["crm_id"] * len(known)),
            "value": pa.concat_arrays([ecids, _strings("C", known + 100_000, 7)]),
        }
    )
    pq.write_table(identities, directory / "person_identities.parquet", compression="zstd")


def oracle_probabilities(con, keys, outcome, ground_truth: Path):
    """The best achievable prediction for (profile_id, as_of) rows, from the simulation's truth.

    P(outcome in [as_of, as_of + horizon)) = 1 - prod(1 - p_day * category affinity), with the
    daily purchase probabilities the generator drew from. Only profiles that are the whole of
    one simulated person (one person, and that person in no other profile) get a value: a
    person split over unstitched devices buys on one of them, so a per-person probability is
    not that profile's. Others get NaN, as do outcomes the simulation has no ground truth for
    (revenue thresholds, non-purchase events). Needs ``identity_map``.
    """
    import numpy as np
    import pandas as pd

    frame = keys[["profile_id", "as_of"]].copy()
    if (
        outcome.event_type != "purchase"
        or outcome.min_revenue is not None
        or outcome.above_average_order_value
    ):
        return pd.Series(np.nan, index=keys.index)
    category = (outcome.category or "").lower()
    if category and category not in CATEGORIES:
        return pd.Series(np.nan, index=keys.index)
    weight = f"t.affinity_{category}" if category else "1.0"
    gt = Path(ground_truth)
    con.register("_oracle_keys", frame)
    result = con.execute(f"""
        WITH keys AS (SELECT DISTINCT profile_id, CAST(as_of AS DATE) AS as_of FROM _oracle_keys),
        pairs AS (
            SELECT DISTINCT m.profile_id, g.person_id
            FROM identity_map m
            JOIN read_parquet('{gt / "person_identities.parquet"}') g
              ON g.namespace = m.namespace AND g.value = m.value
        ), whole AS (
            SELECT person_id FROM pairs GROUP BY person_id HAVING count(DISTINCT profile_id) = 1
        ), link AS (
            SELECT profile_id, min(person_id) AS person_id, count(DISTINCT person_id) AS people
            FROM pairs WHERE profile_id IN (SELECT profile_id FROM keys)
            GROUP BY profile_id
        ), none AS (
            SELECT k.profile_id, k.as_of, sum(ln(1 - least(d.probability * {weight}, 0.999999))) AS log_none
            FROM keys k
            JOIN link l ON l.profile_id = k.profile_id AND l.people = 1
            JOIN whole w ON w.person_id = l.person_id
            JOIN read_parquet('{gt / "person_traits.parquet"}') t ON t.person_id = l.person_id
            JOIN read_parquet('{gt / "daily_purchase_probability.parquet"}') d
              ON d.person_id = l.person_id AND d.day >= k.as_of
             AND d.day < k.as_of + {int(outcome.horizon_days)}
            GROUP BY k.profile_id, k.as_of
        )
        SELECT profile_id, as_of, {"1 - exp(log_none)" if outcome.occurs else "exp(log_none)"} AS oracle
        FROM none
    """).df()
    con.unregister("_oracle_keys")
    merged = frame.assign(as_of=pd.to_datetime(frame["as_of"])).merge(
        result.assign(as_of=pd.to_datetime(result["as_of"])), on=["profile_id", "as_of"], how="left"
    )
    return pd.Series(merged["oracle"].to_numpy(), index=keys.index)
