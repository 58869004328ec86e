"""`python -m benchmarks.extrapolate [results.json] --users 10000000`: what a larger user count would cost.

Each phase is fitted to t ~ users^b between the two largest scales that measured it, and carried on:

    b = ln(t2 / t1) / ln(n2 / n1)        t(N) = t2 * (N / n2)^b

Email sending is not fitted: the emails of a day are, and their time is the provider's bound,
ceil(emails / batch size) / requests per second. A curve fitted between two points says nothing about
what changes past them (the data outgrowing memory, a statement timeout): the output is an estimate
to plan with, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

from benchmarks.run import peak_memory_mb

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

# phase -> (unit, how to read it from one scale's entry in results["scales"])
PHASES: dict[str, tuple[str, Callable[[dict], float]]] = {
    "backfill 90 days (one run)": ("s", lambda s: s["measurements"]["backfill"]["run_seconds"]),
    "daily job wall": ("s", lambda s: s["measurements"]["daily_job"]["wall_seconds"]),
    "daily job peak memory (PSS)": ("MB", lambda s: peak_memory_mb(s["measurements"]["daily_job"])),
    "daily partition step": ("s", lambda s: s["measurements"]["daily_partition"]["step_seconds"]),
    "dormant users step (one day)": ("s", lambda s: s["measurements"]["dormant_users"]["step_seconds"]),
    "weekly segments step (one week)": ("s", lambda s: s["measurements"]["weekly_segments"]["step_seconds"]),
    "database size": ("bytes", lambda s: s["dataset"]["database_bytes"]),
    "emails sent by the daily job": ("emails", lambda s: s["measurements"]["daily_job"]["emails"]["emails_sent"]),
}


def _points(results: dict, read: Callable[[dict], float]) -> list[tuple[int, float]]:
    by_users: dict[int, float] = {}
    for scale in results.get("scales", []):
        try:
            value = float(read(scale))
        except (KeyError, TypeError, ValueError):
            continue
        if value > 0:
            by_users[scale["users"]] = value  # a later entry (a re-run) wins
    return sorted(by_users.items())


def extrapolate(results: dict, users: int) -> dict:
    """Every phase measured at two or more scales, carried to `users` along t ~ users^b."""
    phases = []
    for name, (unit, read) in PHASES.items():
        points = _points(results, read)
        if len(points) < 2:
            continue
        (n1, t1), (n2, t2) = points[-2], points[-1]
        b = math.log(t2 / t1) / math.log(n2 / n1)
        phases.append(
            {
                "phase": name,
                "unit": unit,
                "from_users": n1,
                "from": t1,
                "to_users": n2,
                "to": t2,
                "exponent": round(b, 3),
                "value": t2 * (users / n2) ** b,
            }
        )
    emails = next((p for p in phases if p["unit"] == "emails"), None)
    sender = results.get("emails") or {}
    rate = float(sender.get("rate_per_second") or 2.0)
    batch = sender["emails"] / sender["batches"] if sender.get("batches") else 100.0
    sending = None
    if emails:
        sending = {
            "phase": "sending them (provider bound)",
            "unit": "s",
            "from_users": emails["from_users"],
            "from": math.ceil(emails["from"] / batch) / rate,
            "to_users": emails["to_users"],
            "to": math.ceil(emails["to"] / batch) / rate,
            "exponent": None,
            "value": math.ceil(emails["value"] / batch) / rate,
        }
    return {
        "users": users,
        "source": results.get("command"),
        "started_at": results.get("started_at"),
        "email_rate_per_second": rate,
        "email_batch_size": batch,
        "phases": phases + ([sending] if sending else []),
    }


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value >= 5400:
            return f"{value / 3600:.1f} h"
        if value >= 120:
            return f"{value / 60:.1f} min"
        return f"{value:.1f} s"
    if unit == "bytes":
        return f"{value / 2**30:.1f} GB"  # as latest.md counts them
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:,.0f}"


def markdown(report: dict) -> str:
    if not report["phases"]:
        return "No phase was measured at two scales: nothing to extrapolate from."
    scales = {(p["from_users"], p["to_users"]) for p in report["phases"]}
    shared = scales.pop() if len(scales) == 1 else None  # one pair of scales: name it once, in the header
    head = [f"{n:,} users" for n in shared] if shared else ["measured", "measured"]
    lines = [f"| phase | {head[0]} | {head[1]} | b | {report['users']:,} users (extrapolated) |", "|---|---:|---:|---:|---:|"]
    for p in report["phases"]:
        b = "-" if p["exponent"] is None else f"{p['exponent']:.2f}"
        at1, at2 = ("", "") if shared else (f" at {p['from_users']:,}", f" at {p['to_users']:,}")
        lines.append(
            f"| {p['phase']} | {_fmt(p['from'], p['unit'])}{at1} | {_fmt(p['to'], p['unit'])}{at2} "
            f"| {b} | {_fmt(p['value'], p['unit'])} |"
        )
    lines += [
        "",
        f"t(N) = t(n2) x (N / n2)^b, b = ln(t2 / t1) / ln(n2 / n1) between the two largest measured scales; "
        f"sending = ceil(emails / {report['email_batch_size']:.0f}) / {report['email_rate_per_second']:g} req/s. "
        f"From `{report['source']}`, started {report['started_at']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extrapolate", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS, help="a results JSON (default: latest.json)")
    parser.add_argument("--users", type=int, default=10_000_000, help="the user count to extrapolate to")
    args = parser.parse_args(argv)
    print(markdown(extrapolate(json.loads(args.results.read_text()), args.users)))


if __name__ == "__main__":
    main()
