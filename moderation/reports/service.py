"""The agreement report: how the model's verdicts and decisions compare with reviewers'.

Labels are final reviewer decisions (the latest decision by a reviewer or on appeal). The
database aggregates; this module turns counts into rates, replays the decision rules for the
threshold sweeps, and says in plain words what to change.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session

from moderation.core.errors import NotFound, ValidationFailed
from moderation.core.time import utcnow
from moderation.decisions.models import Action
from moderation.policies.schemas import PolicyDocument
from moderation.reports import repository
from moderation.reports.metrics import (
    Rate,
    binary_metrics,
    cohen_kappa,
    expected_calibration_error,
    rate,
)
from moderation.reports.schemas import (
    AgreementReport,
    Calibration,
    CalibrationBin,
    CategoryReport,
    CategorySuggestion,
    CategoryThresholdPoint,
    Cost,
    DecisionMatrix,
    MinConfidenceSuggestion,
    ReasonCount,
    ReportScope,
    ShadowComparison,
    ShadowSide,
    ThresholdPoint,
    ThresholdSweep,
    VersionReport,
)
from moderation.reports.thresholds import (
    SWEEP_PERCENTS,
    Shape,
    Tally,
    group_shapes,
    replay,
    sweep_category_thresholds,
    sweep_min_confidence,
)

DEFAULT_WINDOW = timedelta(days=30)
CALIBRATION_BINS = 10
MODEL_ACTIONS = [a.value for a in (Action.allow, Action.restrict, Action.block, Action.review)]
REVIEWER_ACTIONS = [a.value for a in (Action.allow, Action.restrict, Action.block)]
_ENFORCING = {Action.restrict.value, Action.block.value}


@dataclass(frozen=True)
class ReportRequest:
    tenant_id: uuid.UUID
    policy: str | None = None
    version: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    target_precision: float = 0.95


def agreement_report(session: Session, request: ReportRequest) -> AgreementReport:
    scope = _scope(request)
    version_ids = None
    if request.policy is not None:
        policy = repository.find_policy(session, request.tenant_id, request.policy)
        if policy is None:
            raise NotFound(f"no policy named {request.policy!r}")
        version_ids = repository.policy_version_ids(session, policy.id, request.version)
        if not version_ids:
            raise NotFound(f"policy {request.policy} has no version {request.version}")
    repository.gather_items(session, request.tenant_id, scope.since, scope.until, version_ids)
    found = repository.item_versions(session)
    versions = repository.versions_by_id(session, found) if found else []

    groups = _by_version(repository.item_groups(session))
    costs = {row.version_id: row for row in repository.costs(session)}
    calibration = _by_version(repository.calibration_bins(session, CALIBRATION_BINS))
    shadow_counts = _by_version(repository.shadow_counts(session))
    shadow_versions = {
        v.id: v
        for v in repository.versions_by_id(
            session, sorted({c.shadow_version_id for rows in shadow_counts.values() for c in rows})
        )
    }
    reports = []
    for row in versions:
        report = _version_report(
            row,
            PolicyDocument.model_validate(row.document),
            groups.get(row.id, []),
            costs.get(row.id),
            calibration.get(row.id, []),
            scope.target_precision,
        )
        report.shadows = shadow_comparisons(shadow_counts.get(row.id, []), shadow_versions)
        report.summary += [_shadow_sentence(report, shadow) for shadow in report.shadows]
        reports.append(report)
    return AgreementReport(scope=scope, generated_at=utcnow(), versions=reports)


def shadow_comparisons(
    counts: list[repository.ShadowCount], versions: dict[uuid.UUID, repository.VersionRow]
) -> list[ShadowComparison]:
    """Each shadow version against the live decisions on the submissions it judged too."""
    by_shadow: dict[uuid.UUID, list[repository.ShadowCount]] = defaultdict(list)
    for count in counts:
        by_shadow[count.shadow_version_id].append(count)
    comparisons = []
    for shadow_id, rows in by_shadow.items():
        version = versions.get(shadow_id)
        if version is None:
            continue
        flips = [[0] * len(MODEL_ACTIONS) for _ in MODEL_ACTIONS]
        sides = {"live": _SideCounts(), "shadow": _SideCounts()}
        items = same = live_review = shadow_review = reviewed = 0
        for row in rows:
            items += row.items
            if row.auto_action in MODEL_ACTIONS:
                flips[MODEL_ACTIONS.index(row.auto_action)][
                    MODEL_ACTIONS.index(row.shadow_action)
                ] += row.items
                same += row.items if row.auto_action == row.shadow_action else 0
            live_review += row.items if row.auto_action == Action.review.value else 0
            shadow_review += row.items if row.shadow_action == Action.review.value else 0
            if row.human_action is not None:
                reviewed += row.items
                sides["live"].add(row.auto_action, row.human_action, row.items)
                sides["shadow"].add(row.shadow_action, row.human_action, row.items)
        comparisons.append(
            ShadowComparison(
                policy=version.slug,
                version=version.version,
                items=items,
                same_action=rate(same, sum(map(sum, flips))),
                actions=MODEL_ACTIONS,
                flips=flips,
                more_to_review=(shadow_review - live_review) / items if items else None,
                reviewed=reviewed,
                live=sides["live"].side(),
                shadow=sides["shadow"].side(),
                model_calls=sum(r.model_calls for r in rows),
                tokens=sum(r.tokens for r in rows),
            )
        )
    return sorted(comparisons, key=lambda c: (c.policy, c.version))


@dataclass
class _SideCounts:
    reviewed: int = 0
    automatic: int = 0
    agreed: int = 0
    enforced: int = 0
    upheld: int = 0

    def add(self, action: str | None, human: str, items: int) -> None:
        self.reviewed += items
        if action is None or action == Action.review.value:
            return
        self.automatic += items
        self.agreed += items if action == human else 0
        if action in _ENFORCING:
            self.enforced += items
            self.upheld += items if human in _ENFORCING else 0

    def side(self) -> ShadowSide:
        return ShadowSide(
            automatic=rate(self.automatic, self.reviewed),
            agreement=rate(self.agreed, self.automatic),
            precision=rate(self.upheld, self.enforced),
        )


def _shadow_sentence(report: VersionReport, shadow: ShadowComparison) -> str:
    line = (
        f"Shadow {shadow.policy} v{shadow.version} judged {shadow.items:,} of these submissions "
        f"and would have decided {_percent(shadow.same_action.value)} of them as "
        f"v{report.version} did; {_review_shift(shadow.more_to_review)}."
    )
    if shadow.reviewed:
        line += (
            f" On the {shadow.reviewed:,} reviewers decided, its automatic decisions agree with "
            f"them {_percent(shadow.shadow.agreement.value)} of the time "
            f"(v{report.version}: {_percent(shadow.live.agreement.value)}), and "
            f"{_percent(shadow.shadow.precision.value)} of its restrictions and blocks would be "
            f"upheld (v{report.version}: {_percent(shadow.live.precision.value)})."
        )
    return line


def _scope(request: ReportRequest) -> ReportScope:
    errors = []
    if request.version is not None and request.policy is None:
        errors.append(
            {"loc": ["query", "version"], "msg": "a version needs a policy", "type": "value_error"}
        )
    if not 0 < request.target_precision < 1:
        errors.append(
            {
                "loc": ["query", "target_precision"],
                "msg": "must be between 0 and 1, exclusive",
                "type": "value_error",
            }
        )
    until = request.until or utcnow()
    since = request.since or until - DEFAULT_WINDOW
    for name, moment in (("since", since), ("until", until)):
        if moment.tzinfo is None:
            errors.append(
                {"loc": ["query", name], "msg": "needs a time zone offset", "type": "value_error"}
            )
    if not errors and since >= until:
        errors.append(
            {"loc": ["query", "since"], "msg": "must be before until", "type": "value_error"}
        )
    if errors:
        raise ValidationFailed("the report's parameters are not valid", errors=errors)
    return ReportScope(
        tenant_id=request.tenant_id,
        policy=request.policy,
        version=request.version,
        since=since,
        until=until,
        target_precision=request.target_precision,
    )


class _PerVersion(Protocol):
    @property
    def version_id(self) -> uuid.UUID: ...


_Row = TypeVar("_Row", bound=_PerVersion)


def _by_version(rows: list[_Row]) -> dict[uuid.UUID, list[_Row]]:
    grouped: dict[uuid.UUID, list[_Row]] = defaultdict(list)
    for row in rows:
        grouped[row.version_id].append(row)
    return grouped


@dataclass
class CategoryCount:
    """Per category, among reviewed submissions with a verdict: who said it was violated."""

    by_model: int = 0
    by_person: int = 0
    by_both: int = 0


def _category_counts(groups: list[repository.ItemGroup]) -> dict[str, CategoryCount]:
    counts: dict[str, CategoryCount] = defaultdict(CategoryCount)
    for group in groups:
        if group.human_action is None or group.rating not in ("safe", "unsafe"):
            continue
        model = {str(category) for category, _, _ in group.shape}
        person = set(group.human_categories)
        for category in model | person:
            count = counts[category]
            if category in model:
                count.by_model += group.items
            if category in person:
                count.by_person += group.items
            if category in model and category in person:
                count.by_both += group.items
    return counts


def _version_report(
    row: repository.VersionRow,
    policy: PolicyDocument,
    groups: list[repository.ItemGroup],
    cost: repository.CostRow | None,
    calibration: list[repository.CalibrationBin],
    target: float,
) -> VersionReport:
    matrix = [[0] * len(REVIEWER_ACTIONS) for _ in MODEL_ACTIONS]
    reasons: dict[str, int] = defaultdict(int)
    submissions = pending = reviewed = automatic = to_review = 0
    unsafe_tp = unsafe_fp = unsafe_fn = unsafe_tn = 0
    shapes = group_shapes(
        (g.rating, g.safe_percent, g.shape, g.human_action, g.human_categories, g.items)
        for g in groups
        if g.rating in ("safe", "unsafe")
    )
    for outcome in groups:
        n = outcome.items
        submissions += n
        if outcome.auto_action is None:
            pending += n
        elif outcome.auto_action == Action.review.value:
            to_review += n
            reasons[outcome.auto_reason or "unspecified"] += n
        else:
            automatic += n
        if outcome.human_action is None:
            continue
        reviewed += n
        if outcome.auto_action is not None:
            matrix[MODEL_ACTIONS.index(outcome.auto_action)][
                REVIEWER_ACTIONS.index(outcome.human_action)
            ] += n
        if outcome.rating in ("safe", "unsafe"):
            flagged = outcome.rating == "unsafe"
            violating = outcome.human_action in _ENFORCING
            if flagged and violating:
                unsafe_tp += n
            elif flagged:
                unsafe_fp += n
            elif violating:
                unsafe_fn += n
            else:
                unsafe_tn += n

    decided_pairs = matrix[: len(REVIEWER_ACTIONS)]  # rows allow, restrict, block
    paired = sum(map(sum, decided_pairs))
    agreed = sum(decided_pairs[i][i] for i in range(len(REVIEWER_ACTIONS)))
    allow = REVIEWER_ACTIONS.index(Action.allow.value)
    reversed_ = sum(
        count
        for i, line in enumerate(decided_pairs)
        for j, count in enumerate(line)
        if (i == allow) != (j == allow)
    )

    sweep, suggestion, category_suggestions, replayed = _thresholds(policy, shapes, target)
    category_reports = _category_reports(
        policy,
        _category_counts(groups),
        calibration,
        unsafe_tp + unsafe_fp + unsafe_fn + unsafe_tn,
        replayed,
    )
    report = VersionReport(
        policy=row.slug,
        version=row.version,
        title=row.title,
        submissions=submissions,
        pending=pending,
        reviewed=reviewed,
        automatic_rate=rate(automatic, automatic + to_review),
        review_rate=rate(to_review, automatic + to_review),
        decisions=DecisionMatrix(
            model_actions=MODEL_ACTIONS, reviewer_actions=REVIEWER_ACTIONS, counts=matrix
        ),
        agreement=rate(agreed, paired),
        kappa=cohen_kappa(decided_pairs),
        overturn_rate=rate(reversed_, paired),
        flagging=binary_metrics(unsafe_tp, unsafe_fp, unsafe_fn, unsafe_tn),
        categories=category_reports,
        calibration=[
            _calibration(scale, [b for b in calibration if b.scale == scale and b.category is None])
            for scale in ("confidence", "rating_probability")
            if scale == "confidence" or any(b.scale == scale for b in calibration)
        ],
        cost=Cost(
            items_with_model_calls=cost.items_with_calls if cost else 0,
            median_latency_ms=cost.median_latency_ms if cost else None,
            median_tokens=cost.median_tokens if cost else None,
            total_tokens=int(cost.total_tokens) if cost else 0,
        ),
        review_reasons=[
            ReasonCount(reason=reason, items=n)
            for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        ],
        thresholds=sweep,
        suggestion=suggestion,
        category_suggestions=category_suggestions,
        summary=[],
    )
    report.summary = summarize(report)
    return report


def _calibration(scale: str, bins: list[repository.CalibrationBin]) -> Calibration:
    width = 1 / CALIBRATION_BINS
    ordered = sorted(bins, key=lambda b: b.bin)
    return Calibration(
        scale=scale,
        bins=[
            CalibrationBin(
                low=round((b.bin - 1) * width, 6),
                high=round(b.bin * width, 6),
                items=b.items,
                mean_score=b.score_sum / b.items,
                observed=rate(b.confirmed, b.items),
            )
            for b in ordered
        ],
        expected_calibration_error=expected_calibration_error(
            [(b.items, b.score_sum, b.confirmed) for b in ordered]
        ),
    )


def _category_reports(
    policy: PolicyDocument,
    by_id: dict[str, CategoryCount],
    calibration: list[repository.CalibrationBin],
    labelled: int,
    current: Tally,
) -> list[CategoryReport]:
    names = {c.id: c.name for c in policy.categories}
    ordered = [c.id for c in policy.categories] + sorted(set(by_id) - set(names))
    reports = []
    for category in ordered:
        count = by_id.get(category)
        model, person, both = (
            (count.by_model, count.by_person, count.by_both) if count else (0, 0, 0)
        )
        reports.append(
            CategoryReport(
                category=category,
                name=names.get(category),
                flagging=binary_metrics(
                    both, model - both, person - both, labelled - model - person + both
                ),
                enforcement_precision=_category_precision(current, category),
                calibration=_calibration(
                    "category",
                    [b for b in calibration if b.scale == "category" and b.category == category],
                ),
            )
        )
    return reports


def _point(min_confidence: float, tally: Tally) -> ThresholdPoint:
    return ThresholdPoint(
        min_confidence=min_confidence,
        automatic=rate(tally.automatic, tally.items),
        error=rate(tally.disagreements, tally.reviewed_automatic),
        precision=rate(tally.enforced_confirmed, tally.enforced_reviewed),
    )


def _category_precision(tally: Tally, category: str) -> Rate:
    enforced, upheld = tally.by_category.get(category, [0, 0])
    return rate(upheld, enforced)


def _meets(precision: Rate, target: float) -> bool:
    return precision.value is not None and precision.value >= target


def _thresholds(
    policy: PolicyDocument, shapes: list[Shape], target: float
) -> tuple[ThresholdSweep, MinConfidenceSuggestion, list[CategorySuggestion], Tally]:
    current = replay(shapes, policy, policy.min_confidence)
    current_point = _point(policy.min_confidence, current)
    points = [
        _point(percent / 100, tally)
        for percent, tally in zip(SWEEP_PERCENTS, sweep_min_confidence(shapes, policy), strict=True)
    ]
    thresholds_now = {(c.id, c.block_at, c.restrict_at) for c in policy.categories}
    category_points = [
        CategoryThresholdPoint(
            category=setting.category,
            block_at=setting.block_at,
            restrict_at=setting.restrict_at,
            current=(setting.category, setting.block_at, setting.restrict_at) in thresholds_now,
            automatic=rate(setting.tally.automatic, setting.tally.items),
            error=rate(setting.tally.disagreements, setting.tally.reviewed_automatic),
            precision=_category_precision(setting.tally, setting.category),
        )
        for setting in sweep_category_thresholds(shapes, policy)
    ]
    sweep = ThresholdSweep(
        replayable_items=current.items,
        current_min_confidence=policy.min_confidence,
        current=current_point,
        min_confidence=points,
        categories=category_points,
    )

    def more_to_review(point: ThresholdPoint | CategoryThresholdPoint) -> float | None:
        if current_point.automatic.value is None or point.automatic.value is None:
            return None
        return current_point.automatic.value - point.automatic.value

    reaching = next((p for p in points if _meets(p.precision, target)), None)
    suggestion = MinConfidenceSuggestion(
        target_precision=target,
        reached=reaching is not None,
        min_confidence=reaching.min_confidence if reaching else None,
        point=reaching or max(points, key=lambda p: p.precision.value or -1.0, default=None),
        interval_clears_target=bool(
            reaching and reaching.precision.low is not None and reaching.precision.low >= target
        ),
        more_to_review=more_to_review(reaching) if reaching else None,
    )

    category_suggestions = []
    for category in policy.categories:
        now = _category_precision(current, category.id)
        if now.denominator == 0 or _meets(now, target):
            continue
        options = [
            p for p in category_points if p.category == category.id and _meets(p.precision, target)
        ]
        best = max(options, key=lambda p: p.automatic.value or 0.0, default=None)
        category_suggestions.append(
            CategorySuggestion(
                category=category.id,
                current_precision=now,
                reached=best is not None,
                block_at=best.block_at if best else None,
                restrict_at=best.restrict_at if best else None,
                precision=best.precision if best else None,
                more_to_review=more_to_review(best) if best else None,
            )
        )
    return sweep, suggestion, category_suggestions, current


def _percent(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _interval(r: Rate) -> str:
    if r.low is None or r.high is None:
        return ""
    return f" (95% interval {r.low * 100:.0f}-{r.high * 100:.0f}%, n={r.denominator})"


def _review_shift(share: float | None) -> str:
    if share is None or abs(share) < 0.0005:
        return "about as many items would go to review"
    amount = _percent(abs(share), 1 if abs(share) < 0.01 else 0)
    return f"{amount} {'more' if share > 0 else 'fewer'} items would go to review"


def _misses(recall: Rate) -> bool:
    """Recall clearly under 80%, on enough items to say so."""
    return recall.value is not None and recall.denominator >= 5 and recall.value < 0.8


def summarize(report: VersionReport) -> list[str]:
    """What a policy owner should take away, and change, in a few sentences."""
    lines: list[str] = []
    target = report.suggestion.target_precision
    if report.reviewed == 0:
        lines.append(
            f"No submission judged with {report.policy} v{report.version} in this range has a "
            "reviewer's decision yet, so nothing here compares the model with people."
        )
        return lines
    decided = (
        f"{_percent(report.automatic_rate.value)} of {report.submissions:,} submissions were "
        "decided automatically."
    )
    if report.agreement.denominator == 0:
        lines.append(
            f"{decided} Reviewers have not decided any of the automatic decisions yet, only "
            "what was sent to them: review a sample of automatic decisions to measure them."
        )
    else:
        kappa = f" (Cohen's kappa {report.kappa:.2f})" if report.kappa is not None else ""
        lines.append(
            f"{decided} Reviewers saw {report.agreement.denominator:,} of the automatic "
            f"decisions and agreed with {_percent(report.agreement.value)}{kappa}; they "
            f"reversed {_percent(report.overturn_rate.value)}."
        )

    suggestion = report.suggestion
    current = report.thresholds.current
    now = report.thresholds.current_min_confidence
    if suggestion.reached and suggestion.point and suggestion.min_confidence is not None:
        point = suggestion.point
        achieved = (
            f"{_percent(point.precision.value)} of restrictions and blocks would be upheld"
            f"{_interval(point.precision)}"
        )
        if abs(suggestion.min_confidence - now) < 1e-9:
            verb = f"Keep min_confidence at {now:.2f}:"
        elif suggestion.min_confidence > now:
            verb = f"Raise min_confidence from {now:.2f} to {suggestion.min_confidence:.2f}"
            verb += (
                f" to reach {_percent(target)} precision (now {_percent(current.precision.value)}):"
            )
        else:
            verb = f"Lower min_confidence from {now:.2f} to {suggestion.min_confidence:.2f}:"
        line = f"{verb} {achieved}, and {_review_shift(suggestion.more_to_review)}."
        if not suggestion.interval_clears_target:
            line += (
                f" The interval's lower end is under {_percent(target)}: review more items "
                "before relying on this."
            )
        lines.append(line)
    elif suggestion.point is not None and suggestion.point.precision.value is not None:
        lines.append(
            f"No min_confidence between 0.50 and 0.99 reaches {_percent(target)} precision; the "
            f"best is {_percent(suggestion.point.precision.value)} at "
            f"{suggestion.point.min_confidence:.2f}. Thresholds alone will not get there: read "
            "the categories below and the items reviewers reversed."
        )

    thresholds_now = {c.category: c for c in report.thresholds.categories if c.current}
    unreachable = []
    for advice in report.category_suggestions:
        upheld = _percent(advice.current_precision.value, 1)
        if not advice.reached or advice.precision is None:
            unreachable.append(f"{advice.category} {upheld}")
            continue
        now_setting = thresholds_now.get(advice.category)
        setting = f"block_at {advice.block_at}"
        if now_setting is not None and now_setting.block_at != advice.block_at:
            setting += f" (now {now_setting.block_at})"
        if advice.restrict_at is not None or (now_setting and now_setting.restrict_at):
            restrict = "none" if advice.restrict_at is None else str(advice.restrict_at)
            setting += f" and restrict_at {restrict}"
            if now_setting is not None and now_setting.restrict_at != advice.restrict_at:
                setting += f" (now {now_setting.restrict_at or 'none'})"
        lines.append(
            f"{advice.category}: {upheld} of its restrictions and blocks were upheld"
            f"{_interval(advice.current_precision)}. With {setting} it would reach "
            f"{_percent(advice.precision.value, 1)}, and {_review_shift(advice.more_to_review)}."
        )
    if unreachable:
        lines.append(
            f"No severity threshold gets {', '.join(unreachable)} (restrictions and blocks "
            f"upheld) to {_percent(target)}: sharpen those definitions and their examples, "
            "starting with the items reviewers reversed."
        )

    missed = sorted(
        (c for c in report.categories if _misses(c.flagging.recall)),
        key=lambda c: c.flagging.recall.value or 0.0,
    )
    if missed:
        listed = ", ".join(
            f"{c.category} {_percent(c.flagging.recall.value)}"
            f" ({c.flagging.false_negatives:,} of {c.flagging.recall.denominator:,} missed)"
            for c in missed
        )
        lines.append(
            f"The model misses more than a fifth of what reviewers mark in {len(missed)} "
            f"categor{'y' if len(missed) == 1 else 'ies'} (recall: {listed}). Add examples of "
            "what it misses to those definitions."
        )

    stated = next((c for c in report.calibration if c.scale == "confidence"), None)
    token = next((c for c in report.calibration if c.scale == "rating_probability"), None)
    if stated and stated.expected_calibration_error is not None:
        gap = stated.expected_calibration_error
        if gap > 0.1:
            line = (
                f"The model's stated confidence is off from what reviewers confirm by "
                f"{gap * 100:.0f} points on average: read it as a ranking, not a probability."
            )
            if token and token.expected_calibration_error is not None:
                line += (
                    f" The rating token's probability is off by "
                    f"{token.expected_calibration_error * 100:.0f} points."
                )
            lines.append(line)
    return lines
