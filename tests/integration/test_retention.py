"""Privacy by default: the uploaded original, EXIF GPS position and camera serial included, is gone
once the decision is final; kept while a person may still need it; and the retention settings
keep it, or the normalized images, exactly as long as they say."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from moderation.audit.service import events_of
from moderation.config import Settings, get_settings
from moderation.core.errors import NotFound
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, session_scope
from moderation.decisions.models import Action, DecisionSource
from moderation.decisions.rules import Outcome
from moderation.decisions.service import record_decision
from moderation.pipeline.retention import purge_expired_media
from moderation.pipeline.runtime import PipelineRuntime
from moderation.submissions import repository, service
from moderation.submissions.models import Submission, SubmissionImage, SubmissionImageFrame
from moderation.tenants.models import Role
from moderation.tenants.service import Principal
from tests.factories import (
    TenantKeys,
    image_bytes,
    jpeg_with_gps,
    make_submission,
    marker,
    wait_for_outcome,
)
from tests.fakes import fake_vlm as fake

GPS_JPEG = jpeg_with_gps()


def stored_image(database_url: str, submission_id: str) -> SubmissionImage:
    with session_scope(get_sessionmaker(database_url)) as session:
        image = session.scalars(
            select(SubmissionImage).where(SubmissionImage.submission_id == uuid.UUID(submission_id))
        ).one()
        session.expunge(image)
        return image


def audit_events(database_url: str, submission_id: uuid.UUID) -> list[tuple[str, dict]]:
    with session_scope(get_sessionmaker(database_url)) as session:
        return [(event.event, event.data) for event in events_of(session, submission_id)]


def submit_photo(client, tenant: TenantKeys, fake_vlm, reply: fake.Reply) -> dict:
    case = marker()
    fake_vlm.script(case, [reply])
    response = client.post(
        "/v1/submissions",
        json={
            "external_id": case,
            "text": f"holiday {case}",
            "images": [{"data": base64.b64encode(GPS_JPEG).decode()}],
        },
        headers=tenant.headers(),
    )
    assert response.status_code == 202, response.text
    return wait_for_outcome(client, response.json()["id"], tenant.headers())


# At the decision --------------------------------------------------------------------------------


def test_the_original_with_its_gps_position_is_gone_after_a_final_decision(
    client, tenant, fake_vlm, migrated
):
    result = submit_photo(client, tenant, fake_vlm, fake.verdict(fake.safe_verdict()))
    assert result["decision"]["action"] == "allow"

    image = stored_image(migrated, result["id"])
    assert image.source_data is None and image.source_purged_at is not None
    # What the decision rests on stays: the clean normalized copy and what identifies the upload.
    assert image.data is not None and b"Spy Camera" not in image.data
    assert image.source_sha256 and image.sha256 and image.source_mime == "image/jpeg"
    assert (image.width, image.height) == (
        result["images"][0]["width"],
        result["images"][0]["height"],
    )
    assert result["images"][0]["original_purged_at"] is not None
    purges = [
        data
        for event, data in audit_events(migrated, uuid.UUID(result["id"]))
        if event == "media_purged"
    ]
    assert purges == [{"originals": 1, "normalized": 0, "why": "final_decision"}]
    served = client.get(
        f"/v1/submissions/{result['id']}/images/0", headers=tenant.headers("reviewer")
    )
    assert served.status_code == 200
    assert b"Exif" not in served.content and b"Spy Camera" not in served.content


@pytest.mark.parametrize(
    "reply",
    [fake.verdict(fake.safe_verdict(0.5)), fake.error(503)],
    ids=["low-confidence", "model-down"],
)
def test_the_original_stays_while_the_submission_is_in_review(
    client, tenant, fake_vlm, migrated, reply
):
    result = submit_photo(client, tenant, fake_vlm, reply)
    assert result["status"] == "in_review"

    image = stored_image(migrated, result["id"])
    assert image.source_data == GPS_JPEG
    assert image.source_purged_at is None
    assert "media_purged" not in [
        event for event, _ in audit_events(migrated, uuid.UUID(result["id"]))
    ]


def test_a_reviewers_final_decision_deletes_the_original(migrated, tenant):
    with session_scope(get_sessionmaker(migrated)) as session:
        submission = make_submission(session, tenant.tenant_id, originals=[GPS_JPEG])
        record_decision(session, submission, Outcome(Action.review), source=DecisionSource.model)
        assert repository.source_bytes(session, submission.id, 0) == GPS_JPEG
        record_decision(
            session, submission, Outcome(Action.block), source=DecisionSource.reviewer, actor="ann"
        )
        assert repository.source_bytes(session, submission.id, 0) is None


# The retention sweep ----------------------------------------------------------------------------


def runtime_with(**retention: float | None) -> PipelineRuntime:
    return PipelineRuntime.from_settings(get_settings().model_copy(update=retention))


def decided_submission(
    database_url: str, tenant: TenantKeys, settings: Settings, action: Action = Action.allow
) -> uuid.UUID:
    with session_scope(get_sessionmaker(database_url)) as session:
        submission = make_submission(session, tenant.tenant_id, originals=[GPS_JPEG])
        record_decision(
            session, submission, Outcome(action), source=DecisionSource.model, settings=settings
        )
        return submission.id


def test_originals_are_kept_for_the_retention_days_then_purged(migrated, tenant):
    runtime = runtime_with(retain_originals_days=2)
    decided = decided_submission(migrated, tenant, runtime.settings)
    in_review = decided_submission(migrated, tenant, runtime.settings, Action.review)
    sessions = get_sessionmaker(migrated)

    purge_expired_media(runtime, now=utcnow() + timedelta(days=1))
    with session_scope(sessions) as session:
        assert repository.source_bytes(session, decided, 0) == GPS_JPEG

    purged = purge_expired_media(runtime, now=utcnow() + timedelta(days=3))
    assert purged.originals >= 1
    with session_scope(sessions) as session:
        assert repository.source_bytes(session, decided, 0) is None
        # In review: a person may still need it, and re-judging starts from it.
        assert repository.source_bytes(session, in_review, 0) == GPS_JPEG
    [purge] = [data for event, data in audit_events(migrated, decided) if event == "media_purged"]
    assert purge == {"originals": 1, "normalized": 0, "why": "retention", "retain_days": 2}


def test_normalized_images_and_frames_are_purged_after_their_days_keeping_hashes(migrated, tenant):
    runtime = runtime_with(retain_normalized_days=30)
    submission_id = decided_submission(migrated, tenant, runtime.settings)
    sessions = get_sessionmaker(migrated)
    with session_scope(sessions) as session:
        repository.update_image(
            session,
            submission_id,
            0,
            {"data": image_bytes(fmt="JPEG"), "sha256": "a" * 64, "mime": "image/jpeg"},
        )
        session.add(
            SubmissionImageFrame(
                submission_id=submission_id, position=0, frame=3, time_ms=300, data=b"jpeg",
                sha256="b" * 64, width=56, height=56, mime="image/jpeg", tokens=4,
            )
        )  # fmt: skip
    principal = Principal(tenant_id=tenant.tenant_id, role=Role.reviewer, key_id=uuid.uuid4())

    purge_expired_media(runtime, now=utcnow() + timedelta(days=29))
    with session_scope(sessions) as session:
        assert (
            service.normalized_image(session, principal, submission_id, 0)[0][:3] == b"\xff\xd8\xff"
        )

    purged = purge_expired_media(runtime, now=utcnow() + timedelta(days=31))
    assert purged.normalized >= 2
    with session_scope(sessions) as session:
        image = session.scalars(
            select(SubmissionImage).where(SubmissionImage.submission_id == submission_id)
        ).one()
        assert image.data is None and image.data_purged_at is not None
        assert image.sha256 == "a" * 64
        assert session.get(Submission, submission_id).action is Action.allow
        with pytest.raises(NotFound, match="retention"):
            service.normalized_image(session, principal, submission_id, 0)
        with pytest.raises(NotFound, match="retention"):
            service.frame_image(session, principal, submission_id, 0, 3)
