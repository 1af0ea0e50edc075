"""Judge content under one policy version: fetch, decode, cache lookup, model call, rules.

Lease-free and write-free, so live moderation, backtests and shadow runs share one model path:
the same media handling, client, retries, parser and decision rules.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from moderation.database import session_scope
from moderation.decisions.models import ReviewReason
from moderation.decisions.rules import Outcome, decide, failure
from moderation.media.decode import NormalizedImage, normalize_image
from moderation.media.errors import MediaError
from moderation.media.fetch import fetch_image
from moderation.pipeline.runtime import PipelineRuntime
from moderation.policies.schemas import PolicyDocument
from moderation.submissions import repository
from moderation.submissions.models import Verdict
from moderation.vlm.client import ModelCall
from moderation.vlm.prompt import ModelImage
from moderation.vlm.slots import CallPriority
from moderation.vlm.verdict import ModelVerdict


@dataclass(frozen=True)
class SourceImage:
    position: int
    url: str | None
    data: bytes | None
    # Already fetched and normalized (a shadow run after the live one, a backtest over stored
    # images): judged as is, so every judgement of an upload sees the same bytes.
    normalized: NormalizedImage | None = None


@dataclass
class ImageResult:
    position: int
    normalized: NormalizedImage | None = None
    error: str | None = None


@dataclass
class JudgedWork:
    outcome: Outcome
    detail: str | None = None
    images: list[ImageResult] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)
    # An earlier verdict for the identical prompt, used instead of a model call.
    reused: Verdict | None = None


def judge_content(
    images: list[SourceImage],
    text: str | None,
    policy: PolicyDocument,
    runtime: PipelineRuntime,
    *,
    deadline: float,
    cache_tenant: uuid.UUID | None = None,
    priority: CallPriority = CallPriority.live,
) -> JudgedWork:
    """Everything between the stored submission and its outcome; raises only on bugs.

    With `cache_tenant`, an earlier verdict of that tenant for the byte-identical prompt is
    reused instead of a model call. The model call waits for one of the process's model slots
    at `priority` (see `moderation.vlm.slots`); no slot before the deadline is the same as a
    model that did not answer.
    """
    settings = runtime.settings
    results: list[ImageResult] = []
    for source in images:
        result = ImageResult(position=source.position, normalized=source.normalized)
        results.append(result)
        if source.normalized is not None:
            continue
        try:
            raw = (
                source.data if source.data is not None else fetch_image(source.url or "", settings)
            )
            result.normalized = normalize_image(
                raw,
                max_bytes=settings.image_max_bytes,
                max_pixels=settings.image_max_pixels,
                unit=settings.patch_unit,
                max_tokens=settings.image_token_budget,
            )
        except MediaError as exc:
            # One image we cannot see makes the whole upload unjudgeable.
            result.error = str(exc)
            return JudgedWork(
                failure(ReviewReason(exc.reason)),
                detail=f"image {source.position}: {exc}",
                images=results,
            )

    model_images = [
        ModelImage(data=r.normalized.data, mime=r.normalized.mime, sha256=r.normalized.sha256)
        for r in results
        if r.normalized is not None
    ]
    if cache_tenant is not None and settings.verdict_cache:
        reused = _reusable_verdict(cache_tenant, policy, model_images, text, runtime)
        if reused is not None:
            verdict = ModelVerdict.model_validate(reused.parsed)
            return JudgedWork(
                decide(verdict, policy), detail=verdict.rationale, images=results, reused=reused
            )
    with runtime.model_slots.hold(priority, deadline=deadline) as held:
        if not held:
            return JudgedWork(
                failure(ReviewReason.model_unavailable),
                detail="no model slot came free before the deadline",
                images=results,
            )
        judgement = runtime.vlm.judge(policy, model_images, text, deadline=deadline)
    if judgement.failure_reason is not None or judgement.verdict is None:
        last_error = next((c.error for c in reversed(judgement.calls) if c.error), None)
        reason = ReviewReason(judgement.failure_reason or "invalid_model_output")
        return JudgedWork(failure(reason), detail=last_error, images=results, calls=judgement.calls)
    outcome = decide(judgement.verdict, policy)
    return JudgedWork(
        outcome, detail=judgement.verdict.rationale, images=results, calls=judgement.calls
    )


def _reusable_verdict(
    tenant_id: uuid.UUID,
    policy: PolicyDocument,
    images: list[ModelImage],
    text: str | None,
    runtime: PipelineRuntime,
) -> Verdict | None:
    """The same images, text, policy version and model were judged before for this tenant."""
    fingerprint = runtime.vlm.prompt_fingerprint(policy, images, text)
    with session_scope(runtime.sessions) as session:
        verdict = repository.find_reusable_verdict(
            session, tenant_id, fingerprint, runtime.vlm.model
        )
        if verdict is not None:
            session.expunge(verdict)
        return verdict
