"""All SQL of the reports: aggregates over one tenant's submissions, decisions and verdicts.

A report first gathers one compact row per submission in scope into a temporary table (its
automatic decision, its final human decision, its latest parsed verdict and what its model
calls cost), in a single pass over the three large tables. Every figure is then a GROUP BY over
that table, so the large tables are read once however many figures the report shows. The table
lives until the transaction ends.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from moderation.policies.models import Policy, PolicyVersion

# Decisions a person made; every other source is automatic (the model, a cached verdict, a hash
# bank match, or the pipeline failing to judge).
HUMAN_SOURCES = ("reviewer", "appeal")

# Which submissions a report covers; repeated in each subquery below so that each one joins
# the tenant's rows through the (tenant_id, created_at) index instead of a materialized list.
_IN_SCOPE = """
    s.tenant_id = :tenant_id
    AND s.created_at >= :since AND s.created_at < :until
    AND (CAST(:version_ids AS uuid[]) IS NULL OR s.policy_version_id = ANY(:version_ids))
"""

# Only the constant _IN_SCOPE is interpolated: no value ever reaches this text.
_GATHER_ITEMS = f"""
CREATE TEMPORARY TABLE report_items ON COMMIT DROP AS
WITH automatic AS (
    SELECT DISTINCT ON (d.submission_id) d.submission_id, d.action, d.reason
    FROM decisions AS d
    JOIN submissions AS s ON s.id = d.submission_id
    WHERE {_IN_SCOPE} AND d.source NOT IN ('reviewer', 'appeal')
    ORDER BY d.submission_id, d.created_at DESC, d.id DESC
),
human AS (
    -- A person never "decides" review, so such a row (should one exist) is not a label.
    SELECT DISTINCT ON (d.submission_id) d.submission_id, d.action, d.categories
    FROM decisions AS d
    JOIN submissions AS s ON s.id = d.submission_id
    WHERE {_IN_SCOPE} AND d.source IN ('reviewer', 'appeal') AND d.action <> 'review'
    ORDER BY d.submission_id, d.created_at DESC, d.id DESC
),
verdict AS (
    -- One pass over the submission's verdicts: the one its decision was made on (the last
    -- that parsed, of the last attempt) and what all its calls cost. A reused verdict reached
    -- no model: it costs nothing and took no time.
    SELECT DISTINCT ON (v.submission_id)
           v.submission_id,
           CASE WHEN v.parsed IS NOT NULL THEN v.parsed ->> 'rating' END AS rating,
           CAST(v.parsed ->> 'confidence' AS numeric) AS confidence,
           CASE WHEN v.parsed ->> 'rating' = 'unsafe'
                 AND jsonb_typeof(v.parsed -> 'violations') = 'array'
                THEN v.parsed -> 'violations' ELSE '[]' END AS violations,
           v.rating_probability,
           count(*) FILTER (WHERE v.reused_from_id IS NULL) OVER calls AS calls,
           sum(v.latency_ms) FILTER (WHERE v.reused_from_id IS NULL) OVER calls AS latency_ms,
           sum(coalesce(v.input_tokens, 0) + coalesce(v.output_tokens, 0))
               FILTER (WHERE v.reused_from_id IS NULL) OVER calls AS tokens
    FROM verdicts AS v
    JOIN submissions AS s ON s.id = v.submission_id
    -- A shadow version's verdicts never stand behind a decision, and their calls are the
    -- shadow's cost, not the live pipeline's.
    WHERE {_IN_SCOPE} AND v.role = 'live'
    -- The window's order is DISTINCT ON's, so one sort serves both; the frame still spans
    -- every call of the submission.
    WINDOW calls AS (
        PARTITION BY v.submission_id
        ORDER BY v.parsed IS NOT NULL DESC, v.attempt DESC, v.sequence DESC, v.created_at DESC
        ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
    )
    ORDER BY v.submission_id, v.parsed IS NOT NULL DESC, v.attempt DESC, v.sequence DESC,
             v.created_at DESC
)
SELECT s.id,
       s.policy_version_id AS version_id,
       automatic.action AS auto_action,
       automatic.reason AS auto_reason,
       human.action AS human_action,
       CASE WHEN human.action IS NULL OR human.action NOT IN ('restrict', 'block')
            THEN '{{}}'::text[]
            -- One category is the common case: read it without a subquery.
            WHEN jsonb_typeof(human.categories) = 'array'
                 AND jsonb_array_length(human.categories) = 1
            THEN ARRAY[coalesce(human.categories -> 0 ->> 'category', human.categories ->> 0)]
            ELSE ARRAY(SELECT DISTINCT coalesce(c.value ->> 'category', c.value #>> '{{}}')
                       FROM jsonb_array_elements(
                           CASE jsonb_typeof(human.categories)
                                WHEN 'array' THEN human.categories ELSE '[]' END) AS c
                       ORDER BY 1) END AS human_categories,
       verdict.rating,
       verdict.confidence,
       verdict.violations,
       -- The verdict as the decision rules see it, at whole-percent confidence: sorted
       -- [category, severity, percent] triples, so equal verdicts group together.
       CASE WHEN verdict.rating IS DISTINCT FROM 'unsafe' THEN '[]'
            WHEN jsonb_array_length(verdict.violations) = 1 THEN jsonb_build_array(
                jsonb_build_array(
                    verdict.violations -> 0 ->> 'category',
                    CAST(verdict.violations -> 0 ->> 'severity' AS int),
                    CAST(floor(CAST(verdict.violations -> 0 ->> 'confidence' AS numeric) * 100)
                         AS int)))
            ELSE (
            SELECT coalesce(jsonb_agg(jsonb_build_array(
                       v.value ->> 'category',
                       CAST(v.value ->> 'severity' AS int),
                       CAST(floor(CAST(v.value ->> 'confidence' AS numeric) * 100) AS int))
                   ORDER BY v.value ->> 'category', CAST(v.value ->> 'severity' AS int),
                            CAST(v.value ->> 'confidence' AS numeric)), '[]')
            FROM jsonb_array_elements(verdict.violations) AS v) END AS shape,
       verdict.rating_probability,
       coalesce(verdict.calls, 0) AS calls,
       CASE WHEN verdict.calls > 0 THEN verdict.latency_ms END AS latency_ms,
       CASE WHEN verdict.calls > 0 THEN verdict.tokens END AS tokens
FROM submissions AS s
LEFT JOIN automatic ON automatic.submission_id = s.id
LEFT JOIN human ON human.submission_id = s.id
LEFT JOIN verdict ON verdict.submission_id = s.id
WHERE {_IN_SCOPE}
"""  # noqa: S608


def find_policy(session: Session, tenant_id: uuid.UUID, slug: str) -> Policy | None:
    return session.scalars(
        select(Policy).where(Policy.tenant_id == tenant_id, Policy.slug == slug)
    ).one_or_none()


def policy_version_ids(
    session: Session, policy_id: uuid.UUID, version: int | None
) -> list[uuid.UUID]:
    query = select(PolicyVersion.id).where(PolicyVersion.policy_id == policy_id)
    if version is not None:
        query = query.where(PolicyVersion.version == version)
    return list(session.scalars(query))


@dataclass(frozen=True)
class VersionRow:
    id: uuid.UUID
    slug: str
    title: str
    version: int
    document: dict[str, Any]


def versions_by_id(session: Session, ids: list[uuid.UUID]) -> list[VersionRow]:
    rows = session.execute(
        select(
            PolicyVersion.id,
            Policy.slug,
            Policy.title,
            PolicyVersion.version,
            PolicyVersion.document,
        )
        .join(Policy, Policy.id == PolicyVersion.policy_id)
        .where(PolicyVersion.id.in_(ids))
        .order_by(Policy.slug, PolicyVersion.version)
    )
    return [VersionRow(*row) for row in rows]


def _tune_for_aggregates(session: Session) -> None:
    """Settings for this transaction only.

    JIT compilation costs more than it saves on a query that runs once in well under a second,
    and the default work_mem sends the per-submission sorts to disk.
    """
    session.execute(text("SET LOCAL jit = off"))
    session.execute(text("SET LOCAL work_mem = '64MB'"))


def gather_items(
    session: Session,
    tenant_id: uuid.UUID,
    since: datetime,
    until: datetime,
    version_ids: list[uuid.UUID] | None,
) -> None:
    """Fill `report_items` for this transaction; every query below reads it."""
    _tune_for_aggregates(session)
    session.execute(text("DROP TABLE IF EXISTS pg_temp.report_items"))
    session.execute(
        text(_GATHER_ITEMS),
        {"tenant_id": tenant_id, "since": since, "until": until, "version_ids": version_ids},
    )


def explain_gather_items(
    session: Session,
    tenant_id: uuid.UUID,
    since: datetime,
    until: datetime,
    version_ids: list[uuid.UUID] | None,
) -> str:
    """The executed plan of the gathering pass, for the speed benchmark's notes."""
    _tune_for_aggregates(session)
    session.execute(text("DROP TABLE IF EXISTS pg_temp.report_items"))
    rows = session.execute(
        text("EXPLAIN (ANALYZE, BUFFERS) " + _GATHER_ITEMS),
        {"tenant_id": tenant_id, "since": since, "until": until, "version_ids": version_ids},
    )
    plan = "\n".join(row[0] for row in rows)
    session.execute(text("DROP TABLE IF EXISTS pg_temp.report_items"))
    return plan


def item_versions(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(text("SELECT DISTINCT version_id FROM report_items")))


@dataclass(frozen=True)
class ItemGroup:
    """Submissions alike in everything the decision figures look at, and how many there are.

    `shape` is the verdict as the decision rules see it: [category, severity, percent] triples
    with confidences floored to whole percent, which is exact for any threshold on the 0.01 grid
    (c >= t exactly when floor(100c) >= 100t); empty for a safe verdict. `safe_percent` is a
    safe verdict's floored confidence (an unsafe verdict's own confidence plays no part in the
    rules). `human_categories` are those a reviewer named when restricting or blocking.
    """

    version_id: uuid.UUID
    auto_action: str | None
    auto_reason: str | None
    human_action: str | None
    human_categories: list[str]
    rating: str | None
    safe_percent: int | None
    shape: list[list[Any]]
    items: int


def item_groups(session: Session) -> list[ItemGroup]:
    rows = session.execute(
        text(
            """
            SELECT version_id, auto_action, auto_reason, human_action, human_categories, rating,
                   CASE WHEN rating = 'safe' THEN CAST(floor(confidence * 100) AS int) END,
                   shape,
                   count(*)
            FROM report_items
            GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
            """
        )
    )
    return [ItemGroup(*row) for row in rows]


@dataclass(frozen=True)
class CostRow:
    version_id: uuid.UUID
    items_with_calls: int
    median_latency_ms: float | None
    median_tokens: float | None
    total_tokens: int


def costs(session: Session) -> list[CostRow]:
    rows = session.execute(
        text(
            """
            SELECT version_id,
                   count(*) FILTER (WHERE calls > 0),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
                       FILTER (WHERE calls > 0),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY tokens) FILTER (WHERE calls > 0),
                   coalesce(sum(tokens), 0)
            FROM report_items
            GROUP BY version_id
            """
        )
    )
    return [CostRow(*row) for row in rows]


@dataclass(frozen=True)
class CalibrationBin:
    """Reviewed submissions whose score fell in one tenth of [0, 1].

    `scale` is what was binned: "confidence" (the rating confidence the model wrote),
    "rating_probability" (the rating token's probability, where stored) or "category" (the
    confidence of a flagged category's strongest violation). `confirmed` counts those a person
    agreed with: the rating for the first two, the category for the last.
    """

    version_id: uuid.UUID
    scale: str
    category: str | None
    bin: int
    items: int
    score_sum: float
    confirmed: int


def calibration_bins(session: Session, bins: int) -> list[CalibrationBin]:
    rows = session.execute(
        text(
            """
            WITH labelled AS NOT MATERIALIZED (
                -- Read three times, so rescanned each time rather than copied wholesale.
                SELECT id, version_id, confidence, rating_probability, violations,
                       human_categories,
                       (rating = 'unsafe') = (human_action IN ('restrict', 'block'))
                           AS rating_confirmed
                FROM report_items
                WHERE human_action IS NOT NULL AND rating IS NOT NULL
            ),
            scored AS (
                SELECT version_id, 'confidence' AS scale, NULL AS category,
                       CAST(confidence AS float8) AS score, rating_confirmed AS confirmed
                FROM labelled
                UNION ALL
                SELECT version_id, 'rating_probability', NULL, rating_probability,
                       rating_confirmed
                FROM labelled
                WHERE rating_probability IS NOT NULL
                UNION ALL
                SELECT l.version_id, 'category', v.value ->> 'category',
                       max(CAST(v.value ->> 'confidence' AS float8)),
                       bool_or((v.value ->> 'category') = ANY(l.human_categories))
                FROM labelled AS l
                CROSS JOIN LATERAL jsonb_array_elements(l.violations) AS v
                GROUP BY l.version_id, l.id, v.value ->> 'category'
            )
            SELECT version_id, scale, category,
                   least(greatest(width_bucket(score, 0, 1, :bins), 1), :bins) AS bin,
                   count(*), sum(score), count(*) FILTER (WHERE confirmed)
            FROM scored
            GROUP BY version_id, scale, category, bin
            """
        ),
        {"bins": bins},
    )
    return [CalibrationBin(*row) for row in rows]


@dataclass(frozen=True)
class ShadowCount:
    """Submissions a shadow version also judged, by what each side decided."""

    version_id: uuid.UUID
    shadow_version_id: uuid.UUID
    auto_action: str | None
    shadow_action: str
    human_action: str | None
    items: int
    model_calls: int
    tokens: int


def shadow_counts(session: Session) -> list[ShadowCount]:
    rows = session.execute(
        text(
            """
            SELECT r.version_id, o.policy_version_id, r.auto_action, o.action, r.human_action,
                   count(*),
                   coalesce(sum(o.model_calls), 0),
                   coalesce(sum((
                       SELECT sum(coalesce(v.input_tokens, 0) + coalesce(v.output_tokens, 0))
                       FROM verdicts AS v
                       WHERE v.submission_id = o.submission_id
                         AND v.policy_version_id = o.policy_version_id
                         AND v.role = 'shadow' AND v.reused_from_id IS NULL
                   )), 0)
            FROM report_items AS r
            JOIN shadow_outcomes AS o ON o.submission_id = r.id
            GROUP BY 1, 2, 3, 4, 5
            """
        )
    )
    return [ShadowCount(*row) for row in rows]
