"""Reliability of the sends (issue 8): SIGKILL mid-send, a flaky provider, two send runs at once.

One world (250 eligible dormant users, i.e. 3 batches of at most 100) is built once per session
(conftest's `dormant_world`, shared with test_send_pool) and copied per trial with CREATE DATABASE ...
TEMPLATE; each trial runs only the `reengagement_emails` asset. What is counted is what the Resend-like server accepted: every eligible user exactly once,
the ledger agreeing with the server's ids, nothing left pending.

RELIABILITY_BREAK=no_reconcile | rekey_rerun | no_unique_guard runs the same tests against a
deliberately broken pipeline (see docs/reliability.md); they must then fail.
"""

from __future__ import annotations

import math
import os
import random
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from retention_pipeline import clock
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.resources import AppDatabase
from retention_pipeline_tests import faults
from retention_pipeline_tests.faults import (
    API_KEY,
    BREAK,
    MORNING_AFTER,
    GatedResend,
    child_send_run,
    create_database,
    exactly_once_violations,
    expected_recipients,
    forkserver,
    ledger,
    recipients,
    record,
    run_send,
    wait_for_no_backends,
    wait_until,
)
from retention_pipeline_tests.scenario import materialization_metadata

ELIGIBLE = 250
BATCH = 100
BATCHES = math.ceil(ELIGIBLE / BATCH)
TRIALS = int(os.environ.get("RELIABILITY_CRASH_TRIALS", "20"))
KILL_POINTS = ("before_first_request", "in_flight_after_accept", "between_batches")
LATENCY = 0.05  # seconds every provider answer takes
RERUN_AT = MORNING_AFTER + timedelta(minutes=10)  # the operator re-runs the failed run ten minutes later


@pytest.fixture(scope="module")
def send_world(dormant_world):
    n_users = faults.users_for_eligible(ELIGIBLE)
    name = dormant_world(n_users)
    assert len(expected_recipients(n_users)) == ELIGIBLE
    forkserver().Process(target=time.sleep, args=(0,)).start()  # warm the forkserver up once
    return {"name": name, "n_users": n_users, "expected": expected_recipients(n_users)}


@pytest.fixture
def trial_db(pg_server, send_world, monkeypatch):
    """A copy of the world, with the requested deliberately broken variant applied (if any)."""
    name = create_database(pg_server, f"rel_trial_{os.getpid()}_{uuid.uuid4().hex[:8]}", template=send_world["name"])
    db = AppDatabase(url=pg_server.url(name))
    if BREAK in ("no_reconcile", "no_unique_guard"):
        faults.apply_break(BREAK, monkeypatch.setattr)
    if BREAK == "no_unique_guard":
        faults.drop_unique_guard(db)
    yield name, db
    db.engine().dispose()
    pg_server.drop_database(name)


