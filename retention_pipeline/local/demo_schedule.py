"""Which days each demo user is active, with how many sessions and events: the personas' shapes over time."""

from __future__ import annotations

import bisect
import random
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from retention_pipeline.local.demo_users import DemoUser


def cumulative(weights: Iterable[float]) -> tuple[float, ...]:
    """Cumulative weights, so random.choices skips re-summing them for every session."""
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return tuple(out)


# Packed bucket entry: user id, kind (0 = signed-in activity, 1 = anonymous pricing views),
# session count and event count, in one 64-bit integer so 100k users' schedules fit in ~25 MB.
KIND_ACTIVE = 0
KIND_ANONYMOUS = 1


def _pack(user_id: int, kind: int, sessions: int, events: int) -> int:
    """One schedule entry as an int: arrays of ints cost 8 bytes an entry, tuples ~80."""
    return (user_id << 20) | (kind << 16) | (sessions << 8) | min(events, 255)


def unpack(packed: int) -> tuple[int, int, int, int]:
    return packed >> 20, (packed >> 16) & 0xF, (packed >> 8) & 0xFF, packed & 0xFF


def build_schedule(seed: int, as_of: date, users: list[DemoUser]) -> tuple[dict[int, array], int, int]:
    """Bucket every user's active days by date ordinal; also return total event and session counts.

    Cheap compared with the rows (a few random draws per day), so the iterators recompute it
    instead of the population holding it.
    """
    buckets: dict[int, array] = {}
    events = sessions = 0
    as_of_ordinal = as_of.toordinal()
    for user in users:
        rng = random.Random(f"{seed}:{user.id}:schedule")
        created_ago = as_of_ordinal - user.created_at.date().toordinal()
        for days_ago, n_sessions, n_events in _activity_days(rng, user.persona, created_ago, as_of_ordinal):
            ordinal = as_of_ordinal - days_ago
            buckets.setdefault(ordinal, array("q")).append(_pack(user.id, KIND_ACTIVE, n_sessions, n_events))
            events += n_events
            sessions += n_sessions
        for ordinal, n_views in _anonymous_days(rng, user):
            buckets.setdefault(ordinal, array("q")).append(_pack(user.id, KIND_ANONYMOUS, 0, n_views))
            events += n_views
    return buckets, events, sessions


def _anonymous_days(rng: random.Random, user: DemoUser) -> list[tuple[int, int]]:
    """Logged-out pricing-page views before sign-up: the ~1% of events with user_id NULL."""
    n_views = rng.choices((0, 1, 2, 3), weights=(0.45, 0.33, 0.15, 0.07))[0]
    signup = user.created_at.date().toordinal()
    per_day: Counter[int] = Counter()
    for _ in range(n_views):
        per_day[signup if rng.random() < 0.6 else signup - rng.randint(1, 5)] += 1
    return sorted(per_day.items())


@dataclass(frozen=True)
class _Pace:
    """How one phase of a life is lived: daily odds, weekly floor/ceiling, and size of a day."""

    p_weekday: float
    p_weekend: float
    min7: int  # at least this many active days in any 7 consecutive days of the phase
    max7: int  # at most this many
    sessions: tuple[float, ...]  # cumulative odds of 1, 2, 3 sessions
    events: tuple[int, int]  # events per active day, inclusive range


_POWER = _Pace(0.85, 0.55, 5, 7, cumulative((0.30, 0.45, 0.25)), (5, 16))
_STEADY = _Pace(0.62, 0.30, 3, 5, cumulative((0.60, 0.40)), (2, 9))
_CASUAL = _Pace(0.16, 0.10, 1, 2, (1.0,), (1, 6))
_NEW = _Pace(0.75, 0.45, 0, 7, cumulative((0.70, 0.30)), (2, 10))
_FADING = _Pace(0.22, 0.10, 0, 7, (1.0,), (1, 4))
_COMEBACK = _Pace(0.50, 0.30, 0, 7, cumulative((0.80, 0.20)), (2, 8))


def _irregular(rng: random.Random, low: float, high: float, events: tuple[int, int], min7: int = 0) -> _Pace:
    """A loosely engaged user's pace with personal odds, for personas whose rhythm is not the point."""
    p = rng.uniform(low, high)
    return _Pace(p, p * 0.5, min7, 6, cumulative((0.75, 0.25)), events)


