"""What the publisher sends for the tasks it found waiting together."""

from __future__ import annotations

from moderation.queue import BATCH_MAX, MODERATE_SUBMISSION, MODERATE_SUBMISSIONS, _messages


def test_a_lone_submission_goes_as_it_came():
    assert _messages([(MODERATE_SUBMISSION, ("a",))]) == [(MODERATE_SUBMISSION, ("a",))]


def test_waiting_submissions_share_messages_in_order():
    ids = [f"id-{n}" for n in range(2 * BATCH_MAX + 1)]
    waiting = [(MODERATE_SUBMISSION, (i,)) for i in ids]
    messages = _messages(waiting)
    assert messages == [
        (MODERATE_SUBMISSIONS, (ids[:BATCH_MAX],)),
        (MODERATE_SUBMISSIONS, (ids[BATCH_MAX : 2 * BATCH_MAX],)),
        (MODERATE_SUBMISSION, (ids[-1],)),
    ]


def test_other_tasks_are_sent_one_each_and_none_is_lost():
    waiting = [
        (MODERATE_SUBMISSION, ("a",)),
        ("moderation.other", (1, 2)),
        (MODERATE_SUBMISSION, ("b",)),
    ]
    messages = _messages(waiting)
    assert messages == [(MODERATE_SUBMISSIONS, (["a", "b"],)), ("moderation.other", (1, 2))]
