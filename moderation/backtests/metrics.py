"""Proportions with Wilson 95% intervals, for the side-by-side scores of a backtest.

Pure functions over counts. The agreement report computes the same quantities with the same
definitions; the two can share one implementation once both live in the same tree.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

# Two-sided 95%: the normal quantile for 0.975.
Z_95 = 1.959963984540054


class Rate(BaseModel):
    """A proportion with its Wilson 95% interval; `value` is None when nothing was counted."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"value": 0.9, "numerator": 18, "denominator": 20, "low": 0.699, "high": 0.972}
            ]
        }
    }

    value: float | None = Field(description="numerator / denominator")
    numerator: int
    denominator: int
    low: float | None = Field(description="lower end of the Wilson 95% interval")
    high: float | None = Field(description="upper end of the Wilson 95% interval")


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval: unlike the textbook normal one it stays inside [0, 1] and
    keeps a width on the small samples and extreme rates a backtest often has."""
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes out of {trials} trials")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # Exact at the ends, where rounding would otherwise leave p just outside its own interval.
    low = 0.0 if successes == 0 else max(0.0, min(p, centre - half))
    high = 1.0 if successes == trials else min(1.0, max(p, centre + half))
    return low, high


def rate(numerator: int, denominator: int) -> Rate:
    interval = wilson_interval(numerator, denominator)
    return Rate(
        value=numerator / denominator if denominator else None,
        numerator=numerator,
        denominator=denominator,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
    )


def f1_score(true_positives: int, false_positives: int, false_negatives: int) -> float | None:
    """2TP / (2TP + FP + FN); None when neither side flagged anything."""
    denominator = 2 * true_positives + false_positives + false_negatives
    return 2 * true_positives / denominator if denominator else None
