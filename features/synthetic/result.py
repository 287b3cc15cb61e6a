"""What a simulation run hands to the writer and to the oracle."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from propensity.features.synthetic.campaigns import CampaignTruth
from propensity.features.synthetic.dynamics import SimState
from propensity.features.synthetic.world import Calendar, GeneratorSettings, Traits


class PurchaseLog:
    """Every purchase the simulation drew, recorded or not: (day, person, channel, category)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, day: int, people: np.ndarray, channel: np.ndarray, category: np.ndarray) -> None:
        if len(people):
            self.parts.append(
                (
                    np.full(len(people), day, np.int32),
                    people.astype(np.int32),
                    channel.astype(np.int8),
                    category.astype(np.int8),
                )
            )

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("day", "person", "channel", "category")
        if not self.parts:
            return {k: np.zeros(0, np.int32) for k in names}
        return {k: np.concatenate([p[i] for p in self.parts]) for i, k in enumerate(names)}


@dataclass
class Simulation:
    """A finished (or replayed) run.

    ``events`` holds event columns as codes (see ``features.synthetic.events.COLUMNS``), empty on a
    replay; ``states`` the state at the start of each requested day; ``rng`` the random
    stream the writer continues with (duplicates, shared devices, profile attributes).
    """

    settings: GeneratorSettings
    traits: Traits
    calendar: Calendar
    device_offset: np.ndarray
    sharers: np.ndarray
    share_with: np.ndarray
    rng: np.random.Generator
    days_run: int  # days simulated (a replay may stop early)
    events: dict[str, np.ndarray] = field(default_factory=dict)
    purchases: dict[str, np.ndarray] = field(default_factory=dict)
    daily_probability: np.ndarray | None = None  # days x people, float32
    states: dict[int, SimState] = field(default_factory=dict)
    campaigns: list[CampaignTruth] = field(default_factory=list)  # settings.campaigns, drawn
