"""Verdict rows for a judgement: one per model call, or one pointing at a reused verdict.

Live and shadow judgements store their evidence the same way; only the role tells them apart.
"""

from __future__ import annotations

import uuid

from moderation.pipeline.judge import JudgedWork
from moderation.submissions.models import Verdict, VerdictRole
from moderation.vlm.client import ModelCall


def verdict_rows(
    judged: JudgedWork,
    *,
    submission_id: uuid.UUID,
    policy_version_id: uuid.UUID,
    attempt: int,
    role: VerdictRole,
) -> list[Verdict]:
    rows = [
        _call_row(call, submission_id, policy_version_id, attempt, sequence, role)
        for sequence, call in enumerate(judged.calls)
    ]
    if judged.reused is not None:
        rows.append(_reused_row(judged.reused, submission_id, policy_version_id, attempt, role))
    # Which file and frame each image of the prompt was, for the verdict's `image` index.
    for row in rows:
        row.image_refs = [list(ref) for ref in judged.image_refs]
    return rows


def _call_row(
    call: ModelCall,
    submission_id: uuid.UUID,
    policy_version_id: uuid.UUID,
    attempt: int,
    sequence: int,
    role: VerdictRole,
) -> Verdict:
    return Verdict(
        submission_id=submission_id,
        policy_version_id=policy_version_id,
        attempt=attempt,
        sequence=sequence,
        model=call.model,
        prompt_sha256=call.prompt_sha256,
        raw_output=call.raw_output,
        parsed=call.parsed,
        error=call.error,
        finish_reason=call.finish_reason,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        latency_ms=call.latency_ms,
        rating_probability=call.rating_probability,
        role=role,
    )


def _reused_row(
    original: Verdict,
    submission_id: uuid.UUID,
    policy_version_id: uuid.UUID,
    attempt: int,
    role: VerdictRole,
) -> Verdict:
    return Verdict(
        submission_id=submission_id,
        policy_version_id=policy_version_id,
        attempt=attempt,
        sequence=0,
        model=original.model,
        prompt_sha256=original.prompt_sha256,
        raw_output=original.raw_output,
        parsed=original.parsed,
        error=None,
        finish_reason=original.finish_reason,
        input_tokens=0,
        output_tokens=0,
        latency_ms=0,
        rating_probability=original.rating_probability,
        reused_from_id=original.id,
        role=role,
    )
