"""Task names and the one way to send a task: after the transaction that made its row commits.

A task sent before commit can run before its row is visible; one sent without commit may point
at nothing. A send that fails after commit loses nothing either: the row stays `queued` and the
relay sends it again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

MODERATE_SUBMISSION = "moderation.moderate_submission"

_PENDING = "pending_tasks"


def enqueue_after_commit(session: Session, task_name: str, *args: Any) -> None:
    session.info.setdefault(_PENDING, []).append((task_name, args))


@event.listens_for(Session, "after_commit")
def _send_pending_tasks(session: Session) -> None:
    pending: list[tuple[str, tuple[Any, ...]]] = session.info.pop(_PENDING, [])
    if not pending:
        return
    from workers.celery_app import celery_app

    for task_name, args in pending:
        try:
            celery_app.send_task(task_name, args=list(args))
        except Exception:
            logger.warning(
                "could not send %s%r now; the relay will", task_name, args, exc_info=True
            )


@event.listens_for(Session, "after_rollback")
def _drop_pending_tasks(session: Session) -> None:
    session.info.pop(_PENDING, None)
