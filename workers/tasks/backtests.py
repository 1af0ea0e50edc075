"""The backtest job: thin, like the tasks. The runner judges; this hands it the worker's runtime,
so backtest judgements share the process's model slots with live moderation."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from moderation.backtests.runner import LEASE_S, run_backtest_job
from moderation.backtests.service import RUN_BACKTEST_JOB
from moderation.jobs.service import DONE, JobContext, JobKind, JobOutcome, RetryAt
from workers.tasks.moderation import runtime


def run_backtest(payload: Mapping[str, Any], _: JobContext) -> JobOutcome:
    wake_at = run_backtest_job(uuid.UUID(str(payload["backtest_id"])), runtime())
    return DONE if wake_at is None else RetryAt(wake_at)


# The runner records its own failures on the backtest and never raises, so attempts here only
# cover a crash between the run and its bookkeeping.
RUN_BACKTEST = JobKind(RUN_BACKTEST_JOB, run_backtest, max_attempts=20, lease_s=LEASE_S)
