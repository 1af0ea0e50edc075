"""Recompute hash chains of audit events, independently of the database that wrote them.

The database hashes each event as it is appended (see the `audit_event_sha256` SQL function in
the migration that introduced the chain). This module rebuilds the same canonical form from the
stored columns and walks every chain, so a row changed, removed or reordered behind the
append-only trigger's back (by someone able to disable it) is named, with what was expected and
what was found.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

CANONICAL_VERSION = "audit-v1"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class StoredEvent:
    """An audit row as stored, with `data` in the database's own JSON text rendering."""

    id: int
    tenant_id: uuid.UUID
    submission_id: uuid.UUID | None
    seq: int
    event: str
    actor: str
    data_text: str
    created_at: datetime
    prev_sha256: str | None
    sha256: str

    @property
    def chain(self) -> ChainKey:
        return ChainKey(self.tenant_id, self.submission_id)


@dataclass(frozen=True, order=True)
class ChainKey:
    """One submission's chain, or (submission None) the tenant's chain of other events."""

    tenant_id: uuid.UUID
    submission_id: uuid.UUID | None

    def __str__(self) -> str:
        if self.submission_id is None:
            return f"tenant {self.tenant_id}"
        return f"submission {self.submission_id}"


@dataclass(frozen=True)
class ChainBreak:
    """One place where a chain is not what its appends made it."""

    chain: ChainKey
    kind: str
    seq: int | None
    event_id: int | None
    expected: str | None
    found: str | None
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {
            "tenant_id": str(self.chain.tenant_id),
            "submission_id": str(self.chain.submission_id) if self.chain.submission_id else None,
            "kind": self.kind,
            "seq": self.seq,
            "event_id": self.event_id,
            "expected": self.expected,
            "found": self.found,
            "detail": self.detail,
        }

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "chain"
        if self.event_id is not None:
            where += f" (event {self.event_id})"
        line = f"{self.chain} {where}: {self.detail}"
        if self.expected is not None or self.found is not None:
            line += f"; expected {self.expected or '-'}, found {self.found or '-'}"
        return line


@dataclass
class ChainReport:
    chains: int = 0
    events: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.breaks

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.intact,
            "chains": self.chains,
            "events": self.events,
            "broken_chains": len({b.chain for b in self.breaks}),
            "breaks": [b.as_dict() for b in self.breaks],
        }


def _field(value: str) -> str:
    # Length-prefixed (in UTF-8 bytes) so that no value can pass for a separator.
    return f"{len(value.encode())}:{value}"


def canonical_form(event: StoredEvent, prev_sha256: str | None) -> bytes:
    """The bytes an event's sha256 is taken over; `prev_sha256` is the link being checked."""
    micros = (event.created_at - _EPOCH) // timedelta(microseconds=1)
    parts = [
        CANONICAL_VERSION,
        str(event.id),
        str(event.tenant_id),
        str(event.submission_id) if event.submission_id is not None else "-",
        str(event.seq),
        _field(event.event),
        _field(event.actor),
        str(micros),
        prev_sha256 if prev_sha256 is not None else "-",
        _field(event.data_text),
    ]
    return "\n".join(parts).encode()


def event_sha256(event: StoredEvent, prev_sha256: str | None) -> str:
    return hashlib.sha256(canonical_form(event, prev_sha256)).hexdigest()


def _chains(events: Iterable[StoredEvent]) -> Iterator[tuple[ChainKey, list[StoredEvent]]]:
    """Group events that arrive ordered by chain, then seq."""
    current: ChainKey | None = None
    members: list[StoredEvent] = []
    for event in events:
        if event.chain != current:
            if current is not None:
                yield current, members
            current, members = event.chain, []
        members.append(event)
    if current is not None:
        yield current, members


def verify_chain(chain: ChainKey, events: list[StoredEvent]) -> list[ChainBreak]:
    """Every break in one chain, given its events in stored `seq` order.

    A link is checked against the previous row's *stored* hash and each row's hash against its
    own content, so an edit shows up once, at the row edited, and an edit whose hash was
    recomputed to match shows up at the next link.
    """
    breaks: list[ChainBreak] = []

    def broken(
        kind: str, event: StoredEvent, detail: str, expected: str | None, found: str | None
    ) -> None:
        breaks.append(ChainBreak(chain, kind, event.seq, event.id, expected, found, detail))

    previous: StoredEvent | None = None
    for event in events:
        expected_seq = 1 if previous is None else previous.seq + 1
        if event.seq == (previous.seq if previous else None):
            broken("duplicate_seq", event, "two events share this position (a fork)", None, None)
        elif event.seq != expected_seq:
            missing = (
                f"{expected_seq}"
                if event.seq == expected_seq + 1
                else f"{expected_seq}..{event.seq - 1}"
            )
            broken(
                "missing_events",
                event,
                f"events at seq {missing} are missing",
                str(expected_seq),
                str(event.seq),
            )
        expected_prev = previous.sha256 if previous is not None else None
        if event.prev_sha256 != expected_prev:
            broken(
                "link_broken",
                event,
                "does not link to the event before it",
                expected_prev,
                event.prev_sha256,
            )
        recomputed = event_sha256(event, event.prev_sha256)
        if recomputed != event.sha256:
            broken(
                "content_changed",
                event,
                f"{event.event!r} by {event.actor!r} no longer matches its hash",
                recomputed,
                event.sha256,
            )
        previous = event
    return breaks


def verify_chains(events: Iterable[StoredEvent]) -> ChainReport:
    """Walk every chain in `events` (ordered by tenant, submission with nulls first, seq)."""
    report = ChainReport()
    for chain, members in _chains(events):
        report.chains += 1
        report.events += len(members)
        report.breaks.extend(verify_chain(chain, members))
    return report
