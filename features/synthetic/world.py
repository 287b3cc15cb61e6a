"""The fixed world of the Luma simulation: settings, code tables, people's latent traits, calendar.

Nothing here changes while the simulation runs. Traits are drawn once per person; the
calendar (campaign themes, promotions, seasonality, drift) once per day. Both are pure
functions of the settings, so a run can be replayed exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from propensity.core.errors import UserError

CATEGORIES = np.array(["yoga", "running", "hiking", "training", "lifestyle"])
YOGA = 0
TIERS = np.array(["none", "bronze", "silver", "gold"])
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
        # Custom (not canonical) and last, so the codes before it never move: see .classes.
        "class_registration",
    ]
)
ET = {name: i for i, name in enumerate(EVENT_TYPES)}
CHANNEL_NAMES = np.array(["web", "mobile_app", "email", "push", "call_center", "store", "advertising"])
CH = {name: i for i, name in enumerate(CHANNEL_NAMES)}
# Where a purchase happened; offline ones (a partner shop, cash without the loyalty card)
# are real purchases that no event records.
ONLINE, STORE, OFFLINE = 0, 1, 2
PURCHASE_CHANNELS = np.array(["online", "store", "offline"])
SKUS_PER_CATEGORY = 40
# since_purchase of someone who has never bought: far beyond any cycle.
NEVER = 10_000.0

Difficulty = Literal["easy", "realistic"]
Scenario = Literal["omnichannel", "purchase_only"]


@dataclass(frozen=True)
class CampaignSpec:
    """A simulated campaign (see :mod:`.campaigns`): sent on ``send_day`` (default: the last
    ``horizon_days + 7`` days of the period) to the eligible people not drawn into the random
    ``holdout``; its outcome (a purchase of ``category``) is counted over ``horizon_days``."""

    name: str = "luma_yoga"
    category: str = "yoga"
    holdout: float = 0.2
    horizon_days: int = 28
    send_day: int | None = None

    def day_sent(self, days: int) -> int:
        """The day of the period the campaign is sent, in a world of ``days`` days."""
        return days - self.horizon_days - 7 if self.send_day is None else self.send_day

    def check(self, days: int) -> None:
        """A UserError when the campaign does not fit the period or its shares are impossible."""
        if self.category not in CATEGORIES:
            raise UserError(f"campaign {self.name!r}: category must be one of {list(CATEGORIES)}")
        if not 0 < self.holdout < 1:
            raise UserError(f"campaign {self.name!r}: holdout must be in (0, 1), got {self.holdout}")
        sent = self.day_sent(days)
        if self.horizon_days < 1 or sent < 0 or sent + self.horizon_days > days:
            raise UserError(
                f"campaign {self.name!r}: sent on day {sent} with a {self.horizon_days}-day horizon does "
                f"not fit a {days}-day period"
            )


# Luma's yoga campaign: the one the demo sends and measures.
LUMA_YOGA = CampaignSpec()


@dataclass(frozen=True)
class GeneratorSettings:
    """What to simulate. ``difficulty="easy"`` is the original, nearly transparent world;
    ``"realistic"`` adds hidden purchase cycles, offline purchases, promotions, seasonality,
    bots and drift. ``scenario="purchase_only"`` writes only purchase events (with crm_id).
    ``campaigns`` adds randomised campaigns with known individual effects (:mod:`.campaigns`)."""

    profiles: int = 20_000
    days: int = 365
    seed: int = 42
    start: dt.date = dt.date(2025, 1, 1)
    ground_truth: bool = True
    duplicate_rate: float = 0.003
    test_accounts: int = 2
    difficulty: Difficulty = "realistic"
    scenario: Scenario = "omnichannel"
    # Off by default: a world without campaigns is written byte for byte as before.
    campaigns: tuple[CampaignSpec, ...] = ()
    # People simulated at a time: the generator's peak memory follows this, not ``profiles``
    # (about 11 KB per person). A population that fits in one chunk is written exactly as
    # before chunks existed; each further chunk draws from streams of its own.
    chunk_profiles: int = 1_000_000

    def __post_init__(self) -> None:
        if self.difficulty not in ("easy", "realistic"):
            raise UserError(f"--difficulty must be 'easy' or 'realistic', got {self.difficulty!r}")
        if self.scenario not in ("omnichannel", "purchase_only"):
            raise UserError(f"--scenario must be 'omnichannel' or 'purchase_only', got {self.scenario!r}")
        if self.profiles < 1 or self.days < 1:
            raise UserError(f"--profiles and --days must be positive, got {self.profiles} and {self.days}")
        for campaign in self.campaigns:
            campaign.check(self.days)
        if len({c.name for c in self.campaigns}) != len(self.campaigns):
            raise UserError("simulated campaigns must have distinct names")
        self._check_chunks()

    def _check_chunks(self) -> None:
        """Chunks must be positive; a population of several chunks needs the realistic world, and no
        ground truth or campaigns (both are drawn over the whole population at once)."""
        if self.chunk_profiles < 1:
            raise UserError(f"--chunk-profiles must be positive, got {self.chunk_profiles}")
        if self.profiles <= self.chunk_profiles:
            return
        whole = [
            what
            for what, on in (
                ("--ground-truth", self.ground_truth),
                ("campaigns", bool(self.campaigns)),
                ("--difficulty easy", self.difficulty == "easy"),
            )
            if on
        ]
        if whole:
            raise UserError(
                f"--profiles {self.profiles:,} is more than one chunk "
                f"(--chunk-profiles {self.chunk_profiles:,}), but {', '.join(whole)} need "
                "the whole population in one: drop them "
                "(--no-ground-truth, realistic world, no campaigns) or raise --chunk-profiles"
            )

    def chunks(self) -> list[tuple[int, int]]:
        """The people of each chunk, as [first, stop) ranges of person ids, in order."""
        size = self.chunk_profiles
        return [(lo, min(lo + size, self.profiles)) for lo in range(0, self.profiles, size)]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Traits:
    """Latent, fixed traits of every simulated person (arrays of one length; affinity is n x 5).

    The first block drives both difficulties; the second only the realistic one (neutral
    values in the easy world).
    """

    intent: np.ndarray
    activity: np.ndarray
    affinity: np.ndarray
    known_from: np.ndarray  # day of sign-up; < 0 known from the start; > days never
    customer: np.ndarray
    has_app: np.ndarray
    app_share: np.ndarray
    store_goer: np.ndarray
    price_level: np.ndarray
    subscribed: np.ndarray
    email_engagement: np.ndarray
    base_purchase: np.ndarray
    base_visit: np.ndarray
    n_devices: np.ndarray
    is_bot: np.ndarray
    cycle_days: np.ndarray  # mean days between purchases while active
    cycle_shape: np.ndarray  # Erlang shape: 1 = memoryless, 4 = regular replenishment
    dropout: np.ndarray  # chance of lapsing after each purchase
    sensitivity: np.ndarray  # response to promotions
    offline_share: np.ndarray  # share of purchases that no event records
    interest_effect: np.ndarray  # how much browsing interest turns into buying
    consent_marketing: np.ndarray  # "y", "n" or "" (profiles.csv only)
    consent_personal: np.ndarray

    def take(self, index: np.ndarray) -> Traits:
        """The traits of the people at ``index`` (repeats allowed: Monte-Carlo replicas)."""
        return Traits(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def __len__(self) -> int:
        return len(self.intent)


def realistic_traits(settings: GeneratorSettings, rng: np.random.Generator) -> Traits:
    """Draw the traits of ``settings.profiles`` people for the realistic world."""
    n, days = settings.profiles, settings.days
    purchase_only = settings.scenario == "purchase_only"
    # ~0.3 % of device ids are crawlers: anonymous, very active, never buy.
    is_bot = np.zeros(n, bool) if purchase_only else rng.random(n) < 0.003
    intent = rng.normal(0, 1, n)
    # Browsing says less about buying than in the easy world.
    activity = 0.5 * intent + 0.85 * rng.normal(0, 1, n)
    affinity = rng.dirichlet(np.full(len(CATEGORIES), 0.5), n)
    known_from, has_account, customer = _accounts(rng, days, purchase_only, is_bot, intent)
    has_app = ~is_bot & (rng.random(n) < 0.35)
    app_share = np.where(has_app, rng.beta(3, 2, n), 0.0)
    store_goer = has_account & (rng.random(n) < 0.3)
    price_level = np.exp(rng.normal(4.1, 0.45, n))
    consent_marketing, consent_personal = consents(rng, n)
    subscribed = has_account & (consent_marketing == "y")
    email_engagement = rng.normal(-1.7, 0.9, n)
    # Replenishment every two weeks for some, once a year for others; buyers with more
    # intent come back sooner.
    cycle_days = np.clip(np.exp(np.log(110.0) - 0.3 * intent + rng.normal(0, 1.0, n)), 7, 720)
    cycle_shape = rng.choice(np.array([1, 2, 3, 4]), n, p=[0.1, 0.2, 0.35, 0.35])
    dropout = rng.beta(1.2, 4.0, n)
    sensitivity = rng.gamma(0.7, 1.4, n)
    offline_share = np.where(store_goer, rng.beta(1.5, 5.0, n), rng.beta(1.0, 9.0, n))
    interest_effect = np.clip(rng.normal(1.0, 0.45, n), 0.0, None)
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
        subscribed=subscribed,
        email_engagement=email_engagement,
        # First purchases come from intent and browsing, not from a cycle.
        base_purchase=np.where(is_bot, -np.inf, -8.3 + 1.2 * intent),
        base_visit=np.where(is_bot, -1.6, -5.7 + 1.0 * activity + 0.5 * customer),
        n_devices=np.where(is_bot, 1, 1 + rng.binomial(2, 0.25, n)),
        is_bot=is_bot,
        cycle_days=cycle_days,
        cycle_shape=cycle_shape,
        dropout=dropout,
        sensitivity=sensitivity,
        offline_share=offline_share,
        interest_effect=interest_effect,
        consent_marketing=consent_marketing,
        consent_personal=consent_personal,
    )


def _accounts(
    rng: np.random.Generator, days: int, purchase_only: bool, is_bot: np.ndarray, intent: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(known_from, has_account, customer): who has an account from the start (-1), signs up
    on a day, or stays anonymous (days + 1); who already bought before the simulation."""
    n = len(intent)
    account = rng.random(n)
    signup_day = rng.integers(0, days, n)
    known_from = np.where(account < 0.45, -1, np.where(account < 0.62, signup_day, days + 1))
    if purchase_only:
        # A transaction log only knows customers.
        known_from = np.full(n, -1)
    known_from = np.where(is_bot, days + 1, known_from)
    has_account = known_from <= days
    customer_draw = rng.random(n)
    customer = has_account & (known_from < 0) & (customer_draw < 0.55 + 0.2 * (intent > 0))
    if purchase_only:
        customer = customer_draw < 0.9
    return known_from, has_account, customer


