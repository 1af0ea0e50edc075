"""Privacy by default: uploads are kept only as long as they are needed.

The original upload is deleted when the submission gets its final decision (or, with
MODERATION_RETAIN_ORIGINALS_DAYS, that many days later); the normalized images, which carry no
metadata, are deleted MODERATION_RETAIN_NORMALIZED_DAYS after the final decision when that is set.
Hashes, sizes, source mime types, verdicts and decisions stay, so every decision can still be
explained. Submissions in review keep everything: a reviewer needs the image, and judging the
item again needs the original. Every deletion is an audit event of its submission.

`purge_expired_media` is one sweep; a worker runs it every MODERATION_MEDIA_PURGE_INTERVAL_S.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.core.time import utcnow
from moderation.database import session_scope
from moderation.pipeline.runtime import PipelineRuntime
from moderation.submissions import repository
from moderation.submissions.repository import PurgedMedia

RETENTION_ACTOR = "retention"


@dataclass(frozen=True)
class MediaPurge:
    originals: int = 0
    normalized: int = 0


def purge_expired_media(
    runtime: PipelineRuntime, *, now: datetime | None = None, batch: int = 500
) -> MediaPurge:
    """Delete what the retention settings no longer keep; how many images lost what.

    Works in batches of `batch` images, each in its own short transaction, and skips rows
    another sweep holds, so several workers may run it at once.
    """
    settings = runtime.settings
    now = now or utcnow()
    originals = _sweep(
        runtime,
        repository.purge_expired_originals,
        decided_before=now - timedelta(days=settings.retain_originals_days),
        kind="originals",
        retain_days=settings.retain_originals_days,
        batch=batch,
    )
    normalized = 0
    if settings.retain_normalized_days is not None:
        normalized = _sweep(
            runtime,
            repository.purge_expired_normalized,
            decided_before=now - timedelta(days=settings.retain_normalized_days),
            kind="normalized",
            retain_days=settings.retain_normalized_days,
            batch=batch,
        )
    return MediaPurge(originals=originals, normalized=normalized)


def _sweep(
    runtime: PipelineRuntime,
    purge: PurgeBatch,
    *,
    decided_before: datetime,
    kind: str,
    retain_days: float,
    batch: int,
) -> int:
    total = 0
    while True:
        with session_scope(runtime.sessions) as session:
            purged = purge(session, decided_before=decided_before, limit=batch)
            for item in purged:
                record_event(
                    session,
                    item.tenant_id,
                    item.submission_id,
                    "media_purged",
                    RETENTION_ACTOR,
                    {
                        "originals": item.images if kind == "originals" else 0,
                        "normalized": item.images if kind == "normalized" else 0,
                        "why": "retention",
                        "retain_days": retain_days,
                    },
                )
        count = sum(item.images for item in purged)
        total += count
        if count < batch:
            return total


class PurgeBatch(Protocol):
    def __call__(
        self, session: Session, *, decided_before: datetime, limit: int
    ) -> list[PurgedMedia]: ...
