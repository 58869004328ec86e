"""Rates and lifts as the UI shows them: percentages with one decimal, lifts signed with their interval.

Metadata keeps the raw fractions as floats too (the UI plots those); these strings are for reading.
"""

from __future__ import annotations

import math

NOT_AVAILABLE = "n/a"


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def percent(rate: float | None) -> str:
    """0.0923 -> '9.2%'."""
    return NOT_AVAILABLE if _missing(rate) else f"{rate:.1%}"


def signed_percent(difference: float | None) -> str:
    """A difference of rates: 0.0923 -> '+9.2%', -0.0252 -> '-2.5%'."""
    return NOT_AVAILABLE if _missing(difference) else f"{difference:+.1%}"


def lift_text(lift: float | None, low: float | None, high: float | None) -> str:
    """'+9.2% (95% CI +0.7% .. +15.8%)'; the interval is left out when it is unknown."""
    if _missing(lift):
        return NOT_AVAILABLE
    if _missing(low) or _missing(high):
        return signed_percent(lift)
    return f"{signed_percent(lift)} (95% CI {signed_percent(low)} .. {signed_percent(high)})"
