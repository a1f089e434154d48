"""merge documents and auth branches

Revision ID: 590e5fac8d96
Revises: fd1ebc85cf60, 47039f9eed57
Create Date: 2025-08-04 10:30:19.148862

"""
from collections.abc import Sequence

# revision identifiers, used by Alembic.
revision: str = "590e5fac8d96"
down_revision: str | Sequence[str] | None = ("fd1ebc85cf60", "47039f9eed57")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""


def downgrade() -> None:
    """Downgrade schema."""
