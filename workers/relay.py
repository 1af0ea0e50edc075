"""The sweeper thread of every worker process: re-sends lost work, re-drives what an outage
sent to review, runs due jobs, and deletes uploads past their retention.

Redis without persistence forgets messages on restart, kombu's SQL transport never gives back a
message whose consumer died, and a process can crash between commit and send. Postgres knows
what is still undecided, so a periodic sweep closes all three gaps (an advisory lock keeps the
sweeps of several workers out of each other's way). The same loop runs the `jobs` table's due
work, callback attempts among it, whose schedules live in Postgres for the same reasons: see
`moderation.jobs`.
"""

from __future__ import annotations

import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from moderation.jobs.service import JobContext, JobKind
from moderation.jobs.sweeper import PeriodicSweep, Sweeper
from moderation.pipeline.redrive import redrive_due_submissions
from moderation.pipeline.relay import requeue_stalled_submissions
from moderation.pipeline.retention import purge_expired_media
from moderation.webhooks.delivery import DELIVER_EVENT
from workers.tasks.backtests import RUN_BACKTEST
from workers.tasks.moderation import runtime

# Every kind of job this worker can run; a room that adds one lists it here.
JOB_KINDS: list[JobKind] = [DELIVER_EVENT, RUN_BACKTEST]

_stop = threading.Event()
_sweeper: Sweeper | None = None


def build_sweeper() -> Sweeper:
    settings = runtime().settings
    return Sweeper(
        JobContext(settings=settings, sessions=runtime().sessions),
        kinds=JOB_KINDS,
        sweeps=[
            PeriodicSweep(
                "re-sent stalled submissions",
                lambda: requeue_stalled_submissions(runtime()),
                settings.relay_interval_s,
            ),
            PeriodicSweep(
                "deleted media past its retention (originals and normalized images)",
                _purge_media,
                settings.media_purge_interval_s,
            ),
            PeriodicSweep(
                "re-drove submissions an outage sent to review",
                lambda: redrive_due_submissions(runtime()),
                settings.relay_interval_s,
            ),
        ],
        concurrency=settings.job_concurrency,
    )


def _purge_media() -> int:
    """See moderation.pipeline.retention."""
    purged = purge_expired_media(runtime())
    return purged.originals + purged.normalized


def _sweep_loop(sweeper: Sweeper) -> None:
    sweeper.run_until(_stop, runtime().settings.job_poll_interval_s)
    sweeper.close()


@worker_ready.connect
def start_relay(**_: Any) -> None:
    global _sweeper
    _stop.clear()
    _sweeper = build_sweeper()
    threading.Thread(
        target=_sweep_loop, args=(_sweeper,), name="moderation-sweeper", daemon=True
    ).start()


@worker_shutdown.connect
def stop_relay(**_: Any) -> None:
    _stop.set()
