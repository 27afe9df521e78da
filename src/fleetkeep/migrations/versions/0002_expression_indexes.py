"""Expression indexes, written by hand: autogenerate cannot compare them on SQLite, so
``scripts/regen-migration`` would drop them from the initial revision.

Revision ID: 0002_expression_indexes
Revises: 0001_initial
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_expression_indexes"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Activation by UPN (IMD v5) matches lower(upn); the plain upn index cannot serve it.
    op.create_index("ix_users_lower_upn", "users", [sa.text("lower(upn)")])


def downgrade() -> None:
    op.drop_index("ix_users_lower_upn", table_name="users")
