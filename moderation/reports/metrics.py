"""The statistics of a report, from counts: proportions with intervals, agreement, kappa.

Pure functions over numbers the database already counted, so each can be checked by hand and
against a reference implementation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

# Two-sided 95%: the normal quantile for 0.975.
Z_95 = 1.959963984540054


class Rate(BaseModel):
    """A proportion with its Wilson 95% interval; `value` is None when nothing was counted."""

    value: float | None = Field(description="numerator / denominator")
    numerator: int
    denominator: int
    low: float | None = Field(description="lower end of the Wilson 95% interval")
    high: float | None = Field(description="upper end of the Wilson 95% interval")


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval.

    Chosen over the textbook normal interval because report cells are often small (a category
    with 7 reviewed items) or near 0 or 1, where the normal interval leaves [0, 1] or collapses
    to a point.
    """
    if trials <= 0:
        return None
    if not 0 <= successes <= trials:
        raise ValueError(f"{successes} successes out of {trials} trials")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # Exact at the ends, where rounding would otherwise leave p = 1 just outside its interval.
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


class BinaryMetrics(BaseModel):
    """The model's call against a reviewer's for one yes/no question (e.g. "is this hate?")."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    precision: Rate
    recall: Rate
    f1: float | None = Field(
        description="harmonic mean of precision and recall; a ratio of ratios, so no interval"
    )


def binary_metrics(tp: int, fp: int, fn: int, tn: int) -> BinaryMetrics:
    precision = rate(tp, tp + fp)
    recall = rate(tp, tp + fn)
    # F1 = 2TP / (2TP + FP + FN): defined whenever anything was flagged by either side.
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None
    return BinaryMetrics(
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        true_negatives=tn,
        precision=precision,
        recall=recall,
        f1=f1,
    )


def cohen_kappa(matrix: Sequence[Sequence[int]]) -> float | None:
    """Cohen's kappa of a square matrix (rows: one rater, columns: the other, same labels).

    Agreement beyond what two raters with these label frequencies would reach by chance. None
    when nothing was counted; 1.0 when both raters used one and the same label throughout
    (perfect agreement, though kappa's formula is 0/0 there).
    """
    size = len(matrix)
    if any(len(row) != size for row in matrix):
        raise ValueError("kappa needs a square matrix")
    total = sum(sum(row) for row in matrix)
    if total == 0:
        return None
    observed = sum(matrix[i][i] for i in range(size)) / total
    row_totals = [sum(row) for row in matrix]
    column_totals = [sum(matrix[i][j] for i in range(size)) for j in range(size)]
    expected = sum(row_totals[i] * column_totals[i] for i in range(size)) / (total * total)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def expected_calibration_error(bins: Sequence[tuple[int, float, int]]) -> float | None:
    """Weighted mean gap between stated confidence and observed frequency.

    `bins` holds (items, sum of confidences, items the reviewer confirmed) per bin.
    """
    total = sum(items for items, _, _ in bins)
    if total == 0:
        return None
    return sum(
        abs(conf_sum / items - hits / items) * items for items, conf_sum, hits in bins if items
    ) / (total)
