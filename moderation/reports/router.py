"""Reports for policy owners: how the model's decisions compare with reviewers'."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from moderation.core.fields import INT4_MAX
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.reports import render, service
from moderation.reports.schemas import AgreementReport
from moderation.tenants.dependencies import Admin

router = APIRouter(prefix="/v1/reports", tags=["reports"])

# A range with no submission yet; docs/reports.md walks through a full report.
_EXAMPLE_REPORT = {
    "scope": {
        "tenant_id": "7d0c6f4e-0000-4000-8000-000000000001",
        "policy": "default",
        "version": None,
        "since": "2026-11-01T00:00:00Z",
        "until": "2026-12-01T00:00:00Z",
        "target_precision": 0.95,
    },
    "generated_at": "2026-12-01T09:30:00Z",
    "versions": [],
}
_EXAMPLE_CSV = (
    "policy,version,table,category,row,column,value,low,high,numerator,denominator\r\n"
    "default,3,rates,,agreement,,0.94,0.93,0.95,3579,3808\r\n"
    "default,3,flagging,hate,precision,,0.84,0.82,0.85,2596,3095\r\n"
)


@router.get(
    "/agreement",
    response_model=AgreementReport,
    summary="Model against reviewers, per policy version and category",
    description=(
        "Covers this tenant's submissions created in [since, until) (default: the last 30 days) "
        "that have a final reviewer decision, per policy version and category: confusion "
        "matrices, precision, recall and F1 with Wilson 95% intervals, agreement, Cohen's "
        "kappa, overturn, automatic and review rates, latency and tokens, review reasons, "
        "calibration, and threshold sweeps replayed over stored verdicts, with a suggested "
        "min_confidence for `target_precision`. Send `Accept: text/csv` for one figure per "
        "row, or `Accept: text/html` for a self-contained page with charts."
    ),
    responses={
        200: {
            "content": {
                render.JSON_MEDIA_TYPE: {"example": _EXAMPLE_REPORT},
                render.CSV_MEDIA_TYPE: {"schema": {"type": "string"}, "example": _EXAMPLE_CSV},
                render.HTML_MEDIA_TYPE: {
                    "schema": {"type": "string"},
                    "example": '<!doctype html>\n<html lang="en">…</html>',
                },
            }
        },
        **problem_responses(401, 403, 404, 406, 422),
    },
)
def agreement_report(
    session: DbSession,
    principal: Admin,
    policy: Annotated[
        str | None,
        Query(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="a policy slug; default: all"),
    ] = None,
    version: Annotated[
        int | None,
        Query(ge=1, le=INT4_MAX, description="one version of `policy`; default: all"),
    ] = None,
    since: Annotated[datetime | None, Query(description="inclusive, with a UTC offset")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, with a UTC offset")] = None,
    target_precision: Annotated[
        float, Query(gt=0, lt=1, description="the precision the suggested threshold must reach")
    ] = 0.95,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    media_type = render.choose_media_type(accept)
    report = service.agreement_report(
        session,
        service.ReportRequest(
            tenant_id=principal.tenant_id,
            policy=policy,
            version=version,
            since=since,
            until=until,
            target_precision=target_precision,
        ),
    )
    headers = {}
    if media_type == render.CSV_MEDIA_TYPE:
        headers["Content-Disposition"] = 'attachment; filename="agreement-report.csv"'
    # Starlette adds "; charset=utf-8" to the text/* forms.
    return Response(render.render(report, media_type), media_type=media_type, headers=headers)
