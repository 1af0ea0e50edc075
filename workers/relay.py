"""The relay: a thread in every worker process that re-sends work the broker lost, and
re-drives submissions that an outage sent to review.

Redis without persistence forgets messages on restart, kombu's SQL transport never gives back a
message whose consumer died, and a process can crash between commit and send. Postgres knows
what is still undecided, so a periodic sweep closes all three gaps. An advisory lock keeps
concurrent sweeps from several workers out of each other's way.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from moderation.pipeline.redrive import redrive_due_submissions
from moderation.pipeline.relay import requeue_stalled_submissions
from workers.tasks.moderation import runtime

logger = logging.getLogger(__name__)

_stop = threading.Event()


def _relay_loop() -> None:
    interval = runtime().settings.relay_interval_s
    failures = 0
    # After failed sweeps (database unreachable) wait longer each time, up to a minute, and
    # resume the normal pace with the first sweep that works.
    while not _stop.wait(min(interval * 2**failures, max(interval, 60.0))):
        try:
            count = requeue_stalled_submissions(runtime())
            if count:
                logger.info("relay re-queued %d stalled submissions", count)
            redriven = redrive_due_submissions(runtime())
            if redriven:
                logger.info("relay re-drove %d submissions that an outage sent to review", redriven)
            failures = 0
        except Exception as exc:
            failures = min(failures + 1, 6)
            logger.warning("relay sweep failed (%s: %s); backing off", type(exc).__name__, exc)


@worker_ready.connect
def start_relay(**_: Any) -> None:
    _stop.clear()
    threading.Thread(target=_relay_loop, name="moderation-relay", daemon=True).start()


@worker_shutdown.connect
def stop_relay(**_: Any) -> None:
    _stop.set()
