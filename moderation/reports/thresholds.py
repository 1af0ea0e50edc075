"""Threshold sweeps: replay the decision rules over stored verdicts under other thresholds.

No model is called. The database hands over each distinct verdict shape once, with how many
submissions had it and what reviewers decided about them; the rules (`decisions.rules.decide`,
the same function the worker runs) are applied to each shape, and the counts are summed.

Under a `min_confidence` sweep a shape's outcome only changes where the threshold crosses one of
its own confidences, so the rules run once per such breakpoint rather than once per threshold,
and the counts are spread over the thresholds they cover.
"""

from __future__ import annotations

import bisect
import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from moderation.decisions.models import Action
from moderation.decisions.rules import Outcome, decide
from moderation.policies.schemas import PolicyDocument
from moderation.vlm.verdict import ModelVerdict, Violation

ENFORCING = frozenset({Action.restrict.value, Action.block.value})

# The min_confidence values swept, in percent.
SWEEP_PERCENTS = tuple(range(50, 100))


@dataclass(frozen=True)
class Label:
    """What a person decided about some submissions of one verdict shape (action None: nobody)."""

    action: str | None
    categories: frozenset[str]
    items: int


@dataclass(frozen=True)
class LabelSummary:
    """A shape's labels folded into the numbers a replay adds up, so a replay is a few sums."""

    items: int
    reviewed: int
    reviewed_as: dict[str, int]
    # Reviewed items a person restricted or blocked, in all and per category they named.
    enforced: int
    enforced_for: dict[str, int]

    @classmethod
    def of(cls, labels: Iterable[Label]) -> LabelSummary:
        items = reviewed = enforced = 0
        reviewed_as: dict[str, int] = defaultdict(int)
        enforced_for: dict[str, int] = defaultdict(int)
        for label in labels:
            items += label.items
            if label.action is None:
                continue
            reviewed += label.items
            reviewed_as[label.action] += label.items
            if label.action in ENFORCING:
                enforced += label.items
                for category in label.categories:
                    enforced_for[category] += label.items
        return cls(items, reviewed, dict(reviewed_as), enforced, dict(enforced_for))


@dataclass(frozen=True)
class Shape:
    rating: str
    safe_percent: int | None
    violations: tuple[tuple[str, int, int], ...]
    labels: tuple[Label, ...]

    @functools.cached_property
    def summary(self) -> LabelSummary:
        return LabelSummary.of(self.labels)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(category for category, _, _ in self.violations)

    def breakpoints(self) -> list[int]:
        """The percents at which this shape's outcome can change, ascending."""
        if self.rating == "safe":
            return [self.safe_percent] if self.safe_percent is not None else []
        return sorted({percent for _, _, percent in self.violations})

    @functools.cached_property
    def verdict(self) -> ModelVerdict:
        # Built without validation: these shapes come from verdicts validated when they arrived.
        return ModelVerdict.model_construct(
            rating="safe" if self.rating == "safe" else "unsafe",
            confidence=(self.safe_percent or 0) / 100 if self.rating == "safe" else 1.0,
            violations=[
                Violation.model_construct(
                    category=category,
                    severity=severity,
                    confidence=percent / 100,
                    source="both",
                    image=None,
                    rationale="",
                )
                for category, severity, percent in self.violations
            ],
            rationale="",
        )


def group_shapes(
    rows: Iterable[tuple[str, int | None, Sequence[Sequence[Any]], str | None, Sequence[str], int]],
) -> list[Shape]:
    """Fold (rating, safe percent, violations, human action, human categories, items) rows."""
    labels: dict[tuple[str, int | None, tuple[tuple[str, int, int], ...]], list[Label]] = (
        defaultdict(list)
    )
    for rating, safe_percent, violations, action, categories, items in rows:
        key = (
            rating,
            safe_percent,
            tuple((str(c), int(s), int(p)) for c, s, p in violations),
        )
        labels[key].append(Label(action, frozenset(categories), items))
    return [Shape(*key, labels=tuple(found)) for key, found in labels.items()]


