"""`moderation worker` starts Celery afresh in place when it stops on an unrecoverable error,
and only then: a stop that was asked for, or a worker that never got ready, ends the process."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from moderation.cli import run


class FakeCelery:
    """Plays the signals a real worker sends over its life, then returns like worker_main."""

    def __init__(self, *, ready: bool, asked: bool, exitcode: int) -> None:
        self.ready, self.asked, self.exitcode = ready, asked, exitcode

    def worker_main(self, argv: list[str]) -> None:
        if self.ready:
            worker_ready.send(sender=None)
        if self.asked:
            worker_shutting_down.send(sender="MainProcess", sig="SIGTERM", how="Warm", exitcode=0)
        worker_shutdown.send(sender=StoppedWorker(self.exitcode))


class StoppedWorker:
    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(run.time, "sleep", lambda _: None)
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append([path, *argv]))
    return calls


def test_an_unrecoverable_error_after_ready_starts_the_worker_again_in_place(execs):
    run._run_celery_worker(FakeCelery(ready=True, asked=False, exitcode=1), ["worker"])
    assert execs == [[sys.executable, sys.executable, "-m", "moderation", *sys.argv[1:]]]


@pytest.mark.parametrize(
    "celery",
    [
        FakeCelery(ready=True, asked=True, exitcode=0),  # SIGTERM: a warm shutdown
        FakeCelery(ready=True, asked=True, exitcode=1),  # a second signal: a cold one
        FakeCelery(ready=False, asked=False, exitcode=1),  # failed before it was ready
        FakeCelery(ready=True, asked=False, exitcode=0),
    ],
)
def test_any_other_end_ends_the_process(execs, celery: Any):
    run._run_celery_worker(celery, ["worker"])
    assert execs == []
