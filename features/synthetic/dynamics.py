"""How a person's hidden state moves from one day to the next, vectorised over people.

One day has three phases: campaign emails (clicks raise interest), purchases (a daily
probability from the state), then sessions (visits, carts) and the state update. The same
functions advance the generator's population and the oracle's Monte-Carlo replicas, so the
oracle continues the very process that produced the data.

``RealisticDynamics`` is the default world: a per-person Erlang purchase cycle (hazard by
days since the last purchase, offline ones included), lapsing after a purchase, price
sensitivity to promotions, weekend and holiday peaks, category drift, fading emails,
hidden interest shocks and hidden cart seriousness, bots. ``EasyDynamics`` restates the
original world's transition law for continuations (its generator keeps its own loop so its
output stays byte-identical).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from propensity.features.synthetic.world import NEVER, OFFLINE, ONLINE, STORE, Calendar, Traits, sigmoid


@dataclass
class SimState:
    """What changes day to day, per person (arrays of one length)."""

    interest: np.ndarray  # decaying pull from visits, clicks, carts and unseen stimuli
    cart_days: np.ndarray  # days an abandoned cart still pulls
    cart_pull: np.ndarray  # how serious that cart was (realistic world only)
    since_purchase: np.ndarray  # days since the last purchase, offline ones included; NEVER if none
    lapsed: np.ndarray  # dropped out after a purchase (realistic world only)

    def take(self, index: np.ndarray) -> SimState:
        return SimState(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def copy(self) -> SimState:
        return SimState(**{f.name: getattr(self, f.name).copy() for f in fields(self)})


@dataclass
class Sessions:
    """The day's visits. ``online`` and ``store`` index people; the rest align with ``online``."""

    visits: np.ndarray  # bool per person
    online: np.ndarray
    store: np.ndarray
    views: np.ndarray
    carting: np.ndarray
    buying_online: np.ndarray


@dataclass
class Purchases:
    """The day's purchases: who, through which channel (ONLINE/STORE/OFFLINE), which category."""

    buys: np.ndarray  # bool per person
    channel: np.ndarray  # per person; meaningful where buys
    category: np.ndarray


def _erlang_hazard_table(shapes: int = 4, step: float = 1 / 256, x_max: float = 25.0) -> np.ndarray:
    """scale x hazard of an Erlang(shape, scale) gap at x = days / scale, tabulated for shapes 1..4.

    h(x) = x^(k-1)/(k-1)! / sum_{j<k} x^j/j!: 0 just after a purchase for k > 1 (nobody
    restocks the next day), rising to 1 (the rate 1/scale). A table lookup is several times
    cheaper per person-day than the polynomial.
    """
    x = np.arange(0.0, x_max + step, step)
    terms = [np.ones_like(x)]
    for j in range(1, shapes):
        terms.append(terms[-1] * x / j)
    return np.concatenate([terms[k - 1] / np.sum(terms[:k], axis=0) for k in range(1, shapes + 1)])


_HAZARD_TABLE = _erlang_hazard_table()
_HAZARD_WIDTH = len(_HAZARD_TABLE) // 4


def _erlang_hazard(days: np.ndarray, shape: np.ndarray, mean_days: np.ndarray) -> np.ndarray:
    """Daily hazard of a purchase ``days`` days after the last one, for Erlang(shape) gaps with
    mean ``mean_days``. Long gaps saturate at the table's end (the rate is nearly reached)."""
    rate = shape / mean_days
    cell = np.minimum(days * rate * 256, _HAZARD_WIDTH - 1).astype(np.int64)
    cell += (shape - 1) * _HAZARD_WIDTH
    return _HAZARD_TABLE[cell] * rate


