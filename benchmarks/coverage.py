"""`uv run python -m benchmarks.coverage`: how often the 95% interval of the lift covers the truth.

    uv run python -m benchmarks.coverage --seeds 400 --uplifts 0,0.10 --workers 2

Runs the simulator's population through `simulation.model_lift` (a pure-Python model of the pipeline's
arm logic, measured with the pipeline's own `outcomes.stats.lift`) once per seed, because a full
Dagster pipeline per seed takes minutes. Each run records the pipeline's interval (clustered by user:
Rao-Scott design effect per arm) and, on the same counts, the interval that takes rows as independent
(the one before), so one command compares both on the same seeds. Writes
`benchmarks/results/<date>-coverage-clustered.md` and `.json` (the pipeline's design: an arm drawn for
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
    m, naive, truth = result.measured, result.independent_rows, result.truth
    return {
        "seed": config_fields["seed"],
        "uplift": config_fields["true_uplift"],
        "symmetric": symmetric,
        "treated": result.treated,
        "holdout": result.holdout,
        "treated_users": result.treated_users.users,
        "holdout_users": result.holdout_users.users,
        "design_effect_treated": m.design_effects[0],
        "design_effect_holdout": m.design_effects[1],
        "lift": m.lift,
        "ci_low": m.ci_low,
        "ci_high": m.ci_high,
        "independent_ci_low": naive.ci_low,
        "independent_ci_high": naive.ci_high,
        "truth": truth.intention_to_treat,
        "baseline_imbalance": truth.baseline_imbalance,
        "covered": m.ci_low <= truth.intention_to_treat <= m.ci_high,
        "independent_covered": naive.ci_low <= truth.intention_to_treat <= naive.ci_high,
    }


def summarize(runs: list[dict]) -> dict:
    errors = [r["lift"] - r["truth"] for r in runs]
    widths = [r["ci_high"] - r["ci_low"] for r in runs]
    independent_widths = [r["independent_ci_high"] - r["independent_ci_low"] for r in runs]
    # How wide the interval should have been: the spread of the errors over the standard error an
    # interval implies (its width / 2 / 1.96). 1 is calibrated; above 1, the interval is too narrow.
    spread = statistics.pstdev(errors) if len(errors) > 1 else float("nan")
    return {
        "runs": len(runs),
        "hits": sum(r["covered"] for r in runs),
        "coverage": sum(r["covered"] for r in runs) / len(runs),
        "independent_hits": sum(r["independent_covered"] for r in runs),
        "independent_coverage": sum(r["independent_covered"] for r in runs) / len(runs),
        "mean_lift": statistics.fmean(r["lift"] for r in runs),
        "mean_truth": statistics.fmean(r["truth"] for r in runs),
        "mean_bias": statistics.fmean(errors),
        "error_spread": spread,
        "error_spread_over_standard_error": spread / (statistics.fmean(widths) / 3.92),
        "independent_error_spread_over_standard_error": spread / (statistics.fmean(independent_widths) / 3.92),
        "mean_baseline_imbalance": statistics.fmean(r["baseline_imbalance"] for r in runs),
        "mean_ci_width": statistics.fmean(widths),
        "mean_independent_ci_width": statistics.fmean(independent_widths),
        "mean_design_effect_treated": statistics.fmean(r["design_effect_treated"] for r in runs),
        "mean_design_effect_holdout": statistics.fmean(r["design_effect_holdout"] for r in runs),
        "mean_treated": statistics.fmean(r["treated"] for r in runs),
        "mean_holdout": statistics.fmean(r["holdout"] for r in runs),
        "mean_treated_users": statistics.fmean(r["treated_users"] for r in runs),
        "mean_holdout_users": statistics.fmean(r["holdout_users"] for r in runs),
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
    stem = results_dir / f"{date.today().isoformat()}-coverage-{'per-user' if arm_per_user else 'clustered'}"
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
        f"Clustered: the pipeline's interval (score interval on effective counts, Rao-Scott design effect by "
        f"user per arm); independent rows: the same counts taken as independent (the interval before). "
        f"Error spread / SE: the standard deviation of (lift - truth) over the standard error the mean "
        f"interval width implies (1 = calibrated). {elapsed:.0f} s in all. Target: coverage within 92-98%.",
        "",
        "| true uplift | frequency cap counts | runs | coverage, clustered | coverage, independent rows "
        "| mean measured lift | mean truth | mean error | mean baseline imbalance "
        "| mean CI width, clustered / independent | error spread / SE, clustered / independent "
        "| mean design effect, treated / holdout | rows (users), treated / holdout |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['uplift']:+.2f} | {s['frequency_cap']} | {s['runs']} | {s['coverage']:.1%} ({s['hits']}) "
            f"| {s['independent_coverage']:.1%} ({s['independent_hits']}) | {s['mean_lift']:+.2%} "
            f"| {s['mean_truth']:+.2%} | {s['mean_bias']:+.2%} | {s['mean_baseline_imbalance']:+.2%} "
            f"| {s['mean_ci_width']:.2%} / {s['mean_independent_ci_width']:.2%} "
            f"| {s['error_spread_over_standard_error']:.3f} / {s['independent_error_spread_over_standard_error']:.3f} "
            f"| {s['mean_design_effect_treated']:.3f} / {s['mean_design_effect_holdout']:.3f} "
            f"| {s['mean_treated']:,.0f} ({s['mean_treated_users']:,.0f}) / {s['mean_holdout']:,.0f} "
            f"({s['mean_holdout_users']:,.0f}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
