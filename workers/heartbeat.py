"""Start the worker's heartbeat with the worker, and stop it (withdrawing the process's model
circuit state) when the worker shuts down cleanly.

Started at once rather than with the first task, so the API sees this worker's circuit state
from the moment it is ready.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from workers.tasks.moderation import runtime


@worker_ready.connect
def start_heartbeat(**_: Any) -> None:
    runtime().heartbeat.start()


@worker_shutdown.connect
def stop_heartbeat(**_: Any) -> None:
    runtime().heartbeat.stop()
