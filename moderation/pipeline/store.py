"""A submission's first judgement stored in one statement, in one round trip.

Storing a model's judgement touches seven tables: the submission's status, its normalized
images, the model's verdicts, the decision, the audit trail, the tenant's token counter and,
for `review`, the reviewer's task. Written one ORM flush at a time that is a dozen round trips
and most of a worker's CPU per item; written as one statement of data-modifying CTEs it is one
round trip, atomic without a transaction of its own, and prepared once per connection.

It covers the common case only, and `covers` says which: a first decision (no earlier one, so
no review task can be waiting to be cancelled) on a judgement that ended in an outcome, with
still images. Everything else (outages scheduled for re-drive, animations with frames, second
decisions) goes through `record_decision`, which this statement mirrors row for row: the same
audit events in the same order, the same originals purged, the same review task.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy.orm import Session

from moderation.decisions.models import Action, DecisionSource
from moderation.pipeline.judge import JudgedWork
from moderation.pipeline.verdicts import verdict_rows
from moderation.review.models import TaskKind, max_severity, task_priority
from moderation.submissions.models import SubmissionStatus, VerdictRole

# Every CTE reads `sub`, the submission updated only while this worker's lease holds: a lost
# lease writes nothing. Audit events are inserted by one INSERT in the order given, so the
# chain's trigger numbers them as `record_decision` would. The image bytes go in binary
# (`%(datas)b`): a bytea array in text format is escaped byte by byte in Python, which costs
# more than the rest of the statement.
_STORE = """
WITH sub AS (
    UPDATE submissions
    SET status = %(status)s, action = %(action)s, lease_token = NULL, lease_expires_at = NULL,
        redrive_at = NULL, redrive_until = NULL, updated_at = now()
    WHERE id = %(submission_id)s AND lease_token = %(lease_token)s AND status = 'processing'
    RETURNING id, tenant_id, external_id, callback_url, policy_version_id
), images AS (
    UPDATE submission_images image
    SET data = given.data, sha256 = given.sha256, width = given.width, height = given.height,
        mime = given.mime, source_mime = given.source_mime, tokens = given.tokens,
        frame_count = given.frame_count, error = NULL,
        source_data = CASE WHEN %(purge)s THEN NULL ELSE image.source_data END,
        source_purged_at = CASE WHEN %(purge)s AND image.source_data IS NOT NULL
                                THEN now() ELSE image.source_purged_at END
    FROM sub, unnest(%(positions)s::int[], %(datas)b::bytea[], %(sha256s)s::text[],
                     %(widths)s::int[], %(heights)s::int[], %(mimes)s::text[],
                     %(source_mimes)s::text[], %(tokens)s::int[], %(frame_counts)s::int[])
         AS given(position, data, sha256, width, height, mime, source_mime, tokens, frame_count)
    WHERE image.submission_id = sub.id AND image.position = given.position
), verdicts_written AS (
    INSERT INTO verdicts (id, submission_id, policy_version_id, attempt, sequence, model,
                          prompt_sha256, raw_output, parsed, error, finish_reason, input_tokens,
                          output_tokens, latency_ms, rating_probability, reused_from_id,
                          image_refs, role)
    SELECT gen_random_uuid(), sub.id, sub.policy_version_id, %(attempt)s::int, v.sequence, v.model,
           v.prompt_sha256, v.raw_output, v.parsed, v.error, v.finish_reason, v.input_tokens,
           v.output_tokens, v.latency_ms, v.rating_probability, v.reused_from_id,
           %(image_refs)s, %(role)s
    FROM sub, jsonb_to_recordset(%(verdicts)s) AS v(
        sequence int, model text, prompt_sha256 text, raw_output text, parsed jsonb,
        error text, finish_reason text, input_tokens int, output_tokens int, latency_ms int,
        rating_probability float8, reused_from_id uuid)
), decision AS (
    INSERT INTO decisions (id, submission_id, action, source, reason, detail, categories)
    SELECT gen_random_uuid(), sub.id, %(action)s, %(source)s, %(reason)s, %(detail)s,
           %(categories)s
    FROM sub
    RETURNING id, created_at
), events AS (
    INSERT INTO audit_events (tenant_id, submission_id, event, actor, data)
    SELECT sub.tenant_id, sub.id, e.event, e.actor, e.data
    FROM sub, jsonb_to_recordset(%(events)s) AS e(ord int, event text, actor text, data jsonb)
    ORDER BY e.ord
), tokens AS (
    INSERT INTO tenant_token_usage (tenant_id, day, tokens)
    SELECT sub.tenant_id, CAST(timezone('UTC', now()) AS DATE), %(token_count)s
    FROM sub WHERE %(token_count)s > 0
    ON CONFLICT (tenant_id, day) DO UPDATE SET tokens = tenant_token_usage.tokens + EXCLUDED.tokens
), task AS (
    INSERT INTO review_tasks (id, tenant_id, submission_id, kind, status, priority, reason,
                              source, policy_version_id, categories, max_severity, due_at,
                              decision_id)
    SELECT gen_random_uuid(), sub.tenant_id, sub.id, %(task_kind)s, 'open', %(priority)s::int,
           %(reason)s, %(source)s, sub.policy_version_id, %(categories)s, %(max_severity)s::int,
           now() + make_interval(mins => %(sla_minutes)s::int), decision.id
    FROM sub, decision WHERE %(opens_task)s
)
SELECT sub.id, sub.tenant_id, sub.external_id, sub.callback_url, sub.policy_version_id,
       decision.created_at,
       coalesce(sub.callback_url,
                (SELECT callback_url FROM tenants WHERE tenants.id = sub.tenant_id)) IS NOT NULL
