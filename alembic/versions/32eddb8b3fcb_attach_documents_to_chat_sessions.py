"""attach documents to chat sessions

Revision ID: 32eddb8b3fcb
Revises: 987a8e514080
Create Date: 2025-07-22 11:05:43.206190

"""
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "32eddb8b3fcb"
down_revision: str | None = "987a8e514080"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chat_session_documents",
        sa.Column("chat_session_id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column(
            "attached_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["chat_session_id"],
            ["chat_sessions.id"],
            name="fk_chat_session_documents_chat_session_id_chat_sessions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="fk_chat_session_documents_document_id_documents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "chat_session_id", "document_id", name="pk_chat_session_documents"
        ),
    )
    op.create_index(
        "ix_chat_session_documents_document_id", "chat_session_documents", ["document_id"]
    )


def downgrade() -> None:
    # Dropping the table drops its indexes. Dropping the index first fails on
    # MariaDB/MySQL, where it backs the document_id foreign key (error 1553).
    op.drop_table("chat_session_documents")
