"""record uploading login session on documents

Needs user_login_sessions from the auth branch, hence depends_on.

Revision ID: fd1ebc85cf60
Revises: 32eddb8b3fcb
Create Date: 2025-07-31 13:58:02.775148

"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "fd1ebc85cf60"
down_revision: str | None = "32eddb8b3fcb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "51b124a2d402"


FK_NAME = "fk_documents_uploaded_by_login_session_id_user_login_sessions"


def _documents(with_uploading_session: bool) -> sa.Table:
    """The documents table before or after this revision.

    Handed to batch_alter_table as copy_from, so that SQLite's copy-and-move
    needs no reflection and offline (--sql) mode works too.
    """
    extra = []
    if with_uploading_session:
        extra = [
            sa.Column("uploaded_by_login_session_id", sa.Integer(), nullable=True),
            sa.ForeignKeyConstraint(
                ["uploaded_by_login_session_id"],
                ["user_login_sessions.id"],
                name=FK_NAME,
                ondelete="SET NULL",
            ),
        ]
    return sa.Table(
        "documents",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column(
            "uploaded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        *extra,
        sa.CheckConstraint("size_bytes >= 0", name="ck_documents_size_bytes_nonnegative"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_documents_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
        sa.Index("ix_documents_user_id", "user_id"),
    )


def upgrade() -> None:
    with op.batch_alter_table("documents", copy_from=_documents(False)) as batch_op:
        batch_op.add_column(
            sa.Column("uploaded_by_login_session_id", sa.Integer(), nullable=True)
        )
        batch_op.create_foreign_key(
            FK_NAME,
            "user_login_sessions",
            ["uploaded_by_login_session_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("documents", copy_from=_documents(True)) as batch_op:
        batch_op.drop_constraint(FK_NAME, type_="foreignkey")
        batch_op.drop_column("uploaded_by_login_session_id")
