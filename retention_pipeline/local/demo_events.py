"""The demo's rows: sessions and events of each user-day, drawn from one random stream per user-day."""

from __future__ import annotations

import random
from array import array
from datetime import UTC, date, datetime, timedelta

from retention_pipeline.local.demo_schedule import KIND_ACTIVE, KIND_ANONYMOUS, cumulative, unpack
from retention_pipeline.local.demo_users import FIRST_NAMES, LAST_NAMES, DemoUser

ANONYMOUS_EVENT_TYPE = "view_pricing"

# Vocabulary. Small word lists are enough to look real in a dashboard or an email preview.
_PROJECT_NAMES = (
    "Q3 plan",
    "Website relaunch",
    "Mobile app v2",
    "Hiring pipeline",
    "Onboarding revamp",
    "Customer research",
    "Billing migration",
    "Brand refresh",
    "Sprint 14",
    "Data warehouse",
    "Holiday campaign",
    "Office move",
    "API v3",
    "Support backlog",
    "Annual report",
    "Q4 OKRs",
    "Partner portal",
    "Pricing page test",
    "Security audit",
    "Newsletter",
    "Conference booth",
    "Design system",
    "Product launch",
    "Team offsite",
)
_TASK_VERBS = ("Draft", "Review", "Update", "Fix", "Design", "Schedule", "Write", "Prepare", "Ship", "Test")
_TASK_OBJECTS = (
    "landing page copy",
    "budget sheet",
    "kickoff deck",
    "login bug",
    "onboarding email",
    "roadmap",
    "vendor contract",
    "release notes",
    "user interviews",
    "sprint retro",
    "hero image",
    "FAQ page",
    "invoice template",
    "press release",
    "QA checklist",
    "job description",
    "status report",
)
_FILE_NAMES = (
    "roadmap.pdf",
    "mockup-v3.png",
    "budget.xlsx",
    "meeting-notes.docx",
    "screenshot.png",
    "logo.svg",
    "contract-signed.pdf",
    "export.csv",
    "wireframes.fig",
    "brief.docx",
    "photo.jpg",
    "slides.pptx",
)
_DASHBOARDS = ("overview", "my_tasks", "team_workload", "burndown", "calendar", "activity_feed")
_REFERRERS = ("google", "direct", "newsletter", "twitter", "producthunt")

_EVENT_TYPES = (
    "create_project",
    "create_task",
    "complete_task",
    "comment",
    "invite_member",
    "upload_file",
    "view_dashboard",
    "export_report",
)

# Relative weights in _EVENT_TYPES order. Engaged users build and finish work; light users mostly
# look around; brand-new users set up projects and invite colleagues.
_MIX_ENGAGED = cumulative((3, 22, 18, 15, 2, 6, 28, 3))
_MIX_LIGHT = cumulative((2, 12, 10, 18, 1, 5, 40, 3))
_MIX_ONBOARDING = cumulative((8, 25, 12, 10, 6, 6, 30, 1))

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


# Wall-clock shape of a day (seconds after midnight UTC): users are worldwide but mostly on
# European and American working hours. Sessions never start before _DAY_OPEN and never run past
# _DAY_CLOSE, which keeps every timestamp inside its day, hence before midnight after as_of.
_DAY_OPEN = 6 * 3600.0
_DAY_CLOSE = 86399.0


# Rows: one random stream per user-day. Timing is drawn first, content second, so sessions can be
# derived without drawing event content while staying identical to what iter_events sees.
# --------------------------------------------------------------------------------------------


def _day_start(ordinal: int) -> datetime:
    """Midnight UTC of a date ordinal: rows are offsets from it, converted to datetimes once sorted."""
    day = date.fromordinal(ordinal)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


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
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=False)]


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


def sessions_of_day(seed: int, ordinal: int, entries: array, users: dict[int, DemoUser]) -> list[tuple]:
    """Sessions started on one day, sorted by start: (offset, user_id, started_at, last_seen_at)."""
    midnight = _day_start(ordinal)
    rows = []
    for packed in entries:
        user_id, kind, n_sessions, n_events = unpack(packed)
        if kind != KIND_ACTIVE:
            continue
        rng = random.Random(f"{seed}:{user_id}:{ordinal}")
        for start, end, _ in _day_timing(rng, n_sessions, n_events, _signup_offset(users[user_id], ordinal)):
            rows.append((start, user_id, midnight + timedelta(seconds=start), midnight + timedelta(seconds=end)))
    rows.sort(key=lambda row: (row[0], row[1]))
    return rows


def events_of_day(
    seed: int, ordinal: int, entries: array, users: dict[int, DemoUser], workspaces: dict[int, tuple[str, ...]]
) -> list[tuple]:
    """Events of one day sorted by time: (offset, source user, seq, user_id, type, occurred_at, props)."""
    midnight = _day_start(ordinal)
    rows: list[tuple] = []
    for packed in entries:
        user_id, kind, n_sessions, n_events = unpack(packed)
        user = users[user_id]
        if kind == KIND_ANONYMOUS:
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
            for offset, event_type in zip(offsets, types, strict=False):
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
        invitee = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}@example.com".lower()
        return {"invitee_email": invitee}
    if event_type == "export_report":
        return {"format": "csv" if rng.random() < 0.6 else "pdf"}
    return None
