"""The demo population: deterministic, believable per persona, and loadable into real PostgreSQL.

Behaviour tests run on one 2,000-user population (the demo's default size), summarised once per
module; the database tests use the `pg_conn` fixture (an empty, isolated database).
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest

from retention_pipeline.local import demo_data
from retention_pipeline.local.demo_data import (
    DEFAULT_PERSONA_MIX,
    PERSONAS,
    create_app_tables,
    generate,
    iter_events,
    iter_sessions,
    load,
    persona_counts,
)

AS_OF = date(2025, 6, 25)  # a Wednesday, so "the last 7 days" and "last full ISO week" differ
END = datetime(2025, 6, 26, tzinfo=UTC)  # midnight after AS_OF: every timestamp is before it

EVENT_PROPERTY_KEYS = {
    "login": None,
    "create_project": {"project_name"},
    "create_task": {"project_name", "task_title"},
    "complete_task": {"task_title"},
    "comment": {"project_name"},
    "invite_member": {"invitee_email"},
    "upload_file": {"file_name", "size_kb"},
    "view_dashboard": {"dashboard"},
    "export_report": {"format"},
}


@dataclass
class Summary:
    """What the behaviour tests need from one pass over the event and session streams."""

    pop: demo_data.DemoPopulation
    active_dates: dict[int, set[date]] = field(default_factory=lambda: defaultdict(set))
    first_event: dict[int, datetime] = field(default_factory=dict)
    sessions: dict[int, list[tuple[datetime, datetime]]] = field(default_factory=lambda: defaultdict(list))
    events: list[tuple] = field(default_factory=list)
    anonymous: int = 0

    def users(self, persona: str) -> list[demo_data.DemoUser]:
        return [user for user in self.pop.users if user.persona == persona]

    def days_in(self, user_id: int, first: date, last: date) -> int:
        return sum(1 for day in self.active_dates[user_id] if first <= day <= last)


@pytest.fixture(scope="module")
def summary() -> Summary:
    pop = generate(seed=42, as_of=AS_OF)
    result = Summary(pop)
    for event in iter_events(pop):
        result.events.append(event)
        _, user_id, _, occurred_at, _ = event
        if user_id is None:
            result.anonymous += 1
            continue
        result.active_dates[user_id].add(occurred_at.date())
        result.first_event.setdefault(user_id, occurred_at)
    for _, user_id, started_at, last_seen_at in iter_sessions(pop):
        result.sessions[user_id].append((started_at, last_seen_at))
    return result


def _digest(rows) -> tuple[int, str]:
    """Row count and a hash of the rows, so large streams compare without holding them twice."""
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        digest.update(repr(row).encode())
        count += 1
    return count, digest.hexdigest()


# -- arguments -----------------------------------------------------------------------------------


def test_as_of_is_required():
    with pytest.raises(ValueError, match="as_of"):
        generate(seed=1)


def test_too_short_a_window_is_rejected():
    with pytest.raises(ValueError, match="days"):
        generate(seed=1, as_of=AS_OF, days=demo_data.MIN_DAYS - 1)


def test_default_mix_covers_every_persona_and_sums_to_one():
    assert tuple(DEFAULT_PERSONA_MIX) == PERSONAS
    assert sum(DEFAULT_PERSONA_MIX.values()) == pytest.approx(1.0)


# -- determinism ---------------------------------------------------------------------------------


def test_same_inputs_give_identical_rows():
    first = generate(seed=7, as_of=AS_OF, n_users=300)
    second = generate(seed=7, as_of=AS_OF, n_users=300)
    assert first == second
    assert _digest(iter_events(first)) == _digest(iter_events(second))
    assert _digest(iter_sessions(first)) == _digest(iter_sessions(second))
    # Re-iterating the same population also re-derives the same rows.
    assert _digest(iter_events(first)) == _digest(iter_events(first))


def test_different_seed_gives_different_rows():
    first = generate(seed=7, as_of=AS_OF, n_users=300)
    other = generate(seed=8, as_of=AS_OF, n_users=300)
    assert first.users != other.users
    assert _digest(iter_events(first)) != _digest(iter_events(other))
    assert _digest(iter_sessions(first)) != _digest(iter_sessions(other))


def test_counts_match_the_streams(summary):
    assert summary.pop.event_count == len(summary.events)
    assert summary.pop.session_count == sum(len(s) for s in summary.sessions.values())


# -- population shape ----------------------------------------------------------------------------


def test_persona_mix_is_close_to_default(summary):
    counts = persona_counts(summary.pop)
    assert tuple(counts) == PERSONAS
    assert sum(counts.values()) == 2000
    for persona, share in DEFAULT_PERSONA_MIX.items():
        assert abs(counts[persona] / 2000 - share) < 0.01, persona


def test_small_populations_still_get_every_persona():
    counts = persona_counts(generate(seed=3, as_of=AS_OF, n_users=50))
    assert sum(counts.values()) == 50
    assert all(count >= 2 for count in counts.values()), counts


def test_users_are_numbered_in_sign_up_order_within_the_window(summary):
    users = summary.pop.users
    assert [user.id for user in users] == list(range(1, len(users) + 1))
    assert all(a.created_at <= b.created_at for a, b in zip(users, users[1:], strict=False))
    assert users[0].created_at >= END - timedelta(days=90)
    assert users[-1].created_at < END


def test_emails_are_unique_and_some_names_are_missing(summary):
    users = summary.pop.users
    assert len({user.email for user in users}) == len(users)
    assert all(user.email.endswith(f"{user.id}@example.com") for user in users)
    missing = sum(user.name is None for user in users) / len(users)
    assert 0.02 < missing < 0.09


def test_billing_looks_like_a_saas(summary):
    users = summary.pop.users
    payers = [user for user in users if user.plan is not None]
    assert 0.28 < len(payers) / len(users) < 0.42
    for user in users:
        if user.plan is None:
            assert (user.billing_interval, user.subscription_status) == (None, None)
        else:
            assert user.plan in ("starter", "team", "business")
            assert user.billing_interval in ("month", "year", "week")
            assert 1 <= user.quantity <= 5
            assert user.subscription_status in ("active", "past_due", "canceled", "unpaid")
    assert sum(user.billing_interval == "month" for user in payers) > len(payers) / 2
    share = {p: sum(u.plan is not None for u in summary.users(p)) / len(summary.users(p)) for p in PERSONAS}
    assert share["power"] > share["casual"] and share["steady"] > share["casual"]
    churned_payers = [user for user in payers if user.persona == "churned"]
    canceled = sum(user.subscription_status == "canceled" for user in churned_payers)
    assert canceled > 0.6 * len(churned_payers)


# -- rows ----------------------------------------------------------------------------------------


def test_timestamps_are_utc_and_before_the_end_of_as_of(summary):
    for _, _, _, occurred_at, _ in summary.events:
        assert occurred_at.utcoffset() == timedelta(0)
        assert occurred_at < END
    for spans in summary.sessions.values():
        for started_at, last_seen_at in spans:
            assert started_at.utcoffset() == timedelta(0)
            assert started_at < last_seen_at < END


def test_event_ids_count_up_in_time_order(summary):
    assert [event[0] for event in summary.events] == list(range(1, len(summary.events) + 1))
    times = [event[3] for event in summary.events]
    assert times == sorted(times)


def test_no_event_or_session_before_sign_up(summary):
    for user in summary.pop.users:
        assert summary.first_event[user.id] >= user.created_at  # everyone does something on sign-up
        assert min(start for start, _ in summary.sessions[user.id]) >= user.created_at


def test_events_happen_inside_their_users_sessions(summary):
    starts = {user_id: [start for start, _ in spans] for user_id, spans in summary.sessions.items()}
    for _, user_id, _, occurred_at, _ in summary.events:
        if user_id is None:
            continue
        index = bisect.bisect_right(starts[user_id], occurred_at) - 1
        assert index >= 0
        started_at, last_seen_at = summary.sessions[user_id][index]
        assert started_at < occurred_at < last_seen_at


def test_sessions_last_minutes_not_days(summary):
    lengths = [(end - start).total_seconds() for spans in summary.sessions.values() for start, end in spans]
    assert max(lengths) <= 3600
    assert sorted(lengths)[len(lengths) // 2] > 120  # the typical session lasts a few minutes


def test_anonymous_events_are_rare_pricing_views(summary):
    share = summary.anonymous / len(summary.events)
    assert 0.002 < share < 0.03
    assert {event[2] for event in summary.events if event[1] is None} == {"view_pricing"}


def test_event_types_carry_their_properties(summary):
    seen = set()
    for _, user_id, event_type, _, properties in summary.events:
        if user_id is None:
            continue
        seen.add(event_type)
        expected = EVENT_PROPERTY_KEYS[event_type]
        assert (None if properties is None else set(properties)) == expected, event_type
    assert seen == set(EVENT_PROPERTY_KEYS)
    formats = {p["format"] for _, _, t, _, p in summary.events if t == "export_report"}
    assert formats == {"csv", "pdf"}


# -- persona behaviour ---------------------------------------------------------------------------

LAST_7 = (AS_OF - timedelta(days=6), AS_OF)
LAST_FULL_ISO_WEEK = (AS_OF - timedelta(days=AS_OF.weekday() + 7), AS_OF - timedelta(days=AS_OF.weekday() + 1))


def test_power_users_are_active_most_days(summary):
    for user in summary.users("power"):
        assert summary.days_in(user.id, *LAST_7) >= 4
        if user.created_at.date() <= LAST_FULL_ISO_WEEK[0]:
            assert summary.days_in(user.id, *LAST_FULL_ISO_WEEK) >= 4


def test_steady_users_are_active_a_few_days_a_week(summary):
    for user in summary.users("steady"):
        assert 3 <= summary.days_in(user.id, *LAST_7) <= 5


def test_casual_users_come_about_once_a_week(summary):
    rates = []
    for user in summary.users("casual"):
        days = summary.days_in(user.id, *LAST_7)
        assert 1 <= days <= 2
        weeks = (AS_OF - user.created_at.date()).days / 7
        rates.append(len(summary.active_dates[user.id]) / weeks)
    assert 0.8 < sum(rates) / len(rates) < 2.0


def test_declining_users_fall_off_but_are_not_silent(summary):
    for user in summary.users("declining"):
        recent = summary.days_in(user.id, *LAST_7)
        earlier = summary.days_in(user.id, AS_OF - timedelta(days=27), AS_OF - timedelta(days=14))
        assert 1 <= recent <= 2
        assert earlier > 2 * recent


def test_dormant_users_were_active_but_not_lately(summary):
    for user in summary.users("dormant"):
        last_active = max(summary.active_dates[user.id])
        assert 8 <= (AS_OF - last_active).days <= 30
        assert summary.days_in(user.id, *LAST_7) == 0


def test_churned_users_left_over_a_month_ago(summary):
    for user in summary.users("churned"):
        assert (AS_OF - max(summary.active_dates[user.id])).days > 30


def test_new_users_signed_up_recently_and_are_active(summary):
    for user in summary.users("new"):
        assert END - user.created_at <= timedelta(days=10)
        assert summary.days_in(user.id, *LAST_7) >= 1 or user.created_at.date() < LAST_7[0]
    others = [user for user in summary.pop.users if user.persona != "new"]
    assert all(END - user.created_at > timedelta(days=10) for user in others)


def test_resurrected_users_came_back_after_a_long_silence(summary):
    for user in summary.users("resurrected"):
        days = sorted(summary.active_dates[user.id])
        assert summary.days_in(user.id, *LAST_7) >= 1
        longest_gap = max((b - a).days - 1 for a, b in zip(days, days[1:], strict=False))
        assert 21 <= longest_gap <= 42


# -- PostgreSQL ----------------------------------------------------------------------------------


def _count(conn, table: str, schema: str = "public") -> int:
    with conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM "{schema}"."{table}"')
        return cur.fetchone()[0]


def test_load_copies_exactly_the_generated_rows(pg_conn, summary):
    pop = summary.pop
    counts = load(pg_conn, pop)
    expected = {"users": len(pop.users), "events": pop.event_count, "auth_sessions": pop.session_count}
    assert counts == expected
    assert {table: _count(pg_conn, table) for table in expected} == expected
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM events WHERE user_id IS NULL")
        assert cur.fetchone()[0] == summary.anonymous
        cur.execute(
            "SELECT max(occurred_at) < %s, max(last_seen_at) < %s FROM events, "
            "(SELECT max(last_seen_at) AS last_seen_at FROM auth_sessions) s",
            (END, END),
        )
        assert cur.fetchone() == (True, True)
        cur.execute("SELECT properties->>'task_title' FROM events WHERE event_type = 'complete_task' LIMIT 1")
        assert cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM users WHERE stripe_customer_id IS NOT NULL")
        assert cur.fetchone()[0] == sum(user.plan is not None for user in pop.users)
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        indexes = {row[0] for row in cur.fetchall()}
    assert {"events_user_id_occurred_at_idx", "events_occurred_at_idx", "auth_sessions_started_at_idx"} <= indexes


def test_load_refuses_tables_that_already_have_rows(pg_conn):
    pop = generate(seed=5, as_of=AS_OF, n_users=60)
    load(pg_conn, pop)
    with pytest.raises(ValueError, match="already has rows"):
        load(pg_conn, pop)
    assert _count(pg_conn, "users") == 60


def test_load_into_a_named_schema_creates_it(pg_conn):
    pop = generate(seed=5, as_of=AS_OF, n_users=60)
    counts = load(pg_conn, pop, schema="flask_app")
    assert counts["users"] == _count(pg_conn, "users", "flask_app") == 60
    assert counts["events"] == _count(pg_conn, "events", "flask_app") == pop.event_count


def test_create_app_tables_is_idempotent_and_rejects_odd_schema_names(pg_conn):
    create_app_tables(pg_conn)
    create_app_tables(pg_conn)
    assert _count(pg_conn, "events") == 0
    for bad in ('app"; DROP TABLE users; --', "Mixed", "has space", ""):
        with pytest.raises(ValueError, match="schema"):
            create_app_tables(pg_conn, schema=bad)


def test_demo_refuses_a_database_whose_users_it_did_not_seed(pg_server, pg_database):
    """RETENTION_DATABASE_URL at a real app: the demo must not build indexes, seed or send there."""
    from retention_pipeline.local import demo
    from retention_pipeline.local.launcher import LauncherError
    from retention_pipeline.resources import AppDatabase

    app_db = AppDatabase(url=pg_server.url(pg_database))

    app_db.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text, name text, created_at timestamptz)")
    app_db.execute("INSERT INTO users VALUES (1, 'real@customer.example', 'Real', now())")
    with pytest.raises(LauncherError, match="holds rows the demo did not seed"):
        demo._seed_if_empty(app_db, seed=1, n_users=50, as_of=date(2025, 3, 1), say=print)
    tables = {r[0] for r in app_db.fetch_all("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"users"}
    app_db.execute("DROP TABLE users")

    # An empty app database is the demo's to fill.
    assert demo._seed_if_empty(app_db, seed=1, n_users=50, as_of=date(2025, 3, 1), say=print)["users"] == 50
