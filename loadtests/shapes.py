"""Load profiles for the Locust shape: users over time, bounded in time and events.

Every profile ends (tick returns None) after its duration or once `max_events` intents were
published, so a run always stops by itself. Users publish `user_rate` intents/s each, so the
offered load is users x user_rate.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

SHAPES = ("steady", "stepup", "spike")


@dataclass
class Profile:
    name: str = "steady"
    rate: float = 200.0  # intents/s of the base load
    user_rate: float = 10.0  # intents/s per user
    duration_s: float = 60.0
    max_events: int = 1_000_000
    peak_factor: float = 5.0  # spike height, and the last step of stepup, as a multiple of rate
    steps: int = 6
    exhausted: bool = False  # set when max_events were published

    def users_for(self, rate: float) -> int:
        return max(1, math.ceil(rate / self.user_rate))

    def rate_at(self, t: float) -> float:
        """Offered intents/s at run time `t` seconds."""
        if self.name == "stepup":
            step = min(self.steps - 1, int(t / (self.duration_s / self.steps)))
            return self.rate * (1 + (self.peak_factor - 1) * step / max(1, self.steps - 1))
        if self.name == "spike" and 0.4 * self.duration_s <= t < 0.6 * self.duration_s:
            return self.rate * self.peak_factor
        return self.rate

    def tick(self, t: float) -> tuple[int, float] | None:
        if t >= self.duration_s or self.exhausted:
            return None
        users = self.users_for(self.rate_at(t))
        return users, float(max(users, 1))  # reach each level within about a second


def profile_from_env() -> Profile:
    env = os.environ

    def number(name: str, default: float) -> float:
        raw = env.get(name, "").strip()
        return float(raw) if raw else default

    name = env.get("VICKREY_LOAD_SHAPE", "steady").strip() or "steady"
    if name not in SHAPES:
        raise SystemExit(f"VICKREY_LOAD_SHAPE={name!r}: choose one of {', '.join(SHAPES)}")
    return Profile(
        name=name,
        rate=number("VICKREY_LOAD_RATE", 200.0),
        user_rate=number("VICKREY_LOAD_USER_RATE", 10.0),
        duration_s=number("VICKREY_LOAD_DURATION_S", 60.0),
        max_events=int(number("VICKREY_LOAD_MAX_EVENTS", 1_000_000)),
        peak_factor=number("VICKREY_LOAD_PEAK_FACTOR", 5.0),
    )


def parse_duration(text: str) -> float:
    """`20s`, `2m`, `1h`, `90` (seconds) -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)
