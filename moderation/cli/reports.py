"""`report`: the agreement report, written to a file whose extension picks the form."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moderation.cli.base import CommandFailed, add_command, emit, sessions
from moderation.config import Settings

FORMS = {".html": "text/html", ".htm": "text/html", ".csv": "text/csv", ".json": "application/json"}


def _moment(value: str) -> datetime:
    """An ISO 8601 time; one without an offset is taken as UTC, as the API's times are."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _precision(value: str) -> float:
    try:
        number = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1, exclusive (e.g. 0.95)")
    return number


def cmd_report_agreement(args: argparse.Namespace, settings: Settings) -> None:
    from moderation.database import session_scope
    from moderation.reports import render
    from moderation.reports.service import ReportRequest, agreement_report

    out = Path(args.out)
    media_type = FORMS.get(out.suffix.lower())
    if media_type is None:
        raise CommandFailed(f"--out must end in {', '.join(FORMS)}; got {out.name!r}")
    try:
        tenant_id = uuid.UUID(args.tenant)
    except ValueError as exc:
        raise CommandFailed(f"--tenant must be a tenant id (a UUID), got {args.tenant!r}") from exc
    with session_scope(sessions(settings)) as session:
        report = agreement_report(
            session,
            ReportRequest(
                tenant_id=tenant_id,
                policy=args.policy,
                version=args.version,
                since=args.since,
                until=args.until,
                target_precision=args.target_precision,
            ),
        )
    body = render.render(report, media_type)
    try:
        out.write_text(body, encoding="utf-8")
    except OSError as exc:
        raise CommandFailed(f"cannot write {out}: {exc.strerror or exc}") from exc
    reviewed = sum(section.reviewed for section in report.versions)
    payload: dict[str, Any] = {
        "out": str(out),
        "media_type": media_type,
        "versions": [f"{s.policy}@{s.version}" for s in report.versions],
        "submissions": sum(section.submissions for section in report.versions),
        "reviewed": reviewed,
        "since": report.scope.since.isoformat(),
        "until": report.scope.until.isoformat(),
    }
    text = (
        f"wrote {out}: {len(report.versions)} policy version(s), "
        f"{payload['submissions']:,} submissions, {reviewed:,} with a reviewer's decision"
    )
    emit(args, payload, text)


def register(commands: Any) -> None:
    report = commands.add_parser("report", help="policy-tuning reports").add_subparsers(
        dest="action", required=True
    )
    agreement = add_command(
        report,
        "agreement",
        cmd_report_agreement,
        "the model against reviewers: agreement, precision and recall, calibration, thresholds",
        json_flag=True,
    )
    agreement.add_argument("--tenant", required=True, help="tenant id")
    agreement.add_argument("--policy", help="a policy slug (default: every policy)")
    agreement.add_argument("--version", type=int, help="one version of --policy")
    agreement.add_argument(
        "--since", type=_moment, help="ISO 8601, inclusive (default: 30 days before --until)"
    )
    agreement.add_argument("--until", type=_moment, help="ISO 8601, exclusive (default: now)")
    agreement.add_argument(
        "--target-precision",
        type=_precision,
        default=0.95,
        help="precision the suggested min_confidence must reach (default 0.95)",
    )
    agreement.add_argument(
        "--out", required=True, help="report.html, report.csv or report.json: the form follows"
    )
