"""Frames of animated and multi-page uploads, the frame behind each verdict image, and the
retention of uploaded originals and normalized images.

Revision ID: 0003_media
Revises: 0004_backtests
Create Date: 2026-11-24 23:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_media"
down_revision: str | None = "0004_backtests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "submission_image_frames",
        sa.Column("submission_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=False),
        sa.Column("time_ms", sa.Integer(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("mime", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_submission_image_frames_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submission_image_frames")),
        sa.UniqueConstraint(
            "submission_id",
            "position",
            "frame",
            name=op.f("uq_submission_image_frames_submission_id_position_frame"),
        ),
    )
    op.add_column("submission_images", sa.Column("frame_count", sa.Integer(), nullable=True))
    op.add_column(
        "submission_images",
        sa.Column("source_purged_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "submission_images",
        sa.Column("data_purged_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_submission_images_unpurged_source",
        "submission_images",
        ["submission_id"],
        unique=False,
        postgresql_where=sa.text("source_data IS NOT NULL"),
    )
    op.add_column(
        "verdicts",
        sa.Column("image_refs", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("verdicts", "image_refs")
    op.drop_index(
        "ix_submission_images_unpurged_source",
        table_name="submission_images",
        postgresql_where=sa.text("source_data IS NOT NULL"),
    )
    op.drop_column("submission_images", "data_purged_at")
    op.drop_column("submission_images", "source_purged_at")
    op.drop_column("submission_images", "frame_count")
    op.drop_table("submission_image_frames")
