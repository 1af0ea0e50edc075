"""`backtest`: try a policy version on past submissions from the terminal, and read the result.

`run` starts the backtest the way the API does (workers judge it), follows its progress with a
bar on stderr, and prints the comparison when it is done. Stopping the command with Ctrl-C
leaves the backtest running; `show` reads it later.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import datetime
from typing import Any

from moderation.cli.base import CommandFailed, add_command, sessions, tenant_id_argument
from moderation.config import Settings

_POLL_INTERVAL_S = 0.5
# Waiting this long for any worker to pick the job up earns a hint on the bar.
_NO_WORKER_HINT_S = 10.0


def _datetime_argument(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {value!r} (e.g. 2026-11-01T00:00:00Z)"
        ) from exc
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone, e.g. {value}Z or {value}+01:00")
    return parsed


def _backtest_id_argument(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise CommandFailed(f"a backtest id is a UUID, got {value!r}") from exc


def cmd_backtest_run(args: argparse.Namespace, settings: Settings) -> None:
    from pydantic import ValidationError

    from moderation.backtests.schemas import BacktestCreate
    from moderation.backtests.service import start_backtest
    from moderation.core.errors import ValidationFailed
    from moderation.database import session_scope
    from moderation.tenants.service import get_tenant

    tenant_id = tenant_id_argument(args.tenant)
    sample: dict[str, Any] = {"only_reviewed": args.only_reviewed}
    for name in ("since", "until", "limit"):
        if getattr(args, name) is not None:
            sample[name] = getattr(args, name)
    try:
        request = BacktestCreate.model_validate(
            {"policy": args.policy, "draft_version": args.draft_version, "sample": sample}
        )
    except ValidationError as exc:
        raise ValidationFailed(
            "the backtest is not valid",
            errors=[
                {"loc": ["--" + str(err["loc"][-1]).replace("_", "-")], "msg": err["msg"]}
                for err in exc.errors(include_url=False, include_input=False)
            ],
        ) from exc
    with session_scope(sessions(settings)) as session:
        get_tenant(session, tenant_id)
        started = start_backtest(session, tenant_id, request, requested_by="cli")
    if args.detach:
        _print(args, started.model_dump(mode="json"), f"backtest {started.id} started")
        return
    try:
        result = _follow(started.id, tenant_id, settings)
    except KeyboardInterrupt:
        print(
            f"\nbacktest {started.id} goes on in the workers; "
            f"`moderation backtest show {started.id}` reads it",
            file=sys.stderr,
        )
        raise
    _print(args, result, _describe(result))
    if result["status"] == "failed":
        raise CommandFailed(f"backtest {started.id} failed: {result['last_error']}")


def cmd_backtest_show(args: argparse.Namespace, settings: Settings) -> None:
    result = _read(_backtest_id_argument(args.id), None, settings)
    _print(args, result, _describe(result))


def _read(
    backtest_id: uuid.UUID, tenant_id: uuid.UUID | None, settings: Settings
) -> dict[str, Any]:
    from moderation.backtests.service import read_backtest, tenant_of_backtest
    from moderation.database import session_scope

    with session_scope(sessions(settings)) as session:
        owner = tenant_id or tenant_of_backtest(session, backtest_id)
        return read_backtest(session, owner, backtest_id).model_dump(mode="json")


def _follow(backtest_id: uuid.UUID, tenant_id: uuid.UUID, settings: Settings) -> dict[str, Any]:
    """Poll until the backtest ends, drawing its progress on stderr."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    began = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("backtest", total=None, detail="")
        while True:
            result = _read(backtest_id, tenant_id, settings)
            counts = result["progress"]
            detail = (
                f"{counts['judged']} judged, {counts['failed']} failed, {counts['skipped']} skipped"
            )
            if result["status"] == "queued" and time.monotonic() - began > _NO_WORKER_HINT_S:
                detail = "waiting for a worker (is `moderation worker` running?)"
            elif result["last_error"]:
                detail += f" - {result['last_error'][:60]}"
            bar.update(task, total=counts["total"], completed=counts["done"], detail=detail)
            if result["status"] in ("done", "failed"):
                return result
            time.sleep(_POLL_INTERVAL_S)


def _print(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    print(json.dumps(payload) if args.json else text)


def _rate(value: dict[str, Any]) -> str:
    if value["value"] is None:
        return "-"
    return (
        f"{value['value']:.3f} [{value['low']:.3f}-{value['high']:.3f}] "
        f"({value['numerator']}/{value['denominator']})"
    )


def _describe(result: dict[str, Any]) -> str:
    """The backtest in a few lines a person reads: progress, flips, scores, tokens."""
    counts = result["progress"]
    head = (
        f"backtest {result['id']}: {result['status']}; policy {result['policy']} "
        f"v{result['draft_version']} over {counts['total']} submissions "
        f"({counts['judged']} judged, {counts['failed']} failed, {counts['skipped']} skipped)"
    )
    comparison = result.get("comparison")
    if comparison is None:
        tail = f"\n  last error: {result['last_error']}" if result["last_error"] else ""
        return head + tail
    live, draft = comparison["live"], comparison["draft"]
    live_name = f"live (v{live['version']})" if live["version"] else "live"
    draft_name = f"draft (v{draft['version']})"
    lines = [head, f"{comparison['changed']} of {comparison['compared']} would change:"]
    for flip in comparison["flips"]:
        example = flip["items"][0]["link"] if flip["items"] else ""
        lines.append(f"  {flip['live']:>8} -> {flip['draft']:<8} {flip['count']:>6}   {example}")
    if not comparison["flips"]:
        lines.append("  none")
    lines.append(f"against {comparison['reviewed']} reviewer decisions:")
    lines.append(f"  {'':<12}{live_name:<40}{draft_name}")
    for name in ("precision", "recall", "review_rate"):
        lines.append(f"  {name.replace('_', ' '):<12}{_rate(live[name]):<40}{_rate(draft[name])}")
    tokens = comparison["tokens"]
    lines.append(
        f"tokens: {tokens['total_tokens']:,} ({tokens['input_tokens']:,} in, "
        f"{tokens['output_tokens']:,} out) in {tokens['model_calls']:,} calls, "
        f"{tokens['reused_verdicts']} verdicts reused; the live judgements of the same items "
        f"spent {tokens['live_input_tokens'] + tokens['live_output_tokens']:,}"
    )
    return "\n".join(lines)


def register(commands: Any) -> None:
    backtest = commands.add_parser(
        "backtest", help="try a policy version on past submissions"
    ).add_subparsers(dest="action", required=True)
    run = add_command(
        backtest,
        "run",
        cmd_backtest_run,
        "judge the tenant's past submissions with a policy version (workers do the judging), "
        "show the progress, then what would change",
        json_flag=True,
    )
    run.add_argument("--tenant", required=True, help="tenant id")
    run.add_argument("--policy", required=True, help="policy slug")
    run.add_argument("--draft-version", required=True, type=int, help="the version to try")
    run.add_argument("--since", type=_datetime_argument, help="submitted at or after (ISO 8601)")
    run.add_argument("--until", type=_datetime_argument, help="submitted before (default: now)")
    run.add_argument("--limit", type=int, help="at most this many submissions (default 500)")
    run.add_argument(
        "--only-reviewed", action="store_true", help="only submissions a reviewer has decided"
    )
    run.add_argument("--detach", action="store_true", help="start it and print its id; do not wait")
    show = add_command(
        backtest, "show", cmd_backtest_show, "a backtest's progress and result", json_flag=True
    )
    show.add_argument("id", help="backtest id")
