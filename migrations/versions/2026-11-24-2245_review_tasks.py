"""Review tasks (queue, leased claims, escalations, appeals) and reviewer names on API keys.

Revision ID: 0003_review
Revises: 0002
Create Date: 2026-11-24 22:45:47.543639
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_review"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_tasks",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "review", "appeal", "escalation", name="taskkind", native_enum=False, length=16
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "open",
                "claimed",
                "decided",
                "escalated",
                "cancelled",
                name="taskstatus",
                native_enum=False,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=True),
        sa.Column("policy_version_id", sa.Uuid(), nullable=False),
        sa.Column("categories", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("max_severity", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("decision_id", sa.Uuid(), nullable=True),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("excluded_key_id", sa.Uuid(), nullable=True),
        sa.Column("excluded_name", sa.String(length=100), nullable=True),
        sa.Column("claimed_by_key_id", sa.Uuid(), nullable=True),
        sa.Column("claimed_by_name", sa.String(length=100), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_decision_id", sa.Uuid(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_ms", sa.Integer(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["decision_id"], ["decisions.id"], name=op.f("fk_review_tasks_decision_id_decisions")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["review_tasks.id"], name=op.f("fk_review_tasks_parent_id_review_tasks")
        ),
        sa.ForeignKeyConstraint(
            ["policy_version_id"],
            ["policy_versions.id"],
            name=op.f("fk_review_tasks_policy_version_id_policy_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["result_decision_id"],
            ["decisions.id"],
            name=op.f("fk_review_tasks_result_decision_id_decisions"),
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_review_tasks_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_review_tasks_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_tasks")),
    )
    # The queue and the claim read waiting tasks only, most urgent then oldest first; at most
    # one task waits per submission (one open appeal at a time, no stale review left behind).
    op.create_index(
        "ix_review_tasks_queue",
        "review_tasks",
        ["tenant_id", sa.literal_column("priority DESC"), "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("status IN ('open', 'claimed')"),
    )
    op.create_index(
        "ix_review_tasks_submission", "review_tasks", ["submission_id", "created_at"], unique=False
    )
    op.create_index(
        "uq_review_tasks_active_submission",
        "review_tasks",
        ["submission_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('open', 'claimed')"),
    )
    # The person who holds a key: the reviewer that audit trails and reports name.
    op.add_column("api_keys", sa.Column("name", sa.String(length=100), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "name")
    op.drop_index(
        "uq_review_tasks_active_submission",
        table_name="review_tasks",
        postgresql_where=sa.text("status IN ('open', 'claimed')"),
    )
    op.drop_index("ix_review_tasks_submission", table_name="review_tasks")
    op.drop_index(
        "ix_review_tasks_queue",
        table_name="review_tasks",
        postgresql_where=sa.text("status IN ('open', 'claimed')"),
    )
    op.drop_table("review_tasks")
