"""Apply pending migrations when a host application starts, behind the guard.

The seed backend ran ``alembic upgrade head`` bare at start-up. Here the
same switch (``AUTO_MIGRATE``, on unless set to false) runs the upgrade
through the dashboard's guard: the shared lock, a verified backup first, a
restore when a step fails, an audit entry. A failed run raises, so the host
fails to start loudly instead of serving a database its code does not match.
Library code: it logs, never prints or exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from dashboard.core import Target
from dashboard.engines.sqlite import absolute_sqlite_url
from dashboard.errors import ConfigurationError, DashboardError
from dashboard.services import guard, planning
from dashboard.services.audit import current_user
from dashboard.services.runs import SUCCEEDED, RunRecord
from dashboard.services.status import PENDING, UNINITIALIZED, UP_TO_DATE
from dashboard.settings import settings_from_environ

log = logging.getLogger("dashboard.automigrate")

SWITCH = "AUTO_MIGRATE"
_ON = ("true", "1", "yes", "on")
_OFF = ("false", "0", "no", "off")


class AutoMigrateFailed(DashboardError):
    """The start-up migration did not succeed; the host should not start."""

    status_code = 503
    title = "Automatic migration failed"

    def __init__(self, message: str, *, detail: str | None = None,
                 run: RunRecord | None = None):
        super().__init__(message, detail=detail)
        self.run = run


def auto_migrate_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``AUTO_MIGRATE``: on when unset or true/1/yes/on, off when false/0/no/off."""
    environ = os.environ if environ is None else environ
    raw = (environ.get(SWITCH) or "").strip().lower()
    if raw in ("", *_ON):
        return True
    if raw in _OFF:
        return False
    raise ConfigurationError(
        f"{SWITCH}={environ.get(SWITCH)!r} is neither on nor off.",
        detail=f"Use one of {', '.join(_ON)} or {', '.join(_OFF)}.",
    )


def settings_for(alembic_ini: str | None = None, database_url: str | None = None,
                 instance_dir: str | None = None,
                 environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The DASHBOARD_* settings of ``environ``, overridden by the arguments; a relative
    SQLite URL names a file in the current directory."""
    settings = settings_from_environ(dict(os.environ if environ is None else environ))
    overrides = {
        "DASHBOARD_ALEMBIC_INI": alembic_ini,
        "DASHBOARD_DATABASE_URL": database_url,
        "DASHBOARD_INSTANCE_DIR": instance_dir,
    }
    settings.update({name: value for name, value in overrides.items() if value})
    if settings.get("DASHBOARD_DATABASE_URL"):
        settings["DASHBOARD_DATABASE_URL"] = absolute_sqlite_url(
            str(settings["DASHBOARD_DATABASE_URL"]), os.getcwd())
    return settings


def dashboard_for(alembic_ini: str | None = None, database_url: str | None = None,
                  instance_dir: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Target:
    """A Target from the DASHBOARD_* settings of ``environ``, overridden by the arguments.

    Shared with the command line, so it and the start-up hook resolve the same
    database, lock and instance folder as the dashboard."""
    return Target(settings_for(alembic_ini, database_url, instance_dir, environ))


def auto_migrate(alembic_ini: str | None = None, database_url: str | None = None,
                 instance_dir: str | None = None,
                 environ: Mapping[str, str] | None = None) -> RunRecord | None:
    """Upgrade to the heads if anything is pending; the run, or None if nothing ran.

    Settings come from the DASHBOARD_* variables of ``environ`` (default:
    ``os.environ``), overridden by the arguments. Raises ``AutoMigrateFailed``
    when the database cannot be read or the run did not succeed (the guard
    has then restored the pre-migration backup)."""
    environ = os.environ if environ is None else environ
    if not auto_migrate_enabled(environ):
        log.info("%s is off: not running database migrations", SWITCH)
        return None
    dashboard = dashboard_for(alembic_ini, database_url, instance_dir, environ)

    project, history, status = dashboard.read_state()
    if status.state == UP_TO_DATE:
        log.info("Database is up to date at %s", ", ".join(status.current))
        return None
    if status.state not in (PENDING, UNINITIALIZED) and not status.creatable:
        log.error("Database migrations cannot run: %s", status.explanation)
        raise AutoMigrateFailed(f"Database migrations cannot run: {status.explanation}")

    log.info("Running database migrations... (%d pending, database %s)",
             len(status.pending), status.database.url)
    try:
        run = guard.start_action(dashboard.pinned(project), history, status.state,
                                      "upgrade", "heads", current_user(), background=False)
    except planning.NothingToDo:  # another process applied them since we looked
        log.info("Database migrations were applied by another process")
        return None
    except DashboardError as exc:  # the lock is held, the target is refused...
        log.error("Database migrations could not start: %s", exc.message)
        raise AutoMigrateFailed(f"Database migrations could not start: {exc.message}",
                                detail=exc.detail) from exc

    for step in run.steps:
        log.info("Migration step %s %s: %s", step.direction, step.revision, step.status)
    if run.status != SUCCEEDED:
        log.error("Database migrations failed (run %s, %s): %s", run.id, run.status, run.error)
        raise AutoMigrateFailed(
            f"Database migrations failed (run {run.id}, {run.status}): {run.error}",
            run=run,
        )
    log.info("Database migrations completed successfully: now at %s (backup %s)",
             ", ".join(run.to_revs), run.backup_id)
    return run
