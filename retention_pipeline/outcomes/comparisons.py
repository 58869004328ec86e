"""The comparisons campaign_performance reports, from counts the SQL summed: lift per campaign, step,
variant, segment and window, and revenue kept per horizon, each arm clustered by user."""

import pandas as pd

from retention_pipeline.outcomes.stats import (
    Stratum,
    UserSums,
    design_effect,
    incremental_mrr,
    lift,
    stratified_difference,
    wald_interval,
)

INTERVAL_TEXT = (
    "Estimand: the difference in return rates between assignments to the email and to the holdout, as assigned. "
    "95% Miettinen-Nurminen score interval and the score test it inverts, clustered by user: each arm's counts are "
    "divided by its Rao-Scott design effect (a user's repeated assignments are correlated), and the variance of the "
    "lift within days is scaled by the same factors."
)

GroupKey = tuple[str, int, int, bool, str, str]  # campaign, step, window, treated, variant|all, segment|all


def sums_by_group(user_sums) -> dict[GroupKey, UserSums]:
    return {
        (r["campaign"], int(r["step"]), int(r["window_days"]), bool(r["treated"]), r["variant"], r["segment"]): UserSums(
            int(r["rows"]),
            int(r["returned"]),
            int(r["users"]),
            int(r["rows_squared"]),
            int(r["returned_squared"]),
            int(r["returned_times_rows"]),
        )
        for r in user_sums
    }


def _design_effects(user_sums: dict[GroupKey, UserSums], campaign, step, window, variant, segment) -> tuple[float, float]:
    """Treated (this variant) and holdout (every holdout row) design effects of one comparison; 1 where the
    per-user sums are not given (each row its own user)."""
    key = (campaign, int(step), int(window))
    treated, holdout = user_sums.get((*key, True, variant, segment)), user_sums.get((*key, False, "all", segment))
    return (design_effect(treated) if treated else 1.0, design_effect(holdout) if holdout else 1.0)


def performance_rows(counts: pd.DataFrame, as_of, user_sums: dict[GroupKey, UserSums] | None = None) -> list[dict]:
    """One row per (campaign, step, variant|all, segment|all, window) from the per-group counts, with the
    per-user sums of USER_SUMS_SQL for the design effects (without them: independent rows)."""
    if counts.empty:
        return []
    treated = counts[counts["treated"]]
    holdout = counts[~counts["treated"]]
    rows = []
    for (campaign, step, window), group in treated.groupby(["campaign", "step", "window_days"]):
        held = holdout[(holdout["campaign"] == campaign) & (holdout["step"] == step) & (holdout["window_days"] == window)]
        variants = ["all", *sorted(group["variant"].unique())]
        segments = ["all", *sorted(set(group["segment"]) | set(held["segment"]))]
        for variant in variants:
            for segment in segments:
                t = group if variant == "all" else group[group["variant"] == variant]
                t = t if segment == "all" else t[t["segment"] == segment]
                h = held if segment == "all" else held[held["segment"] == segment]
                n_t, r_t, n_h, r_h = (
                    int(t["users"].sum()),
                    int(t["returned"].sum()),
                    int(h["users"].sum()),
                    int(h["returned"].sum()),
                )
                if n_t == 0:
                    continue
                effects = _design_effects(user_sums or {}, campaign, step, window, variant, segment)
                result = lift(r_t, n_t, r_h, n_h, design_effects=effects)
                adjusted = stratified_difference(_by_day(t, h), effects)
                adjusted_low, adjusted_high = wald_interval(adjusted)
                n_pp, r_pp = int(t["delivered_users"].sum()), int(t["delivered_returned"].sum())
                # Secondary and not randomized (delivery is not random): a point figure, no interval or test.
                per_protocol_lift = r_pp / n_pp - r_h / n_h if n_pp and n_h else None
                rows.append(
                    {
                        "as_of_date": as_of,
                        "campaign": campaign,
                        "step": int(step),
                        "variant": variant,
                        "segment": segment,
                        "window_days": int(window),
                        "treated": n_t,
                        "treated_returned": r_t,
                        "holdout": n_h,
                        "holdout_returned": r_h,
                        "treated_rate": result.treated_rate,
                        "holdout_rate": result.holdout_rate,
                        "lift": result.lift,
                        "lift_ci_low": result.ci_low,
                        "lift_ci_high": result.ci_high,
                        "p_value": result.p_value,
                        "recovered_mrr_cents": int(t["recovered_mrr_cents"].sum()),
                        "adjusted_lift": adjusted.value,
                        "adjusted_ci_low": adjusted_low,
                        "adjusted_ci_high": adjusted_high,
                        "per_protocol_treated": n_pp,
                        "per_protocol_treated_returned": r_pp,
                        "per_protocol_lift": per_protocol_lift,
                        "design_effect_treated": effects[0],
                        "design_effect_holdout": effects[1],
                    }
                )
    return rows


def _by_day(treated: pd.DataFrame, holdout: pd.DataFrame) -> list[Stratum]:
    # Plain sums: a pandas groupby per row of the report cost seconds per run.
    days: dict = {}
    for offset, frame in ((0, treated), (2, holdout)):
        for day, returned, users in zip(frame["day"], frame["returned"], frame["users"], strict=False):
            counts = days.setdefault(day, [0, 0, 0, 0])
            counts[offset] += int(returned)
            counts[offset + 1] += int(users)
    return [Stratum(*counts) for _, counts in sorted(days.items())]


def revenue_rows(kept: pd.DataFrame, as_of) -> list[dict]:
    """One row per (campaign, step, horizon): kept subscriptions of treated vs holdout paying users and the
    incremental MRR it is worth, from the per-arm counts of REVENUE_KEPT_SQL."""
    rows = []
    for (campaign, step, horizon), group in kept.groupby(["campaign", "step", "horizon_days"]):
        arms = {bool(r.treated): r for r in group.itertuples()}
        treated, holdout = arms.get(True), arms.get(False)
        n_t, k_t = (int(treated.users), int(treated.kept)) if treated else (0, 0)
        n_h, k_h = (int(holdout.users), int(holdout.kept)) if holdout else (0, 0)
        at_risk = int(treated.mrr_cents) if treated else 0
        effects = (_kept_design_effect(treated), _kept_design_effect(holdout))
        result = incremental_mrr(k_t, n_t, k_h, n_h, at_risk, design_effects=effects)
        rows.append(
            {
                "as_of_date": as_of,
                "campaign": campaign,
                "step": int(step),
                "horizon_days": int(horizon),
                "treated": n_t,
                "treated_kept": k_t,
                "holdout": n_h,
                "holdout_kept": k_h,
                "awaiting": int(group["awaiting"].sum()),
                "mrr_at_risk_cents": at_risk,
                "retention_lift": result.lift.lift,
                "retention_lift_ci_low": result.lift.ci_low,
                "retention_lift_ci_high": result.lift.ci_high,
                "incremental_mrr_cents": result.incremental_mrr_cents,
                "incremental_mrr_ci_low_cents": result.ci_low_cents,
                "incremental_mrr_ci_high_cents": result.ci_high_cents,
            }
        )
    return rows


def _kept_design_effect(arm) -> float:
    if arm is None:
        return 1.0
    return design_effect(
        UserSums(
            int(arm.users),
            int(arm.kept),
            int(arm.clusters),
            int(arm.rows_squared),
            int(arm.kept_squared),
            int(arm.kept_times_rows),
        )
    )
