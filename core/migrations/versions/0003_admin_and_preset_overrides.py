"""Operators and presets: users.is_admin (may list, inspect and cancel every job, list and revoke tokens) and
jobs.preset_overrides (the preset objective keys a job overrode on purpose).

Revision ID: 0003_admin_preset_overrides
Revises: 0002_idempotency_keys
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003_admin_preset_overrides"
down_revision: str | None = "0002_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("preset_overrides", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
    # the embedded mode's admin user predates the column
    op.execute(sa.text("UPDATE users SET is_admin = :t WHERE name = 'admin'").bindparams(t=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("preset_overrides")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_admin")
