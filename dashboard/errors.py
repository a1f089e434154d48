"""One error family for everything a user can cause or meet.

Services raise these; the web layer turns them into a page or a JSON body
with the status code in one handler, so no view invents its own.
"""

from __future__ import annotations


class DashboardError(Exception):
    status_code = 500
    title = "Error"

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail


class BadRequest(DashboardError):
    status_code = 400
    title = "Bad request"


class Forbidden(DashboardError):
    status_code = 403
    title = "Not allowed"


class NotFound(DashboardError):
    status_code = 404
    title = "Not found"


class Conflict(DashboardError):
    status_code = 409
    title = "Conflict"


class ConfigurationError(DashboardError):
    """The dashboard is pointed at something it cannot use (missing ini...)."""

    status_code = 503
    title = "Configuration problem"


class Unavailable(DashboardError):
    """The dashboard cannot do it now: its own folder is read-only, a tool is missing..."""

    status_code = 503
    title = "Unavailable"


class InsufficientStorage(DashboardError):
    """The dashboard's own folder is full."""

    status_code = 507
    title = "Disk full"


class BackupError(DashboardError):
    """A backup could not be taken or verified; nothing was run."""

    status_code = 503
    title = "Backup failed"


def error_named(name: str, message: str, detail: str | None = None) -> DashboardError:
    """The error class called ``name`` (one the runner process raised), rebuilt here."""
    pending = [DashboardError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls(message, detail=detail)
        pending.extend(cls.__subclasses__())
    return DashboardError(message, detail=detail)
