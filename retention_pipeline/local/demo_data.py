"""A deterministic, believable population for the Flask app's own tables (users, events, auth_sessions).

The demo and the tests need data whose retention story is known in advance: a few power users, a
steady core, casual visitors, people drifting away, people already gone, sign-ups from last week and
a handful who came back. Each user gets a *persona* that fixes the shape of their activity; the rows
themselves are random but fully determined by ``(seed, as_of, n_users, days)``.

Scale is the design constraint. Users (one small object each) are held in memory; events and
sessions are never held. They are re-derived on demand, one day at a time, from per-user and
per-user-day random streams, so a 100k-user population streams through ``COPY`` in bounded memory.
Going day by day (rather than user by user) lets ids increase with time, as a real serial key does,
so downstream code that reads incrementally by id sees what it would see in production.

Time model: everything is UTC. Every timestamp is strictly before midnight after ``as_of``; sessions
never cross midnight; events lie strictly inside their session.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import re
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from psycopg2 import sql

PERSONAS = ("power", "steady", "casual", "declining", "dormant", "churned", "new", "resurrected")

DEFAULT_PERSONA_MIX: dict[str, float] = {
    "power": 0.08,
    "steady": 0.22,
    "casual": 0.22,
    "declining": 0.12,
    "dormant": 0.12,
    "churned": 0.10,
    "new": 0.08,
    "resurrected": 0.06,
}

# The oldest persona history needs about eight weeks: a resurrected user is silent for up to six
# weeks after at least one active week, and churned users must have gone quiet 30+ days ago.
MIN_DAYS = 56

# "new" users sign up within the last NEW_USER_DAYS days, counting as_of itself.
NEW_USER_DAYS = 10

ANONYMOUS_EVENT_TYPE = "view_pricing"


@dataclass(frozen=True)
class DemoUser:
    """One app user plus the ground truth the generator used (persona, billing) for tests and seeding."""

    id: int
    email: str
    name: str | None
    created_at: datetime
    persona: str
    plan: str | None
    billing_interval: str | None
    quantity: int
    subscription_status: str | None


@dataclass(frozen=True)
class DemoPopulation:
    """The users plus the row counts their (not materialised) events and sessions will have."""

    as_of: date
    seed: int
    users: list[DemoUser]
    event_count: int
    session_count: int


# --------------------------------------------------------------------------------------------
# Vocabulary. Small word lists are enough to look real in a dashboard or an email preview.
# --------------------------------------------------------------------------------------------

_FIRST_NAMES = (
    "Ada", "Alex", "Amara", "Ana", "Ben", "Carla", "Chen", "Chloe", "Daniel", "Diego", "Elena", "Emma",
    "Fatima", "Felix", "Grace", "Hana", "Hugo", "Ines", "Isaac", "Jonas", "Julia", "Kai", "Laura", "Leo",
    "Lina", "Lucas", "Maya", "Mateo", "Mia", "Nina", "Noah", "Omar", "Priya", "Rafael", "Sara", "Sofia",
    "Tom", "Valentina", "Wei", "Yusuf", "Zoe", "Olivia",
)
_LAST_NAMES = (
    "Adams", "Alvarez", "Berg", "Brown", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Gupta",
    "Hansen", "Ito", "Jensen", "Kim", "Kowalski", "Larsen", "Lopez", "Martin", "Meyer", "Moreau",
    "Nakamura", "Novak", "Okafor", "Olsen", "Patel", "Petrov", "Quinn", "Rossi", "Schmidt", "Silva",
    "Singh", "Smith", "Tanaka", "Torres", "Nguyen", "Wagner", "Walsh", "Weber", "Yilmaz", "Zhang",
)
_PROJECT_NAMES = (
    "Q3 plan", "Website relaunch", "Mobile app v2", "Hiring pipeline", "Onboarding revamp",
    "Customer research", "Billing migration", "Brand refresh", "Sprint 14", "Data warehouse",
    "Holiday campaign", "Office move", "API v3", "Support backlog", "Annual report", "Q4 OKRs",
    "Partner portal", "Pricing page test", "Security audit", "Newsletter", "Conference booth",
    "Design system", "Product launch", "Team offsite",
)
_TASK_VERBS = ("Draft", "Review", "Update", "Fix", "Design", "Schedule", "Write", "Prepare", "Ship", "Test")
_TASK_OBJECTS = (
    "landing page copy", "budget sheet", "kickoff deck", "login bug", "onboarding email", "roadmap",
    "vendor contract", "release notes", "user interviews", "sprint retro", "hero image", "FAQ page",
    "invoice template", "press release", "QA checklist", "job description", "status report",
)
_FILE_NAMES = (
    "roadmap.pdf", "mockup-v3.png", "budget.xlsx", "meeting-notes.docx", "screenshot.png", "logo.svg",
    "contract-signed.pdf", "export.csv", "wireframes.fig", "brief.docx", "photo.jpg", "slides.pptx",
)
_DASHBOARDS = ("overview", "my_tasks", "team_workload", "burndown", "calendar", "activity_feed")
_REFERRERS = ("google", "direct", "newsletter", "twitter", "producthunt")

_EVENT_TYPES = (
    "create_project", "create_task", "complete_task", "comment", "invite_member", "upload_file",
    "view_dashboard", "export_report",
)


def _cumulative(weights: Iterable[float]) -> tuple[float, ...]:
    """Cumulative weights, so random.choices skips re-summing them for every session."""
    total, out = 0.0, []
    for weight in weights:
        total += weight
        out.append(total)
    return tuple(out)


# Relative weights in _EVENT_TYPES order. Engaged users build and finish work; light users mostly
# look around; brand-new users set up projects and invite colleagues.
_MIX_ENGAGED = _cumulative((3, 22, 18, 15, 2, 6, 28, 3))
_MIX_LIGHT = _cumulative((2, 12, 10, 18, 1, 5, 40, 3))
_MIX_ONBOARDING = _cumulative((8, 25, 12, 10, 6, 6, 30, 1))

_EVENT_MIX = {
    "power": _MIX_ENGAGED,
    "steady": _MIX_ENGAGED,
    "casual": _MIX_LIGHT,
    "declining": _MIX_ENGAGED,
    "dormant": _MIX_LIGHT,
    "churned": _MIX_LIGHT,
    "new": _MIX_ONBOARDING,
    "resurrected": _MIX_LIGHT,
}

# --------------------------------------------------------------------------------------------
# Personas: when they signed up and how likely they are to pay.
# --------------------------------------------------------------------------------------------

# Sign-up age range in days before as_of (inclusive). Lower bounds leave each persona room to show
# its pattern: e.g. a dormant user needs a week of activity before 8+ silent days.
_CREATED_AGO_MIN = {
    "power": 10, "steady": 10, "casual": 10, "declining": 28,
    "dormant": 21, "churned": 38, "new": 0, "resurrected": 35,
}

_PAYING_SHARE = {
    "power": 0.70, "steady": 0.50, "casual": 0.20, "declining": 0.35,
    "dormant": 0.25, "churned": 0.30, "new": 0.15, "resurrected": 0.30,
}

# Subscription status weights (active, past_due, canceled, unpaid) of paying users per persona.
_STATUSES = ("active", "past_due", "canceled", "unpaid")
_STATUS_WEIGHTS = {
    "churned": (0.03, 0.05, 0.82, 0.10),
    "dormant": (0.68, 0.15, 0.12, 0.05),
    "declining": (0.80, 0.12, 0.06, 0.02),
    "resurrected": (0.85, 0.08, 0.05, 0.02),
    "new": (0.97, 0.03, 0.0, 0.0),
}
_STATUS_WEIGHTS_DEFAULT = (0.93, 0.05, 0.01, 0.01)

_PLANS = ("starter", "team", "business")
_SEATS = {"starter": (1, 2), "team": (2, 5), "business": (3, 5)}

# Wall-clock shape of a day (seconds after midnight UTC): users are worldwide but mostly on
# European and American working hours. Sessions never start before _DAY_OPEN and never run past
# _DAY_CLOSE, which keeps every timestamp inside its day, hence before midnight after as_of.
_DAY_OPEN = 6 * 3600.0
_DAY_CLOSE = 86399.0
_SIGNUP_EARLIEST = 7 * 3600
_SIGNUP_LATEST = 22 * 3600

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate(seed: int = 42, as_of: date | None = None, n_users: int = 2000, days: int = 90) -> DemoPopulation:
    """Draw the users and count their events and sessions; the rows themselves are streamed later.

    ``as_of`` is the last day with data (usually "yesterday" from the caller's clock). It is
    required: reading the wall clock here would make the population depend on when it ran.
    """
    as_of = _validated_as_of(as_of)
    if not isinstance(n_users, int) or n_users < 0:
        raise ValueError(f"n_users must be a non-negative integer, got {n_users!r}")
    if not isinstance(days, int) or days < MIN_DAYS:
        raise ValueError(f"days must be an integer >= {MIN_DAYS} (the personas need ~8 weeks of history), got {days!r}")
    users = _draw_users(seed, as_of, n_users, days)
    _, event_count, session_count = _schedule(seed, as_of, users)
    return DemoPopulation(as_of=as_of, seed=seed, users=users, event_count=event_count, session_count=session_count)


def iter_events(pop: DemoPopulation) -> Iterator[tuple]:
    """Yield ``(id, user_id, event_type, occurred_at, properties)`` in time order, ids from 1.

    Re-derived from the seed on every call, so two calls yield identical rows and nothing is held.
    """
    buckets, _, _ = _schedule(pop.seed, pop.as_of, pop.users)
    users = {user.id: user for user in pop.users}
    workspaces: dict[int, tuple[str, ...]] = {}
    next_id = 1
    for ordinal in sorted(buckets):
        rows = _events_of_day(pop.seed, ordinal, buckets[ordinal], users, workspaces)
        for _, _, _, user_id, event_type, occurred_at, properties in rows:
            yield (next_id, user_id, event_type, occurred_at, properties)
            next_id += 1


def iter_sessions(pop: DemoPopulation) -> Iterator[tuple]:
    """Yield ``(id, user_id, started_at, last_seen_at)`` in start order, ids from 1."""
    buckets, _, _ = _schedule(pop.seed, pop.as_of, pop.users)
    users = {user.id: user for user in pop.users}
    next_id = 1
    for ordinal in sorted(buckets):
        for _, user_id, started_at, last_seen_at in _sessions_of_day(pop.seed, ordinal, buckets[ordinal], users):
            yield (next_id, user_id, started_at, last_seen_at)
            next_id += 1


def persona_counts(pop: DemoPopulation) -> dict[str, int]:
    """Users per persona, every persona present (zero if absent), in PERSONAS order."""
    counts = Counter(user.persona for user in pop.users)
    return {persona: counts.get(persona, 0) for persona in PERSONAS}


def create_app_tables(conn, schema: str = "public") -> None:
    """Create the app's three tables and their indexes if absent (the schema too, if missing).

    Shapes follow the Flask app's models, so the pipeline can be developed against them without the
    app. Nothing is committed: the caller owns the transaction.
    """
    schema_id = sql.Identifier(_validated_schema(schema))
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if cur.fetchone() is None:
            # Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database.
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(schema_id))
        cur.execute(sql.SQL(_TABLES_DDL).format(schema=schema_id))


def load(conn, pop: DemoPopulation, schema: str = "public") -> dict[str, int]:
    """COPY the population into empty app tables (created if absent) and return the row counts.

    Refuses tables that already hold rows: appending a second population would duplicate ids and
    corrupt every persona's story. Rows stream through COPY in chunks. Does not commit.
    """
    create_app_tables(conn, schema)
    schema_id = sql.Identifier(schema)
    with conn.cursor() as cur:
        _refuse_non_empty(cur, schema)
        counts = {
            "users": _copy(cur, schema_id, "users", ("id", "email", "name", "created_at", "stripe_customer_id"),
                           _user_lines(pop)),
            "events": _copy(cur, schema_id, "events", ("id", "user_id", "event_type", "occurred_at", "properties"),
                            _event_lines(iter_events(pop))),
            "auth_sessions": _copy(cur, schema_id, "auth_sessions", ("id", "user_id", "started_at", "last_seen_at"),
                                   _session_lines(iter_sessions(pop))),
        }
        for table in ("users", "events", "auth_sessions"):
            # Fresh statistics, so the pipeline's first queries get sensible plans.
            cur.execute(sql.SQL("ANALYZE {}.{}").format(schema_id, sql.Identifier(table)))
    return counts


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


def _validated_as_of(as_of: date | None) -> date:
    """A plain date; a datetime is reduced to its date so comparisons with dates behave."""
    if as_of is None:
        raise ValueError("as_of is required (the last day with data, e.g. yesterday); demo_data never reads the clock")
    if isinstance(as_of, datetime):
        return as_of.date()
    if not isinstance(as_of, date):
        raise ValueError(f"as_of must be a date, got {as_of!r}")
    return as_of


def _persona_sequence(rng: random.Random, n_users: int) -> list[str]:
    """Exactly the default mix (largest remainder), shuffled: small populations still get every persona."""
    quotas = {p: DEFAULT_PERSONA_MIX[p] * n_users for p in PERSONAS}
    counts = {p: int(quotas[p]) for p in PERSONAS}
    by_remainder = sorted(PERSONAS, key=lambda p: (-(quotas[p] - counts[p]), PERSONAS.index(p)))
    for persona in by_remainder[: n_users - sum(counts.values())]:
        counts[persona] += 1
    sequence = [p for p in PERSONAS for _ in range(counts[p])]
    rng.shuffle(sequence)
    return sequence


def _draw_users(seed: int, as_of: date, n_users: int, days: int) -> list[DemoUser]:
    """Draw every user's attributes, then number them in sign-up order, as a serial key would."""
    rng = random.Random(f"{seed}:population")
    midnight = datetime(as_of.year, as_of.month, as_of.day, tzinfo=timezone.utc)
    drafts = []
    for index, persona in enumerate(_persona_sequence(rng, n_users)):
        created_ago = rng.randint(_CREATED_AGO_MIN[persona], NEW_USER_DAYS - 1 if persona == "new" else days - 1)
        micros = rng.randrange(_SIGNUP_EARLIEST * 1_000_000, _SIGNUP_LATEST * 1_000_000)
        created_at = midnight - timedelta(days=created_ago) + timedelta(microseconds=micros)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        has_name = rng.random() >= 0.05
        drafts.append((created_at, index, persona, first, last, has_name, _draw_billing(rng, persona)))
    drafts.sort(key=lambda draft: (draft[0], draft[1]))
    return [
        DemoUser(
            id=user_id,
            email=f"{first}.{last}{user_id}@example.com".lower(),
            name=f"{first} {last}" if has_name else None,
            created_at=created_at,
            persona=persona,
            plan=plan,
            billing_interval=interval,
            quantity=quantity,
            subscription_status=status,
        )
        for user_id, (created_at, _, persona, first, last, has_name, (plan, interval, quantity, status))
        in enumerate(drafts, start=1)
    ]


def _draw_billing(rng: random.Random, persona: str) -> tuple[str | None, str | None, int, str | None]:
    """(plan, interval, seats, status): ~35% pay, engaged personas more often; churned payers mostly cancelled."""
    if rng.random() >= _PAYING_SHARE[persona]:
        return None, None, 1, None
    plan_weights = (0.35, 0.40, 0.25) if persona == "power" else (0.55, 0.33, 0.12)
    plan = rng.choices(_PLANS, weights=plan_weights)[0]
    interval = rng.choices(("month", "year", "week"), weights=(0.80, 0.17, 0.03))[0]
    quantity = rng.randint(*_SEATS[plan])
    status = rng.choices(_STATUSES, weights=_STATUS_WEIGHTS.get(persona, _STATUS_WEIGHTS_DEFAULT))[0]
    return plan, interval, quantity, status


def _stripe_customer_id(seed: int, user: DemoUser) -> str | None:
    """A stable fake Stripe customer id for paying users; free users never reached checkout."""
    if user.plan is None:
        return None
    return "cus_" + hashlib.sha256(f"{seed}:{user.id}:stripe".encode()).hexdigest()[:14]


# --------------------------------------------------------------------------------------------
# Schedules: which days each user is active, with how many sessions and events.
# --------------------------------------------------------------------------------------------

# Packed bucket entry: user id, kind (0 = signed-in activity, 1 = anonymous pricing views),
# session count and event count, in one 64-bit integer so 100k users' schedules fit in ~25 MB.
_KIND_ACTIVE = 0
_KIND_ANONYMOUS = 1


def _pack(user_id: int, kind: int, sessions: int, events: int) -> int:
    """One schedule entry as an int: arrays of ints cost 8 bytes an entry, tuples ~80."""
    return (user_id << 20) | (kind << 16) | (sessions << 8) | min(events, 255)


def _unpack(packed: int) -> tuple[int, int, int, int]:
    return packed >> 20, (packed >> 16) & 0xF, (packed >> 8) & 0xFF, packed & 0xFF


def _schedule(seed: int, as_of: date, users: list[DemoUser]) -> tuple[dict[int, array], int, int]:
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
            buckets.setdefault(ordinal, array("q")).append(_pack(user.id, _KIND_ACTIVE, n_sessions, n_events))
            events += n_events
            sessions += n_sessions
        for ordinal, n_views in _anonymous_days(rng, user):
            buckets.setdefault(ordinal, array("q")).append(_pack(user.id, _KIND_ANONYMOUS, 0, n_views))
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


_POWER = _Pace(0.85, 0.55, 5, 7, _cumulative((0.30, 0.45, 0.25)), (5, 16))
_STEADY = _Pace(0.62, 0.30, 3, 5, _cumulative((0.60, 0.40)), (2, 9))
_CASUAL = _Pace(0.16, 0.10, 1, 2, (1.0,), (1, 6))
_NEW = _Pace(0.75, 0.45, 0, 7, _cumulative((0.70, 0.30)), (2, 10))
_FADING = _Pace(0.22, 0.10, 0, 7, (1.0,), (1, 4))
_COMEBACK = _Pace(0.50, 0.30, 0, 7, _cumulative((0.80, 0.20)), (2, 8))


def _irregular(rng: random.Random, low: float, high: float, events: tuple[int, int], min7: int = 0) -> _Pace:
    """A loosely engaged user's pace with personal odds, for personas whose rhythm is not the point."""
    p = rng.uniform(low, high)
    return _Pace(p, p * 0.5, min7, 6, _cumulative((0.75, 0.25)), events)


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


# --------------------------------------------------------------------------------------------
# Rows: one random stream per user-day. Timing is drawn first, content second, so sessions can be
# derived without drawing event content while staying identical to what iter_events sees.
# --------------------------------------------------------------------------------------------


def _day_start(ordinal: int) -> datetime:
    """Midnight UTC of a date ordinal: rows are offsets from it, converted to datetimes once sorted."""
    day = date.fromordinal(ordinal)
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _signup_offset(user: DemoUser, ordinal: int) -> float | None:
    """Seconds after midnight of the sign-up on this day, or None if the user signed up another day."""
    created = user.created_at
    if created.date().toordinal() != ordinal:
        return None
    return created.hour * 3600 + created.minute * 60 + created.second + created.microsecond / 1e6


def _day_timing(
    rng: random.Random, n_sessions: int, n_events: int, signup: float | None
) -> list[tuple[float, float, list[float]]]:
    """(start, last_seen, event offsets) per session, in seconds after midnight.

    The day (from sign-up, on the sign-up day) is cut into one slot per session, so sessions never
    overlap and never cross midnight. The sign-up session starts at the sign-up instant itself.
    """
    lo = max(_DAY_OPEN, signup) if signup is not None else _DAY_OPEN
    span = (_DAY_CLOSE - lo) / n_sessions
    sessions = []
    for index, n in enumerate(_split(rng, n_events, n_sessions)):
        slot_start = lo + index * span
        if index == 0 and signup is not None:
            start = signup
        else:
            start = slot_start + rng.random() * max(span - 1200.0, 0.0)
        cap = min(3600.0, slot_start + span - start - 1.0)
        offsets, length = _event_offsets(rng, n, cap)
        sessions.append((start, start + length, [start + offset for offset in offsets]))
    return sessions


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """Split total events into parts >= 1 at random cut points."""
    if parts == 1:
        return [total]
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def _event_offsets(rng: random.Random, n: int, cap: float) -> tuple[list[float], float]:
    """Event offsets within a session and the session's length (a few minutes up to `cap`).

    Clicks come in irregular gaps; the user lingers a little after the last one, which is when
    last_seen_at is stamped. Squeezed proportionally if it would overrun the slot.
    """
    mean_gap = rng.uniform(30.0, 200.0)
    t = rng.uniform(1.0, 8.0)
    offsets = [t]
    for _ in range(n - 1):
        t += 1.0 + rng.expovariate(1.0 / mean_gap)
        offsets.append(t)
    length = max(t + rng.uniform(20.0, 300.0), rng.uniform(120.0, 420.0))
    if length > cap:
        factor = cap / length
        offsets = [offset * factor for offset in offsets]
        length = cap
    return offsets, length


def _sessions_of_day(seed: int, ordinal: int, entries: array, users: dict[int, DemoUser]) -> list[tuple]:
    """Sessions started on one day, sorted by start: (offset, user_id, started_at, last_seen_at)."""
    midnight = _day_start(ordinal)
    rows = []
    for packed in entries:
        user_id, kind, n_sessions, n_events = _unpack(packed)
        if kind != _KIND_ACTIVE:
            continue
        rng = random.Random(f"{seed}:{user_id}:{ordinal}")
        for start, end, _ in _day_timing(rng, n_sessions, n_events, _signup_offset(users[user_id], ordinal)):
            rows.append((start, user_id, midnight + timedelta(seconds=start), midnight + timedelta(seconds=end)))
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows


def _events_of_day(
    seed: int, ordinal: int, entries: array, users: dict[int, DemoUser], workspaces: dict[int, tuple[str, ...]]
) -> list[tuple]:
    """Events of one day sorted by time: (offset, source user, seq, user_id, type, occurred_at, props)."""
    midnight = _day_start(ordinal)
    rows: list[tuple] = []
    for packed in entries:
        user_id, kind, n_sessions, n_events = _unpack(packed)
        user = users[user_id]
        if kind == _KIND_ANONYMOUS:
            rows.extend(_anonymous_events(seed, ordinal, user, n_events))
            continue
        rng = random.Random(f"{seed}:{user_id}:{ordinal}")
        signup = _signup_offset(user, ordinal)
        timing = _day_timing(rng, n_sessions, n_events, signup)
        projects = _workspace(seed, user_id, workspaces)
        seq = 0
        for index, (_, _, offsets) in enumerate(timing):
            types = rng.choices(_EVENT_TYPES, cum_weights=_EVENT_MIX[user.persona], k=len(offsets))
            if index == 0 and signup is not None:
                types[0] = "create_project"  # onboarding starts with a first project
            elif rng.random() < 0.6:
                types[0] = "login"  # the rest resumed a remembered session
            for offset, event_type in zip(offsets, types):
                rows.append((offset, user_id, seq, user_id, event_type, None, _properties(rng, event_type, projects)))
                seq += 1
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    return [(*row[:5], midnight + timedelta(seconds=row[0]), row[6]) for row in rows]


def _anonymous_events(seed: int, ordinal: int, user: DemoUser, n_views: int) -> list[tuple]:
    """A future user's logged-out pricing views: within the hour before sign-up, or on an earlier day."""
    rng = random.Random(f"{seed}:{user.id}:{ordinal}:anonymous")
    signup = _signup_offset(user, ordinal)
    rows = []
    for seq in range(n_views):
        if signup is not None:
            offset = signup - rng.uniform(30.0, 3600.0)
        else:
            offset = rng.uniform(_DAY_OPEN, _DAY_CLOSE - 1.0)
        properties = {"referrer": rng.choice(_REFERRERS)} if rng.random() < 0.7 else None
        rows.append((offset, user.id, -1 - seq, None, ANONYMOUS_EVENT_TYPE, None, properties))
    return rows


def _workspace(seed: int, user_id: int, cache: dict[int, tuple[str, ...]]) -> tuple[str, ...]:
    """The user's 2-5 project names, stable across days so their events tell a consistent story."""
    projects = cache.get(user_id)
    if projects is None:
        rng = random.Random(f"{seed}:{user_id}:workspace")
        projects = cache[user_id] = tuple(rng.sample(_PROJECT_NAMES, rng.randint(2, 5)))
    return projects


def _task_title(rng: random.Random) -> str:
    """Verb + object ("Review budget sheet"): ~170 combinations read like a real backlog."""
    return f"{rng.choice(_TASK_VERBS)} {rng.choice(_TASK_OBJECTS)}"


def _properties(rng: random.Random, event_type: str, projects: tuple[str, ...]) -> dict | None:
    """The JSON payload the app attaches to each event type (login has none)."""
    if event_type == "view_dashboard":
        return {"dashboard": rng.choice(_DASHBOARDS)}
    if event_type == "create_task":
        return {"project_name": rng.choice(projects), "task_title": _task_title(rng)}
    if event_type == "complete_task":
        return {"task_title": _task_title(rng)}
    if event_type in ("comment", "create_project"):
        return {"project_name": rng.choice(projects)}
    if event_type == "upload_file":
        return {"file_name": rng.choice(_FILE_NAMES), "size_kb": min(int(rng.lognormvariate(5.5, 1.4)) + 1, 250_000)}
    if event_type == "invite_member":
        invitee = f"{rng.choice(_FIRST_NAMES)}.{rng.choice(_LAST_NAMES)}@example.com".lower()
        return {"invitee_email": invitee}
    if event_type == "export_report":
        return {"format": "csv" if rng.random() < 0.6 else "pdf"}
    return None


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------

# Lower-case unquoted identifier syntax: anything needing quotes is far more likely a mistake.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

_TABLES_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.users (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    name text NULL,
    created_at timestamptz NOT NULL,
    stripe_customer_id text NULL
);
CREATE TABLE IF NOT EXISTS {schema}.events (
    id bigint PRIMARY KEY,
    user_id bigint NULL,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    properties jsonb NULL
);
CREATE INDEX IF NOT EXISTS events_user_id_occurred_at_idx ON {schema}.events (user_id, occurred_at);
CREATE INDEX IF NOT EXISTS events_occurred_at_idx ON {schema}.events (occurred_at);
CREATE TABLE IF NOT EXISTS {schema}.auth_sessions (
    id bigint PRIMARY KEY,
    user_id bigint NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS auth_sessions_started_at_idx ON {schema}.auth_sessions (started_at);
"""

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NULL = "\\N"
_to_json = json.JSONEncoder(separators=(",", ":")).encode


def _validated_schema(schema: str) -> str:
    """Reject rather than escape odd names; sql.Identifier still quotes whatever passes."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"schema {schema!r} is not a plain identifier: use lower-case letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    return schema


def _refuse_non_empty(cur, schema: str) -> None:
    """Fail before copying anything, so a refused load leaves the transaction clean."""
    for table in ("users", "events", "auth_sessions"):
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{})").format(sql.Identifier(schema), sql.Identifier(table)))
        if cur.fetchone()[0]:
            raise ValueError(
                f"{schema}.{table} already has rows; demo_data.load() only fills empty app tables "
                "(use a fresh database or schema, or empty the tables first)"
            )


class _LineReader:
    """A read-only text file over an iterator of COPY lines, so COPY pulls rows in bounded chunks."""

    def __init__(self, lines: Iterable[str]):
        self._lines = iter(lines)
        self._pending = ""
        self.lines_read = 0

    def read(self, size: int = -1) -> str:
        if size is None or size < 0:
            size = 1 << 62
        parts, length = [self._pending], len(self._pending)
        while length < size:
            line = next(self._lines, None)
            if line is None:
                break
            parts.append(line)
            length += len(line)
            self.lines_read += 1
        chunk = "".join(parts)
        self._pending = chunk[size:]
        return chunk[:size]

    def readline(self, size: int = -1) -> str:
        if self._pending:
            line, self._pending = self._pending, ""
            return line
        line = next(self._lines, "")
        self.lines_read += bool(line)
        return line


def _copy(cur, schema_id: sql.Identifier, table: str, columns: tuple[str, ...], lines: Iterable[str]) -> int:
    """Stream lines into one table with COPY ... FROM STDIN; return how many rows went in."""
    statement = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
        schema_id, sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    reader = _LineReader(lines)
    cur.copy_expert(statement, reader, size=1 << 16)
    return reader.lines_read


def _text(value: str | None) -> str:
    """A text value in COPY's text format."""
    return _NULL if value is None else value.translate(_COPY_ESCAPES)


def _user_lines(pop: DemoPopulation) -> Iterator[str]:
    """COPY text lines of the users table (timestamps carry +00:00, so the session TimeZone is moot)."""
    for user in pop.users:
        customer = _stripe_customer_id(pop.seed, user)
        yield f"{user.id}\t{_text(user.email)}\t{_text(user.name)}\t{user.created_at.isoformat()}\t{_text(customer)}\n"


def _event_lines(events: Iterable[tuple]) -> Iterator[str]:
    """COPY text lines of events; properties become compact JSON, escaped for the text format."""
    for event_id, user_id, event_type, occurred_at, properties in events:
        user = _NULL if user_id is None else user_id
        payload = _NULL if properties is None else _to_json(properties).translate(_COPY_ESCAPES)
        yield f"{event_id}\t{user}\t{event_type}\t{occurred_at.isoformat()}\t{payload}\n"


def _session_lines(sessions: Iterable[tuple]) -> Iterator[str]:
    """COPY text lines of auth_sessions."""
    for session_id, user_id, started_at, last_seen_at in sessions:
        last_seen = _NULL if last_seen_at is None else last_seen_at.isoformat()
        yield f"{session_id}\t{user_id}\t{started_at.isoformat()}\t{last_seen}\n"
