"""Shadow mode: a second version judges live traffic beside the active one and decides nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from moderation.config import Settings, get_settings
from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import Decision, ShadowOutcome
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.policies import service as policies
from moderation.policies.models import ShadowUsage
from moderation.submissions.models import Verdict
from moderation.vlm.client import VLMClient
from tests.factories import TenantKeys, image_b64, make_queued_submission, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer

SHADOW_WORDS = "Treat any visible weapon as a violation."


def shadow_draft(database_url: str, tenant: TenantKeys) -> int:
    """A v2 of the tenant's default policy with other instructions, put in shadow."""
    with session_scope(get_sessionmaker(database_url)) as session:
        _, v1 = policies.version_document(session, tenant.tenant_id, "default", 1)
        body = v1.model_dump(mode="json", exclude={"slug", "version"})
        body["instructions"] = f"{body['instructions']}\n{SHADOW_WORDS}"
        draft = policies.create_draft_version(session, tenant.tenant_id, "default", body)
        policies.shadow_version(session, tenant.tenant_id, "default", draft.version)
        return draft.version


@pytest.fixture
def runtime_with(migrated: str) -> Iterator[Any]:
    """A worker's runtime in this process, with settings of the test's choosing."""
    made: list[PipelineRuntime] = []

    def build(**settings: Any) -> PipelineRuntime:
        chosen: Settings = get_settings().model_copy(update=settings)
        runtime = PipelineRuntime(chosen, get_sessionmaker(migrated), VLMClient(chosen))
        made.append(runtime)
        return runtime

    yield build
    for runtime in made:
        runtime.vlm.close()


def rows(database_url: str, submission_id: uuid.UUID) -> dict[str, Any]:
    with session_scope(get_sessionmaker(database_url)) as session:
        return {
            "verdicts": [
                (v.role.value, v.policy_version_id, v.error is None)
                for v in session.scalars(
                    select(Verdict)
                    .where(Verdict.submission_id == submission_id)
                    .order_by(Verdict.created_at)
                )
            ],
            "decisions": [
                (d.action.value, d.source.value)
                for d in session.scalars(
                    select(Decision).where(Decision.submission_id == submission_id)
                )
            ],
            "shadow": [
                (o.action.value, o.reason, o.model_calls)
                for o in session.scalars(
                    select(ShadowOutcome).where(ShadowOutcome.submission_id == submission_id)
                )
            ],
        }


def usage(database_url: str, tenant: TenantKeys) -> tuple[int, int, int]:
    with session_scope(get_sessionmaker(database_url)) as session:
        row = session.get(ShadowUsage, (tenant.tenant_id, policies.today()))
        return (row.calls, row.skipped, row.failed) if row else (0, 0, 0)


def version_ids(database_url: str, tenant: TenantKeys, *numbers: int) -> list[uuid.UUID]:
    with session_scope(get_sessionmaker(database_url)) as session:
        return [policies.get_version(session, tenant.tenant_id, "default", n).id for n in numbers]


def test_both_versions_judge_and_only_the_active_one_decides(
    migrated, tenant, fake_vlm: FakeVLMServer, runtime_with
):
    shadow = shadow_draft(migrated, tenant)
    live_id, shadow_id = version_ids(migrated, tenant, 1, shadow)
    case = marker()
    fake_vlm.script(
        case,
        [
            fake.verdict(fake.safe_verdict(0.95)),
            fake.verdict(fake.unsafe_verdict("weapons_drugs", 3, 0.92)),
        ],
    )
    submission = make_queued_submission(migrated, tenant, f"caption {case}")

    moderate_submission(submission, runtime_with())

    stored = rows(migrated, submission)
    assert stored["decisions"] == [("allow", "model")]
    assert stored["verdicts"] == [("live", live_id, True), ("shadow", shadow_id, True)]
    assert stored["shadow"] == [("block", None, 1)]
    assert usage(migrated, tenant) == (1, 0, 0)
    # The same normalized image and caption, judged under the shadow's own rubric.
    live_request, shadow_request = fake_vlm.requests_for(case)
    assert SHADOW_WORDS not in live_request["messages"][0]["content"]
    assert SHADOW_WORDS in shadow_request["messages"][0]["content"]
    assert live_request["messages"][1] == shadow_request["messages"][1]


def test_the_daily_cap_skips_shadow_runs_and_counts_them(
    migrated, tenant, fake_vlm: FakeVLMServer, runtime_with
):
    shadow_draft(migrated, tenant)
    runtime = runtime_with(shadow_daily_call_cap=1)
    cases = [marker(), marker()]
    for case in cases:
        fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))])
    first, second = (make_queued_submission(migrated, tenant, f"caption {case}") for case in cases)

    moderate_submission(first, runtime)
    moderate_submission(second, runtime)

    assert rows(migrated, first)["shadow"] == [("block", None, 1)]
    over_cap = rows(migrated, second)
    assert over_cap["decisions"] == [("block", "model")]
    assert over_cap["shadow"] == [] and [v[0] for v in over_cap["verdicts"]] == ["live"]
    assert [len(fake_vlm.requests_for(case)) for case in cases] == [2, 1]
    assert usage(migrated, tenant) == (1, 1, 0)


def test_a_cap_of_zero_turns_shadows_off(migrated, tenant, fake_vlm, runtime_with):
    shadow_draft(migrated, tenant)
    case = marker()
    submission = make_queued_submission(migrated, tenant, f"caption {case}")
    moderate_submission(submission, runtime_with(shadow_daily_call_cap=0))
    assert rows(migrated, submission)["shadow"] == []
    assert len(fake_vlm.requests_for(case)) == 1


