"""Shadow runs: a second version of the policy judges a live submission, for comparison only.

The shadow is judged after the live decision is committed, through the same `judge_content` and
on the same normalized images, so the two differ only in their rubric. Nothing it does reaches
the live decision: its failures are logged and counted, and a tenant's shadow calls stop at a
daily cap (MODERATION_SHADOW_DAILY_CALL_CAP).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from moderation.audit.service import record_event
from moderation.database import session_scope
from moderation.decisions.models import ShadowOutcome
from moderation.pipeline.judge import JudgedWork, SourceImage, judge_content
from moderation.pipeline.runtime import WORKER_ACTOR, PipelineRuntime
from moderation.pipeline.verdicts import verdict_rows
from moderation.policies import service as policies
from moderation.policies.schemas import PolicyDocument
from moderation.submissions.models import VerdictRole
from moderation.tenants.service import record_token_usage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowVersion:
    version_id: uuid.UUID
    policy: PolicyDocument


@dataclass(frozen=True)
class ShadowRun:
    submission_id: uuid.UUID
    tenant_id: uuid.UUID
    attempt: int
    text: str | None
    image_count: int
    version: ShadowVersion


def judge_in_shadow(
    run: ShadowRun, live: JudgedWork, runtime: PipelineRuntime, *, deadline: float
) -> bool:
    """Judge and store the shadow's would-be outcome; True when one was stored. Never raises."""
    images = _images_the_live_run_saw(run, live)
    if images is None:
        # The live run could not see the upload; the shadow would only repeat that failure.
        return False
    try:
        with session_scope(runtime.sessions) as session:
            allowed = policies.reserve_shadow_call(
                session, run.tenant_id, runtime.settings.shadow_daily_call_cap
            )
    except Exception:
        logger.exception("could not reserve a shadow call for %s", run.submission_id)
        return False
    if not allowed:
        logger.info(
            "shadow cap reached for tenant %s; %s not shadowed", run.tenant_id, run.submission_id
        )
        return False
    judged: JudgedWork | None = None
    try:
        judged = judge_content(
            images,
            run.text,
            run.version.policy,
            runtime,
            deadline=deadline,
            cache_tenant=run.tenant_id,
        )
        _store(run, judged, runtime)
        return True
    except Exception:
        logger.exception(
            "shadow judgement of %s under version %s failed; the live decision stands",
            run.submission_id,
            run.version.version_id,
        )
        _count_failure(run, made=len(judged.calls) if judged is not None else 0, runtime=runtime)
        return False


def _images_the_live_run_saw(run: ShadowRun, live: JudgedWork) -> list[SourceImage] | None:
    seen = [result for result in live.images if result.media is not None]
    if len(seen) != run.image_count:
        return None
    # The whole media, every frame the live run showed the model, not only the first.
    return [SourceImage(position=r.position, url=None, normalized=r.media) for r in seen]


def _store(run: ShadowRun, judged: JudgedWork, runtime: PipelineRuntime) -> None:
    outcome = judged.outcome
    with session_scope(runtime.sessions) as session:
        session.add_all(
            verdict_rows(
                judged,
                submission_id=run.submission_id,
                policy_version_id=run.version.version_id,
                attempt=run.attempt,
                role=VerdictRole.shadow,
            )
        )
        session.add(
            ShadowOutcome(
                submission_id=run.submission_id,
                policy_version_id=run.version.version_id,
                action=outcome.action,
                reason=outcome.reason.value if outcome.reason else None,
                detail=judged.detail[:2000] if judged.detail else None,
                categories=outcome.categories,
                model_calls=len(judged.calls),
            )
        )
        policies.settle_shadow_calls(session, run.tenant_id, reserved=1, made=len(judged.calls))
        # Shadow calls are model calls like any other: they count against the token budget.
        record_token_usage(session, run.tenant_id, judged.tokens)
        data: dict[str, object] = {
            "policy_version": run.version.policy.version,
            "action": outcome.action.value,
            "model_calls": len(judged.calls),
        }
        if outcome.reason:
            data["reason"] = outcome.reason.value
        record_event(session, run.tenant_id, run.submission_id, "shadow_judged", WORKER_ACTOR, data)


def _count_failure(run: ShadowRun, *, made: int, runtime: PipelineRuntime) -> None:
    try:
        with session_scope(runtime.sessions) as session:
            policies.settle_shadow_calls(session, run.tenant_id, reserved=1, made=made, failed=True)
    except Exception:
        logger.exception("could not count the failed shadow run of %s", run.submission_id)
