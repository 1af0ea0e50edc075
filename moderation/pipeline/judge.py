"""Judge content under one policy version: fetch, decode, cache lookup, model call, rules.

Lease-free and write-free, so live moderation, backtests and shadow runs share one model path:
the same media handling, client, retries, parser and decision rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from moderation.database import read_scope
from moderation.decisions.models import ReviewReason
from moderation.decisions.rules import Outcome, decide, failure
from moderation.media.decode import (
    DecodeLimits,
    NormalizedImage,
    NormalizedMedia,
    normalize_media,
)
from moderation.media.errors import ImageFetchError, MediaError, OriginalGone
from moderation.media.fetch import fetch_image
from moderation.pipeline.runtime import PipelineRuntime
from moderation.policies.schemas import PolicyDocument
from moderation.submissions import repository
from moderation.submissions.models import Verdict
from moderation.vlm.client import ModelCall
from moderation.vlm.prompt import FrameOf, ModelImage
from moderation.vlm.slots import CallPriority
from moderation.vlm.verdict import ModelVerdict


@dataclass(frozen=True)
class SourceImage:
    position: int
    url: str | None
    data: bytes | None = field(default=None, repr=False)
    # Reads the inline upload from storage when it is about to be decoded, so a task holds one
    # upload's bytes at a time instead of every image's for its whole run.
    load: Callable[[], bytes | None] | None = field(default=None, repr=False)
    # Already fetched and normalized, every frame shown (a shadow run after the live one, a
    # backtest over stored images): judged as is, so every judgement sees the same pictures.
    normalized: NormalizedMedia | None = None


@dataclass
class ImageResult:
    position: int
    media: NormalizedMedia | None = None
    error: str | None = None

    @property
    def normalized(self) -> NormalizedImage | None:
        """The first frame: the image itself for stills."""
        return self.media.primary if self.media is not None else None


@dataclass
class JudgedWork:
    outcome: Outcome
    detail: str | None = None
    images: list[ImageResult] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)
    # An earlier verdict for the identical prompt, used instead of a model call.
    reused: Verdict | None = None
    # For each image the model was shown, in prompt order: (uploaded file's position, frame).
    image_refs: list[tuple[int, int]] = field(default_factory=list)
    # The failure may pass by itself (model or image host down): worth judging again later.
    retryable: bool = False

    @property
    def tokens(self) -> int:
        """Model tokens these calls spent (prompt and completion), for the tenant's budget."""
        return sum((call.input_tokens or 0) + (call.output_tokens or 0) for call in self.calls)


def judge_content(
    images: list[SourceImage],
    text: str | None,
    policy: PolicyDocument,
    runtime: PipelineRuntime,
    *,
    deadline: float,
    cache_tenant: uuid.UUID | None = None,
    priority: CallPriority = CallPriority.live,
    budget_exhausted: str | None = None,
) -> JudgedWork:
    """Everything between the stored submission and its outcome; raises only on bugs.

    With `cache_tenant`, an earlier verdict of that tenant for the byte-identical prompt is
    reused instead of a model call. The model call waits for one of the process's model slots
    at `priority` (see `moderation.vlm.slots`); no slot before the deadline is the same as a
    model that did not answer. `budget_exhausted` (why the
    tenant may not spend more model tokens today) stops the judgement where a model call would
    be needed, in review; media checks and reused verdicts cost no tokens and still run.
    """
    results: list[ImageResult] = []
    for source in images:
        result = ImageResult(position=source.position, media=source.normalized)
        results.append(result)
        if source.normalized is not None:
            continue
        try:
            result.media = _normalize_source(source, runtime, deadline)
        except MediaError as exc:
            # One image we cannot see makes the whole upload unjudgeable.
            result.error = str(exc)
            return JudgedWork(
                failure(ReviewReason(exc.reason)),
                detail=f"image {source.position}: {exc}",
                images=results,
                retryable=isinstance(exc, ImageFetchError) and exc.transient,
            )

    model_images, image_refs = _model_images(results)
    if cache_tenant is not None and runtime.settings.verdict_cache:
        reused = _reusable_verdict(cache_tenant, policy, model_images, text, runtime)
        if reused is not None:
            verdict = ModelVerdict.model_validate(reused.parsed)
            return JudgedWork(
                with_evidence(decide(verdict, policy), verdict, image_refs),
                detail=verdict.rationale,
                images=results,
                reused=reused,
                image_refs=image_refs,
            )
    if budget_exhausted is not None:
        return JudgedWork(
            failure(ReviewReason.budget_exceeded), detail=budget_exhausted, images=results
        )
    with runtime.model_slots.hold(priority, deadline=deadline) as held:
        if not held:
            return JudgedWork(
                failure(ReviewReason.model_unavailable),
                detail="no model slot came free before the deadline",
                images=results,
                retryable=True,
            )
        judgement = runtime.vlm.judge(policy, model_images, text, deadline=deadline)
    if judgement.failure_reason is not None or judgement.verdict is None:
        last_error = judgement.failure_detail or next(
            (c.error for c in reversed(judgement.calls) if c.error), None
        )
        reason = ReviewReason(judgement.failure_reason or "invalid_model_output")
        return JudgedWork(
            failure(reason),
            detail=last_error,
            images=results,
            calls=judgement.calls,
            image_refs=image_refs,
            retryable=reason is ReviewReason.model_unavailable,
        )
    outcome = with_evidence(decide(judgement.verdict, policy), judgement.verdict, image_refs)
    return JudgedWork(
        outcome,
        detail=judgement.verdict.rationale,
        images=results,
        calls=judgement.calls,
        image_refs=image_refs,
    )


