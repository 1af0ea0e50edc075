"""How long the agreement report takes over a tenant with many verdicts.

Creates a database of its own on the given server, migrates it, generates N submissions with a
verdict each, their automatic decisions and reviewer decisions for about a third of them (bulk
SQL: generate_series, no ORM), then times the report as JSON, CSV and HTML and prints the
executed plan of its one pass over the large tables.

    python -m benchmarks.report_speed --server postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import urllib.parse
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent

# One row per submission with every random draw it needs, so the inserts below agree with each
# other. Confidences have two decimals, as models write them.
_PLAN = """
CREATE TABLE bench_plan AS
WITH draws AS (
    SELECT g, gen_random_uuid() AS id,
           random() AS r_unsafe, random() AS r_cat, random() AS r_sev, random() AS r_conf,
           random() AS r_fail, random() AS r_review, random() AS r_truth, random() AS r_prob,
           random() AS r_cost, random() AS r_time
    FROM generate_series(1, %(items)s) AS g
),
shaped AS (
    SELECT d.*,
           d.r_fail < 0.01 AS failed,
           d.r_unsafe < 0.3 AS unsafe,
           (ARRAY['sexual', 'child_safety', 'violence', 'hate', 'harassment', 'self_harm',
                  'weapons_drugs', 'scam_spam'])[1 + floor(d.r_cat * 8)::int] AS category,
           (ARRAY[3, 1, 3, 3, 3, 3, 3, 3])[1 + floor(d.r_cat * 8)::int] AS block_at,
           (ARRAY[2, NULL, 2, NULL, NULL, 2, 2, 2])[1 + floor(d.r_cat * 8)::int] AS restrict_at,
           1 + floor(d.r_sev * 4)::int AS severity,
           round((0.5 + 0.5 * d.r_conf)::numeric, 2) AS confidence
    FROM draws AS d
),
decided AS (
    SELECT s.*,
           CASE
               WHEN s.failed THEN 'review'
               WHEN NOT s.unsafe THEN CASE WHEN s.confidence >= 0.8 THEN 'allow' ELSE 'review' END
               WHEN s.confidence >= 0.8 AND s.severity >= s.block_at THEN 'block'
               WHEN s.confidence >= 0.8 AND s.severity >= s.restrict_at THEN 'restrict'
               ELSE 'review'
           END AS auto_action,
           -- Reviewers find a violation more often the surer the model was of one.
           CASE WHEN s.unsafe THEN s.r_truth < 0.4 + 0.6 * s.confidence
                ELSE s.r_truth < 0.4 * (1 - s.confidence) END AS violating
    FROM shaped AS s
)
SELECT d.*,
       CASE WHEN d.failed THEN 'model_unavailable'
            WHEN d.auto_action <> 'review' THEN NULL
            WHEN d.unsafe THEN 'below_threshold' ELSE 'low_confidence' END AS auto_reason,
       d.auto_action = 'review' OR d.r_review < 0.1 AS reviewed,
       CASE WHEN NOT d.violating THEN 'allow'
            WHEN d.severity >= 3 THEN 'block' ELSE 'restrict' END AS human_action,
       now() - d.r_time * interval '25 days' AS created_at
FROM decided AS d
"""

_SUBMISSIONS = """
INSERT INTO submissions (id, tenant_id, external_id, payload_sha256, metadata, policy_version_id,
                         status, action, queued_at, attempts, created_at, updated_at)
SELECT id, %(tenant)s, 'bench-' || g, md5(g::text) || md5(id::text), '{}', %(version)s,
       CASE WHEN reviewed OR auto_action <> 'review' THEN 'decided' ELSE 'in_review' END,
       CASE WHEN reviewed THEN human_action ELSE auto_action END,
       created_at, 1, created_at, created_at
FROM bench_plan
"""

_VERDICTS = """
INSERT INTO verdicts (id, submission_id, policy_version_id, attempt, sequence, model,
                      prompt_sha256, raw_output, parsed, input_tokens, output_tokens, latency_ms,
                      rating_probability, created_at)
SELECT gen_random_uuid(), id, %(version)s, 1, 0, 'Qwen/Qwen2.5-VL-7B-Instruct',
       md5(id::text) || md5(g::text), NULL,
       CASE WHEN failed THEN NULL
            WHEN unsafe THEN jsonb_build_object(
                'rating', 'unsafe', 'confidence', confidence, 'rationale', 'generated',
                'violations', jsonb_build_array(jsonb_build_object(
                    'category', category, 'severity', severity, 'confidence', confidence,
                    'source', 'image', 'rationale', 'generated')))
            ELSE jsonb_build_object('rating', 'safe', 'confidence', confidence,
                                    'violations', '[]'::jsonb, 'rationale', 'generated') END,
       900 + floor(r_cost * 600)::int, 60 + floor(r_cost * 90)::int,
       700 + floor(r_cost * 2300)::int,
       CASE WHEN failed THEN NULL ELSE least(1.0, greatest(0.0, confidence + (r_prob - 0.5) / 5))
       END,
       created_at + interval '2 seconds'
