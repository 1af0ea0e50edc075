from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from moderation.config import Settings
from moderation.core.errors import UnsupportedMediaType, ValidationFailed
from moderation.core.openapi import documented_model
from moderation.core.pagination import Page
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.decisions.models import Action
from moderation.submissions import examples, service
from moderation.submissions.models import SubmissionStatus
from moderation.submissions.schemas import (
    AuditEventRead,
    SubmissionAccepted,
    SubmissionCreate,
    SubmissionRead,
    SubmissionSummary,
)
from moderation.tenants.dependencies import Ingest, IngestOrReviewer, Reviewer
from moderation.webhooks import service as webhooks

router = APIRouter(prefix="/v1/submissions", tags=["submissions"])


def _validation_problem(exc: ValidationError, where: str) -> ValidationFailed:
    errors = [
        {"loc": [where, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    return ValidationFailed("the submission is not valid", errors=errors)


async def _read_json(request: Request, settings: Settings) -> service.NewSubmission:
    # BodySizeLimit (main.py) has already capped how much of this can arrive; the bytes were
    # read (and their signature checked) before parsing, and Starlette keeps them.
    body = await request.body()

    def parse() -> service.NewSubmission:
        try:
            parsed = SubmissionCreate.model_validate_json(body)
        except ValidationError as exc:
            raise _validation_problem(exc, "body") from exc
        return service.new_submission_from_json(parsed, settings)

    # Parsing and base64-decoding megabytes of images is CPU work: keep it off the event loop.
    result: service.NewSubmission = await run_in_threadpool(parse)
    return result


async def _read_multipart(request: Request, settings: Settings) -> service.NewSubmission:
    form = await request.form(
        max_files=settings.image_max_count, max_fields=16, max_part_size=1024 * 1024
    )
    fields: dict[str, Any] = {}
    for name in ("external_id", "text", "policy", "callback_url", "metadata"):
        value = form.get(name)
        if isinstance(value, str):
            fields[name] = value
    if "metadata" in fields:
        try:
            fields["metadata"] = json.loads(fields["metadata"])
        except json.JSONDecodeError as exc:
            raise ValidationFailed(
                "metadata must be a JSON object",
                errors=[{"loc": ["body", "metadata"], "msg": str(exc), "type": "json_invalid"}],
            ) from exc
    uploads = []
    for position, item in enumerate(form.getlist("images")):
        if not isinstance(item, UploadFile):
            raise ValidationFailed(
                "images must be file parts",
                errors=[
                    {
                        "loc": ["body", "images", position],
                        "msg": "not a file",
                        "type": "value_error",
                    }
                ],
            )
        uploads.append(item)
    images: list[bytes] = []
    for position, upload in enumerate(uploads):
        raw = await upload.read(settings.image_max_bytes + 1)
        service.check_image_size(raw, position, settings)
        images.append(raw)
    try:
        # Validate the text fields with the JSON schema; images are already bytes here.
        parsed = SubmissionCreate.model_validate(
            {**fields, "images": [{"data": "AA=="} for _ in images]}
        )
    except ValidationError as exc:
        raise _validation_problem(exc, "body") from exc
    return service.NewSubmission(
        external_id=parsed.external_id,
        text=parsed.text,
        images=[service.ImageSource(data=raw) for raw in images],
        metadata=parsed.metadata,
        policy=parsed.policy,
        callback_url=str(parsed.callback_url) if parsed.callback_url else None,
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SubmissionAccepted,
    responses={
        200: {"model": SubmissionAccepted, "description": "already submitted: the same payload"},
        **problem_responses(409, 415),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": documented_model(SubmissionCreate),
                },
                "multipart/form-data": {"schema": examples.MULTIPART_FORM},
            },
        }
    },
)
async def create_submission(
    request: Request, response: Response, session: DbSession, principal: Ingest
) -> SubmissionAccepted | JSONResponse:
    """Accept an upload for moderation; the decision follows by callback or polling."""
    settings: Settings = request.app.state.settings
    # A tenant that signs its submissions has the raw bytes verified before anything is parsed.
    signed = await run_in_threadpool(
        webhooks.check_signed_submission,
        session,
        principal.tenant_id,
        request.headers,
        await request.body(),
    )
    if signed.repeat_of is not None:
        return JSONResponse(
            signed.repeat_of.body,
            status_code=signed.repeat_of.status_code,
            headers={"Location": f"/v1/submissions/{signed.repeat_of.body['id']}"},
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        new = await _read_json(request, settings)
    elif content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        new = await _read_multipart(request, settings)
    else:
        raise UnsupportedMediaType(
            "send application/json, multipart/form-data or application/x-www-form-urlencoded"
        )
    submission, created = await run_in_threadpool(
        service.create_submission, session, principal, new, settings
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/submissions/{submission.id}"
    accepted = SubmissionAccepted(
        id=submission.id, external_id=submission.external_id, status=submission.status
    )
    if signed.webhook_id is not None:
        await run_in_threadpool(
            webhooks.remember_answer,
            session,
            principal.tenant_id,
            signed.webhook_id,
            submission_id=submission.id,
            status_code=response.status_code or status.HTTP_202_ACCEPTED,
            body=accepted.model_dump(mode="json"),
        )
    return accepted


@router.get("", response_model=Page[SubmissionSummary])
def list_submissions(
    session: DbSession,
    principal: IngestOrReviewer,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    external_id: str | None = None,
    status: SubmissionStatus | None = None,
    action: Action | None = None,
    since: datetime | None = None,
) -> Page[SubmissionSummary]:
    return service.list_submissions(
        session,
        principal,
        limit=limit,
        cursor=cursor,
        external_id=external_id,
        status=status,
        action=action,
        since=since,
    )


@router.get("/{submission_id}", response_model=SubmissionRead)
def get_submission(
    submission_id: uuid.UUID, session: DbSession, principal: IngestOrReviewer
) -> SubmissionRead:
    return service.read_submission(session, principal, submission_id)


@router.get(
    "/{submission_id}/images/{position}",
    response_class=Response,
    responses={
        200: {
            "description": "the normalized image: what the model and the reviewer see",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def get_submission_image(
    submission_id: uuid.UUID, position: int, session: DbSession, principal: Reviewer
) -> Response:
    """One image of a submission, after decoding, metadata stripping and resizing."""
    data, mime = service.normalized_image(session, principal, submission_id, position)
    return Response(content=data, media_type=mime, headers={"Cache-Control": "private"})


@router.get("/{submission_id}/audit", response_model=list[AuditEventRead])
def get_submission_audit(
    submission_id: uuid.UUID, session: DbSession, principal: Reviewer
) -> list[AuditEventRead]:
    """The append-only history: received, queued, model verdicts, decisions, requeues."""
    return service.audit_trail(session, principal, submission_id)
