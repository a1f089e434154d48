"""The sample application whose migrations the dashboard shows out of the box."""

from app_models.models import (
    Base,
    ChatMessage,
    ChatSession,
    Document,
    User,
    UserLoginSession,
    UserSettings,
    chat_session_documents,
)

__all__ = [
    "Base",
    "ChatMessage",
    "ChatSession",
    "Document",
    "User",
    "UserLoginSession",
    "UserSettings",
    "chat_session_documents",
]