FROM bench_plan
"""

_DECISIONS = """
INSERT INTO decisions (id, submission_id, action, source, reason, categories, actor, created_at)
SELECT gen_random_uuid(), id, auto_action, CASE WHEN failed THEN 'system' ELSE 'model' END,
       auto_reason, '[]', NULL, created_at + interval '3 seconds'
FROM bench_plan
UNION ALL
SELECT gen_random_uuid(), id, human_action, 'reviewer', NULL,
       CASE WHEN human_action = 'allow' THEN '[]'::jsonb
            ELSE jsonb_build_array(jsonb_build_object('category', category,
                                                      'severity', severity)) END,
       'reviewer-' || (g %% 7), created_at + interval '1 hour'
FROM bench_plan
WHERE reviewed
"""


def _generate(url: str, tenant_id: uuid.UUID, version_id: uuid.UUID, items: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute("SELECT setseed(0.42)")
        conn.execute(_PLAN, {"items": items})
        params = {"tenant": tenant_id, "version": version_id}
        for statement in (_SUBMISSIONS, _VERDICTS, _DECISIONS):
            conn.execute(statement, params)
        conn.execute("DROP TABLE bench_plan")
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


def _process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a local process (the database backend serving us)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # a remote server: only wall time is known
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL; a scratch database is created there and dropped after",
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each form")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "report_speed.json"
    )
    args = parser.parse_args()

    from moderation.database import get_sessionmaker, session_scope, sqlalchemy_url
    from moderation.policies.service import active_version
    from moderation.reports import render, repository
    from moderation.reports.service import ReportRequest, agreement_report
    from moderation.schema_migrations import upgrade_schema
    from moderation.tenants.service import create_tenant

    name = f"moderation_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(args.server)._replace(path="/" + name))
    database_url = sqlalchemy_url(url)
    try:
        upgrade_schema(database_url)
        sessions = get_sessionmaker(database_url)
        with session_scope(sessions) as session:
            # Each tenant gets its own copy of the shipped policy.
            tenant_id = create_tenant(session, "bench").id
            version_id = active_version(session, tenant_id, "default").id
            noise = create_tenant(session, "other").id
            noise_version_id = active_version(session, noise, "default").id
        # Another tenant's rows in the same tables: the report must not read them.
        generated = _generate(url, noise, noise_version_id, args.items // 2)
        generated += _generate(url, tenant_id, version_id, args.items)
        print(
            f"generated {args.items} submissions (+{args.items // 2} of another tenant) "
            f"in {generated:.1f} s"
        )

        request = ReportRequest(tenant_id=tenant_id)
        timings: dict[str, list[float]] = {"json": [], "csv": [], "html": []}
        cpu: dict[str, list[float]] = {"json": [], "csv": [], "html": []}
        report = None
        for _ in range(args.runs):
            for form in timings:
                started, started_cpu = time.perf_counter(), time.process_time()
                with session_scope(sessions) as session:
                    backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                    backend_cpu = _process_cpu_s(backend)
                    report = agreement_report(session, request)
                    backend_cpu = _process_cpu_s(backend) - backend_cpu
                if form == "json":
                    body = report.model_dump_json()
                elif form == "csv":
                    body = render.render_csv(report)
                else:
                    body = render.render_html(report)
                timings[form].append(time.perf_counter() - started)
                cpu[form].append(time.process_time() - started_cpu + backend_cpu)
                assert body
        assert report is not None
        with session_scope(sessions) as session:
            plan = repository.explain_gather_items(
                session, tenant_id, report.scope.since, report.scope.until, None
            )
        section = report.versions[0]
        summary = {
            "items": args.items,
            "reviewed": section.reviewed,
            "replayable_verdicts": section.thresholds.replayable_items,
            "median_s": {form: statistics.median(t) for form, t in timings.items()},
            "max_s": {form: max(t) for form, t in timings.items()},
            # CPU spent by this process and its database backend: what the wall time comes to
            # on a machine with no other load (parallel query workers are not counted).
            "median_cpu_s": {form: statistics.median(t) for form, t in cpu.items()},
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(summary, indent=2))
        print("\nEXPLAIN (ANALYZE, BUFFERS) of the gathering pass:\n" + plan)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "plan": plan}, indent=2) + "\n")
    finally:
        if not args.keep:
            from moderation.database import get_engine

            get_engine(database_url).dispose()
            with psycopg.connect(args.server, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        else:
            print(f"kept database {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
