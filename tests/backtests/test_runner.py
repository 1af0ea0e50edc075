"""The runner: one model path, stored images, nothing live touched, resumable, counted once."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sqlalchemy import func, select, update

from moderation.audit.models import AuditEvent
from moderation.backtests.models import BacktestItem, BacktestItemStatus
from moderation.backtests.runner import run_backtest_job
from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import Action, Decision, DecisionSource
from moderation.decisions.rules import Outcome
from moderation.decisions.service import record_decision
from moderation.pipeline.moderate import moderate_submission
from moderation.submissions.models import Submission, SubmissionImage, Verdict
from moderation.vlm.slots import CallPriority, ModelSlots, SlotUse
from moderation.webhooks.models import WebhookDelivery
from tests.backtests.conftest import ALLOW, BLOCK, DRAFT_WORDS, UNSURE, Past
from tests.factories import make_queued_submission, marker
from tests.fakes import fake_vlm as fake


def reviewer_decides(database_url: str, submission_id: uuid.UUID, action: Action) -> None:
    with session_scope(get_sessionmaker(database_url)) as session:
        submission = session.get(Submission, submission_id)
        assert submission is not None
        record_decision(
            session,
            submission,
            Outcome(action),
            source=DecisionSource.reviewer,
            actor="reviewer-1",
        )


def live_state(database_url: str, submission_ids: list[uuid.UUID]) -> dict[str, Any]:
    """Everything a backtest must leave alone, per table."""
    with session_scope(get_sessionmaker(database_url)) as session:

        def count(model: Any) -> int:
            return session.scalar(
                select(func.count())
                .select_from(model)
                .where(model.submission_id.in_(submission_ids))
            )

        return {
            "decisions": count(Decision),
            "verdicts": count(Verdict),
            "audit": count(AuditEvent),
            "deliveries": count(WebhookDelivery),
            "submissions": sorted(
                (str(s.id), s.status.value, s.action.value if s.action else None)
                for s in session.scalars(
                    select(Submission).where(Submission.id.in_(submission_ids))
                )
            ),
        }


def items(database_url: str, backtest_id: uuid.UUID) -> dict[uuid.UUID, BacktestItem]:
    with session_scope(get_sessionmaker(database_url)) as session:
        rows = session.scalars(select(BacktestItem).where(BacktestItem.backtest_id == backtest_id))
        return {row.submission_id: row for row in rows}


def test_the_draft_judges_the_stored_images_and_the_flips_and_scores_are_right(past: Past):
    allow_to_block = past.decided(ALLOW, BLOCK)
    block_to_allow = past.decided(BLOCK, ALLOW)
    unchanged = past.decided(ALLOW, ALLOW)
    review_to_block = past.decided(UNSURE, BLOCK)
    reviewer_decides(past.database_url, review_to_block, Action.block)
    reviewer_decides(past.database_url, block_to_allow, Action.allow)
    everything = [allow_to_block, block_to_allow, unchanged, review_to_block]
    before = live_state(past.database_url, everything)
    version = past.draft_version()

    backtest_id = past.start(version)
    past.run_to_end(backtest_id)

    result = past.read(backtest_id)
    assert result.status == "done" and result.finished_at is not None
    assert (result.progress.total, result.progress.judged, result.progress.done) == (4, 4, 4)
    comparison = result.comparison
    assert comparison is not None
    assert (comparison.compared, comparison.changed, comparison.reviewed) == (4, 3, 2)
    flips = {(f.live.value, f.draft.value): f for f in comparison.flips}
    assert {kind: flip.count for kind, flip in flips.items()} == {
        ("allow", "block"): 1,
        ("block", "allow"): 1,
        ("review", "block"): 1,
    }
    [item] = flips[("allow", "block")].items
    assert item.submission_id == allow_to_block
    assert item.link == f"/v1/submissions/{allow_to_block}"
    assert item.draft_categories[0]["category"] == "violence"
    assert flips[("review", "block")].items[0].reviewer_action == "block"
    assert {(t.live.value, t.draft.value, t.count) for t in comparison.transitions} == {
        ("allow", "block", 1),
        ("block", "allow", 1),
        ("allow", "allow", 1),
        ("review", "block", 1),
    }
    # Live: blocked what the reviewer allowed, sent to review what the reviewer blocked.
    assert (comparison.live.precision.numerator, comparison.live.precision.denominator) == (0, 1)
    assert (comparison.live.recall.numerator, comparison.live.recall.denominator) == (0, 1)
    assert comparison.live.version == 1
    assert comparison.live.actions == {"allow": 2, "block": 1, "review": 1}
    assert comparison.live.review_rate.value == 0.25
    # The draft agrees with both reviewer decisions.
    assert comparison.draft.precision.value == 1.0 and comparison.draft.recall.value == 1.0
    assert comparison.draft.precision.low is not None and comparison.draft.precision.low < 1.0
    assert comparison.draft.version == version and comparison.draft.f1 == 1.0
    assert comparison.tokens.model_calls == 4 and comparison.tokens.input_tokens > 0
    assert comparison.tokens.total_tokens == (
        comparison.tokens.input_tokens + comparison.tokens.output_tokens
    )
    assert comparison.tokens.live_input_tokens > 0
    # Nothing live moved: no decision, verdict, audit event or callback was written.
    assert live_state(past.database_url, everything) == before


def test_the_draft_sees_the_very_bytes_the_live_run_saw(past: Past):
    case = marker()
    past.fake_vlm.script(case, [ALLOW, BLOCK])
    submission = make_queued_submission(past.database_url, past.tenant, f"caption {case}")
    moderate_submission(submission, past.runtime)
    # The upload's original is gone (as after a final decision): only the normalized bytes stay.
    with session_scope(get_sessionmaker(past.database_url)) as session:
        session.execute(
            update(SubmissionImage)
            .where(SubmissionImage.submission_id == submission)
            .values(source_data=None, source_url="http://127.0.0.1:9/gone.png")
        )

    backtest_id = past.start(past.draft_version())
    past.run_to_end(backtest_id)

    live_request, draft_request = past.fake_vlm.requests_for(case)
    assert DRAFT_WORDS not in live_request["messages"][0]["content"]
    assert DRAFT_WORDS in draft_request["messages"][0]["content"]
    assert live_request["messages"][1] == draft_request["messages"][1]
    assert items(past.database_url, backtest_id)[submission].draft_action == Action.block


def test_an_item_judged_by_two_overlapping_runs_is_stored_and_counted_once(past: Past):
    slow_block = fake.delay(0.4, BLOCK)
    cases = [past.decided(ALLOW, slow_block) for _ in range(2)]
    backtest_id = past.start(past.draft_version())

    # Two runs at once, as when a run outlives its lease and another worker takes the job.
    runs = [
        threading.Thread(target=run_backtest_job, args=(backtest_id, past.runtime))
        for _ in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=30)

    result = past.read(backtest_id)
    assert result.status == "done"
    assert (result.progress.total, result.progress.judged) == (2, 2)
    assert result.comparison is not None
    assert result.comparison.changed == 2
    # Each item was judged twice, and its calls are counted once.
    assert [len(past.fake_vlm.requests_for(past.markers[c])) for c in cases] == [3, 3]
    stored = items(past.database_url, backtest_id)
    assert set(stored) == set(cases)
    assert all(item.model_calls == 1 for item in stored.values())
    assert result.comparison.tokens.model_calls == 2


def test_a_backtest_resumes_where_a_run_stopped(past: Past, runtime_with):
    cases = [marker() for _ in range(3)]
    submissions = []
    for case in cases:
        past.fake_vlm.script(case, [ALLOW, BLOCK])
        submission = make_queued_submission(past.database_url, past.tenant, f"caption {case}")
        moderate_submission(submission, past.runtime)
        submissions.append(submission)
    backtest_id = past.start(past.draft_version())
    # One backtest slot, and a slice that ends after the first item is taken.
    runtime = runtime_with(vlm_max_concurrency=4, backtest_share=0.25, backtest_slice_s=0.001)

    wake_at = run_backtest_job(backtest_id, runtime)

    assert wake_at is not None
    halfway = past.read(backtest_id)
    assert halfway.status == "running" and halfway.comparison is None
    assert (halfway.progress.judged, halfway.progress.pending) == (1, 2)
    runs = past.run_to_end(backtest_id, runtime)
    assert runs == 2
    done = past.read(backtest_id)
    assert done.status == "done" and done.progress.judged == 3
    # Every item's draft was asked once: the resumed runs took only what was left.
    assert [len(past.fake_vlm.requests_for(case)) for case in cases] == [2, 2, 2]


def test_items_whose_images_are_gone_are_skipped_and_say_so(past: Past):
    kept = past.decided(ALLOW, BLOCK)
    purged = past.decided(ALLOW, BLOCK)
    with session_scope(get_sessionmaker(past.database_url)) as session:
        session.execute(
            update(SubmissionImage)
            .where(SubmissionImage.submission_id == purged)
            .values(data=None, source_data=None)
        )
    backtest_id = past.start(past.draft_version())
    past.run_to_end(backtest_id)

    result = past.read(backtest_id)
    assert (result.progress.judged, result.progress.skipped, result.progress.done) == (1, 1, 2)
    stored = items(past.database_url, backtest_id)
    assert stored[purged].status == BacktestItemStatus.skipped
    assert stored[purged].error is not None and stored[purged].error.startswith("images_purged")
    assert stored[purged].draft_action is None and stored[purged].model_calls == 0
    assert stored[kept].status == BacktestItemStatus.judged
    assert result.comparison is not None and result.comparison.compared == 1


def test_an_unreachable_model_leaves_items_pending_then_failed(past: Past, runtime_with):
    down = fake.error(503)
    submission = past.decided(ALLOW, down)
    backtest_id = past.start(past.draft_version())
    runtime = runtime_with(
        vlm_max_retries=0, backtest_retry_delay_s=5, backtest_item_max_attempts=2
    )

    asked_at = time.time()
    wake_at = run_backtest_job(backtest_id, runtime)

    assert wake_at is not None and wake_at.timestamp() >= asked_at + 4
    waiting = past.read(backtest_id)
    assert waiting.status == "running" and waiting.progress.pending == 1
    assert waiting.last_error is not None and waiting.last_error.startswith("model_unavailable")
    assert items(past.database_url, backtest_id)[submission].attempts == 1

    assert run_backtest_job(backtest_id, runtime) is None
    ended = past.read(backtest_id)
    assert ended.status == "done"
    assert (ended.progress.failed, ended.progress.judged) == (1, 0)
    assert items(past.database_url, backtest_id)[submission].status == BacktestItemStatus.failed


class RecordingSlots(ModelSlots):
    """Model slots that note, under their lock, who got each slot and in what order."""

    def __init__(self, total: int, background_cap: int) -> None:
        super().__init__(total, background_cap)
        self.granted: list[CallPriority] = []

    def _free_for(self, priority: CallPriority) -> bool:
        free = super()._free_for(priority)
        if free:  # acquire() takes the slot at once, under the same lock
            self.granted.append(priority)
        return free


def test_live_judgements_take_the_next_slots_while_backtests_hold_the_model(
    past: Past, runtime_with
):
    # Two model slots, both of which backtests may use, and two backtests whose threads hold
    # both slots and wait for more: only priority lets live work through first.
    runtime = runtime_with(vlm_max_concurrency=2, backtest_share=1.0)
    slots = runtime.model_slots = RecordingSlots(2, 2)
    for _ in range(4):
        past.decided(ALLOW, fake.delay(0.8, BLOCK))
    version = past.draft_version()
    backtests = [past.start(version), past.start(version)]
    live_cases = [marker() for _ in range(4)]
    waiting = []
    for case in live_cases:
        past.fake_vlm.script(case, [ALLOW])
        waiting.append(make_queued_submission(past.database_url, past.tenant, f"live {case}"))

    runners = [threading.Thread(target=past.run_to_end, args=(b, runtime)) for b in backtests]
    for runner in runners:
        runner.start()
    full = SlotUse(live=0, background=2, live_waiting=0, background_waiting=2)
    deadline = time.monotonic() + 10
    while slots.use() != full:
        assert time.monotonic() < deadline, slots.use()
        time.sleep(0.005)
    latencies: list[float] = []

    def moderate(submission: uuid.UUID) -> None:
        started = time.monotonic()
        moderate_submission(submission, runtime)
        latencies.append(time.monotonic() - started)

    live = [threading.Thread(target=moderate, args=(s,)) for s in waiting]
    for thread in live:
        thread.start()
    deadline = time.monotonic() + 5
    while slots.use().live_waiting < 4:
        assert time.monotonic() < deadline, "the live judgements never queued for a slot"
        time.sleep(0.005)
    seen = len(slots.granted)
    for thread in live:
        thread.join(timeout=10)
    for runner in runners:
        runner.join(timeout=30)

    # The backtests' waiting threads asked first; every live judgement got a slot before them.
    assert slots.granted[seen : seen + 4] == [CallPriority.live] * 4, slots.granted[seen:]
    assert len(latencies) == 4 and max(latencies) < 3.0, latencies
    assert [past.read(b).progress.judged for b in backtests] == [4, 4]