def test_a_failing_shadow_model_leaves_the_live_decision_alone(
    migrated, tenant, fake_vlm: FakeVLMServer, runtime_with
):
    shadow_draft(migrated, tenant)
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict(0.95)), fake.error(500)])
    submission = make_queued_submission(migrated, tenant, f"caption {case}")

    moderate_submission(submission, runtime_with(vlm_max_retries=1))

    stored = rows(migrated, submission)
    assert stored["decisions"] == [("allow", "model")]
    # The shadow's would-be outcome says why it could not judge; its calls are counted.
    assert stored["shadow"] == [("review", "model_unavailable", 2)]
    assert usage(migrated, tenant) == (2, 0, 0)


def test_a_shadow_run_that_crashes_is_counted_and_harmless(
    migrated, tenant, fake_vlm: FakeVLMServer, runtime_with
):
    shadow = shadow_draft(migrated, tenant)
    [shadow_id] = version_ids(migrated, tenant, shadow)
    case = marker()
    fake_vlm.script(
        case,
        [
            fake.verdict(fake.unsafe_verdict("hate", 3, 0.9)),
            fake.verdict(fake.safe_verdict(0.99)),
        ],
    )
    submission = make_queued_submission(migrated, tenant, f"caption {case}")
    # The shadow's write will collide with this row and fail, as a lost database would.
    with session_scope(get_sessionmaker(migrated)) as session:
        session.add(
            ShadowOutcome(
                submission_id=submission,
                policy_version_id=shadow_id,
                action="allow",
                categories=[],
                model_calls=0,
            )
        )

    moderate_submission(submission, runtime_with())

    stored = rows(migrated, submission)
    assert stored["decisions"] == [("block", "model")]
    assert [v[0] for v in stored["verdicts"]] == ["live"]  # the shadow's write rolled back
    assert usage(migrated, tenant) == (1, 0, 1)


def test_no_shadow_when_pinned_to_it_or_when_the_upload_could_not_be_seen(
    migrated, tenant, fake_vlm: FakeVLMServer, runtime_with
):
    shadow = shadow_draft(migrated, tenant)
    runtime = runtime_with()
    pinned_case = marker()
    pinned = make_queued_submission(
        migrated, tenant, f"caption {pinned_case}", policy=f"default@{shadow}"
    )
    moderate_submission(pinned, runtime)
    assert rows(migrated, pinned)["shadow"] == []
    assert len(fake_vlm.requests_for(pinned_case)) == 1

    unseen_case = marker()
    unseen = make_queued_submission(migrated, tenant, f"caption {unseen_case}", images=0)
    with session_scope(get_sessionmaker(migrated)) as session:
        from moderation.submissions.models import SubmissionImage

        session.add(SubmissionImage(submission_id=unseen, position=0, source_data=b"not an image"))
    moderate_submission(unseen, runtime)
    stored = rows(migrated, unseen)
    assert stored["decisions"] == [("review", "system")]
    assert stored["shadow"] == [] and fake_vlm.requests_for(unseen_case) == []


def test_shadow_through_the_api_and_the_worker(client: httpx.Client, tenant, fake_vlm):
    admin = tenant.headers("admin")
    v1 = client.get("/v1/policies/default/versions/1", headers=admin).json()["document"]
    body = {k: v for k, v in v1.items() if k not in ("slug", "version")}
    body["instructions"] += f"\n{SHADOW_WORDS}"
    assert client.post("/v1/policies/default/versions", json=body, headers=admin).status_code == 201
    assert client.post("/v1/policies/default/versions/2/shadow", headers=admin).status_code == 200
    case = marker()
    fake_vlm.script(
        case,
        [
            fake.verdict(fake.safe_verdict(0.95)),
            fake.verdict(fake.unsafe_verdict("weapons_drugs", 4, 0.9)),
        ],
    )
    accepted = client.post(
        "/v1/submissions",
        json={"external_id": case, "text": f"caption {case}", "images": [{"data": image_b64()}]},
        headers=tenant.headers(),
    ).json()
    result = wait_for_outcome(client, accepted["id"], tenant.headers())
    # The shadow is judged after the live decision is stored: it may land a moment later.
    deadline = time.monotonic() + 60
    while not result["shadow"] and time.monotonic() < deadline:
        time.sleep(0.2)
        result = client.get(f"/v1/submissions/{accepted['id']}", headers=tenant.headers()).json()

    assert result["decision"]["action"] == "allow"
    assert [(v["policy_version"], v["role"]) for v in result["verdicts"]] == [(1, "live")]
    [shadowed] = result["shadow"]
    assert (shadowed["policy"], shadowed["policy_version"]) == ("default", 2)
    assert shadowed["action"] == "block" and shadowed["model_calls"] == 1
    assert [(v["policy_version"], v["role"]) for v in shadowed["verdicts"]] == [(2, "shadow")]
    audit = client.get(
        f"/v1/submissions/{accepted['id']}/audit", headers=tenant.headers("reviewer")
    )
    assert "shadow_judged" in [event["event"] for event in audit.json()]
    metrics = client.get("/metrics").text
    assert "moderation_shadow_model_calls_total" in metrics
    assert 'moderation_shadow_runs_skipped_total{reason="daily_cap"}' in metrics