def consents(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Marketing and personalisation consent: "y", "n" or "" (never asked)."""
    marketing = np.where(rng.random(n) < 0.72, "y", np.where(rng.random(n) < 0.7, "n", ""))
    personal = np.where(rng.random(n) < 0.86, "y", np.where(rng.random(n) < 0.7, "n", ""))
    return marketing, personal


@dataclass
class Calendar:
    """Per-day facts shared by everyone: campaigns, promotions, seasonality and drift.

    Arrays have one value per simulated day; ``appeal`` is days x categories.
    """

    weekday: np.ndarray
    theme: np.ndarray  # category a campaign email is about; -1 = no email that day
    campaign: np.ndarray  # campaign id of that day's email (-1 none)
    promo_depth: np.ndarray  # discount of a running promotion (0 = none)
    promo_category: np.ndarray  # -1 = sitewide
    promo_campaign: np.ndarray  # campaign id of the running promotion (-1 none)
    season: np.ndarray  # additive log-rate effect of the day on visits and purchases
    appeal: np.ndarray  # multiplier of each category's appeal that day (drift, seasons)
    email_effect: np.ndarray  # how strongly an email click moves people that day (fades)

    @property
    def campaigns(self) -> int:
        return int(max(self.campaign.max(initial=-1), self.promo_campaign.max(initial=-1)) + 1)


def _black_friday(year: int) -> dt.date:
    """The day after the fourth Thursday of November."""
    first = dt.date(year, 11, 1)
    thursday = first + dt.timedelta(days=(3 - first.weekday()) % 7 + 21)
    return thursday + dt.timedelta(days=1)


def realistic_calendar(settings: GeneratorSettings, rng: np.random.Generator) -> Calendar:
    """Weekly emails, monthly promotions, weekend and Nov/Dec peaks, yoga rising, email fading."""
    days = settings.days
    dates = [settings.start + dt.timedelta(days=d) for d in range(days)]
    weekday = np.array([d.weekday() for d in dates])
    month = np.array([d.month for d in dates])
    day_of_year = np.array([d.timetuple().tm_yday for d in dates])
    promo_depth, promo_category, starts = _promotions(dates, rng)
    theme, campaign, promo_campaign = _emails(weekday, starts, promo_depth, promo_category, rng)
    appeal, email_effect = _appeal_and_email_effect(month, day_of_year)
    return Calendar(
        weekday=weekday,
        theme=theme,
        campaign=campaign,
        promo_depth=promo_depth,
        promo_category=promo_category,
        promo_campaign=promo_campaign,
        season=_season(dates, weekday, month),
        appeal=appeal,
        email_effect=email_effect,
    )


def _season(dates: list[dt.date], weekday: np.ndarray, month: np.ndarray) -> np.ndarray:
    """The day's log-rate effect: weekends, Black Friday, the run-up to Christmas, summer."""
    season = np.select([weekday >= 5, weekday == 4, weekday == 0], [0.3, 0.1, -0.1], 0.0)
    for year in sorted({d.year for d in dates}):
        black_friday = _black_friday(year)
        for i, date in enumerate(dates):
            if date.year != year:
                continue
            to_christmas = (dt.date(year, 12, 24) - date).days
            if black_friday <= date <= black_friday + dt.timedelta(days=3):
                season[i] += 1.0
            elif 0 <= to_christmas <= 35:
                season[i] += 0.45
            elif date.month == 12 and date.day in (25, 26):
                season[i] -= 0.8
    season += np.where((month >= 7) & (month <= 8), -0.1, 0.0)
    return season


def _promotions(dates: list[dt.date], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(depth, category, start days): about one a month (3-5 days), plus Black Friday; half
    are category sales."""
    days = len(dates)
    promo_depth = np.zeros(days)
    promo_category = np.full(days, -1)
    starts = []
    day = int(rng.integers(5, 25))
    while day < days:
        length = int(rng.integers(3, 6))
        depth = float(rng.choice([0.1, 0.15, 0.2, 0.3]))
        category = int(rng.integers(0, len(CATEGORIES))) if rng.random() < 0.5 else -1
        promo_depth[day : day + length] = depth
        promo_category[day : day + length] = category
        starts.append(day)
        day += length + int(rng.integers(18, 40))
    for i, date in enumerate(dates):
        black_friday = _black_friday(date.year)
        if black_friday <= date <= black_friday + dt.timedelta(days=3):
            promo_depth[i], promo_category[i] = 0.3, -1
            if date == black_friday:
                starts.append(i)
    return promo_depth, promo_category, starts


def _emails(
    weekday: np.ndarray,
    starts: list[int],
    promo_depth: np.ndarray,
    promo_category: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(theme, campaign, promotion campaign): a themed newsletter every Tuesday, and an
    announcement when a promotion starts (its campaign runs as long as the promotion)."""
    days = len(weekday)
    theme = np.full(days, -1)
    campaign = np.full(days, -1)
    promo_campaign = np.full(days, -1)
    next_id = 0
    for d in range(days):
        is_start = d in starts
        if weekday[d] == 1 or is_start:
            category = promo_category[d] if is_start and promo_category[d] >= 0 else rng.integers(0, 5)
            theme[d], campaign[d] = int(category), next_id
            if is_start:
                run = d
                while run < days and promo_depth[run] > 0 and (run == d or run not in starts):
                    promo_campaign[run] = next_id
                    run += 1
            next_id += 1
    return theme, campaign, promo_campaign


def _appeal_and_email_effect(month: np.ndarray, day_of_year: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category seasons (yoga after New Year, running in spring, hiking in summer) and drift:
    yoga's appeal grows through the period, email clicks move people less and less."""
    days = len(month)
    phase = 2 * np.pi * (day_of_year - 1) / 365.25
    appeal = np.ones((days, len(CATEGORIES)))
    appeal[:, 0] *= 1 + 0.35 * (month == 1)
    appeal[:, 1] *= 1 + 0.25 * np.cos(phase - 2 * np.pi * 4 / 12)
    appeal[:, 2] *= 1 + 0.45 * np.cos(phase - 2 * np.pi * 6.5 / 12)
    progress = np.arange(days) / max(days - 1, 1)
    appeal[:, YOGA] *= 1 + 0.9 * progress
    email_effect = 1.0 - 0.55 * progress
    return appeal, email_effect
