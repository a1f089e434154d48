"""create user_settings table

Revision ID: 65d34ee9c6d7
Revises: c6736c07319a
Create Date: 2025-06-09 16:02:11.084519

"""
import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision = '65d34ee9c6d7'
down_revision = 'c6736c07319a'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'user_settings',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column(
            'default_model', sa.String(length=100), server_default='llama3.1:8b', nullable=False
        ),
        sa.Column('temperature', sa.Float(), server_default=sa.text('0.7'), nullable=False),
        sa.Column('max_tokens', sa.Integer(), nullable=True),
        sa.Column('system_prompt', sa.Text(), nullable=True),
        sa.Column('theme', sa.String(length=20), server_default='system', nullable=False),
        sa.Column(
            'updated_at',
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            'temperature >= 0 AND temperature <= 2',
            name=op.f('ck_user_settings_temperature_range'),
        ),
        sa.ForeignKeyConstraint(
            ['user_id'], ['users.id'],
            name='fk_user_settings_user_id_users',
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name='pk_user_settings'),
        sa.UniqueConstraint('user_id', name='uq_user_settings_user_id'),
    )


def downgrade():
    op.drop_table('user_settings')