def _normalize_source(
    source: SourceImage, runtime: PipelineRuntime, deadline: float
) -> NormalizedMedia:
    """The upload's pictures, normalized. The raw bytes live only as long as this call."""
    raw = source.data
    if raw is None and source.load is not None:
        raw = source.load()
    if raw is None:
        if source.url is None:
            raise OriginalGone(
                "the original upload was deleted after its final decision; only the "
                "normalized image remains"
            )
        raw = fetch_image(source.url, runtime.settings)
    return normalize_media(
        raw,
        DecodeLimits.from_settings(runtime.settings),
        budget=runtime.decode_budget,
        deadline=deadline,
    )


def _model_images(results: list[ImageResult]) -> tuple[list[ModelImage], list[tuple[int, int]]]:
    """Every frame of every image, in order, and where each came from."""
    model_images: list[ModelImage] = []
    refs: list[tuple[int, int]] = []
    for result in results:
        media = result.media
        if media is None:
            continue
        for frame in media.frames:
            image = frame.image
            label = (
                FrameOf(result.position, frame.index, media.frame_count, frame.time_ms)
                if media.frame_count > 1
                else None
            )
            model_images.append(ModelImage(image.data, image.mime, image.sha256, label))
            refs.append((result.position, frame.index))
    return model_images, refs


def with_evidence(
    outcome: Outcome, verdict: ModelVerdict, image_refs: list[tuple[int, int]]
) -> Outcome:
    """Name, for each category of the outcome, the uploaded file and frame that show it.

    The model points at an image of the prompt; a reviewer needs the file and, for an
    animation, the frame: the one the model named for the strongest violation of the category.
    """
    if not outcome.categories:
        return outcome
    categories = []
    for summary in outcome.categories:
        evidence = max(
            (
                violation
                for violation in verdict.violations
                if violation.category == summary["category"]
                and violation.image is not None
                and violation.image < len(image_refs)
            ),
            key=lambda violation: (violation.severity, violation.confidence),
            default=None,
        )
        if evidence is not None and evidence.image is not None:
            position, frame = image_refs[evidence.image]
            summary = {**summary, "position": position, "frame": frame}
        categories.append(summary)
    return replace(outcome, categories=categories)


def _reusable_verdict(
    tenant_id: uuid.UUID,
    policy: PolicyDocument,
    images: list[ModelImage],
    text: str | None,
    runtime: PipelineRuntime,
) -> Verdict | None:
    """The same images, text, policy version and model were judged before for this tenant."""
    fingerprint = runtime.vlm.prompt_fingerprint(policy, images, text)
    with read_scope(runtime.sessions) as session:
        verdict = repository.find_reusable_verdict(
            session, tenant_id, fingerprint, runtime.vlm.model
        )
        if verdict is not None:
            session.expunge(verdict)
        return verdict
