"""Start a backtest, and read it back: progress, then the comparison with live and reviewers."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import timedelta

from sqlalchemy.orm import Session

from moderation.backtests import repository
from moderation.backtests.models import Backtest, BacktestItemStatus, BacktestStatus
from moderation.backtests.schemas import (
    BacktestCreate,
    BacktestRead,
    BacktestSummary,
    Comparison,
    Flip,
    FlipItem,
    Progress,
    SampleRead,
    TokenUse,
    Transition,
    VersionScore,
)
from moderation.core.errors import NotFound, ValidationFailed
from moderation.core.pagination import Page, decode_cursor, encode_cursor
from moderation.core.time import utcnow
from moderation.decisions.models import Action
from moderation.jobs.service import enqueue_job
from moderation.policies import service as policies
from moderation.reports.metrics import binary_metrics, rate

RUN_BACKTEST_JOB = "backtests.run"
DEFAULT_WINDOW = timedelta(days=30)
# Items listed per kind of flip; the counts cover them all.
FLIP_ITEMS_PER_KIND = 50
_ENFORCING = frozenset({Action.restrict, Action.block})


def run_job_key(backtest_id: uuid.UUID) -> str:
    return f"{RUN_BACKTEST_JOB}:{backtest_id}"


def _field_error(loc: list[str | int], message: str) -> ValidationFailed:
    return ValidationFailed(message, errors=[{"loc": loc, "msg": message, "type": "value_error"}])


def start_backtest(
    session: Session, tenant_id: uuid.UUID, request: BacktestCreate, *, requested_by: str
) -> BacktestRead:
    """Choose the sample now, in this transaction, and leave the judging to a worker's job.

    The items are fixed when the backtest starts, so its progress has a total from the first
    read and a resumed job judges exactly the items it was asked to.
    """
    try:
        policy = policies.get_policy(session, tenant_id, request.policy)
    except NotFound:
        raise _field_error(
            ["body", "policy"], f"this tenant has no policy named {request.policy!r}"
        ) from None
    try:
        draft = policies.get_version(session, tenant_id, request.policy, request.draft_version)
    except NotFound:
        raise _field_error(
            ["body", "draft_version"],
            f"policy {request.policy} has no version {request.draft_version}",
        ) from None
    active_number = policies.read_policy(session, tenant_id, request.policy).active_version
    active = (
        policies.get_version(session, tenant_id, request.policy, active_number)
        if active_number is not None
        else None
    )
    until = request.sample.until or utcnow()
    since = request.sample.since or until - DEFAULT_WINDOW
    if since >= until:
        raise _field_error(["body", "sample", "since"], "must be earlier than until (default: now)")

    backtest = Backtest(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        policy_id=policy.id,
        draft_version_id=draft.id,
        active_version_id=active.id if active is not None else None,
        sample_since=since,
        sample_until=until,
        sample_limit=request.sample.limit,
        only_reviewed=request.sample.only_reviewed,
        status=BacktestStatus.queued,
        total=0,
        requested_by=requested_by,
        run_failures=0,
    )
    repository.add(session, backtest)
    backtest.total = repository.insert_sample(session, backtest)
    if backtest.total == 0:
        reviewed = " reviewed" if request.sample.only_reviewed else ""
        raise _field_error(
            ["body", "sample"],
            f"no{reviewed} submissions of policy {request.policy} decided between "
            f"{since.isoformat()} and {until.isoformat()}",
        )
    enqueue_job(
        session,
        RUN_BACKTEST_JOB,
        {"backtest_id": str(backtest.id)},
        key=run_job_key(backtest.id),
    )
    session.flush()
    return read_backtest(session, tenant_id, backtest.id)


def read_backtest(session: Session, tenant_id: uuid.UUID, backtest_id: uuid.UUID) -> BacktestRead:
    backtest = repository.get_for_tenant(session, tenant_id, backtest_id)
    if backtest is None:
        raise NotFound(f"backtest {backtest_id} does not exist")
    summary = _summaries(session, [backtest])[0]
    comparison = compare(session, backtest) if backtest.status is BacktestStatus.done else None
    return BacktestRead(**summary.model_dump(), comparison=comparison)


def tenant_of_backtest(session: Session, backtest_id: uuid.UUID) -> uuid.UUID:
    """For the operator's command line, which may read any tenant's backtest by its id."""
    backtest = repository.get(session, backtest_id)
    if backtest is None:
        raise NotFound(f"backtest {backtest_id} does not exist")
    return backtest.tenant_id


def list_backtests(
    session: Session, tenant_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[BacktestSummary]:
    rows = repository.list_for_tenant(
        session, tenant_id, after=decode_cursor(cursor) if cursor else None, limit=limit + 1
    )
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit and page else None
    )
    return Page(items=_summaries(session, page), next_cursor=next_cursor)


def _summaries(session: Session, backtests: list[Backtest]) -> list[BacktestSummary]:
    counts = repository.status_counts(session, [b.id for b in backtests])
    version_ids = {b.draft_version_id for b in backtests} | {
        b.active_version_id for b in backtests if b.active_version_id is not None
    }
    labels = policies.version_labels(session, list(version_ids))
    return [
        BacktestSummary(
            id=b.id,
            status=b.status,
            policy=labels[b.draft_version_id][0],
            draft_version=labels[b.draft_version_id][1],
            active_version=labels[b.active_version_id][1] if b.active_version_id else None,
            sample=SampleRead(
                since=b.sample_since,
                until=b.sample_until,
                limit=b.sample_limit,
                only_reviewed=b.only_reviewed,
            ),
            requested_by=b.requested_by,
            progress=progress(b.total, counts[b.id]),
            created_at=b.created_at,
            started_at=b.started_at,
            finished_at=b.finished_at,
            last_error=b.last_error,
            link=f"/v1/backtests/{b.id}",
        )
        for b in backtests
    ]


def progress(total: int, counts: dict[BacktestItemStatus, int]) -> Progress:
    judged = counts.get(BacktestItemStatus.judged, 0)
    failed = counts.get(BacktestItemStatus.failed, 0)
    skipped = counts.get(BacktestItemStatus.skipped, 0)
    done = judged + failed + skipped
    return Progress(
        total=total,
        done=done,
        judged=judged,
        failed=failed,
        skipped=skipped,
        pending=counts.get(BacktestItemStatus.pending, 0),
        percent=round(100.0 * done / total, 1) if total else 100.0,
    )


# The comparison --------------------------------------------------------------------------------


def compare(session: Session, backtest: Backtest) -> Comparison:
    """The judged items, live against draft and both against reviewers' final decisions."""
    counts = repository.outcome_counts(session, backtest.id)
    transitions: Counter[tuple[Action, Action]] = Counter()
    for row in counts:
        transitions[(row.live, row.draft)] += row.items
    flip_items: dict[tuple[Action, Action], list[FlipItem]] = defaultdict(list)
    for flip in repository.flip_rows(session, backtest.id, FLIP_ITEMS_PER_KIND):
        flip_items[(flip.live, flip.draft)].append(
            FlipItem(
                submission_id=flip.submission_id,
                link=f"/v1/submissions/{flip.submission_id}",
                live_action=flip.live,
                draft_action=flip.draft,
                draft_reason=flip.draft_reason,
                draft_categories=flip.draft_categories,
                reviewer_action=flip.reviewer,
            )
        )
    order = list(Action)
    flips = [
        Flip(live=live, draft=draft, count=count, items=flip_items[(live, draft)])
        for (live, draft), count in sorted(
            transitions.items(),
            key=lambda kv: (-kv[1], order.index(kv[0][0]), order.index(kv[0][1])),
        )
        if live is not draft
    ]
    live_versions = repository.live_version_ids(session, backtest.id)
    labels = policies.version_labels(session, [*live_versions, backtest.draft_version_id])
    totals = repository.token_totals(session, backtest.id)
    live_input, live_output = repository.live_token_totals(session, backtest.id)
    return Comparison(
        compared=sum(transitions.values()),
        changed=sum(flip.count for flip in flips),
        reviewed=sum(row.items for row in counts if row.reviewer is not None),
        transitions=[
            Transition(live=live, draft=draft, count=count)
            for (live, draft), count in sorted(
                transitions.items(), key=lambda kv: (order.index(kv[0][0]), order.index(kv[0][1]))
            )
        ],
        flips=flips,
        live=score(
            [(row.live, row.reviewer, row.items) for row in counts],
            labels[live_versions[0]][1] if len(live_versions) == 1 else None,
        ),
        draft=score(
            [(row.draft, row.reviewer, row.items) for row in counts],
            labels[backtest.draft_version_id][1],
        ),
        tokens=TokenUse(
            model_calls=totals.model_calls,
            reused_verdicts=totals.reused,
            input_tokens=totals.input_tokens,
            output_tokens=totals.output_tokens,
            total_tokens=totals.input_tokens + totals.output_tokens,
            live_input_tokens=live_input,
            live_output_tokens=live_output,
        ),
    )


def score(outcomes: list[tuple[Action, Action | None, int]], version: int | None) -> VersionScore:
    """One side's actions, review rate, and precision and recall of enforcement against the
    reviewers (items without a reviewer decision count in the actions and review rate only)."""
    actions: Counter[str] = Counter()
    tp = fp = fn = reviewed = 0
    for action, reviewer, items in outcomes:
        actions[action.value] += items
        if reviewer is None:
            continue
        reviewed += items
        enforced, confirmed = action in _ENFORCING, reviewer in _ENFORCING
        tp += items if enforced and confirmed else 0
        fp += items if enforced and not confirmed else 0
        fn += items if confirmed and not enforced else 0
    total = sum(actions.values())
    # The agreement report's own definitions, so the two pages agree on the same items.
    against_reviewers = binary_metrics(tp, fp, fn, reviewed - tp - fp - fn)
    return VersionScore(
        version=version,
        actions=dict(sorted(actions.items(), key=lambda kv: list(Action).index(Action(kv[0])))),
        review_rate=rate(actions[Action.review.value], total),
        precision=against_reviewers.precision,
        recall=against_reviewers.recall,
        f1=against_reviewers.f1,
    )