def _activity_days(rng: random.Random, persona: str, created_ago: int, as_of_ordinal: int) -> list[tuple[int, int, int]]:
    """(days_ago, sessions, events) for each active day of one user, per the persona's story.

    The sign-up day is always active: people sign up to do something.
    """
    c = created_ago
    if persona == "power":
        return _phase(rng, _POWER, c, 0, as_of_ordinal, forced={c})
    if persona == "steady":
        return _phase(rng, _STEADY, c, 0, as_of_ordinal, forced={c})
    if persona == "casual":
        return _phase(rng, _CASUAL, c, 0, as_of_ordinal, forced={c})
    if persona == "new":
        return _phase(rng, _NEW, c, 0, as_of_ordinal, forced={c})
    if persona == "declining":
        return _declining_days(rng, c, as_of_ordinal)
    if persona == "dormant":
        silent = rng.randint(8, min(30, c - 7))
        return _phase(rng, _irregular(rng, 0.3, 0.6, (2, 8), min7=1), c, silent, as_of_ordinal, forced={c, silent})
    if persona == "churned":
        silent = rng.randint(31, c - 5)
        return _phase(rng, _irregular(rng, 0.2, 0.55, (1, 7)), c, silent, as_of_ordinal, forced={c, silent})
    if persona == "resurrected":
        return _resurrected_days(rng, c, as_of_ordinal)
    raise ValueError(f"unknown persona {persona!r}")


def _declining_days(rng: random.Random, c: int, as_of_ordinal: int) -> list[tuple[int, int, int]]:
    """Steady until two weeks ago, then a sharp drop, yet still one or two light days this week."""
    days = _phase(rng, _irregular(rng, 0.55, 0.75, (3, 9), min7=3), c, 14, as_of_ordinal, forced={c})
    days += _phase(rng, _FADING, 13, 7, as_of_ordinal, forced=set())
    for days_ago in sorted(rng.sample(range(7), rng.randint(1, 2)), reverse=True):
        days.append((days_ago, 1, rng.randint(1, 3)))
    return days


def _resurrected_days(rng: random.Random, c: int, as_of_ordinal: int) -> list[tuple[int, int, int]]:
    """Active long ago, silent for 3-6 weeks, back within the last week."""
    back = rng.randint(1, 6)
    gap = rng.randint(21, min(42, c - back - 8))
    last_before = back + gap + 1
    # A floor of one day a week keeps the early phase free of gaps as long as the real silence.
    days = _phase(rng, _irregular(rng, 0.3, 0.6, (2, 8), min7=1), c, last_before, as_of_ordinal, forced={c, last_before})
    return days + _phase(rng, _COMEBACK, back, 0, as_of_ordinal, forced={back})


def _phase(
    rng: random.Random, pace: _Pace, first_ago: int, last_ago: int, as_of_ordinal: int, forced: set[int]
) -> list[tuple[int, int, int]]:
    """Active days from first_ago down to last_ago (inclusive), honouring the weekly floor and ceiling.

    The floor/ceiling hold over every 7-day window inside the phase, not just calendar weeks, so a
    power user looks like one whichever week boundary the segmentation uses. Before the phase starts
    the window counts as satisfied (all active for the floor, all idle for the ceiling).
    """
    days, history = [], []
    for days_ago in range(first_ago, last_ago - 1, -1):
        recent = history[-6:]
        active_recently = sum(recent)
        if days_ago in forced:
            active = True
        elif pace.min7 and active_recently + (6 - len(recent)) < pace.min7:
            active = True
        elif active_recently >= pace.max7:
            active = False
        else:
            weekend = (as_of_ordinal - days_ago - 1) % 7 >= 5  # date.fromordinal(1) is a Monday
            active = rng.random() < (pace.p_weekend if weekend else pace.p_weekday)
        history.append(active)
        if active:
            days.append((days_ago, *_day_size(rng, pace)))
    return days


def _day_size(rng: random.Random, pace: _Pace) -> tuple[int, int]:
    """(sessions, events) of one active day; every session has at least one event."""
    sessions = bisect.bisect_left(pace.sessions, rng.random() * pace.sessions[-1]) + 1
    return sessions, min(max(sessions, rng.randint(*pace.events)), 255)
