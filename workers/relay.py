"""The relay: a thread in every worker process that re-sends work the broker lost, and now and
then deletes uploads past their retention.

Redis without persistence forgets messages on restart, kombu's SQL transport never gives back a
message whose consumer died, and a process can crash between commit and send. Postgres knows
what is still undecided, so a periodic sweep closes all three gaps. An advisory lock keeps
concurrent sweeps from several workers out of each other's way.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from moderation.pipeline.relay import requeue_stalled_submissions
from moderation.pipeline.retention import purge_expired_media
from workers.tasks.moderation import runtime

logger = logging.getLogger(__name__)

_stop = threading.Event()


def _relay_loop() -> None:
    interval = runtime().settings.relay_interval_s
    next_purge = time.monotonic()
    while not _stop.wait(interval):
        try:
            count = requeue_stalled_submissions(runtime())
            if count:
                logger.info("relay re-queued %d stalled submissions", count)
        except Exception:
            logger.exception("relay sweep failed; trying again in %.0fs", interval)
        if time.monotonic() >= next_purge:
            next_purge = time.monotonic() + runtime().settings.media_purge_interval_s
            _purge_media()


def _purge_media() -> None:
    """Uploads past their retention; see moderation.pipeline.retention."""
    try:
        purged = purge_expired_media(runtime())
    except Exception:
        logger.exception("media retention sweep failed; trying again at the next interval")
        return
    if purged.originals or purged.normalized:
        logger.info(
            "retention deleted %d originals and %d normalized images",
            purged.originals,
            purged.normalized,
        )


@worker_ready.connect
def start_relay(**_: Any) -> None:
    _stop.clear()
    threading.Thread(target=_relay_loop, name="moderation-relay", daemon=True).start()


@worker_shutdown.connect
def stop_relay(**_: Any) -> None:
    _stop.set()