@dataclass
class Tally:
    """Counts of one replay; rates are formed from these by the service."""

    items: int = 0
    automatic: int = 0
    reviewed_automatic: int = 0
    disagreements: int = 0
    enforced_reviewed: int = 0
    enforced_confirmed: int = 0
    # Per category: (reviewed items enforced for this category, of which a person confirmed it).
    by_category: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, outcome: Outcome, shape: Shape) -> None:
        labels = shape.summary
        self.items += labels.items
        if outcome.action is Action.review:
            return
        action = outcome.action.value
        self.automatic += labels.items
        self.reviewed_automatic += labels.reviewed
        self.disagreements += labels.reviewed - labels.reviewed_as.get(action, 0)
        if action in ENFORCING:
            self.enforced_reviewed += labels.reviewed
            self.enforced_confirmed += labels.enforced
            for entry in outcome.categories:
                category = str(entry["category"])
                held = self.by_category[category]
                held[0] += labels.reviewed
                held[1] += labels.enforced_for.get(category, 0)

    @classmethod
    def from_vector(cls, vector: Sequence[int]) -> Tally:
        items, automatic, reviewed_automatic, disagreements, reviewed, confirmed = vector
        return cls(items, automatic, reviewed_automatic, disagreements, reviewed, confirmed)

    def vector(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.items,
            self.automatic,
            self.reviewed_automatic,
            self.disagreements,
            self.enforced_reviewed,
            self.enforced_confirmed,
        )


def replay(shapes: Iterable[Shape], policy: PolicyDocument, min_confidence: float) -> Tally:
    tally = Tally()
    for shape in shapes:
        tally.add(decide(shape.verdict, policy, min_confidence=min_confidence), shape)
    return tally


def sweep_min_confidence(
    shapes: Sequence[Shape], policy: PolicyDocument, percents: Sequence[int] = SWEEP_PERCENTS
) -> list[Tally]:
    """One tally per threshold in `percents` (ascending), as if the policy had that threshold."""
    size = len(percents)
    # Difference arrays: a shape adds its counts to a run of thresholds in O(1).
    deltas = [[0] * (size + 1) for _ in range(6)]

    def spread(vector: tuple[int, ...], first: int, last: int) -> None:
        if first >= last:
            return
        for metric, value in enumerate(vector):
            deltas[metric][first] += value
            deltas[metric][last] -= value

    for shape in shapes:
        verdict = shape.verdict
        # A threshold t sees the shape as it sees the smallest breakpoint >= t; past the largest
        # breakpoint nothing is confident enough.
        points = shape.breakpoints()
        start = 0
        for point in [*points, None]:
            threshold = (point / 100) if point is not None else 1.01
            end = size if point is None else bisect.bisect_right(percents, point)
            if end > start:
                single = Tally()
                single.add(decide(verdict, policy, min_confidence=threshold), shape)
                spread(single.vector(), start, end)
                start = end
    tallies = []
    running = [0] * 6
    for index in range(size):
        for metric in range(6):
            running[metric] += deltas[metric][index]
        tallies.append(Tally.from_vector(running))
    return tallies


@dataclass(frozen=True)
class CategorySetting:
    category: str
    block_at: int
    restrict_at: int | None
    tally: Tally


# Every (block_at, restrict_at) a category can have: restrict_at sits below block_at.
CATEGORY_SETTINGS: tuple[tuple[int, int | None], ...] = tuple(
    (block_at, restrict_at)
    for block_at in range(1, 5)
    for restrict_at in [None, *range(1, block_at)]
)


def sweep_category_thresholds(
    shapes: Sequence[Shape], policy: PolicyDocument
) -> list[CategorySetting]:
    """For each category and each of its possible severity thresholds, the whole replay.

    Only shapes with a confident violation of the category can change, so the rest keep the
    outcome they have under the policy as it is.
    """
    baseline_by_shape = [
        decide(shape.verdict, policy, min_confidence=policy.min_confidence) for shape in shapes
    ]
    results = []
    for category in policy.categories:
        # A category's severity thresholds only matter where it has a confident violation.
        touched = [
            i
            for i, shape in enumerate(shapes)
            if any(
                name == category.id and percent / 100 >= policy.min_confidence
                for name, _, percent in shape.violations
            )
        ]
        untouched = set(range(len(shapes))) - set(touched)
        base = Tally()
        for i in untouched:
            base.add(baseline_by_shape[i], shapes[i])
        for block_at, restrict_at in CATEGORY_SETTINGS:
            changed = category.model_copy(update={"block_at": block_at, "restrict_at": restrict_at})
            variant = policy.model_copy(
                update={
                    "categories": [changed if c.id == category.id else c for c in policy.categories]
                }
            )
            tally = Tally.from_vector(base.vector())
            for other, counts in base.by_category.items():
                tally.by_category[other] = list(counts)
            for i in touched:
                shape = shapes[i]
                tally.add(
                    decide(shape.verdict, variant, min_confidence=policy.min_confidence), shape
                )
            results.append(CategorySetting(category.id, block_at, restrict_at, tally))
    return results
