"""Thin tasks: take ids, hand them to the pipeline.

A message names one submission or, when the API had several waiting to be sent at once, a few
of them. Either way every item runs on the process's item threads, as many as the worker's
thread count, so a message of eight is judged eight at a time, and the broker's per-message cost
(delivery, acknowledgement) is paid once for all of them. A Celery thread only waits for its
message's items, then acknowledges it.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery.signals import worker_init

from moderation.media.allocator import return_large_allocations
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.queue import MODERATE_SUBMISSION, MODERATE_SUBMISSIONS, celery_app

_runtime: PipelineRuntime | None = None
_items: ThreadPoolExecutor | None = None
_runtime_lock = threading.Lock()


def runtime() -> PipelineRuntime:
    """One model client and connection pool per worker process, shared by its threads."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = PipelineRuntime.from_settings()
        return _runtime


@worker_init.connect
def tune_allocator(**_: Any) -> None:
    """Before any image is decoded: see moderation.media.allocator."""
    return_large_allocations()


def _item_threads() -> ThreadPoolExecutor:
    global _items
    settings = runtime().settings
    with _runtime_lock:
        if _items is None:
            _items = ThreadPoolExecutor(
                max_workers=settings.worker_thread_count, thread_name_prefix="moderation-item"
            )
        return _items


def _moderate_all(submission_ids: list[str]) -> None:
    """Judge every item at once on the item threads; return when all have ended.

    An item that fails is logged by the pipeline and left to the relay; the first failure is
    raised once the others are done, so no item is abandoned half-way by its message.
    """
    ids = [uuid.UUID(submission_id) for submission_id in submission_ids]
    pipeline = runtime()
    pool = _item_threads()
    futures = [pool.submit(moderate_submission, submission_id, pipeline) for submission_id in ids]
    failures = [failure for future in futures if (failure := future.exception()) is not None]
    if failures:
        raise failures[0]


@celery_app.task(name=MODERATE_SUBMISSION, ignore_result=True)
def moderate_submission_task(submission_id: str) -> None:
    _moderate_all([submission_id])


@celery_app.task(name=MODERATE_SUBMISSIONS, ignore_result=True)
def moderate_submissions_task(submission_ids: list[str]) -> None:
    _moderate_all(submission_ids)
