"""Backtests: a policy version tried on a tenant's past submissions before it goes live.

`POST /v1/backtests` fixes the sample (the policy's submissions in a window, newest first,
reviewed ones only if asked) as pending items, and enqueues one job in the `jobs` table. The
job runs in a worker's sweeper (`runner.py`), a slice at a time, and judges each item with
`moderation.pipeline.judge.judge_content`: the live path's own code, with the same model
client, retries, parser and decision rules, on the normalized images stored by the live run
(never refetched: the draft must see the bytes the live version saw; an item whose images were
purged is skipped and says so). Its results go to `backtest_items` only: no decision, verdict,
callback or audit event of a submission is ever written, so live state cannot move.

Sharing the model with live traffic: every judgement of a worker process takes one of
MODERATION_VLM_MAX_CONCURRENCY model slots (`moderation.vlm.slots`). Backtests hold at most
MODERATION_BACKTEST_SHARE of them (a quarter by default, at least one), and take a free slot
only while no live judgement is waiting for one; when both wait, the slot that frees goes to
live work. So a backtest adds no calls beyond what the worker would make for live traffic
alone, and delays a live judgement at most by the backtest calls already in flight. The job's
thread pool is as large as that share, so backtest threads never queue in numbers either.

Resuming and counting: each item is written once, when its result is known, and only if it is
still pending, so a run that outlived its lease (and so overlaps with the next) cannot count an
item twice; progress is counted from the item rows. A worker that dies loses only its items in
flight, which the next run judges. An item the model could not answer is tried again later, up
to MODERATION_BACKTEST_ITEM_MAX_ATTEMPTS, then counted as failed.

The comparison (`service.compare`) is read from the items when the backtest is done: each
item's live outcome was copied when the backtest started (the pipeline's decision, not a
reviewer's), the reviewers' final decisions are read fresh, and precision and recall count
`restrict` and `block` as enforcing.
"""