def crash_and_rerun(
    pg_server,
    name: str,
    db: AppDatabase,
    instance,
    expected: set[str],
    rng: random.Random,
    kill_point: str,
    rekey_rerun: bool = False,
) -> dict:
    """Start a send run in a child, SIGKILL it at `kill_point`, re-run in-process; what happened."""
    if kill_point == "before_first_request":
        # Half of these kill at a random moment of the run's first seconds (usually while it plans), half
        # once the plan is committed and the first request has reached the provider, unanswered.
        batch, holds = 1, {"hold_before": {1}}
        delay = rng.uniform(0.0, 3.0) if rng.random() < 0.5 else float("inf")
    elif kill_point == "in_flight_after_accept":
        batch, delay = rng.randint(1, BATCHES), 0.0
        holds = {"hold_after": {batch}}
    elif kill_point == "between_batches":
        batch, delay = rng.randint(1, BATCHES - 1), rng.uniform(0.0, 0.03)
        holds = {"hold_before": {batch + 1}}
    else:
        raise ValueError(kill_point)
    with GatedResend(api_key=API_KEY, rate=50, latency_seconds=LATENCY, **holds) as server:
        child = forkserver().Process(
            target=child_send_run,
            args=(db.url, server.url, MORNING_AFTER.isoformat()),
            kwargs={"break_mode": BREAK if BREAK == "no_unique_guard" else ""},
        )
        child.start()
        started = time.monotonic()
        if kill_point == "before_first_request":
            wait_until(lambda: server.held or time.monotonic() - started >= delay or not child.is_alive(), 90, "the kill point")
        elif kill_point == "in_flight_after_accept":
            wait_until(lambda: batch in server.held or not child.is_alive(), 90, f"batch {batch} to be accepted")
        else:
            wait_until(
                lambda: (
                    server.held
                    or not child.is_alive()
                    or (batch in server.decided and time.monotonic() >= server.decided[batch] + LATENCY + delay)
                ),
                90,
                f"the answer to batch {batch}",
            )
        assert child.is_alive(), f"the send run ended (exit code {child.exitcode}) before the kill point {kill_point}"
        child.kill()
        child.join(10)
        assert child.exitcode == -9
        server.drop_held()
        accepted_at_kill = len(server.accepted)
        batches_accepted_at_kill = len({a.idempotency_key for a in server.accepted})
        at_kill = Counter(r["status"] for r in ledger(db))
        db.engine().dispose()  # our own pooled sessions; then only the dead child's could remain
        wait_for_no_backends(pg_server, name)

        server.open_gates()
        clock.set_now(RERUN_AT)
        result = run_send(instance, db.url, server.url, rekey=rekey_rerun)
        assert result.success
        problems = exactly_once_violations(server, db, expected)
        delivered = recipients(server)
        rows = ledger(db)
        metadata = materialization_metadata(result, "reengagement_emails")
        return {
            "kill_point": kill_point,
            "batch": batch if kill_point != "before_first_request" else None,
            "kill_delay_s": round(delay, 4) if delay != float("inf") else None,
            "planned_before_kill": sum(at_kill.values()) > 0,
            "ledger_at_kill": dict(at_kill),
            "accepted_at_kill": accepted_at_kill,
            "batches_accepted_at_kill": batches_accepted_at_kill,
            "requests": len(server.requests),
            "replayed_batches": sum(1 for r in server.requests if r.outcome == "replayed"),
            "emails_sent": len(delivered),
            "unique_recipients": len(set(delivered)),
            "duplicates": len(delivered) - len(set(delivered)),
            "lost": len(expected - set(delivered)),
            "pending_left": sum(1 for r in rows if r["status"] == "pending"),
            "rerun_send_results": metadata["send_results_this_run"],
            "problems": problems,
        }


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_during_the_send_step_then_a_rerun_emails_everyone_exactly_once(trial, pg_server, send_world, trial_db, instance):
    name, db = trial_db
    rng = random.Random(f"crash-trial-{trial}")
    kill_point = KILL_POINTS[trial % len(KILL_POINTS)]
    outcome = crash_and_rerun(
        pg_server, name, db, instance, send_world["expected"], rng, kill_point, rekey_rerun=BREAK == "rekey_rerun"
    )
    record("crash_trials", f"{trial:02d}", outcome)
    assert outcome["problems"] == [], outcome
    if kill_point == "in_flight_after_accept":
        # The batch accepted before the kill went out once: the re-run got the provider's replay.
        assert outcome["accepted_at_kill"] > 0 and outcome["replayed_batches"] >= 1


def test_the_crash_check_catches_a_rerun_that_does_not_reuse_idempotency_keys(pg_server, send_world, trial_db, instance):
    """The checker is not vacuous: with fresh keys on the re-run, the batch in flight goes out twice."""
    name, db = trial_db
    outcome = crash_and_rerun(
        pg_server,
        name,
        db,
        instance,
        send_world["expected"],
        random.Random("broken-rekey"),
        "in_flight_after_accept",
        rekey_rerun=True,
    )
    assert outcome["duplicates"] > 0 and any(p.startswith("duplicates") for p in outcome["problems"]), outcome
    record(
        "broken_variants",
        "re-run with fresh idempotency keys (kill after acceptance)",
        {
            "detected": f"{outcome['duplicates']} duplicate emails reported by the exactly-once check",
            "duplicates": outcome["duplicates"],
        },
    )


