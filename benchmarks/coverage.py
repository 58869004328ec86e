"""`uv run python -m benchmarks.coverage`: how often the 95% interval of the lift covers the truth.

    uv run python -m benchmarks.coverage --seeds 400 --uplifts 0,0.10 --workers 2

Runs the simulator's population through `simulation.model_lift` (a pure-Python model of the pipeline's
arm logic, measured with the pipeline's own `outcomes.stats.lift`) once per seed, because a full
Dagster pipeline per seed takes minutes. `--pipeline-check SEED` also runs the real daily pipeline once
for that seed and prints both, to see that the model and the pipeline agree. Writes
`benchmarks/results/<date>-coverage-per-episode.md` and `.json` (the pipeline's design: an arm drawn for
each step of each dormancy episode), or `-per-user` with `--arm-per-user` (the old design, one arm per
user). The target: coverage within 92-98% for each uplift.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
import warnings
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import click

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _one(args: tuple) -> dict:
    warnings.filterwarnings("ignore")
    from retention_pipeline.local.simulation import SimulationConfig, model_lift

    config_fields, symmetric, arm_per_user = args
    result = model_lift(SimulationConfig(**config_fields), symmetric=symmetric, arm_per_user=arm_per_user)
    m, truth = result.measured, result.truth
    return {
        "seed": config_fields["seed"],
        "uplift": config_fields["true_uplift"],
        "symmetric": symmetric,
        "treated": result.treated,
        "holdout": result.holdout,
        "lift": m.lift,
        "ci_low": m.ci_low,
        "ci_high": m.ci_high,
        "truth": truth.intention_to_treat,
        "baseline_imbalance": truth.baseline_imbalance,
        "covered": m.ci_low <= truth.intention_to_treat <= m.ci_high,
    }


def summarize(runs: list[dict]) -> dict:
    covered = [r["covered"] for r in runs]
    return {
        "runs": len(runs),
        "coverage": sum(covered) / len(covered),
        "mean_lift": statistics.fmean(r["lift"] for r in runs),
        "mean_truth": statistics.fmean(r["truth"] for r in runs),
        "mean_bias": statistics.fmean(r["lift"] - r["truth"] for r in runs),
        "mean_baseline_imbalance": statistics.fmean(r["baseline_imbalance"] for r in runs),
        "mean_ci_width": statistics.fmean(r["ci_high"] - r["ci_low"] for r in runs),
        "mean_treated": statistics.fmean(r["treated"] for r in runs),
        "mean_holdout": statistics.fmean(r["holdout"] for r in runs),
    }


@click.command()
@click.option("--seeds", default=400, show_default=True, help="Simulations per uplift.")
@click.option("--uplifts", default="0,0.10", show_default=True, help="True uplifts, comma-separated.")
@click.option("--users", default=3000, show_default=True)
@click.option("--days", default=60, show_default=True)
@click.option("--failed-share", default=0.05, show_default=True, help="Share of sends failing (they stay in the email arm).")
@click.option(
    "--unsubscribe-share",
    default=0.02,
    show_default=True,
    help="Share of delivered emails after which the user unsubscribes (later email-arm rows: suppressed).",
)
@click.option("--asymmetric", is_flag=True, help="Also run the old frequency cap (real sends only) for comparison.")
@click.option("--first-seed", default=1, show_default=True)
@click.option(
    "--arm-per-user",
    is_flag=True,
    help="Draw one arm per user (the old design) instead of the pipeline's per step and episode, to compare.",
)
@click.option("--workers", default=2, show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR, show_default=True)
def main(
    seeds: int,
    uplifts: str,
    users: int,
    days: int,
    failed_share: float,
    unsubscribe_share: float,
    asymmetric: bool,
    first_seed: int,
    arm_per_user: bool,
    workers: int,
    results_dir: Path,
) -> None:
    from retention_pipeline.local.simulation import SimulationConfig

    base = SimulationConfig(users=users, days=days, failed_send_share=failed_share, unsubscribe_share=unsubscribe_share)
    rules = [True, False] if asymmetric else [True]
    jobs = [
        (asdict(replace(base, seed=seed, true_uplift=float(u))), symmetric, arm_per_user)
        for u in uplifts.split(",")
        for symmetric in rules
        for seed in range(first_seed, first_seed + seeds)
    ]
    started = time.monotonic()
    runs = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for run in pool.imap_unordered(_one, jobs):
            runs.append(run)
            if len(runs) % 20 == 0:
                click.echo(f"  {len(runs)}/{len(jobs)} simulations, {time.monotonic() - started:.0f} s", err=True)
    elapsed = time.monotonic() - started
    runs.sort(key=lambda r: (r["uplift"], not r["symmetric"], r["seed"]))
    groups = {}
    for run in runs:
        groups.setdefault((run["uplift"], run["symmetric"]), []).append(run)
    summary = [
        {"uplift": u, "frequency_cap": "every assignment (fixed)" if sym else "real sends only (old)", **summarize(group)}
        for (u, sym), group in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
    ]
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{date.today().isoformat()}-coverage-{'per-user' if arm_per_user else 'per-episode'}"
    stem.with_suffix(".json").write_text(
        json.dumps(
            {
                "config": asdict(base),
                "seeds": seeds,
                "first_seed": first_seed,
                "arm_per_user": arm_per_user,
                "elapsed_seconds": elapsed,
                "summary": summary,
                "runs": runs,
            },
            indent=1,
            default=float,
        )
    )
    report = _markdown(base, seeds, first_seed, arm_per_user, elapsed, summary)
    stem.with_suffix(".md").write_text(report)
    click.echo(report)


def _markdown(base, seeds: int, first_seed: int, arm_per_user: bool, elapsed: float, summary: list[dict]) -> str:
    lines = [
        f"# Coverage of the 95% lift interval ({date.today().isoformat()})",
        "",
        f"`uv run python -m benchmarks.coverage`: {seeds} seeds per row (seeds {first_seed}..{first_seed + seeds - 1}, the same "
        f"populations for every uplift), {base.users:,} users over {base.days} days, "
        f"{base.failed_send_share:.0%} of sends failing, {base.unsubscribe_share:.0%} of delivered emails followed by an "
        f"unsubscribe, through `simulation.model_lift` (the pipeline's arm logic in "
        f"pure Python, measured with `outcomes.stats.lift`; step 1, users dormant by inactivity, 7-day window, as "
        f"assigned). Truth: the mean effect over the email arm's rows (failed sends and suppressed addresses count "
        f"with no effect). Arm drawn "
        f"{'once per user and campaign (the old design, for comparison)' if arm_per_user else 'for each step of each dormancy episode, suppression recorded after the draw (the pipeline)'}. "
        f"{elapsed:.0f} s in all. Target: coverage within 92-98%.",
        "",
        "| true uplift | frequency cap counts | runs | coverage | mean measured lift | mean truth | mean bias "
        "| mean baseline imbalance | mean CI width | treated / holdout rows |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['uplift']:+.2f} | {s['frequency_cap']} | {s['runs']} | {s['coverage']:.1%} | {s['mean_lift']:+.2%} "
            f"| {s['mean_truth']:+.2%} | {s['mean_bias']:+.2%} | {s['mean_baseline_imbalance']:+.2%} "
            f"| {s['mean_ci_width']:.2%} | {s['mean_treated']:,.0f} / {s['mean_holdout']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
