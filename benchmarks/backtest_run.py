"""A backtest over stored items through the real worker: how long it takes, what flips it finds.

The harness makes a database of its own, a tenant, and N submissions decided by the real
pipeline against the test model server (tests/fakes/fake_vlm.py), their normalized images
stored; reviewers label a share of them. It writes a draft version of the tenant's policy,
starts a real `moderation worker` process, starts the backtest, and follows it to the end.

Every item has a hidden truth (violating or not). The live verdicts are right about 88% of the
time and unsure about 4%; the draft's are right about 95% of the time; reviewers follow the
truth. So the flips and the scores the backtest reports can be checked against what was built.
Each draft call waits --latency-ms in the model server, like a real model's answer time.

    python -m benchmarks.backtest_run                      # 500 items, 200 ms per call
    python -m benchmarks.backtest_run --count 100 --latency-ms 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DRAFT_WORDS = "Treat any visible weapon as a violation."


def new_database(server_url: str) -> str:
    name = f"backtest_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


def drop_database(server_url: str, database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="per draft model call")
    parser.add_argument("--concurrency", type=int, default=16, help="the worker's model slots")
    parser.add_argument("--backtest-share", type=float, default=0.25)
    parser.add_argument("--reviewed-share", type=float, default=0.3)
    parser.add_argument("--server-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--out", type=Path, default=RESULTS / "backtest.json")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    database_url = new_database(args.server_url)
    from tests.fakes.fake_vlm import FakeVLMServer

    model = FakeVLMServer().start()
    env = {
        "MODERATION_DATABASE_URL": database_url,
        "MODERATION_BROKER_URL": args.broker_url,
        "MODERATION_VLM_BASE_URL": model.base_url,
        "MODERATION_VLM_MODEL": "Qwen/Qwen2.5-VL-7B-Instruct",
        "MODERATION_VLM_MAX_CONCURRENCY": str(args.concurrency),
        "MODERATION_BACKTEST_SHARE": str(args.backtest_share),
        "MODERATION_QUEUE_NAME": f"backtest-bench-{uuid.uuid4().hex[:8]}",
        "MODERATION_JOB_POLL_INTERVAL_S": "0.2",
        "MODERATION_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    worker: subprocess.Popen[bytes] | None = None
    try:
        from moderation.config import get_settings
        from moderation.schema_migrations import upgrade_schema

        get_settings.cache_clear()
        upgrade_schema(database_url)
        print(f"seeding {args.count} decided submissions ...", flush=True)
        seeded = time.monotonic()
        tenant_id, expected = seed(args, model)
        print(f"  seeded in {time.monotonic() - seeded:.1f} s", flush=True)

        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"backtest-bench-worker-{os.getpid()}.log"
        with log.open("wb") as sink:
            worker = subprocess.Popen(
                [sys.executable, "-m", "moderation", "worker"],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        result = run_backtest(tenant_id, expected["draft_version"], args)
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        model.stop()
        from moderation.database import get_engine, sqlalchemy_url

        get_engine(sqlalchemy_url(database_url)).dispose()
        drop_database(args.server_url, database_url)

    report = summarize(result, expected, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print_report(report)
    return 0


def seed(args: argparse.Namespace, model: Any) -> tuple[uuid.UUID, dict[str, Any]]:
    """Decided submissions with stored normalized images, through the real pipeline."""
    from moderation.database import get_sessionmaker, session_scope, sqlalchemy_url
    from moderation.decisions.models import Action, DecisionSource
    from moderation.decisions.rules import Outcome
    from moderation.decisions.service import record_decision
    from moderation.pipeline.moderate import moderate_submission
    from moderation.pipeline.runtime import PipelineRuntime
    from moderation.policies import service as policies
    from moderation.submissions.models import Submission, SubmissionImage
    from tests.factories import image_bytes, make_tenant
    from tests.fakes import fake_vlm as fake

    database_url = sqlalchemy_url(os.environ["MODERATION_DATABASE_URL"])
    sessions = get_sessionmaker(database_url)
    tenant_id = make_tenant(database_url, "bench").tenant_id
    runtime = PipelineRuntime.from_settings()
    chooser = random.Random(args.seed)
    allow = fake.verdict(fake.safe_verdict(0.97))
    block = fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))
    unsure = fake.verdict(fake.unsafe_verdict("violence", 2, 0.5))
    draft_delay = args.latency_ms / 1000

    plans = []
    for _ in range(args.count):
        truth = chooser.random() < 0.2
        roll = chooser.random()
        live = unsure if roll < 0.04 else (block if truth == (roll < 0.92) else allow)
        draft = block if truth == (chooser.random() < 0.95) else allow
        reviewed = live is unsure or chooser.random() < args.reviewed_share
        plans.append((truth, live, draft, reviewed))

    def decide_one(n: int) -> tuple[uuid.UUID, str, str, bool, bool]:
        truth, live, draft, reviewed = plans[n]
        case = f"bench-{n}-{uuid.uuid4().hex[:8]}"
        reply = fake.delay(draft_delay, draft) if draft_delay else draft
        model.script(case, [live, reply])
        color = (n * 37 % 256, n * 91 % 256, n * 13 % 256)
        with session_scope(sessions) as session:
            submission = Submission(
                tenant_id=tenant_id,
                external_id=case,
                payload_sha256=uuid.uuid4().hex * 2,
                text=f"caption {case}",
                metadata_={},
                policy_version_id=policies.version_for_submission(session, tenant_id, None).id,
                status="queued",
                attempts=0,
            )
            session.add(submission)
            session.flush()
            session.add(
                SubmissionImage(
                    submission_id=submission.id,
                    position=0,
                    source_data=image_bytes(color=color),
                )
            )
            submission_id = submission.id
        moderate_submission(submission_id, runtime)
        if reviewed:
            with session_scope(sessions) as session:
                row = session.get(Submission, submission_id)
                assert row is not None
                record_decision(
                    session,
                    row,
                    Outcome(Action.block if truth else Action.allow),
                    source=DecisionSource.reviewer,
                    actor="bench-reviewer",
                )
        names = {id(allow): "allow", id(block): "block", id(unsure): "review"}
        return submission_id, names[id(live)], names[id(draft)], truth, reviewed

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(decide_one, range(args.count)))

    with session_scope(sessions) as session:
        _, v1 = policies.version_document(session, tenant_id, "default", 1)
        body = v1.model_dump(mode="json", exclude={"slug", "version"})
        body["instructions"] = f"{body['instructions']}\n{DRAFT_WORDS}"
        draft_version = policies.create_draft_version(session, tenant_id, "default", body).version
    runtime.vlm.close()
    flips = Counter((live, draft) for _, live, draft, _, _ in rows if live != draft)
    return tenant_id, {
        "draft_version": draft_version,
        "flips": {f"{a}->{b}": n for (a, b), n in sorted(flips.items())},
        "reviewed": sum(1 for row in rows if row[4]),
    }


def run_backtest(tenant_id: uuid.UUID, version: int, args: argparse.Namespace) -> dict[str, Any]:
    from moderation.backtests import service
    from moderation.backtests.schemas import BacktestCreate
    from moderation.database import get_sessionmaker, session_scope, sqlalchemy_url

    sessions = get_sessionmaker(sqlalchemy_url(os.environ["MODERATION_DATABASE_URL"]))
    request = BacktestCreate(policy="default", draft_version=version, sample={"limit": args.count})
    began = time.monotonic()
    with session_scope(sessions) as session:
        backtest_id = service.start_backtest(
            session, tenant_id, request, requested_by="benchmark"
        ).id
    print(f"backtest {backtest_id} started", flush=True)
    last = -1
    while True:
        with session_scope(sessions) as session:
            read = service.read_backtest(session, tenant_id, backtest_id)
        if read.progress.done != last and read.progress.done % 50 == 0:
            last = read.progress.done
            print(
                f"  {read.progress.done}/{read.progress.total} "
                f"after {time.monotonic() - began:.1f} s",
                flush=True,
            )
        if read.status in ("done", "failed"):
            break
        time.sleep(0.25)
    wall = time.monotonic() - began
    return {"wall_s": wall, "backtest": read.model_dump(mode="json")}


def summarize(
    result: dict[str, Any], expected: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    backtest = result["backtest"]
    comparison = backtest["comparison"] or {}
    found = {f"{f['live']}->{f['draft']}": f["count"] for f in comparison.get("flips", [])}
    from moderation.config import Settings

    slots = Settings(
        vlm_max_concurrency=args.concurrency, backtest_share=args.backtest_share
    ).backtest_concurrency
    return {
        "items": args.count,
        "latency_ms_per_draft_call": args.latency_ms,
        "worker_model_slots": args.concurrency,
        "backtest_slots": slots,
        "bound_s": args.count * args.latency_ms / 1000 / slots,
        "wall_s": round(result["wall_s"], 2),
        "items_per_s": round(args.count / result["wall_s"], 1),
        "status": backtest["status"],
        "progress": backtest["progress"],
        "flips_found": found,
        "flips_built": expected["flips"],
        "changed": comparison.get("changed"),
        "reviewed": comparison.get("reviewed"),
        "live": {k: comparison["live"][k] for k in ("precision", "recall", "review_rate")}
        if comparison
        else None,
        "draft": {k: comparison["draft"][k] for k in ("precision", "recall", "review_rate")}
        if comparison
        else None,
        "tokens": comparison.get("tokens"),
    }


def print_report(report: dict[str, Any]) -> None:
    def show(rate: dict[str, Any]) -> str:
        return f"{rate['value']:.3f} [{rate['low']:.3f}, {rate['high']:.3f}]"

    print(
        f"\n{report['items']} items, {report['latency_ms_per_draft_call']:.0f} ms per draft call, "
        f"{report['backtest_slots']} backtest slots of {report['worker_model_slots']}: "
        f"{report['wall_s']} s ({report['items_per_s']} items/s; "
        f"the slots' bound is {report['bound_s']:.1f} s)"
    )
    print(f"status {report['status']}: {report['progress']}")
    print(f"flips found: {report['flips_found']}")
    print(f"flips built: {report['flips_built']}")
    if report["live"]:
        for side in ("live", "draft"):
            scores = report[side]
            print(
                f"{side:>5}: precision {show(scores['precision'])}, "
                f"recall {show(scores['recall'])}, review rate {show(scores['review_rate'])}"
            )
        tokens = report["tokens"]
        print(
            f"tokens: {tokens['total_tokens']:,} in {tokens['model_calls']} calls "
            f"(live spent {tokens['live_input_tokens'] + tokens['live_output_tokens']:,})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
