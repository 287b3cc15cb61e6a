"""What a simulation run hands to the writer and to the oracle, and where the writer places a
chunk of the population in the whole."""

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


@dataclass(frozen=True)
class ChunkPlace:
    """Where one chunk of the simulated population sits in the whole (see
    ``GeneratorSettings.chunks``): its people are ``first_person`` onwards, its devices
    ``first_device`` onwards, its events numbered from ``first_event``; the last chunk also
    carries the test accounts (people ``profiles`` onwards, devices after every person's)."""

    index: int
    chunks: int
    first_person: int
    people: int
    first_device: int
    devices: int
    first_event: int
    profiles: int  # people in the whole population
    test_accounts: int  # test accounts in this chunk: the last one's

    def person_ids(self) -> np.ndarray:
        """The ids of this chunk's people, test accounts last: the order of its identity codes."""
        return np.concatenate(
            [
                np.arange(self.first_person, self.first_person + self.people),
                np.arange(self.profiles, self.profiles + self.test_accounts),
            ]
        )

    def person_codes(self, person: np.ndarray) -> np.ndarray:
        """Positions in :meth:`person_ids` of (this chunk's) person ids."""
        return np.where(
            person >= self.profiles, person - self.profiles + self.people, person - self.first_person
        )

    def file_suffix(self) -> str:
        """The events' file names: as before chunks existed when the world is one chunk."""
        return "" if self.chunks == 1 else f"-part{self.index:04d}"
