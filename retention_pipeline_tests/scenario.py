"""Hand-built scenarios: users, events and auth sessions with explicit timestamps, inserted into the
app tables of a test database, plus small readers of what the pipeline wrote.

Every helper commits (one transaction per call), so a Dagster run started afterwards sees the rows.
Timestamps without a timezone are taken as UTC.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa

from retention_pipeline.resources import AppDatabase

UTC = UTC

# A live sender (Resend, SMTP) refuses to send without the sender's postal address in the campaign config.
LIVE_IDENTITY = {"sender_name": "Acme Test Inc.", "postal_address": "1 Test Street, Testville, TS 00001"}


def live_campaign(run_config: dict | None = None) -> dict:
    """`run_config` with the sender identity a live send needs added to the campaign's config."""
    run_config = dict(run_config or {})
    ops = dict(run_config.get("ops", {}))
    graph = dict(ops.get("reengagement_emails", {}))
    graph_ops = dict(graph.get("ops", {}))
    plan = dict(graph_ops.get("plan_reengagement_sends", {}))
    plan["config"] = LIVE_IDENTITY | dict(plan.get("config", {}))
    return run_config | {"ops": ops | {"reengagement_emails": graph | {"ops": graph_ops | {"plan_reengagement_sends": plan}}}}


def utc(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    """`day` at hour:minute UTC (the default project timezone)."""
    return datetime.combine(day, time(hour, minute), UTC)


class Scenario:
    """Inserts into one app database, handing out increasing ids for events and sessions."""

    def __init__(self, db: AppDatabase, first_event_id: int = 1):
        self.db = db
        self._event_ids = itertools.count(first_event_id)
        self._session_ids = itertools.count(1)

    # -- writes -------------------------------------------------------------------------------
    def user(self, user_id: int, created_at: datetime, email: str | None = None, name: str | None = None) -> int:
        self.db.execute(
            "INSERT INTO users (id, email, name, created_at) VALUES (:id, :email, :name, :created_at)",
            {
                "id": user_id,
                "email": email or f"user{user_id}@example.com",
                "name": name or f"User {user_id}",
                "created_at": created_at,
            },
        )
        return user_id

    def event(
        self,
        user_id: int | None,
        occurred_at: datetime,
        event_type: str = "view_dashboard",
        properties: dict | None = None,
        event_id: int | None = None,
    ) -> int:
        return self.events([(user_id, occurred_at, event_type, properties, event_id)])[0]

    def events(self, rows: Iterable[tuple]) -> list[int]:
        """One INSERT statement for all rows: (user_id, occurred_at[, event_type[, properties[, id]]])."""
        values = []
        for row in rows:
            user_id, occurred_at, event_type, properties, event_id = (tuple(row) + (None,) * 5)[:5]
            values.append(
                {
                    "id": event_id if event_id is not None else next(self._event_ids),
                    "user_id": user_id,
                    "event_type": event_type or "view_dashboard",
                    "occurred_at": occurred_at,
                    "properties": json.dumps(properties) if properties is not None else None,
                }
            )
        if not values:
            return []
        params, placeholders = {}, []
        for i, value in enumerate(values):
            placeholders.append(f"(:id{i}, :user_id{i}, :event_type{i}, :occurred_at{i}, CAST(:properties{i} AS jsonb))")
            params |= {f"{key}{i}": v for key, v in value.items()}
        self.db.execute(
            "INSERT INTO events (id, user_id, event_type, occurred_at, properties) VALUES " + ", ".join(placeholders),
            params,
        )
        return [value["id"] for value in values]

    def daily_events(
        self, user_id: int, days: Iterable[date], per_day: int = 1, event_type: str = "view_dashboard", hour: int = 12
    ) -> list[int]:
        """`per_day` events on each of `days`, a minute apart from hour:00 UTC, in one statement."""
        return self.events((user_id, at(day, hour) + timedelta(minutes=i), event_type) for day in days for i in range(per_day))

    def session(self, user_id: int, started_at: datetime, last_seen_at: datetime | None) -> int:
        session_id = next(self._session_ids)
        self.db.execute(
            "INSERT INTO auth_sessions (id, user_id, started_at, last_seen_at) VALUES (:id, :u, :s, :l)",
            {"id": session_id, "u": user_id, "s": started_at, "l": last_seen_at},
        )
        return session_id

    # -- reads --------------------------------------------------------------------------------
    def rows(self, sql: str, params: dict | None = None) -> list[dict]:
        with self.db.engine().connect() as conn:
            return [dict(row) for row in conn.execute(sa.text(self.db.render(sql)), params or {}).mappings()]

    def daily_activity(self) -> dict[tuple[date, int], dict]:
        return {
            (r["activity_date"], r["user_id"]): r
            for r in self.rows("SELECT * FROM {rs}.daily_activity ORDER BY activity_date, user_id")
        }

    def segments(self, week_start: date) -> dict[int, str]:
        return {
            r["user_id"]: r["segment"]
            for r in self.rows("SELECT user_id, segment FROM {rs}.weekly_segments WHERE week_start = :w", {"w": week_start})
        }

    def segment_rows(self, week_start: date) -> dict[int, dict]:
        return {r["user_id"]: r for r in self.rows("SELECT * FROM {rs}.weekly_segments WHERE week_start = :w", {"w": week_start})}

    def dormant(self, as_of: date) -> dict[int, dict]:
        return {r["user_id"]: r for r in self.rows("SELECT * FROM {rs}.dormant_users WHERE as_of_date = :d", {"d": as_of})}


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def check_metadata(result, check_name: str) -> dict:
    """The metadata (raw values) of one asset check evaluation of an in-process run."""
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name == check_name:
            return {key: getattr(value, "value", value) for key, value in evaluation.metadata.items()}
    raise AssertionError(f"no evaluation of check {check_name!r}")


def materialization_metadata(result, asset_name: str) -> dict:
    """The metadata of the asset's last materialization in the run: a range run's last partition."""
    for event in reversed(result.get_asset_materialization_events()):
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == asset_name:
            return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}
    raise AssertionError(f"no materialization of {asset_name!r}")
