"""Lift of a treated group over its holdout, with the interval and test named in the README."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep


@dataclass(frozen=True)
class Lift:
    treated_rate: float | None
    holdout_rate: float | None
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


def lift(treated_returned: int, treated: int, holdout_returned: int, holdout: int, alpha: float = 0.05) -> Lift:
    """Difference of return rates (treated - holdout): Newcombe's hybrid score interval (method 10 of
    Newcombe 1998) and a two-sided score test; both from statsmodels. Undefined without both groups."""
    treated_rate = treated_returned / treated if treated else None
    holdout_rate = holdout_returned / holdout if holdout else None
    if not treated or not holdout:
        return Lift(treated_rate, holdout_rate, None, None, None, None)
    # statsmodels also computes ratio and odds ratio on the side, which divide by zero at 0% or 100%.
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = confint_proportions_2indep(
            treated_returned, treated, holdout_returned, holdout, method="newcomb", compare="diff", alpha=alpha
        )
        test = test_proportions_2indep(treated_returned, treated, holdout_returned, holdout, method="score", compare="diff")
    p_value = float(test.pvalue)
    return Lift(treated_rate, holdout_rate, treated_rate - holdout_rate, float(low), float(high),
                p_value if math.isfinite(p_value) else 1.0)
