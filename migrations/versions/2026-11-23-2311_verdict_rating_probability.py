"""Record the rating token's probability with each verdict (from the server's log-probabilities).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 23:11:33.726911+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("verdicts", sa.Column("rating_probability", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("verdicts", "rating_probability")
