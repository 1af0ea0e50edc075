"""Re-drive schedule on submissions, daily token budgets, published model circuit states.

Revision ID: 0003_resilience
Revises: 0003_media
Create Date: 2026-11-24 23:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_resilience"
down_revision: str | None = "0003_media"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("submissions", sa.Column("redrive_at", sa.DateTime(timezone=True)))
    op.add_column("submissions", sa.Column("redrive_until", sa.DateTime(timezone=True)))
    op.add_column(
        "submissions",
        sa.Column("redrives", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_index(
        "ix_submissions_redrive_at",
        "submissions",
        ["redrive_at"],
        postgresql_where=sa.text("redrive_at IS NOT NULL"),
    )

    op.add_column("tenants", sa.Column("daily_token_budget", sa.BigInteger()))
    op.create_table(
        "tenant_token_usage",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_token_usage_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", name=op.f("pk_tenant_token_usage")),
    )

    op.create_table(
        "model_circuits",
        sa.Column("worker", sa.String(length=256), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "closed", "open", "half_open", name="circuitstate", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("worker", name=op.f("pk_model_circuits")),
    )


def downgrade() -> None:
    op.drop_table("model_circuits")
    op.drop_table("tenant_token_usage")
    op.drop_column("tenants", "daily_token_budget")
    op.drop_index("ix_submissions_redrive_at", table_name="submissions")
    op.drop_column("submissions", "redrives")
    op.drop_column("submissions", "redrive_until")
    op.drop_column("submissions", "redrive_at")
