"""The Luma simulation: people with latent traits live through a calendar, one vectorised day at a time.

``simulate(settings)`` runs the world the settings name and returns a :class:`Simulation`
(events as codes, every purchase including unrecorded ones, daily probabilities); it writes
nothing (see :mod:`.writer`). ``replay(settings, days)`` reruns the same world without
events and returns its state at the start of the given days, which is what the oracle
continues from.

The realistic world draws from four independent streams (traits, calendar, dynamics,
events), so a replay of the dynamics alone repeats the original run exactly.

A population larger than ``settings.chunk_profiles`` is simulated one chunk of people at a
time (``simulate(settings, chunk)``): every chunk lives through the same calendar, while the
first draws its people from the seed's own streams (so a one-chunk world is the world as it
was before chunks) and each later one from streams of its own. People and devices in a
chunk's :class:`Simulation` are numbered from 0; the writer places them in the whole.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from propensity.features.synthetic.campaigns import campaign_events, simulate_campaigns
from propensity.features.synthetic.dynamics import EasyDynamics, RealisticDynamics, SimState
from propensity.features.synthetic.easy import simulate_easy
from propensity.features.synthetic.events import MICROS, DayClock, EventBuffer, emit_realistic_day
from propensity.features.synthetic.result import PurchaseLog, Simulation
from propensity.features.synthetic.world import (
    Calendar,
    GeneratorSettings,
    Traits,
    realistic_calendar,
    realistic_traits,
)

__all__ = ["GeneratorSettings", "Simulation", "dynamics_for", "replay", "simulate"]


# The SeedSequence child key of the chunks after the first (0..3: the simulation, 4: the class
# registrations).
_CHUNK_STREAM = 5


def _streams(seed: int, chunk: int = 0) -> list[np.random.Generator]:
    """Traits, calendar, dynamics and events streams of a chunk; the calendar is the world's."""
    streams = np.random.SeedSequence(seed).spawn(4)
    if chunk:
        own = np.random.SeedSequence(seed, spawn_key=(_CHUNK_STREAM, chunk)).spawn(4)
        streams = [own[0], streams[1], own[2], own[3]]
    return [np.random.default_rng(s) for s in streams]


def dynamics_for(simulation: Simulation) -> RealisticDynamics | EasyDynamics:
    """The daily transition of the world a simulation ran in."""
    if simulation.settings.difficulty == "easy":
        return EasyDynamics(simulation.calendar)
    return RealisticDynamics(simulation.calendar)


def _world(
    settings: GeneratorSettings, chunk: int = 0
) -> tuple[Traits, Calendar, SimState, np.ndarray, np.ndarray, list]:
    traits_rng, calendar_rng, dynamics_rng, events_rng = _streams(settings.seed, chunk)
    first, stop = settings.chunks()[chunk]
    traits = realistic_traits(dataclasses.replace(settings, profiles=stop - first), traits_rng)
    calendar = realistic_calendar(settings, calendar_rng)
    state = RealisticDynamics(calendar).initial_state(traits, traits_rng)
    # Households: ~4 % of people also use another person's first device.
    humans = np.flatnonzero(~traits.is_bot)
    sharing = humans[traits_rng.random(len(humans)) < 0.04]
    share_with = humans[traits_rng.integers(0, len(humans), len(sharing))]
    return traits, calendar, state, sharing, share_with, [dynamics_rng, events_rng]


def _simulate_realistic(
    settings: GeneratorSettings, emit: bool, snapshot_days: frozenset[int], until: int, chunk: int = 0
) -> Simulation:
    traits, calendar, state, sharers, share_with, (dyn_rng, events_rng) = _world(settings, chunk)
    n = len(traits)
    world = RealisticDynamics(calendar)
    device_offset = np.concatenate([[0], np.cumsum(traits.n_devices)[:-1]])
    start_us = (
        int((dt.datetime.combine(settings.start, dt.time()) - dt.datetime(1970, 1, 1)).total_seconds())
        * MICROS
    )
    clock = DayClock(start_us, events_rng)
    ev = EventBuffer(enabled=emit)
    log = PurchaseLog()
    truth_p = np.empty((settings.days, n), dtype=np.float32) if settings.ground_truth and emit else None
    states = {}
    for day in range(until):
        if day in snapshot_days:
            states[day] = state.copy()
        emails = world.emails(day, traits, state, dyn_rng)
        p = world.purchase_probability(day, traits, state)
        if truth_p is not None:
            truth_p[day] = p
        buys = dyn_rng.random(n) < p
        purchases = world.purchase_kind(day, traits, buys, dyn_rng)
        sessions = world.sessions(day, traits, state, purchases, emails[1], dyn_rng)
        buyers = np.flatnonzero(buys)
        log.add(day, buyers, purchases.channel[buyers], purchases.category[buyers])
        if emit:
            emit_realistic_day(
                ev, day, calendar, traits, state, emails, purchases, sessions, device_offset, clock
            )
        world.update(traits, state, purchases, sessions, dyn_rng)
    if until in snapshot_days:
        states[until] = state.copy()
    return Simulation(
        settings=settings,
        traits=traits,
        calendar=calendar,
        device_offset=device_offset,
        sharers=sharers,
        share_with=share_with,
        rng=events_rng,
        days_run=until,
        events=ev.take_arrays() if emit else {},
        purchases=log.arrays(),
        daily_probability=truth_p,
        states=states,
    )


def simulate(settings: GeneratorSettings, chunk: int = 0) -> Simulation:
    """Run the whole period of the world ``settings`` describe, keeping its events: the people of
    chunk ``chunk`` of ``settings.chunks()`` (numbered from 0), all of them in a one-chunk world."""
    if settings.difficulty == "easy":
        simulation = simulate_easy(settings)
    else:
        simulation = _simulate_realistic(settings, True, frozenset(), settings.days, chunk)
    if settings.campaigns:
        _add_campaigns(simulation)
    return simulation


def _add_campaigns(simulation: Simulation) -> None:
    """Draw the settings' campaigns over the finished world (their own random streams, so the
    world is unchanged) and append the events they leave."""
    settings = simulation.settings
    simulation.campaigns = simulate_campaigns(settings, simulation.traits)
    start_us = int((np.datetime64(settings.start, "s") - np.datetime64(0, "s")).astype(np.int64)) * MICROS
    extra = campaign_events(simulation.campaigns, simulation.device_offset, start_us, settings.seed)
    simulation.events = {
        k: np.concatenate([v, extra[k].astype(v.dtype)]) for k, v in simulation.events.items()
    }


def replay(settings: GeneratorSettings, days: list[int]) -> Simulation:
    """Rerun the world without keeping events, keeping the state at the start of each of
    ``days`` (``Simulation.states``) and every purchase drawn up to the last of them (easy
    world: the whole period), and the settings' campaigns as drawn."""
    wanted = frozenset(int(d) for d in days)
    if settings.difficulty == "easy":
        # Campaign themes are drawn on the day in this world: the whole period is replayed so
        # continuations know them (the realistic world draws its calendar up front).
        simulation = simulate_easy(settings, emit=False, snapshot_days=wanted, until=settings.days)
    else:
        simulation = _simulate_realistic(settings, False, wanted, max(wanted, default=0))
    # The simulated campaigns (own streams, drawn over the traits): their purchases are part
    # of what the oracle predicts.
    simulation.campaigns = simulate_campaigns(settings, simulation.traits)
    return simulation
