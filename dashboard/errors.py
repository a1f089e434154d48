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


class BackupError(DashboardError):
    """A backup could not be taken or verified; nothing was run."""

    status_code = 503
    title = "Backup failed"
