"""The Celery producer: the app, its configuration, task names, and the one way to send a task.

A task is sent only after the transaction that made its row commits. A task sent before commit
can run before its row is visible; one sent without commit may point at nothing. A send that
fails after commit loses nothing either: the row stays `queued` and the relay sends it again.
Sends happen on a thread of their own, so a slow or absent broker never holds up a request.

Postgres, not the broker, is the record of what work exists: a task only carries ids, and the
relay re-sends anything the broker dropped. Workers register their tasks on this app by name
(`workers/`); nothing here imports them, so the API can send tasks without loading worker code.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from moderation.config import Settings, get_settings

logger = logging.getLogger(__name__)

MODERATE_SUBMISSION = "moderation.moderate_submission"
# Several submissions in one message: what the publisher sends when more than one is waiting.
MODERATE_SUBMISSIONS = "moderation.moderate_submissions"

# The modules that define tasks and periodic jobs, loaded by worker processes only.
WORKER_MODULES = ["workers.tasks.moderation", "workers.relay", "workers.heartbeat"]


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
    # RabbitMQ (amqp://) needs no option: it hands a message back the moment its consumer's
    # connection drops (a killed worker), and its consumer_timeout (30 min by default) ends
    # only deliveries left unacknowledged far beyond the hard time limit.
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # A worker whose broker went away keeps trying to reconnect, with kombu's backoff, for
        # as long as it takes (the default gives up after 100 tries and the worker exits).
        "broker_connection_max_retries": None,
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
        "task_routes": {
            MODERATE_SUBMISSION: {"queue": settings.queue_name},
            MODERATE_SUBMISSIONS: {"queue": settings.queue_name},
        },
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


def enqueue_after_commit(session: Session, task_name: str, *args: Any) -> None:
    session.info.setdefault(_PENDING, []).append((task_name, args))


class _Publisher:
    """Sends tasks from a thread of its own, so that no commit, and no HTTP response, waits on the
    broker.

    A broker that refuses connections costs a send its bounded retries; one that accepts and
    never answers costs it much longer. Either way the row is committed and `queued`, and the
    relay sends whatever this thread could not, so the caller has nothing to wait for. The
    backlog is bounded: past it, sends are left to the relay too.

    Whatever is pending when the thread wakes goes out together, on one producer held for the
    lot, in one batch where the transport can batch (Redis: one pipelined round trip) and one
    message after another where it cannot (RabbitMQ, the embedded SQL broker). Under load that
    is a few hundred messages per connection checkout instead of one, which is most of what a
    send costs the API process. A batch that fails is left to the relay as a whole. Submissions
    pending together also share messages, up to BATCH_MAX to one, so workers pay the broker's
    per-message cost once for several of them.
    """

    # After waking for a task, wait this long for others before sending: a busy API gathers a
    # batch, and the thread wakes once per batch rather than once per request.
    GATHER_S = 0.002
    MAX_BATCH = 500

    def __init__(self, app: Celery, backlog: int = 10_000) -> None:
        self._app = app
        self._backlog = backlog
        self._pending: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue(backlog)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget_thread)

    def _forget_thread(self) -> None:
        # A forked child has the queue but not the thread; it starts its own on first use.
        self._pending = queue.Queue(self._backlog)
        self._thread = None
        self._lock = threading.Lock()

    def submit(self, task_name: str, args: tuple[Any, ...]) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="moderation-publisher", daemon=True
                    )
                    self._thread.start()
        try:
            self._pending.put_nowait((task_name, args))
        except queue.Full:
            logger.warning("publisher backlog full; the relay will send %s%r", task_name, args)

    def _run(self) -> None:
        while True:
            batch = [self._pending.get()]
            time.sleep(self.GATHER_S)
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(batch)
            finally:
                for _ in batch:
                    self._pending.task_done()

    def _send(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            messages = _messages(batch)
            with self._app.producer_or_acquire() as producer, producer.batch(len(messages)):
                # A batched publish only buffers: there is nothing to retry until the batch is
                # sent, and a batch that fails then is the relay's. One sent at once (no batch
                # support) keeps the configured retries.
                retry = None if not producer.supports_batch_publish else False
                # Each task's queue is declared by its first message on this connection; the
                # others skip binding a copy of the queue to the channel only to find it so.
                declared: set[str] = set()
                for task_name, args in messages:
                    options: dict[str, Any] = {"declare": []} if task_name in declared else {}
                    self._app.send_task(
                        task_name,
                        args=list(args),
                        producer=producer,
                        retry=retry,
                        # The ids are short strings: their repr needs no truncating.
                        argsrepr=repr(list(args)),
                        kwargsrepr="{}",
                        **options,
                    )
                    declared.add(task_name)
        except Exception:
            logger.warning(
                "could not send %d tasks now (%s%r first); the relay will",
                len(batch),
                *batch[0],
                exc_info=True,
            )

    def wait_until_sent(self, timeout: float) -> bool:
        """Block until every task submitted so far was sent or given up on (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


# Submissions the publisher puts in one message.
BATCH_MAX = 8


def _messages(waiting: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[str, tuple[Any, ...]]]:
    """Submissions waiting together go out up to BATCH_MAX to a message; a lone one, and every
    other task, as it came. Batches form only when sends queue up (a burst of uploads), so a
    quiet service sends each submission the moment it is committed."""
    ids = [args[0] for task_name, args in waiting if task_name == MODERATE_SUBMISSION]
    messages: list[tuple[str, tuple[Any, ...]]] = []
    for start in range(0, len(ids), BATCH_MAX):
        chunk = ids[start : start + BATCH_MAX]
        if len(chunk) == 1:
            messages.append((MODERATE_SUBMISSION, (chunk[0],)))
        else:
            messages.append((MODERATE_SUBMISSIONS, (chunk,)))
    messages += [(name, args) for name, args in waiting if name != MODERATE_SUBMISSION]
    return messages


publisher = _Publisher(celery_app)


def send_committed(task_name: str, *args: Any) -> None:
    """Send a task whose rows a statement outside any Session has already committed."""
    publisher.submit(task_name, args)


@event.listens_for(Session, "after_commit")
def _send_pending_tasks(session: Session) -> None:
    pending: list[tuple[str, tuple[Any, ...]]] = session.info.pop(_PENDING, [])
    for task_name, args in pending:
        publisher.submit(task_name, args)


@event.listens_for(Session, "after_rollback")
def _drop_pending_tasks(session: Session) -> None:
    session.info.pop(_PENDING, None)
