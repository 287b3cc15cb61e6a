"""Writing a simulated Luma to disk: ``events/`` (Parquet by month), ``profiles.csv``, ``ground_truth/``.

Identities behave like real ones: many people browse anonymously (``ecid`` only) and sign
in later (``ecid`` + email on one event), some devices are shared by two people, a few
test accounts sign in on hundreds of devices (which the stitching guardrails must catch),
trackers resend a few events, and some emails are typed with capitals and spaces.

``ground_truth/`` holds what the oracle needs to replay the run (``simulation.json``: the
settings and a daily purchase check) and to map profiles to people
(``person_identities.parquet``), plus the truth behind the data: latent traits, every
purchase including unrecorded ones, the calendar and the daily purchase probabilities.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from propensity.core.io import atomic_path
from propensity.features.synthetic.campaigns import CAMPAIGN_CODE_BASE, CAMPAIGN_RECEIVED
from propensity.features.synthetic.classes import (
    ClassRegistrations,
    class_registrations_for,
    with_registrations,
)
from propensity.features.synthetic.events import MICROS, SECONDS_PER_DAY
from propensity.features.synthetic.ground_truth import (
    PARQUET,
    numbered_strings,
    write_calendar,
    write_campaigns,
    write_daily_probability,
    write_traits,
)
from propensity.features.synthetic.result import ChunkPlace, Simulation
from propensity.features.synthetic.simulator import simulate
from propensity.features.synthetic.world import (
    CATEGORIES,
    CH,
    CHANNEL_NAMES,
    ET,
    EVENT_TYPES,
    OFFLINE,
    PURCHASE_CHANNELS,
    SKUS_PER_CATEGORY,
    TIERS,
    GeneratorSettings,
    Traits,
)

# Bumped whenever a replay of the same settings would no longer repeat the written run.
SIMULATOR_VERSION = 2


@dataclass(frozen=True)
class GenerationSummary:
    """What ``generate`` wrote."""

    people: int  # simulated people (bots included, test accounts not)
    days: int
    events: int  # rows in events/ (resent duplicates included)
    purchases: int  # purchase events
    unrecorded_purchases: int  # purchases no event records (offline)
    known_people: int  # people with a crm_id (in profiles.csv)
    bots: int
    difficulty: str
    scenario: str
    out: str


def generate(settings: GeneratorSettings, out_dir: str | Path) -> GenerationSummary:
    """Simulate Luma and write ``events/``, ``profiles.csv`` and (optionally) ``ground_truth/``.

    The population is simulated and written one chunk of ``settings.chunk_profiles`` people at
    a time (``events/`` then holds one file per month and chunk), so memory follows the chunk,
    not the population. Deterministic for given settings; the directory appears whole or not
    at all.
    """
    bounds = settings.chunks()
    test_accounts = 0 if settings.scenario == "purchase_only" else settings.test_accounts
    out_dir = Path(out_dir)
    totals = dict.fromkeys(("events", "purchases", "unrecorded", "known", "bots"), 0)
    with atomic_path(out_dir, kind="generated events") as tmp:
        (tmp / "events").mkdir(parents=True)
        first_device = first_event = 0
        profiles_csv: pacsv.CSVWriter | None = None
        try:
            for index, (first, stop) in enumerate(bounds):
                sim = simulate(settings, index)
                chunk = ChunkPlace(
                    index=index,
                    chunks=len(bounds),
                    first_person=first,
                    people=stop - first,
                    first_device=first_device,
                    devices=int(sim.traits.n_devices.sum()),
                    first_event=first_event,
                    profiles=settings.profiles,
                    test_accounts=test_accounts if index == len(bounds) - 1 else 0,
                )
                first_event, profiles = _write_chunk(sim, chunk, tmp, totals)
                profiles_csv = profiles_csv or pacsv.CSVWriter(tmp / "profiles.csv", profiles.schema)
                profiles_csv.write_table(profiles)
                first_device += chunk.devices
                del sim  # the next chunk's simulation does not share memory with this one's
        finally:
            if profiles_csv is not None:
                profiles_csv.close()
    return GenerationSummary(
        people=settings.profiles,
        days=settings.days,
        events=totals["events"],
        purchases=totals["purchases"],
        unrecorded_purchases=totals["unrecorded"],
        known_people=totals["known"],
        bots=totals["bots"],
        difficulty=settings.difficulty,
        scenario=settings.scenario,
        out=str(out_dir),
    )


def _write_chunk(
    sim: Simulation, chunk: ChunkPlace, tmp: Path, totals: dict[str, int]
) -> tuple[int, pa.Table]:
    """Write one chunk's events (and, for a one-chunk world, the ground truth); count what it
    wrote into ``totals``. Returns the next chunk's first event number and this chunk's
    profiles. The random draws keep the order they had before chunks existed."""
    settings = sim.settings
    start_us = _start_micros(settings)
    # The writer consumes the event columns: one copy of them in memory at a time.
    arrays, sim.events = sim.events, {}
    classes = class_registrations_for(settings, arrays, sim.traits, start_us, chunk.index)
    if classes is not None:
        classes.person = classes.person + np.int32(chunk.first_person)
    arrays["person"] += np.int32(chunk.first_person)
    arrays["device"] = np.where(arrays["device"] >= 0, arrays["device"] + chunk.first_device, -1)
    if settings.scenario == "purchase_only":
        arrays = _purchases_only(arrays)
    else:
        arrays = _add_test_accounts(sim, arrays, chunk)
    totals["purchases"] += int((arrays["type"] == ET["purchase"]).sum())
    events, shared_pairs, next_event = _events_table(sim, arrays, chunk, classes)
    _write_partitioned(events, tmp / "events", chunk.file_suffix())
    profiles = _profiles_table(sim, chunk)
    if settings.ground_truth:  # a one-chunk world (GeneratorSettings checks)
        (tmp / "ground_truth").mkdir()
        _write_ground_truth(tmp / "ground_truth", sim, shared_pairs)
        if classes is not None:
            classes.write_truth(tmp / "ground_truth" / "class_registrations.json")
    totals["events"] += int(events.num_rows)
    totals["unrecorded"] += int((sim.purchases["channel"] == OFFLINE).sum())
    totals["known"] += int((sim.traits.known_from <= settings.days).sum())
    totals["bots"] += int(sim.traits.is_bot.sum())
    return next_event, profiles


def _purchases_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A transaction log: purchase rows only, each with the customer's crm_id and nothing else."""
    keep = arrays["type"] == ET["purchase"]
    out = {k: v[keep] for k, v in arrays.items()}
    rows = int(keep.sum())
    out.update(
        device=np.full(rows, -1, np.int64),
        campaign=np.full(rows, -1, np.int32),
        with_email=np.zeros(rows, bool),
        with_crm=np.ones(rows, bool),
        with_phone=np.zeros(rows, bool),
    )
    return out


