from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from moderation.config import Settings
from moderation.core.errors import (
    BadRequest,
    DomainError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from moderation.core.fields import ImagePosition, Text
from moderation.core.json_limits import load_json
from moderation.core.openapi import documented_model
from moderation.core.pagination import CursorParam, Page
from moderation.core.problems import field_errors, problem_responses
from moderation.database import (
    DbSession,
    request_session_scope,
)
from moderation.decisions.models import Action
from moderation.submissions import examples, service
from moderation.submissions.models import SubmissionStatus
from moderation.submissions.schemas import (
    METADATA_MAX_BYTES,
    AuditEventRead,
    SubmissionAccepted,
    SubmissionCreate,
    SubmissionRead,
    SubmissionSummary,
)
from moderation.tenants import service as tenants
from moderation.tenants.dependencies import Ingest, IngestOrReviewer, Reviewer
from moderation.tenants.service import Principal
from moderation.webhooks import service as webhooks

router = APIRouter(prefix="/v1/submissions", tags=["submissions"])

# Image positions and frame numbers are stored as 32-bit integers.
_MAX_INDEX = 2**31 - 1


def _validation_problem(exc: ValidationError, where: str) -> ValidationFailed:
    errors = field_errors(exc.errors(include_url=False, include_input=False), [where])
    return ValidationFailed("the submission is not valid", errors=errors)


FORM_FIELD_MAX_BYTES = 1024 * 1024


def _form_problem(message: str, settings: Settings) -> DomainError:
    """The form parser's refusals, told apart: too many images or fields is a validation error,
    a field too large is a payload too large, and anything else a malformed body."""
    if message.startswith("Too many files"):
        return ValidationFailed(
            f"at most {settings.image_max_count} images per submission",
            errors=[{"loc": ["body", "images"], "msg": "too many images", "type": "too_long"}],
        )
    if message.startswith("Too many fields"):
        return ValidationFailed(
            message, errors=[{"loc": ["body"], "msg": message, "type": "too_many_fields"}]
        )
    if "exceeded maximum size" in message:
        return PayloadTooLarge(f"a form field is larger than {FORM_FIELD_MAX_BYTES} bytes")
    return BadRequest(f"the form body is malformed: {message}")


async def _read_json(request: Request, settings: Settings) -> service.NewSubmission:
    # RequestBoundary (main.py) has already capped how much of this can arrive; the bytes were
    # read (and their signature checked) before parsing, and Starlette keeps them.
    body = await request.body()

    def parse() -> service.NewSubmission:
        try:
            parsed = SubmissionCreate.model_validate_json(body)
        except ValidationError as exc:
            raise _validation_problem(exc, "body") from exc
        return service.new_submission_from_json(parsed, settings)

    # Parsing and base64-decoding megabytes of images is CPU work: keep it off the event loop.
    # A small body parses faster than a hop to a worker thread and back.
    if len(body) <= service.PARSE_ON_LOOP_MAX_BYTES:
        return parse()
    result: service.NewSubmission = await run_in_threadpool(parse)
    return result


async def _read_multipart(request: Request, settings: Settings) -> service.NewSubmission:
    try:
        form = await request.form(
            max_files=settings.image_max_count, max_fields=16, max_part_size=FORM_FIELD_MAX_BYTES
        )
    except HTTPException as exc:
        raise _form_problem(str(exc.detail), settings) from exc
    fields: dict[str, Any] = {}
    for name in ("external_id", "text", "policy", "callback_url", "metadata"):
        value = form.get(name)
        if isinstance(value, str):
            fields[name] = value
    if "metadata" in fields:
        # Bounded like a JSON body: a form field is no less hostile. Metadata that serializes
        # to 16 KiB holds fewer values than that many bytes.
        fields["metadata"] = load_json(
            fields["metadata"], loc=["body", "metadata"], max_values=METADATA_MAX_BYTES
        )
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
    images: list[service.ImageSource] = []
    for position, upload in enumerate(uploads):
        digest = await run_in_threadpool(service.check_upload, upload.file, position, settings)
        images.append(service.ImageSource(upload=upload.file, upload_sha256=digest))
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
        images=images,
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
async def create_submission(request: Request, principal: Ingest) -> Response:
    """Accept an upload for moderation; the decision follows by callback or polling."""
    # The common case (a small JSON body, images by URL, a key and tenant seen moments ago) is
    # answered before routing, by moderation.submissions.fast_lane; whatever it does not store
    # arrives here.
    settings: Settings = request.app.state.settings
    async with request_session_scope(request) as session:
        return await _create_in_session(request, session, principal, settings)


def _accepted(submission: service.StoredSubmission, *, created: bool) -> Response:
    accepted = SubmissionAccepted(
        id=submission.id, external_id=submission.external_id, status=submission.status
    )
    return Response(
        accepted.model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        media_type="application/json",
        headers={"Location": f"/v1/submissions/{submission.id}"},
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _create_in_session(
    request: Request,
    session: Session,
    principal: Principal,
    settings: Settings,
) -> Response:
    """Every other case: signed submissions, uploads, redeliveries and refusals."""
    # A tenant that signs its submissions has the raw bytes verified before anything is parsed.
    # Only then is the whole body read into memory: an unsigned multipart upload stays spooled
    # on disk, one image read at a time. A tenant known moments ago not to sign costs no query.
    if tenants.known_not_to_sign(principal.tenant_id):
        signed = webhooks.UNSIGNED
    else:
        signs = await run_in_threadpool(
            webhooks.inbound_signing_required, session, principal.tenant_id
        )
        signed = await run_in_threadpool(
            webhooks.check_signed_submission,
            session,
            principal.tenant_id,
            request.headers,
            await request.body() if signs else b"",
        )
    if signed.repeat_of is not None:
        return JSONResponse(
            signed.repeat_of.body,
            status_code=signed.repeat_of.status_code,
            headers={"Location": f"/v1/submissions/{signed.repeat_of.body['id']}"},
        )
    content_type = _media_type(request)
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
    if signed.webhook_id is not None:
        await run_in_threadpool(
            webhooks.remember_answer,
            session,
            principal.tenant_id,
            signed.webhook_id,
            submission_id=submission.id,
            status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
            body=SubmissionAccepted(
                id=submission.id, external_id=submission.external_id, status=submission.status
            ).model_dump(mode="json"),
        )
    return _accepted(submission, created=created)


@router.get("", response_model=Page[SubmissionSummary])
def list_submissions(
    session: DbSession,
    principal: IngestOrReviewer,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorParam = None,
    external_id: Annotated[Text | None, Query(max_length=256)] = None,
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
    submission_id: uuid.UUID, position: ImagePosition, session: DbSession, principal: Reviewer
) -> Response:
    """One image of a submission, after decoding, metadata stripping and resizing."""
    data, mime = service.normalized_image(session, principal, submission_id, position)
    # Uploaded bytes, served from the API's origin: never let a browser guess another type.
    headers = {"Cache-Control": "private", "X-Content-Type-Options": "nosniff"}
    return Response(content=data, media_type=mime, headers=headers)


@router.get(
    "/{submission_id}/images/{position}/frames/{frame}",
    response_class=Response,
    responses={
        200: {
            "description": "the frame as the model saw it, normalized like the image",
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def get_submission_image_frame(
    submission_id: uuid.UUID,
    position: Annotated[int, Path(ge=0, le=_MAX_INDEX)],
    frame: Annotated[int, Path(ge=0, le=_MAX_INDEX)],
    session: DbSession,
    principal: Reviewer,
) -> Response:
    """One frame of an animated or multi-page image, as the model saw it: the evidence a
    verdict's `frame` points at."""
    data, mime = service.frame_image(session, principal, submission_id, position, frame)
    return Response(content=data, media_type=mime, headers={"Cache-Control": "private"})


@router.get("/{submission_id}/audit", response_model=list[AuditEventRead])
def get_submission_audit(
    submission_id: uuid.UUID, session: DbSession, principal: Reviewer
) -> list[AuditEventRead]:
    """The append-only history: received, queued, model verdicts, decisions, requeues."""
    return service.audit_trail(session, principal, submission_id)
