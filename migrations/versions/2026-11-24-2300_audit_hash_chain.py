"""Chain the audit trail: every event carries the sha256 of the previous event of its chain.

A chain is one submission's events, or, for events that belong to no submission, one tenant's.
The database itself numbers and hashes each new event (a BEFORE INSERT trigger), so every writer
gets the same chain, and it serialises appends per chain by locking the submission's (or the
tenant's) row: two transactions appending to one submission at once cannot fork it. The
existing events are numbered and hashed here, in their original order.

Revision ID: 0003_audit
Revises: 0003_review
Create Date: 2026-11-24 12:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_audit"
down_revision: str | None = "0003_review"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The canonical form, byte for byte what moderation/audit/chain.py rebuilds to verify a chain.
# Text fields carry their length in bytes, so no value can be read as a separator; times are
# microseconds since the epoch, so the form does not depend on the session's time zone.
_EVENT_SHA256 = """
CREATE FUNCTION audit_event_sha256(
    p_id bigint, p_tenant uuid, p_submission uuid, p_seq bigint, p_event text, p_actor text,
    p_data jsonb, p_at timestamptz, p_previous text
) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT encode(sha256(convert_to(concat_ws(E'\\n',
        'audit-v1',
        p_id::text,
        p_tenant::text,
        coalesce(p_submission::text, '-'),
        p_seq::text,
        octet_length(p_event)::text || ':' || p_event,
        octet_length(p_actor)::text || ':' || p_actor,
        (extract(epoch FROM p_at) * 1000000)::bigint::text,
        coalesce(p_previous, '-'),
        octet_length(p_data::text)::text || ':' || p_data::text
    ), 'UTF8')), 'hex')
$$
"""

_CHAIN_TRIGGER_FUNCTION = """
CREATE FUNCTION audit_event_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    head_seq bigint;
    head_sha256 text;
BEGIN
    -- One appender per chain at a time: the lock is the chain owner's row, the same lock that
    -- writers of the submission already take, so no second lock order can deadlock with it.
    -- NO KEY UPDATE leaves foreign-key checks of other inserts (KEY SHARE) unblocked.
    IF NEW.submission_id IS NOT NULL THEN
        PERFORM 1 FROM submissions WHERE id = NEW.submission_id FOR NO KEY UPDATE;
        SELECT seq, sha256 INTO head_seq, head_sha256 FROM audit_events
            WHERE submission_id = NEW.submission_id ORDER BY seq DESC LIMIT 1;
    ELSE
        PERFORM 1 FROM tenants WHERE id = NEW.tenant_id FOR NO KEY UPDATE;
        SELECT seq, sha256 INTO head_seq, head_sha256 FROM audit_events
            WHERE tenant_id = NEW.tenant_id AND submission_id IS NULL ORDER BY seq DESC LIMIT 1;
    END IF;
    NEW.seq := coalesce(head_seq, 0) + 1;
    NEW.prev_sha256 := head_sha256;
    -- The time the event joined its chain, so times never run backwards along a chain.
    NEW.created_at := clock_timestamp();
    NEW.sha256 := audit_event_sha256(
        NEW.id, NEW.tenant_id, NEW.submission_id, NEW.seq, NEW.event, NEW.actor, NEW.data,
        NEW.created_at, NEW.prev_sha256
    );
    RETURN NEW;
END $$
"""

_BACKFILL = """
DO $$
DECLARE
    event record;
    previous text;
    chain text;
    current_chain text := NULL;
    digest text;
BEGIN
    FOR event IN
        SELECT * FROM audit_events ORDER BY tenant_id, submission_id NULLS FIRST, seq
    LOOP
        chain := event.tenant_id::text || '/' || coalesce(event.submission_id::text, '-');
        IF chain IS DISTINCT FROM current_chain THEN
            previous := NULL;
            current_chain := chain;
        END IF;
        digest := audit_event_sha256(
            event.id, event.tenant_id, event.submission_id, event.seq, event.event, event.actor,
            event.data, event.created_at, previous
        );
        UPDATE audit_events SET prev_sha256 = previous, sha256 = digest WHERE id = event.id;
        previous := digest;
    END LOOP;
END $$
"""


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("audit_events", sa.Column("prev_sha256", sa.String(length=64), nullable=True))
    op.add_column("audit_events", sa.Column("sha256", sa.String(length=64), nullable=True))

    # History is append-only even for migrations; this one only fills the new columns.
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    op.execute(
        """
        UPDATE audit_events SET seq = numbered.seq FROM (
            SELECT id, row_number() OVER (PARTITION BY tenant_id, submission_id ORDER BY id) AS seq
            FROM audit_events
        ) AS numbered WHERE audit_events.id = numbered.id
        """
    )
    op.execute(_EVENT_SHA256)
    op.execute(_BACKFILL)
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")

    op.alter_column("audit_events", "seq", nullable=False)
    op.alter_column("audit_events", "sha256", nullable=False)
    op.drop_index("ix_audit_events_submission", table_name="audit_events")
    op.create_index(
        "uq_audit_events_submission_seq",
        "audit_events",
        ["submission_id", "seq"],
        unique=True,
        postgresql_where=sa.text("submission_id IS NOT NULL"),
    )
    op.create_index(
        "uq_audit_events_tenant_seq",
        "audit_events",
        ["tenant_id", "seq"],
        unique=True,
        postgresql_where=sa.text("submission_id IS NULL"),
    )
    op.execute(_CHAIN_TRIGGER_FUNCTION)
    op.execute(
        "CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_event_chain()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_events_chain ON audit_events")
    op.execute("DROP FUNCTION IF EXISTS audit_event_chain()")
    op.execute(
        "DROP FUNCTION IF EXISTS "
        "audit_event_sha256(bigint, uuid, uuid, bigint, text, text, jsonb, timestamptz, text)"
    )
    op.drop_index("uq_audit_events_tenant_seq", table_name="audit_events")
    op.drop_index("uq_audit_events_submission_seq", table_name="audit_events")
    op.create_index(
        "ix_audit_events_submission", "audit_events", ["submission_id", "id"], unique=False
    )
    op.drop_column("audit_events", "sha256")
    op.drop_column("audit_events", "prev_sha256")
    op.drop_column("audit_events", "seq")