FROM sub, decision
"""


@dataclass(frozen=True)
class StoredDecision:
    """What announcing the decision needs: its submission's columns and when it was made."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    external_id: str
    # The submission's own callback URL; `announces` also counts the tenant's.
    callback_url: str | None
    policy_version_id: uuid.UUID
    decided_at: datetime
    announces: bool


def covers(judged: JudgedWork, decided_before: bool) -> bool:
    """Whether `store_first_judgement` may store this judgement (see the module docstring)."""
    return (
        not decided_before
        and not judged.retryable
        and all(
            result.error is None and (result.media is None or result.media.frame_count <= 1)
            for result in judged.images
        )
    )


def store_first_judgement(
    session: Session,
    *,
    submission_id: uuid.UUID,
    lease_token: uuid.UUID,
    policy_version_id: uuid.UUID,
    attempt: int,
    judged: JudgedWork,
    source: DecisionSource,
    purge_originals: int,
    review_sla_minutes: int,
    model_events: list[tuple[str, dict[str, Any]]],
) -> StoredDecision | None:
    """Store the judgement and its decision; None when the lease was lost and nothing was.

    `purge_originals` is how many uploaded originals a final decision deletes now (0 keeps
    them: retention is configured, or the images came by URL). `model_events` are the audit
    events of the model calls, (actor, data), recorded before the decision's own.
    """
    outcome = judged.outcome
    action = outcome.action
    final = action is not Action.review
    reason = outcome.reason.value if outcome.reason else None
    decided: dict[str, Any] = {"action": action.value, "source": source.value}
    if reason:
        decided["reason"] = reason
    events: list[dict[str, Any]] = [
        {"event": "model_verdict", "actor": actor, "data": data} for actor, data in model_events
    ]
    events.append(
        {"event": "decided" if final else "review_required", "actor": "system", "data": decided}
    )
    if final and purge_originals:
        events.append(
            {
                "event": "media_purged",
                "actor": "retention",
                "data": {"originals": purge_originals, "normalized": 0, "why": "final_decision"},
            }
        )
    for order, event in enumerate(events):
        event["ord"] = order
    stills = [(result.position, result.media.primary) for result in judged.images if result.media]
    categories = list(outcome.categories)
    params: dict[str, Any] = {
        "submission_id": submission_id,
        "lease_token": lease_token,
        "status": (SubmissionStatus.decided if final else SubmissionStatus.in_review).value,
        "action": action.value,
        "purge": final and purge_originals > 0,
        "positions": [position for position, _ in stills],
        "datas": [image.data for _, image in stills],
        "sha256s": [image.sha256 for _, image in stills],
        "widths": [image.width for _, image in stills],
        "heights": [image.height for _, image in stills],
        "mimes": [image.mime for _, image in stills],
        "source_mimes": [image.source_mime for _, image in stills],
        "tokens": [image.tokens for _, image in stills],
        "frame_counts": [1 for _ in stills],
        "attempt": attempt,
        "image_refs": Jsonb([list(ref) for ref in judged.image_refs]),
        "role": VerdictRole.live.value,
        "verdicts": Jsonb(_verdict_values(judged, submission_id, policy_version_id, attempt)),
        "source": source.value,
        "reason": reason,
        "detail": judged.detail[:2000] if judged.detail else None,
        "categories": Jsonb(categories),
        "events": Jsonb(events),
        "token_count": judged.tokens,
        "task_kind": TaskKind.review.value,
        "priority": task_priority(TaskKind.review, categories),
        "max_severity": max_severity(categories),
        "sla_minutes": review_sla_minutes,
        "opens_task": not final,
    }
    row = session.connection().exec_driver_sql(_STORE, params).one_or_none()
    if row is None:
        return None
    return StoredDecision(*row)


def _verdict_values(
    judged: JudgedWork, submission_id: uuid.UUID, policy_version_id: uuid.UUID, attempt: int
) -> list[dict[str, Any]]:
    """The verdict rows `verdict_rows` makes, as the statement's JSON records."""
    rows = verdict_rows(
        judged,
        submission_id=submission_id,
        policy_version_id=policy_version_id,
        attempt=attempt,
        role=VerdictRole.live,
    )
    return [
        {
            "sequence": row.sequence,
            "model": row.model,
            "prompt_sha256": row.prompt_sha256,
            "raw_output": row.raw_output,
            "parsed": row.parsed,
            "error": row.error,
            "finish_reason": row.finish_reason,
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "latency_ms": row.latency_ms,
            "rating_probability": row.rating_probability,
            "reused_from_id": str(row.reused_from_id) if row.reused_from_id else None,
        }
        for row in rows
    ]
