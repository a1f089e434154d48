"""create user_login_sessions

Starts the "auth" branch, developed alongside the documents work.

Revision ID: 51b124a2d402
Revises: d86069f3a9e2
Create Date: 2025-07-15 08:39:26.441873

"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '51b124a2d402'
down_revision: str | None = 'd86069f3a9e2'
branch_labels: str | Sequence[str] | None = ('auth',)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'user_login_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column(
            'created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ip_address', sa.String(length=45), nullable=True),
        sa.Column('user_agent', sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ['user_id'],
            ['users.id'],
            name='fk_user_login_sessions_user_id_users',
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name='pk_user_login_sessions'),
        sa.UniqueConstraint('token_hash', name='uq_user_login_sessions_token_hash'),
    )
    op.create_index('ix_user_login_sessions_user_id', 'user_login_sessions', ['user_id'])


def downgrade() -> None:
    # drop_table drops the indexes too; dropping an index that backs a foreign
    # key first fails on MariaDB/MySQL (error 1553).
    op.drop_table('user_login_sessions')
