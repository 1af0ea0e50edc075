"""Work scheduled for later, kept in Postgres and run by the sweeper in every worker process.

Why not Celery countdowns or ETAs: workers acknowledge late, so a Redis message whose countdown
is longer than the broker's visibility timeout is handed to a second worker before it is due,
and the embedded broker (kombu's SQL transport) never gives back an ETA message held by a worker
that died. A schedule must survive both, so it lives in a table; the broker only carries work
that is due now.

How another room adds a kind of job (retention purges, re-drives, backtests):

1. Write a handler `def handle(payload: Mapping[str, Any], context: JobContext) -> JobOutcome`.
   It receives the JSON payload it was enqueued with, opens its own sessions from
   `context.sessions` (keep slow I/O outside a transaction), and must be safe to run twice: a
   worker that dies mid-job has its job run again once the lease runs out. Return `DONE` when
   finished, or `RetryAt(when)` to be woken again later (for work that has its own schedule).
   An exception is retried with backoff, up to `max_attempts`, then kept as `failed`.
2. Declare `MY_JOB = JobKind("room.verb", handle, max_attempts=..., lease_s=...)` in the room;
   `lease_s` must outlast one run of the handler (`lease_from_settings` derives it from the
   settings that bound a run, so a killed worker's job is not held longer than needed).
3. Enqueue with `enqueue_job(session, MY_JOB.name, {...}, run_at=..., key=...)` in the same
   transaction as the change that calls for it. A `key` keeps one live job per thing (a second
   enqueue only brings its run time forward).
4. Add `MY_JOB` to `JOB_KINDS` in `workers/relay.py`, which hands the list to the sweeper. A
   worker claims only the kinds it knows, so a rolling upgrade never runs a job on a worker that
   lacks its handler. This room imports no other room: handlers come to it.
"""
