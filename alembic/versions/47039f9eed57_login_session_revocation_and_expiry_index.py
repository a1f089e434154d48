"""login session revocation and expiry index

Revision ID: 47039f9eed57
Revises: 51b124a2d402
Create Date: 2025-07-28 17:12:50.663015

"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = '47039f9eed57'
down_revision: str | None = '51b124a2d402'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'user_login_sessions', sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True)
    )
    # The nightly cleanup deletes expired sessions by expires_at.
    op.create_index('ix_user_login_sessions_expires_at', 'user_login_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_user_login_sessions_expires_at', table_name='user_login_sessions')
    # copy_from spares SQLite's copy-and-move a reflection, so --sql mode works too.
    user_login_sessions = sa.Table(
        'user_login_sessions',
        sa.MetaData(),
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column(
            'created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ip_address', sa.String(length=45), nullable=True),
        sa.Column('user_agent', sa.String(length=512), nullable=True),
        sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ['user_id'],
            ['users.id'],
            name='fk_user_login_sessions_user_id_users',
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name='pk_user_login_sessions'),
        sa.UniqueConstraint('token_hash', name='uq_user_login_sessions_token_hash'),
        sa.Index('ix_user_login_sessions_user_id', 'user_id'),
    )
    with op.batch_alter_table('user_login_sessions', copy_from=user_login_sessions) as batch_op:
        batch_op.drop_column('revoked_at')
