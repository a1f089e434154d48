"""Putting the database back after a failed step, and runs whose process died.

PostgreSQL rolls a failed action back itself (its DDL is transactional and
the action runs in one transaction); elsewhere the pre-action backup is
restored and checked. A run left unfinished by a dead process is marked
final, never silently retried.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dashboard.errors import Conflict, DashboardError
from dashboard.services import audit, backups, locking, runs
from dashboard.services.project import Project
from dashboard.services.status import DatabaseUnreachable, read_database_revisions

if TYPE_CHECKING:
    from dashboard.core import Target


def lock_key(project: Project) -> str:
    """What names the target database for the lock, whatever its spelling (no password)."""
    return project.engine.identity(project.database_url)


def live_revisions(project: Project, allow_missing: bool = False) -> tuple[str, ...]:
    """The database's revisions, read now."""
    try:
        return tuple(sorted(read_database_revisions(project).current))
    except DatabaseUnreachable as exc:
        if allow_missing:
            return ()
        raise Conflict(f"The database cannot be read: {exc}") from exc


def recover(target: Target, run_id: str, action: str, target_rev: str,
             from_revs: tuple[str, ...], backup, user: str, started: float,
             failure: str) -> None:
    """After a failed step: put the database back as it was, and say how."""
    inst = target.instance_dir
    if target.project().engine.transactional_ddl:
        live = live_revisions(target.project(), allow_missing=True)
        if live == tuple(from_revs):
            message = (f"{failure} The transaction was rolled back; the database is at "
                       f"{', '.join(live) or 'base'} as before.")
            runs.update_run(inst, run_id, status=runs.RESTORED, error=message,
                            finished_at=time.time(), to_revs=live)
            audit.record_event(target, audit.ActionRolledBack(
                user=user, action=action, destination=target_rev, from_revs=from_revs,
                to_revs=live, backup_id=backup.id, run_id=run_id, duration=time.time() - started,
                error=message))
            return
    runs.update_run(inst, run_id, status=runs.RESTORING, error=failure)
    try:
        backups.restore_backup_file(target.project(), backup)
    except Exception as exc:
        detail = exc.message if isinstance(exc, DashboardError) else str(exc)
        message = (f"{failure} Restoring the pre-action backup {backup.id} ALSO failed: "
                   f"{detail}. The database may be half-migrated; the verified backup is at "
                   f"{backup.path}.")
        runs.update_run(inst, run_id, status=runs.FAILED, error=message, finished_at=time.time())
        audit.record_event(target, audit.ActionFailed(
            user=user, action=action, destination=target_rev, from_revs=from_revs,
            backup_id=backup.id, run_id=run_id, duration=time.time() - started, error=message))
        return
    live = live_revisions(target.project(), allow_missing=True)
    message = (f"{failure} The database was restored from the pre-action backup {backup.id} "
               f"(verified) and is at {', '.join(live) or 'base'} as before.")
    runs.update_run(inst, run_id, status=runs.RESTORED, error=message,
                    finished_at=time.time(), to_revs=live)
    audit.record_event(target, audit.ActionRestored(
        user=user, action=action, destination=target_rev, from_revs=from_revs, to_revs=live,
        backup_id=backup.id, run_id=run_id, duration=time.time() - started, error=message))


def reap_interrupted_runs(target: Target) -> list[str]:
    """Runs left unfinished by a process that died: their lock is free again.

    They are marked failed with what to check, never silently retried."""
    if locking.read_holder(target.locks_dir, lock_key(target.project())) is not None:
        return []
    reaped = []
    for run in runs.unfinished_runs(target.instance_dir):
        message = ("The process running this action stopped before it finished (the server "
                   "or worker died). The database may be half-migrated: compare it with "
                   f"backup {run.backup_id or '(none taken)'} and restore that backup if needed.")
        runs.update_run(target.instance_dir, run.id, status=runs.FAILED, error=message,
                        finished_at=time.time())
        audit.record_event(target, audit.ActionInterrupted(
            user=run.user, action=run.action, destination=run.target, from_revs=run.from_revs,
            backup_id=run.backup_id, run_id=run.id, error=message))
        reaped.append(run.id)
    return reaped