def _device_ids(first: int, count: int) -> pa.Array:
    """ecid strings for device numbers first..first+count-1; events and ground truth must agree
    on them."""
    return numbered_strings("ecid-", ((first + np.arange(count)) * 2654435761 + 97) % 10**12, 12)


def _add_test_accounts(
    sim: Simulation, arrays: dict[str, np.ndarray], chunk: ChunkPlace
) -> dict[str, np.ndarray]:
    """Test/kiosk accounts (the last chunk's): one crm_id + email signed in on ~120 store tablets
    each (appended to ``arrays`` in place, column by column)."""
    settings, rng = sim.settings, sim.rng
    n, total_devices = settings.profiles, chunk.first_device + chunk.devices
    start_us = _start_micros(settings)
    extra: dict[str, list[np.ndarray]] = {k: [] for k in arrays}
    for k in range(chunk.test_accounts):
        devices = total_devices + k * 1000 + np.arange(120)
        size = len(devices)
        add = {
            "ts": start_us + rng.integers(0, settings.days * SECONDS_PER_DAY, size) * MICROS,
            "type": np.full(size, ET["login"], np.int8),
            "person": np.full(size, n + k, np.int32),
            "device": devices.astype(np.int64),
            "channel": np.full(size, CH["web"], np.int8),
            "category": np.full(size, -1, np.int8),
            "revenue": np.full(size, np.nan),
            "quantity": np.full(size, np.nan),
            "campaign": np.full(size, -1, np.int32),
            "with_email": np.ones(size, bool),
            "with_crm": np.ones(size, bool),
            "with_phone": np.zeros(size, bool),
            "sku": np.full(size, -1, np.int32),
        }
        for key, value in add.items():
            extra[key].append(value)
    for key, parts in extra.items():
        arrays[key] = np.concatenate([arrays[key], *parts])
    return arrays


