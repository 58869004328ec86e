"""One `daily_retention_job` run for one day, as its own process (the benchmark measures this process).

    python -m benchmarks.daily_run --day 2026-11-24 --resend-url http://127.0.0.1:PORT

The environment (RETENTION_DATABASE_URL, DAGSTER_HOME, DAGSTER_PG_URL, RETENTION_NOW, ...) comes from
the benchmark. Emails go through ResendSender to the given Resend-like server. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.daily_run")
    parser.add_argument("--day", required=True)
    parser.add_argument("--resend-url", required=True)
    args = parser.parse_args(argv)

    from dagster import AssetKey, DagsterInstance

    from benchmarks.timing import step_durations
    from retention_pipeline.local.runner import run_job
    from retention_pipeline.outreach.senders import ResendSender

    imported = time.monotonic()
    sender = ResendSender(api_key="re_benchmark", api_url=args.resend_url)
    with DagsterInstance.get() as instance:
        run_started = time.monotonic()
        # A live sender needs the footer's postal address (CAN-SPAM); the benchmark's is a placeholder.
        # The send ceiling (a blocking check, 20,000 by default) would stop the 1,000,000-user day's ~25,000
        # emails: the benchmark measures the sending, so its ceiling is the population.
        identity = {
            "ops": {
                "reengagement_emails": {
                    "ops": {
                        "plan_reengagement_sends": {"config": {"postal_address": "Benchmark only, 1 Example Street, Springfield"}}
                    }
                },
                "dormant_users": {"config": {"max_planned_sends": 100_000_000}},
            }
        }
        result = run_job(
            instance, "daily_retention_job", args.day, resources={"email_sender": sender}, run_config=identity, quiet=True
        )
        run_seconds = time.monotonic() - run_started
        steps = step_durations(instance, result.run_id)
        emails = {}
        latest = instance.get_latest_materialization_event(AssetKey("reengagement_emails"))
        if latest is not None and latest.run_id == result.run_id and latest.asset_materialization is not None:
            emails = {
                k: v.value
                for k, v in latest.asset_materialization.metadata.items()
                if k in ("emails_sent", "holdout", "failed", "pending", "skipped", "already_recorded")
            }
    print(
        json.dumps(
            {
                "success": result.success,
                "run_id": result.run_id,
                "import_seconds": imported - started,
                "run_seconds": run_seconds,
                "steps": steps,
                "emails": emails,
            }
        ),
        flush=True,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
