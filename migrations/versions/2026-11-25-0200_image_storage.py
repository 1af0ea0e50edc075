"""Image bytes are stored without compression.

Uploads and normalized images are JPEG, PNG, WebP or GIF: compressed already. PostgreSQL would
try to compress every one of them again on insert (and keep the original after failing), which
costs the database CPU on every stored image for nothing. EXTERNAL keeps them out of line,
uncompressed. Rows already stored keep their storage until rewritten.

Revision ID: 0005_image_storage
Revises: 0003_resilience
Create Date: 2026-11-25 02:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005_image_storage"
down_revision: str | None = "0003_resilience"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("submission_images", "source_data"),
    ("submission_images", "data"),
    ("submission_image_frames", "data"),
)


def upgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTERNAL")


def downgrade() -> None:
    for table, column in _COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE EXTENDED")
