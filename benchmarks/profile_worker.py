"""Where a worker's CPU goes: cProfile over N submissions moderated in this process.

Uses MODERATION_DATABASE_URL (migrated here) and a fake model with no latency, so the numbers
are the pipeline's own CPU per task: image normalization, request building, SQL. The profile
is timed in CPU seconds of this process (the fake model answers from a thread of it, a small
share), so waiting on the database does not show as cost. The allocator is set up as in a worker
(large buffers in memory maps of their own, see `moderation.media.allocator`): page faults on
fresh buffers are part of a worker's cost, and glibc's default would hide or add to them.

    MODERATION_DATABASE_URL=postgresql://... python -m benchmarks.profile_worker --count 60
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from pathlib import Path

from benchmarks.image_server import KINDS, make_image

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--top", type=int, default=25, help="functions to print")
    parser.add_argument("--kind", default="vga", help="an image kind of benchmarks.image_server")
    parser.add_argument(
        "--no-profile", action="store_true", help="only the CPU per task, without cProfile"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_worker.json"
    )
    args = parser.parse_args()
    if not os.environ.get("MODERATION_DATABASE_URL"):
        raise SystemExit("set MODERATION_DATABASE_URL to a database this may migrate and write")

    from moderation.media.allocator import return_large_allocations
    from tests.fakes.fake_vlm import FakeVLMServer

    return_large_allocations()

    with FakeVLMServer() as fake:
        os.environ["MODERATION_VLM_BASE_URL"] = fake.base_url
        from moderation.config import get_settings
        from moderation.database import resolve_database_url, session_scope
        from moderation.pipeline.moderate import moderate_submission
        from moderation.pipeline.runtime import PipelineRuntime
        from moderation.policies.service import active_version
        from moderation.schema_migrations import upgrade_schema
        from moderation.submissions.models import Submission, SubmissionImage, SubmissionStatus
        from moderation.tenants.service import create_tenant

        get_settings.cache_clear()
        runtime = PipelineRuntime.from_settings(get_settings())
        upgrade_schema(resolve_database_url(get_settings()))
        upload = make_image(KINDS[args.kind], 1)
        ids = []
        with session_scope(runtime.sessions) as session:
            tenant = create_tenant(session, "profile")
            version_id = active_version(session, tenant.id, "default").id
            for i in range(args.count + 1):
                submission = Submission(
                    tenant_id=tenant.id,
                    external_id=f"profile-{i}",
                    payload_sha256="0" * 64,
                    text=f"profile upload {i}",
                    metadata_={},
                    policy_version_id=version_id,
                    status=SubmissionStatus.queued,
                    attempts=0,
                )
                session.add(submission)
                session.flush()
                session.add(
                    SubmissionImage(submission_id=submission.id, position=0, source_data=upload)
                )
                ids.append(submission.id)

        moderate_submission(ids[0], runtime)  # warm-up: imports, connections, prompt cache
        profiler = cProfile.Profile(time.process_time)
        started = time.process_time()
        thread_started = time.thread_time()
        if not args.no_profile:
            profiler.enable()
        for submission_id in ids[1:]:
            moderate_submission(submission_id, runtime)
        profiler.disable()
        per_task_ms = (time.process_time() - started) / args.count * 1000
        # This thread alone: the pipeline's own work, without the fake model's serving.
        thread_ms = (time.thread_time() - thread_started) / args.count * 1000

    if not args.no_profile:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    state = "off" if args.no_profile else "on"
    print(
        f"{args.count} tasks, {per_task_ms:.1f} ms of CPU per task, {thread_ms:.1f} ms in the "
        f"pipeline's thread (profiler {state})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "count": args.count,
                "per_task_ms": round(per_task_ms, 1),
                "thread_ms": round(thread_ms, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