def _draw(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One column index per row, in proportion to the row's weights."""
    cumulative = weights.cumsum(axis=1)
    draw = rng.random((len(weights), 1)) * cumulative[:, -1:]
    return (draw > cumulative).sum(axis=1)


class RealisticDynamics:
    """The realistic world's daily transition, shared by the generator and the oracle."""

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar

    def initial_state(self, traits: Traits, rng: np.random.Generator) -> SimState:
        n = len(traits)
        # Customers are somewhere in their cycle when the data starts; some have lapsed.
        since = np.where(traits.customer, np.floor(rng.uniform(0, 1.6, n) * traits.cycle_days), NEVER)
        return SimState(
            interest=np.zeros(n),
            cart_days=np.zeros(n),
            cart_pull=np.zeros(n),
            since_purchase=since,
            lapsed=traits.customer & (rng.random(n) < 0.3),
        )

    def emails(
        self, day: int, traits: Traits, state: SimState, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Opens and clicks of the day's campaign email (bools per person); clicks raise interest."""
        n = len(traits)
        theme = int(self.calendar.theme[day])
        if theme < 0:
            none = np.zeros(n, bool)
            return none, none
        eligible = traits.subscribed & (traits.known_from <= day)
        opened = eligible & (rng.random(n) < sigmoid(traits.email_engagement + 0.3 * state.interest))
        click_p = 0.12 + 0.25 * traits.affinity[:, theme] + 0.1 * sigmoid(traits.intent)
        clicked = opened & (rng.random(n) < click_p)
        state.interest += 1.2 * self.calendar.email_effect[day] * clicked
        return opened, clicked

    def _promotion(self, day: int, traits: Traits) -> np.ndarray:
        depth = self.calendar.promo_depth[day]
        if depth <= 0:
            return np.zeros(len(traits))
        category = int(self.calendar.promo_category[day])
        relevance = 1.0 if category < 0 else np.minimum(1.0, 3.0 * traits.affinity[:, category])
        return np.minimum(traits.sensitivity * depth * 3.0 * relevance, 2.5)

    def category_weights(self, day: int, traits: Traits) -> np.ndarray:
        """Unnormalised chance of each category for a purchase today (people x categories)."""
        weights = traits.affinity * self.calendar.appeal[day]
        category = int(self.calendar.promo_category[day])
        if self.calendar.promo_depth[day] > 0 and category >= 0:
            weights[:, category] *= 1 + 2 * traits.sensitivity * self.calendar.promo_depth[day]
        return weights

    def purchase_probability(self, day: int, traits: Traits, state: SimState) -> np.ndarray:
        """Probability of a purchase today (any channel, offline included), from state and day.

        A daily rate: the purchase cycle's hazard (lapsed people rarely come back; people who
        never bought have a first-purchase rate instead), times the pull of interest, an
        open cart, the day, a promotion and the categories' current appeal.
        """
        cycle = _erlang_hazard(state.since_purchase + 1, traits.cycle_shape, traits.cycle_days)
        cycle *= 1.0 - 0.94 * state.lapsed
        # Bots' first-purchase rate is 0 (base_purchase = -inf) and they never have bought.
        rate = np.where(state.since_purchase < NEVER, cycle, np.exp(traits.base_purchase))
        # einsum, not @: BLAS is slow on a tall matrix with five columns.
        rate *= np.einsum("ij,j->i", traits.affinity, self.calendar.appeal[day])
        log_boost = 0.8 * traits.interest_effect * state.interest
        log_boost += state.cart_pull * (state.cart_days > 0)
        log_boost += self.calendar.season[day]
        if self.calendar.promo_depth[day] > 0:
            log_boost += self._promotion(day, traits)
        return np.minimum(-np.expm1(-rate * np.exp(log_boost)), 0.9)

    def counting_share(self, day: int, traits: Traits, category: int | None) -> np.ndarray:
        """Share of today's purchases that an event records (and in ``category``, if given)."""
        logged = 1.0 - traits.offline_share
        if category is None:
            return logged
        weights = self.category_weights(day, traits)
        return logged * weights[:, category] / weights.sum(axis=1)

    def purchase_kind(
        self, day: int, traits: Traits, buys: np.ndarray, rng: np.random.Generator
    ) -> Purchases:
        """Channel and category of each purchase."""
        return self._kind(day, traits, buys, rng, uncounted=False, category=None)

    def uncounted_purchase_kind(
        self, day: int, traits: Traits, buys: np.ndarray, rng: np.random.Generator, category: int | None
    ) -> Purchases:
        """Channel and category of purchases known NOT to be recorded ones (in ``category``, if given).

        The oracle's conditional draw: it has already counted the recorded ones.
        """
        return self._kind(day, traits, buys, rng, uncounted=True, category=category)

    def _kind(
        self,
        day: int,
        traits: Traits,
        buys: np.ndarray,
        rng: np.random.Generator,
        uncounted: bool,
        category: int | None,
    ) -> Purchases:
        n = len(traits)
        buyers = np.flatnonzero(buys)
        offline_share = traits.offline_share[buyers]
        weights = self.category_weights(day, traits.take(buyers))
        if not uncounted:
            offline = rng.random(len(buyers)) < offline_share
        elif category is None:
            offline = np.ones(len(buyers), bool)
        else:
            # P(offline | not a recorded purchase in the category), then any other category.
            match = weights[:, category] / weights.sum(axis=1)
            offline = rng.random(len(buyers)) < offline_share / (1 - (1 - offline_share) * match)
            weights[:, category] = np.where(offline, weights[:, category], 0.0)
        in_store = traits.store_goer[buyers] & (rng.random(len(buyers)) < 0.5)
        channel = np.zeros(n, np.int8)
        channel[buyers] = np.where(offline, OFFLINE, np.where(in_store, STORE, ONLINE))
        category_of = np.zeros(n, np.int8)
        category_of[buyers] = _draw(rng, weights)
        return Purchases(buys=buys, channel=channel, category=category_of)

    def sessions(
        self,
        day: int,
        traits: Traits,
        state: SimState,
        purchases: Purchases,
        clicked: np.ndarray,
        rng: np.random.Generator,
    ) -> Sessions:
        """Visits (store or online), product views and carts; a purchase brings its own visit."""
        n = len(traits)
        buys, channel = purchases.buys, purchases.channel
        visit_p = sigmoid(
            traits.base_visit
            + 1.2 * state.interest
            + 1.0 * (state.cart_days > 0)
            + self.calendar.season[day]
            + 2.5 * self.calendar.email_effect[day] * clicked
        )
        buying_here = buys & (channel != OFFLINE)
        visits = (rng.random(n) < visit_p) | buying_here
        visits |= traits.known_from == day
        visitors = np.flatnonzero(visits)
        browse_store = traits.store_goer[visitors] & ~buying_here[visitors]
        browse_store &= rng.random(len(visitors)) < 0.2
        in_store = (buys[visitors] & (channel[visitors] == STORE)) | browse_store
        online, store = visitors[~in_store], visitors[in_store]
        buying_online = buys[online] & (channel[online] == ONLINE)
        bot = traits.is_bot[online]
        interest = state.interest[online]
        views = rng.poisson(np.where(bot, 5.0, 0.8 + 0.5 * interest + 1.5 * buying_online))
        cart_p = sigmoid(-1.5 + 0.8 * interest + 0.5 * traits.intent[online])
        carting = buying_online | ((views > 0) & ~bot & (rng.random(len(online)) < cart_p))
        return Sessions(visits, online, store, views, carting, buying_online)

    def update(
        self,
        traits: Traits,
        state: SimState,
        purchases: Purchases,
        sessions: Sessions,
        rng: np.random.Generator,
    ) -> None:
        """Close the day: carts pull, interest decays and feeds on visits, purchases reset."""
        n = len(traits)
        abandoned = sessions.online[sessions.carting & ~sessions.buying_online]
        state.cart_days[abandoned] = 4
        # How serious a left cart is cannot be seen in the events.
        state.cart_pull[abandoned] = rng.normal(1.3, 0.7, len(abandoned))
        # Stimuli no event records (an ad elsewhere, a friend's recommendation).
        shocks = rng.random(n) < 0.004
        state.interest = (
            state.interest * 0.86 + 0.25 * sessions.visits + 0.2 * (state.cart_days > 0) + 1.0 * shocks
        )
        buys = purchases.buys
        buyers = np.flatnonzero(buys)
        state.interest[buyers] *= 0.3
        state.cart_days = np.maximum(state.cart_days - 1, 0)
        state.cart_days[buyers] = 0
        # Many first-time buyers never come back; later, each purchase may be the last.
        first = state.since_purchase[buyers] >= NEVER
        dropout = np.where(first, np.maximum(traits.dropout[buyers], 0.55), traits.dropout[buyers])
        state.lapsed[buyers] = rng.random(len(buyers)) < dropout
        state.since_purchase = np.where(buys, 0.0, state.since_purchase + 1)


class EasyDynamics:
    """The original world's daily transition (interest, open cart, time since purchase).

    Formulas and probabilities are those of the generator loop in :mod:`.easy`; only the
    order of the random draws differs, which a continuation does not need to share.
    """

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar

    def emails(
        self, day: int, traits: Traits, state: SimState, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(traits)
        theme = int(self.calendar.theme[day])
        if theme < 0:
            none = np.zeros(n, bool)
            return none, none
        eligible = traits.subscribed & (traits.known_from <= day)
        opened = eligible & (rng.random(n) < easy_open_probability(traits.email_engagement, state.interest))
        click_p = easy_click_probability(traits.affinity[:, theme], traits.intent)
        clicked = opened & (rng.random(n) < click_p)
        state.interest += 1.2 * clicked
        return opened, clicked

    def purchase_probability(self, day: int, traits: Traits, state: SimState) -> np.ndarray:
        return easy_purchase_probability(traits, state, self.calendar.season[day])

    def counting_share(self, day: int, traits: Traits, category: int | None) -> np.ndarray:
        if category is None:
            return np.ones(len(traits))
        return traits.affinity[:, category] / traits.affinity.sum(axis=1)

    def purchase_kind(
        self, day: int, traits: Traits, buys: np.ndarray, rng: np.random.Generator
    ) -> Purchases:
        return self.uncounted_purchase_kind(day, traits, buys, rng, None)

    def uncounted_purchase_kind(
        self, day: int, traits: Traits, buys: np.ndarray, rng: np.random.Generator, category: int | None
    ) -> Purchases:
        # Every purchase is recorded in this world, so "not counted" only excludes a category;
        # channels follow the visit (store or online), drawn with the sessions.
        n = len(traits)
        buyers = np.flatnonzero(buys)
        weights = traits.affinity[buyers].copy()
        if category is not None:
            weights[:, category] = 0.0
        category_of = np.zeros(n, np.int8)
        category_of[buyers] = _draw(rng, weights)
        return Purchases(buys=buys, channel=np.zeros(n, np.int8), category=category_of)

    def sessions(
        self,
        day: int,
        traits: Traits,
        state: SimState,
        purchases: Purchases,
        clicked: np.ndarray,
        rng: np.random.Generator,
    ) -> Sessions:
        n = len(traits)
        buys = purchases.buys
        visit_p = easy_visit_probability(traits, state, self.calendar.season[day], clicked)
        visits = (rng.random(n) < visit_p) | buys | (traits.known_from == day)
        visitors = np.flatnonzero(visits)
        in_store = traits.store_goer[visitors] & (rng.random(len(visitors)) < 0.25)
        online, store = visitors[~in_store], visitors[in_store]
        buying_online = buys[online]
        views = rng.poisson(0.8 + 0.5 * state.interest[online] + 1.5 * buying_online)
        cart_p = easy_cart_probability(traits.base_purchase[online], state.interest[online])
        carting = buying_online | ((views > 0) & (rng.random(len(online)) < cart_p))
        return Sessions(visits, online, store, views, carting, buying_online)

    def update(
        self,
        traits: Traits,
        state: SimState,
        purchases: Purchases,
        sessions: Sessions,
        rng: np.random.Generator,
    ) -> None:
        abandoned = sessions.online[sessions.carting & ~sessions.buying_online]
        easy_update(state, purchases.buys, sessions.visits, abandoned)


def easy_open_probability(engagement: np.ndarray, interest: np.ndarray) -> np.ndarray:
    return sigmoid(engagement + 0.3 * interest)


def easy_click_probability(theme_affinity: np.ndarray, intent: np.ndarray) -> np.ndarray:
    return 0.12 + 0.25 * theme_affinity + 0.1 * sigmoid(intent)


def easy_purchase_probability(traits: Traits, state: SimState, season: float) -> np.ndarray:
    refractory = 1.5 * np.exp(-state.since_purchase / 10.0)
    logit = traits.base_purchase + 1.3 * state.interest + 1.4 * (state.cart_days > 0) + season - refractory
    return sigmoid(logit)


def easy_visit_probability(traits: Traits, state: SimState, season: float, clicked: np.ndarray) -> np.ndarray:
    return sigmoid(
        traits.base_visit + 1.2 * state.interest + 1.0 * (state.cart_days > 0) + season + 2.5 * clicked
    )


def easy_cart_probability(base_purchase: np.ndarray, interest: np.ndarray) -> np.ndarray:
    return sigmoid(base_purchase + 5.2 + 0.8 * interest)


def easy_update(state: SimState, buys: np.ndarray, visits: np.ndarray, abandoned: np.ndarray) -> None:
    state.cart_days[abandoned] = 4
    state.interest = state.interest * 0.86 + 0.25 * visits + 0.2 * (state.cart_days > 0)
    state.interest[buys] *= 0.3
    state.cart_days = np.maximum(state.cart_days - 1, 0)
    state.cart_days[buys] = 0
    state.since_purchase = np.where(buys, 0, state.since_purchase + 1)
