"""The Celery producer: the app, its configuration, task names, and the one way to send a task.

A task is sent only after the transaction that made its row commits. A task sent before commit
can run before its row is visible; one sent without commit may point at nothing. A send that
fails after commit loses nothing either: the row stays `queued` and the relay sends it again.

Postgres, not the broker, is the record of what work exists: a task only carries ids, and the
relay re-sends anything the broker dropped. Workers register their tasks on this app by name
(`workers/`); nothing here imports them, so the API can send tasks without loading worker code.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from moderation.config import Settings, get_settings

logger = logging.getLogger(__name__)

MODERATE_SUBMISSION = "moderation.moderate_submission"

# The modules that define tasks and periodic jobs, loaded by worker processes only.
WORKER_MODULES = ["workers.tasks.moderation", "workers.relay"]


def resolve_broker_url(settings: Settings) -> str:
    if settings.broker_url:
        return settings.broker_url
    from moderation.embedded import embedded_broker_url

    return embedded_broker_url(settings)


def celery_config(settings: Settings) -> dict[str, Any]:
    broker_url = resolve_broker_url(settings)
    transport_options: dict[str, Any] = {}
    if broker_url.startswith(("redis://", "rediss://")):
        # Redis hands an unacknowledged message to another worker after this long; it must
        # outlast the hard time limit or a slow task would run twice at once.
        transport_options["visibility_timeout"] = int(settings.broker_visibility_timeout_s)
    # kombu's SQL transport (the embedded broker) passes its options to create_engine and has
    # no visibility timeout: a message whose consumer died is gone, and the relay re-sends it.
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle payload from a compromised broker would be code execution.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Results live in Postgres; a result backend would only duplicate them.
        "task_ignore_result": True,
        "result_backend": None,
        # Acknowledge after the task ran, so a crash mid-task leaves the message to redeliver,
        # and also when the pool child dies: acks_late alone acknowledges a killed child's task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message per slot: model calls are slow, and a prefetched message waits on a busy
        # worker while another sits idle.
        "worker_prefetch_multiplier": 1,
        # Model timeout < soft limit < hard limit < visibility timeout (checked in Settings).
        # Celery enforces these limits in prefork pools only; under the threads pool that
        # `moderation worker` uses, the pipeline's own deadline (derived from the soft limit and
        # passed to every model call and backoff) is what ends a task in time.
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_hard_time_limit_s,
        "task_default_queue": settings.queue_name,
        "task_routes": {MODERATE_SUBMISSION: {"queue": settings.queue_name}},
        # Don't let a broker outage hang an API request: the relay sends whatever fails here.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.1,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "timezone": "UTC",
    }


def create_celery_app() -> Celery:
    app = Celery("moderation", include=WORKER_MODULES)
    # Read lazily, when the app first needs it: importing this module neither starts the
    # embedded database nor freezes settings before a command (or a test) has set them.
    app.add_defaults(lambda: celery_config(get_settings()))
    return app


celery_app = create_celery_app()


_PENDING = "pending_tasks"


class BackgroundPublisher:
    """Sends tasks from a thread of its own, so a request is answered once its row commits.

    Publishing costs a broker round trip and most of a millisecond of CPU; on the request's
    path it adds both to every ingest. Handing the task to this thread after commit keeps the
    guarantee that matters: the row exists before anything can point at it. A task that never
    gets sent (the process dies first, the broker is down, the hand-off queue is full) leaves
    its row `queued`, and the relay sends it again after its grace period.
    """

    _STOP = object()

    def __init__(self, app: Celery, max_waiting: int = 100_000) -> None:
        self._app = app
        self._waiting: queue.Queue[object] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(
            target=self._run, name="moderation-task-publisher", daemon=True
        )
        self._thread.start()

    def submit(self, task_name: str, args: tuple[Any, ...]) -> None:
        try:
            self._waiting.put_nowait((task_name, args))
        except queue.Full:
            logger.warning("task hand-off is full; the relay will send %s%r", task_name, args)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is waiting (for up to `timeout`), then end the thread."""
        try:
            self._waiting.put(self._STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = [self._waiting.get()]
            # Whatever else is waiting goes out on the same producer connection.
            while len(batch) < 500:
                try:
                    batch.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is self._STOP for item in batch)
            tasks = [item for item in batch if item is not self._STOP]
            if tasks:
                self._send(tasks)
            if stopping:
                return

    def _send(self, tasks: list[Any]) -> None:
        try:
            with self._app.producer_or_acquire() as producer:
                for task_name, args in tasks:
                    self._app.send_task(task_name, args=list(args), producer=producer)
        except Exception:
            logger.warning("could not send %d tasks now; the relay will", len(tasks), exc_info=True)


_publisher: BackgroundPublisher | None = None


def start_background_publisher() -> None:
    """From now on this process sends tasks from a background thread (the API does this)."""
    global _publisher
    if _publisher is None or not _publisher.alive:
        _publisher = BackgroundPublisher(celery_app)


def stop_background_publisher(timeout: float = 5.0) -> None:
    global _publisher
    if _publisher is not None:
        _publisher.stop(timeout)
        _publisher = None


def enqueue_after_commit(session: Session, task_name: str, *args: Any) -> None:
    session.info.setdefault(_PENDING, []).append((task_name, args))


@event.listens_for(Session, "after_commit")
def _send_pending_tasks(session: Session) -> None:
    pending: list[tuple[str, tuple[Any, ...]]] = session.info.pop(_PENDING, [])
    if not pending:
        return
    publisher = _publisher
    for task_name, args in pending:
        if publisher is not None:
            publisher.submit(task_name, args)
            continue
        try:
            celery_app.send_task(task_name, args=list(args))
        except Exception:
            logger.warning(
                "could not send %s%r now; the relay will", task_name, args, exc_info=True
            )


@event.listens_for(Session, "after_rollback")
def _drop_pending_tasks(session: Session) -> None:
    session.info.pop(_PENDING, None)