def _start_micros(settings: GeneratorSettings) -> int:
    # Not datetime.timestamp(): on a naive datetime it uses the machine's local time zone.
    return int((np.datetime64(settings.start, "s") - np.datetime64(0, "s")).astype(np.int64)) * MICROS


def _dictionary(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    mask = codes < 0
    return pa.DictionaryArray.from_arrays(
        pa.array(np.where(mask, 0, codes).astype(np.int32), mask=mask), dictionary
    )


def _events_table(
    sim: Simulation,
    columns: dict[str, np.ndarray],
    chunk: ChunkPlace,
    classes: ClassRegistrations | None = None,
) -> tuple[pa.Table, np.ndarray, int]:
    """The chunk's events as an Arrow table, the (person, device) pairs of shared-device use and
    the next chunk's first event number.

    Consumes ``columns`` (emptied, column by column, so memory holds one copy at a time). The
    class registrations join after the last random draw here, so the draws (resends, shared
    devices, messy emails) and every other row stay what they were without them. Identity
    dictionaries hold the chunk's own people and devices.
    """
    rng = sim.rng
    next_event = chunk.first_event + len(columns["ts"]) + (len(classes.person) if classes is not None else 0)
    a, event_number = _with_resends(columns, chunk.first_event, rng, sim.settings.duplicate_rate)
    rows = len(a["ts"])
    ids = chunk.person_ids()
    people = len(ids)
    # Identity values are dictionary-encoded: building 20M Python strings would dominate.
    ecids = _device_ids(chunk.first_device, chunk.devices + chunk.test_accounts * 1000)
    code = chunk.person_codes(a["person"])
    device, shared_pairs = _shared_device_use(sim, chunk, a, code, people)
    crm = numbered_strings("C", ids + 100_000, 7)
    emails = pc.binary_join_element_wise(numbered_strings("user", ids, 7), "@example.com", "")
    # Every 7th email is typed with capitals and spaces: normalisation must make them one.
    messy = pc.binary_join_element_wise(" ", pc.utf8_upper(emails), " ", "")
    email_dict = pa.concat_arrays([emails, messy])
    email_code = np.where(a["with_email"], code + people * (rng.random(rows) < 1 / 7), -1)
    del code
    if classes is not None and len(classes.person):
        a, device, email_code, event_number = with_registrations(a, device, email_code, event_number, classes)
    code = chunk.person_codes(a["person"])
    phone = pc.binary_join_element_wise("+1 (555) ", numbered_strings("", ids % 10**7, 7), "")
    campaign_names, campaign_codes = _campaign_names(sim, a["campaign"])
    sku_names = numbered_strings("SKU-", np.arange(len(CATEGORIES) * SKUS_PER_CATEGORY), 4)
    table = pa.table(
        {
            "event_id": numbered_strings("evt-", event_number, 9),
            "timestamp": pa.array(a["ts"], type=pa.timestamp("us")),
            "event_type": _dictionary(a["type"].astype(np.int32), _event_type_names(sim)),
            "ecid": _dictionary(np.where(device >= 0, device - chunk.first_device, -1), ecids),
            "email": _dictionary(email_code, email_dict),
            "crm_id": _dictionary(np.where(a["with_crm"], code, -1), crm),
            "phone": _dictionary(np.where(a["with_phone"], code, -1), phone),
            "channel": _dictionary(a["channel"].astype(np.int32), pa.array(CHANNEL_NAMES)),
            "product_category": _dictionary(a["category"].astype(np.int32), pa.array(CATEGORIES)),
            "sku": _dictionary(a["sku"], sku_names),
            "revenue": pa.array(a["revenue"], mask=np.isnan(a["revenue"])),
            "quantity": pa.array(a["quantity"], mask=np.isnan(a["quantity"])),
            "campaign": _dictionary(campaign_codes, campaign_names),
        }
    )
    return table, shared_pairs, next_event


def _with_resends(
    columns: dict[str, np.ndarray], first_event: int, rng: np.random.Generator, rate: float
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Trackers resend: a few events arrive twice with the same event_id. The columns (consumed,
    column by column) with the resent rows, ordered by time, person and event number, and each
    row's event number."""
    rows = len(columns["ts"])
    event_number = first_event + np.arange(rows)
    dup = np.flatnonzero(rng.random(rows) < rate)
    a = {}
    for key in list(columns):
        column = columns.pop(key)
        a[key] = np.concatenate([column, column[dup]])
    event_number = np.concatenate([event_number, event_number[dup]])
    order = np.lexsort((event_number, a["person"], a["ts"]))
    for key in list(a):
        a[key] = a[key][order]
    return a, event_number[order]


def _shared_device_use(
    sim: Simulation, chunk: ChunkPlace, a: dict[str, np.ndarray], code: np.ndarray, people: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's device, where a sharer's sessions sometimes happen on the other person's first
    device, and the (person, device) pairs of that shared use (``code``: each row's person's
    place in the chunk)."""
    device = a["device"].copy()
    person_is_sharer = np.zeros(people, dtype=np.int64) - 1
    person_is_sharer[sim.sharers] = chunk.first_device + sim.device_offset[sim.share_with]
    shared = (device >= 0) & (person_is_sharer[code] >= 0) & (sim.rng.random(len(device)) < 0.5)
    device[shared] = person_is_sharer[code[shared]]
    shared_pairs = np.unique(np.stack([a["person"][shared].astype(np.int64), device[shared]], axis=1), axis=0)
    return device, shared_pairs


def _event_type_names(sim: Simulation) -> pa.Array:
    """The event types' dictionary: the world's own, plus the custom ``campaign_received`` when
    the world has campaigns (only then: a world without them is written as before)."""
    return pa.array(list(EVENT_TYPES) + ([CAMPAIGN_RECEIVED] if sim.campaigns else []))


def _campaign_names(sim: Simulation, codes: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The campaign dictionary (``cmp-NNN`` for the world's e-mail campaigns, then each simulated
    campaign's name) and the codes into it."""
    own = codes < CAMPAIGN_CODE_BASE
    names = numbered_strings("cmp-", np.arange(max(int(codes[own].max(initial=-1)) + 1, 1)), 3)
    if not sim.campaigns:
        return names, codes
    codes = np.where(own, codes, codes - CAMPAIGN_CODE_BASE + len(names)).astype(np.int32)
    return pa.concat_arrays([names, pa.array([c.spec.name for c in sim.campaigns])]), codes


def _write_partitioned(table: pa.Table, directory: Path, suffix: str = "") -> None:
    """One Parquet file per month (events are sorted by time), so readers can prune by date;
    ``suffix`` tells the chunks of a month apart."""
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
            directory / f"events-{month[start]}{suffix}.parquet",
            compression="zstd",
            compression_level=1,
            row_group_size=1_000_000,
            use_dictionary=dictionary_columns,
        )


def _profiles_table(sim: Simulation, chunk: ChunkPlace) -> pa.Table:
    """The profile attributes of the chunk's known people (and test accounts), one row each."""
    settings, rng, tr = sim.settings, sim.rng, sim.traits
    n, test_accounts = settings.profiles, chunk.test_accounts
    people = np.flatnonzero(tr.known_from <= settings.days)
    score = tr.intent[people] + 1.2 * tr.customer[people]
    if settings.difficulty == "realistic":
        # Frequent buyers climb the tiers.
        score = 0.5 * tr.intent[people] - 0.7 * np.log(tr.cycle_days[people] / 75) + 1.2 * tr.customer[people]
    tier = np.digitize(score + rng.normal(0, 0.5, len(people)), [0.0, 0.9, 1.8])
    signup = np.where(tr.known_from[people] < 0, -rng.integers(30, 1500, len(people)), tr.known_from[people])
    start = np.datetime64(settings.start)
    test = np.arange(n, n + test_accounts)
    ids = np.concatenate([people + chunk.first_person, test])
    marketing = np.concatenate([tr.consent_marketing[people], np.full(len(test), "n")])
    personal = np.concatenate([tr.consent_personal[people], np.full(len(test), "n")])
    signup_dates = np.concatenate([start + signup.astype("timedelta64[D]"), np.full(len(test), start)])
    return pa.table(
        {
            "crm_id": numbered_strings("C", ids + 100_000, 7),
            "email": pc.binary_join_element_wise(numbered_strings("user", ids, 7), "@example.com", ""),
            "phone": pc.binary_join_element_wise("+1 (555) ", numbered_strings("", ids % 10**7, 7), ""),
            "loyalty_tier": np.concatenate([TIERS[tier], np.full(len(test), "none")]),
            "signup_date": pa.array(signup_dates.astype("datetime64[D]")),
            "consent_personalization": pa.array(personal, mask=personal == ""),
            "consent_marketing": pa.array(marketing, mask=marketing == ""),
        }
    )


def _write_ground_truth(directory: Path, sim: Simulation, shared_pairs: np.ndarray) -> None:
    """What the simulation knows and the events do not show: each day's purchase probability,
    traits, identities, every purchase (recorded or not), the calendar and the settings."""
    settings = sim.settings
    dates = np.datetime64(settings.start) + np.arange(settings.days).astype("timedelta64[D]")
    if sim.daily_probability is not None:
        write_daily_probability(directory, sim.daily_probability, dates, settings.profiles)
    write_traits(directory, sim.traits, settings.profiles)
    _write_person_identities(directory, sim.traits, settings.profiles, settings.days, shared_pairs)
    bought = sim.purchases
    purchases = pa.table(
        {
            "person_id": bought["person"],
            "day": pa.array(dates[bought["day"]]),
            "channel": PURCHASE_CHANNELS[bought["channel"]],
            "category": CATEGORIES[bought["category"]],
            "recorded": bought["channel"] != OFFLINE,
        }
    )
    pq.write_table(purchases, directory / "purchases.parquet", **PARQUET)
    write_calendar(directory, sim.calendar, dates)
    settings_json = {k: str(v) if k == "start" else v for k, v in dataclasses.asdict(settings).items()}
    if settings.chunk_profiles == GeneratorSettings.chunk_profiles:
        del settings_json["chunk_profiles"]  # as written before chunks existed
    if not settings.campaigns:
        del settings_json["campaigns"]  # as written before campaigns existed
    else:
        write_campaigns(directory, sim, dates)
    meta = {
        "simulator_version": SIMULATOR_VERSION,
        "settings": settings_json,
        # A replay checks it repeats the run: purchases drawn per day (recorded or not).
        "daily_purchases": np.bincount(bought["day"], minlength=settings.days).tolist(),
    }
    (directory / "simulation.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _write_person_identities(
    directory: Path, tr: Traits, n: int, days: int, shared_pairs: np.ndarray
) -> None:
    """Each person's own devices and crm_id, plus devices they used that belong to someone else."""
    person_of_device = np.repeat(np.arange(n, dtype=np.int32), tr.n_devices)
    device_numbers = np.concatenate([np.arange(len(person_of_device)), shared_pairs[:, 1]])
    ecids = _device_ids(0, int(tr.n_devices.sum())).take(pa.array(device_numbers))
    known = np.flatnonzero(tr.known_from <= days)
    identities = pa.table(
        {
            "person_id": np.concatenate([person_of_device, shared_pairs[:, 0], known]).astype(np.int32),
            "namespace": pa.array(["ecid"] * len(device_numbers) + ["crm_id"] * len(known)),
            "value": pa.concat_arrays([ecids, numbered_strings("C", known + 100_000, 7)]),
        }
    )
    pq.write_table(identities, directory / "person_identities.parquet", **PARQUET)
