"""Thin tasks: take ids, hand them to the pipeline."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from celery.signals import worker_init

from moderation.media.allocator import return_large_allocations
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.queue import MODERATE_SUBMISSION, celery_app

_runtime: PipelineRuntime | None = None
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


@celery_app.task(name=MODERATE_SUBMISSION, ignore_result=True)
def moderate_submission_task(submission_id: str) -> None:
    moderate_submission(uuid.UUID(submission_id), runtime())
