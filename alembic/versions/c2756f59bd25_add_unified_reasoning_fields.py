"""add unified reasoning fields

Adds use_unified_reasoning and selected_reasoning_mode to user_settings and
fills them in for the rows that already exist.

Revision ID: c2756f59bd25
Revises: 590e5fac8d96
Create Date: 2025-10-13 15:42:07.391256

"""
from collections.abc import Sequence
from typing import Union

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c2756f59bd25"
down_revision: Union[str, Sequence[str], None] = "590e5fac8d96"  # noqa: UP007
branch_labels: Union[str, Sequence[str], None] = None  # noqa: UP007
depends_on: Union[str, Sequence[str], None] = None  # noqa: UP007

# A snapshot of the table as this revision sees it, not the current model.
user_settings = sa.table(
    "user_settings",
    sa.column("use_unified_reasoning", sa.Boolean()),
    sa.column("selected_reasoning_mode", sa.String(50)),
)


def _user_settings_with_reasoning(nullable: bool) -> sa.Table:
    """user_settings with the reasoning columns, NULL-able or not yet.

    Handed to batch_alter_table as copy_from, so that SQLite's copy-and-move
    needs no reflection and offline (--sql) mode works too.
    """
    if nullable:
        reasoning_columns = [
            sa.Column("use_unified_reasoning", sa.Boolean(), nullable=True),
            sa.Column("selected_reasoning_mode", sa.String(length=50), nullable=True),
        ]
    else:
        reasoning_columns = [
            sa.Column(
                "use_unified_reasoning", sa.Boolean(), server_default=sa.false(), nullable=False
            ),
            sa.Column(
                "selected_reasoning_mode",
                sa.String(length=50),
                server_default="auto",
                nullable=False,
            ),
        ]
    return sa.Table(
        "user_settings",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "default_model", sa.String(length=100), server_default="llama3.1:8b", nullable=False
        ),
        sa.Column("temperature", sa.Float(), server_default=sa.text("0.7"), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("theme", sa.String(length=20), server_default="system", nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        *reasoning_columns,
        sa.CheckConstraint(
            "temperature >= 0 AND temperature <= 2", name="ck_user_settings_temperature_range"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_user_settings_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_user_settings"),
        sa.UniqueConstraint("user_id", name="uq_user_settings_user_id"),
    )


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "user_settings", sa.Column("use_unified_reasoning", sa.Boolean(), nullable=True)
    )
    op.add_column(
        "user_settings", sa.Column("selected_reasoning_mode", sa.String(length=50), nullable=True)
    )

    # Existing users keep today's behaviour: unified reasoning off, automatic mode.
    op.execute(
        user_settings.update()
        .where(user_settings.c.use_unified_reasoning.is_(None))
        .values(use_unified_reasoning=False)
    )
    op.execute(
        user_settings.update()
        .where(user_settings.c.selected_reasoning_mode.is_(None))
        .values(selected_reasoning_mode="auto")
    )

    with op.batch_alter_table(
        "user_settings", copy_from=_user_settings_with_reasoning(nullable=True)
    ) as batch_op:
        batch_op.alter_column(
            "use_unified_reasoning",
            existing_type=sa.Boolean(),
            nullable=False,
            server_default=sa.false(),
        )
        batch_op.alter_column(
            "selected_reasoning_mode",
            existing_type=sa.String(length=50),
            nullable=False,
            server_default="auto",
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table(
        "user_settings", copy_from=_user_settings_with_reasoning(nullable=False)
    ) as batch_op:
        batch_op.drop_column("selected_reasoning_mode")
        batch_op.drop_column("use_unified_reasoning")