def test_the_crash_check_catches_a_rerun_that_ignores_pending_batches(pg_server, send_world, trial_db, instance, monkeypatch):
    """... and with the reconcile step disabled, the batches of the killed run are lost."""
    name, db = trial_db
    faults.apply_break("no_reconcile", monkeypatch.setattr)
    outcome = crash_and_rerun(
        pg_server, name, db, instance, send_world["expected"], random.Random("broken-reconcile"), "between_batches"
    )
    assert outcome["lost"] > 0 and outcome["pending_left"] > 0, outcome
    record(
        "broken_variants",
        "re-run without the reconcile step (kill between batches)",
        {
            "detected": f"{outcome['lost']} eligible users never emailed, {outcome['pending_left']} rows left pending",
            "lost": outcome["lost"],
        },
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_a_provider_failing_20_percent_of_calls_still_gets_every_email_exactly_once(seed, trial_db, send_world, instance):
    """429, 500, hangs past the client's timeout and 500-after-accepting, at 20 % of calls, in batches of 10."""
    name, db = trial_db
    with FakeResend(
        api_key=API_KEY,
        rate=50,
        fault_rate=0.2,
        seed=seed,
        hang_seconds=1.5,
        fault_kinds=("429", "500", "hang", "500_after_accept"),
    ) as server:
        clock.set_now(MORNING_AFTER)
        result = run_send(instance, db.url, server.url, timeout_seconds=1.0, max_batch_size=10)
        assert result.success
        problems = exactly_once_violations(server, db, send_world["expected"])
        delivered = recipients(server)
        outcomes = Counter(r.outcome for r in server.requests)
        faults_injected = sum(
            n for kind, n in outcomes.items() if kind in ("fault_429", "fault_500", "hang", "accepted_then_500")
        )
        record(
            "flaky_provider",
            f"seed_{seed}",
            {
                "calls": len(server.requests),
                "faults": dict(outcomes),
                "faults_injected": faults_injected,
                "emails_sent": len(delivered),
                "duplicates": len(delivered) - len(set(delivered)),
                "lost": len(send_world["expected"] - set(delivered)),
                "problems": problems,
                "batches": len({r["batch_key"] for r in ledger(db) if r["batch_key"]}),
            },
        )
        assert problems == []
        assert faults_injected >= 3, outcomes  # the run really met faults
        assert max(Counter(r["batch_key"] for r in ledger(db) if r["batch_key"]).values()) <= 10


@pytest.mark.parametrize("round_", range(3))
def test_two_send_runs_for_the_same_day_at_once_send_each_email_once(round_, pg_server, trial_db, send_world):
    """Two run workers start the same partition at the same moment (e.g. a manual launch racing the
    schedule): the unique ledger key and the per-batch advisory lock keep every email single."""
    name, db = trial_db
    ctx = forkserver()
    start, results = ctx.Event(), ctx.Queue()
    with FakeResend(api_key=API_KEY, rate=50, latency_seconds=0.2) as server:
        children = [
            ctx.Process(
                target=child_send_run,
                args=(db.url, server.url, MORNING_AFTER.isoformat()),
                kwargs={"start": start, "results": results, "break_mode": BREAK if BREAK == "no_unique_guard" else ""},
            )
            for _ in range(2)
        ]
        for child in children:
            child.start()
        time.sleep(0.3)
        start.set()
        for child in children:
            child.join(120)
        summaries = [results.get(timeout=5) for _ in children]
        assert [c.exitcode for c in children] == [0, 0], summaries
        problems = exactly_once_violations(server, db, send_world["expected"])
        delivered = recipients(server)
        record(
            "concurrent_sends",
            f"round_{round_}",
            {
                "emails_sent": len(delivered),
                "duplicates": len(delivered) - len(set(delivered)),
                "runs": summaries,
                "requests": len(server.requests),
                "problems": problems,
            },
        )
        assert problems == [], summaries
