"""A journey simulator whose channels' causal effects are known: the ground truth of attribution.

Each person is reached by each channel independently (the same chance for every channel, so
exposure alone favours none). A person converts with probability ``1 - (1 - base) *
prod(1 - effect_c)`` over the channels that reached them: channel ``c`` causes a conversion
with chance ``effect_c`` on its own. The true incremental conversions of a channel are the
expected conversions it adds to the people it reached: the sum over them of ``P(their
channels) - P(their channels without c)``, computed exactly, not sampled.

The touches come in a fixed order with repeats, built to mislead position and count rules
(as real journeys do: the newsletter opens the journey and repeats, the store visit closes
it): ``email`` always first and several times, ``store`` always last, though both matter
little. First touch then credits email, last touch the store, linear the repeated email;
credit that compares converting with non-converting paths can still find the order.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Journey order (first to last touch), each channel's touch event and how often it repeats.
CHANNEL_ORDER = ("email", "push", "web", "mobile_app", "call_center", "store")
TOUCH_EVENTS = {
    "email": "email_open",
    "push": "push_open",
    "web": "page_view",
    "mobile_app": "app_launch",
    "call_center": "call_center_call",
    "store": "store_visit",
}
REPEATS = {"email": 4, "push": 1, "web": 2, "mobile_app": 1, "call_center": 1, "store": 1}


@dataclass(frozen=True)
class JourneySettings:
    """The simulated journeys: people, exposure, per-channel effects, dates and seed."""

    profiles: int = 20_000
    exposure: float = 0.5
    base: float = 0.02
    effects: dict[str, float] = field(
        default_factory=lambda: {
            "mobile_app": 0.25,
            "web": 0.16,
            "call_center": 0.10,
            "push": 0.06,
            "email": 0.03,
            "store": 0.01,
        }
    )
    end: dt.date = dt.date(2025, 3, 1)
    seed: int = 0


@dataclass
class SimulatedJourneys:
    """Events (profile_id, timestamp, event_type, channel, event_id) and the true effects."""

    events: pd.DataFrame
    incremental_conversions: dict[str, float]  # expected conversions each channel adds
    conversions: int

    def true_order(self) -> list[str]:
        """Channels from the most to the least incremental conversions."""
        return sorted(self.incremental_conversions, key=lambda c: -self.incremental_conversions[c])


def simulate_journeys(settings: JourneySettings | None = None) -> SimulatedJourneys:
    """Journeys with known causal credit (see the module docstring)."""
    s = settings or JourneySettings()
    rng = np.random.default_rng(s.seed)
    channels = list(CHANNEL_ORDER)
    effects = np.array([s.effects[c] for c in channels])
    n = s.profiles
    exposed = rng.random((n, len(channels))) < s.exposure
    miss = np.where(exposed, 1 - effects, 1.0)
    probability = 1 - (1 - s.base) * miss.prod(axis=1)
    converted = rng.random(n) < probability
    # Without channel c, a person exposed to it keeps every other channel's chance.
    incremental = {}
    for i, c in enumerate(channels):
        without = 1 - (1 - s.base) * np.delete(miss, i, axis=1).prod(axis=1)
        incremental[c] = float((probability - without)[exposed[:, i]].sum())
    end = dt.datetime.combine(s.end, dt.time())
    start = end - dt.timedelta(days=25)
    rows_pid, rows_t, rows_type, rows_channel = [], [], [], []
    offsets = rng.random(n) * 20 * 86400  # journeys start over 20 days, all within 25 days of the end
    for p in range(n):
        t = offsets[p]
        for i, c in enumerate(channels):
            if not exposed[p, i]:
                continue
            for _ in range(REPEATS[c]):
                t += 3600 * (1 + rng.random() * 5)
                rows_pid.append(p)
                rows_t.append(t)
                rows_type.append(TOUCH_EVENTS[c])
                rows_channel.append(c)
        if converted[p]:
            rows_pid.append(p)
            rows_t.append(t + 1800)
            rows_type.append("purchase")
            rows_channel.append("web")
        elif not exposed[p].any():  # a visit, so the untouched non-converters are in the data
            rows_pid.append(p)
            rows_t.append(t + 1800)
            rows_type.append("login")
            rows_channel.append(None)
    pid = np.asarray(rows_pid)
    events = pd.DataFrame(
        {
            "profile_id": [f"j{p:07d}" for p in pid],
            "timestamp": pd.to_datetime(start) + pd.to_timedelta(np.round(np.asarray(rows_t)), unit="s"),
            "event_type": rows_type,
            "channel": rows_channel,
        }
    )
    events["crm_id"] = events["profile_id"]
    events["event_id"] = [f"je{i:09d}" for i in range(len(events))]
    return SimulatedJourneys(
        events=events, incremental_conversions=incremental, conversions=int(converted.sum())
    )
