"""Where a worker's CPU goes: cProfile over N submissions moderated in this process.

Uses MODERATION_DATABASE_URL (migrated here) and a fake model with no latency, so the numbers
are the pipeline's own CPU per task: image normalization, request building, SQL.

    MODERATION_DATABASE_URL=postgresql://... python -m benchmarks.profile_worker --count 60
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--top", type=int, default=25, help="functions to print")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_worker.json"
    )
    args = parser.parse_args()
    if not os.environ.get("MODERATION_DATABASE_URL"):
        raise SystemExit("set MODERATION_DATABASE_URL to a database this may migrate and write")

    from tests.fakes.fake_vlm import FakeVLMServer

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
        buffer = io.BytesIO()
        Image.new("RGB", (800, 600), (10, 20, 30)).save(buffer, format="JPEG", quality=85)
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
                    SubmissionImage(
                        submission_id=submission.id, position=0, source_data=buffer.getvalue()
                    )
                )
                ids.append(submission.id)

        moderate_submission(ids[0], runtime)  # warm-up: imports, connections, prompt cache
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for submission_id in ids[1:]:
            moderate_submission(submission_id, runtime)
        profiler.disable()
        per_task_ms = (time.perf_counter() - started) / args.count * 1000

    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(f"{args.count} tasks, {per_task_ms:.1f} ms per task (profiler on)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"count": args.count, "per_task_ms": round(per_task_ms, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
