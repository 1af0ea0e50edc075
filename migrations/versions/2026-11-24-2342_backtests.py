"""Backtests and their items: a policy version tried on past submissions, for comparison only.

Two new tables and nothing else: no existing row changes, so the downgrade drops them whole.

Revision ID: 0004_backtests
Revises: 0003_policies
Create Date: 2026-11-24 23:42:02.925012+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_backtests"
down_revision: str | None = "0003_policies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backtests",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("policy_id", sa.Uuid(), nullable=False),
        sa.Column("draft_version_id", sa.Uuid(), nullable=False),
        sa.Column("active_version_id", sa.Uuid(), nullable=True),
        sa.Column("sample_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sample_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sample_limit", sa.Integer(), nullable=False),
        sa.Column("only_reviewed", sa.Boolean(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "running",
                "done",
                "failed",
                name="backteststatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.String(length=256), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
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
            ["active_version_id"],
            ["policy_versions.id"],
            name=op.f("fk_backtests_active_version_id_policy_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["draft_version_id"],
            ["policy_versions.id"],
            name=op.f("fk_backtests_draft_version_id_policy_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["policies.id"],
            name=op.f("fk_backtests_policy_id_policies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_backtests_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backtests")),
    )
    op.create_index(
        "ix_backtests_tenant_created", "backtests", ["tenant_id", "created_at", "id"], unique=False
    )
    op.create_table(
        "backtest_items",
        sa.Column("backtest_id", sa.Uuid(), nullable=False),
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "live_action",
            sa.Enum(
                "allow", "restrict", "block", "review", name="action", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("live_reason", sa.String(length=64), nullable=True),
        sa.Column("live_version_id", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "judged",
                "failed",
                "skipped",
                name="backtestitemstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "draft_action",
            sa.Enum(
                "allow", "restrict", "block", "review", name="action", native_enum=False, length=32
            ),
            nullable=True,
        ),
        sa.Column("draft_reason", sa.String(length=64), nullable=True),
        sa.Column("draft_categories", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("calls", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("reused_verdict_id", sa.Uuid(), nullable=True),
        sa.Column("model_calls", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["backtest_id"],
            ["backtests.id"],
            name=op.f("fk_backtest_items_backtest_id_backtests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["live_version_id"],
            ["policy_versions.id"],
            name=op.f("fk_backtest_items_live_version_id_policy_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_backtest_items_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backtest_items")),
        sa.UniqueConstraint(
            "backtest_id", "submission_id", name=op.f("uq_backtest_items_backtest_id_submission_id")
        ),
    )
    op.create_index(
        "ix_backtest_items_backtest_status",
        "backtest_items",
        ["backtest_id", "status"],
        unique=False,
    )
    op.create_index(
        op.f("ix_backtest_items_submission_id"), "backtest_items", ["submission_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_backtest_items_submission_id"), table_name="backtest_items")
    op.drop_index("ix_backtest_items_backtest_status", table_name="backtest_items")
    op.drop_table("backtest_items")
    op.drop_index("ix_backtests_tenant_created", table_name="backtests")
    op.drop_table("backtests")
