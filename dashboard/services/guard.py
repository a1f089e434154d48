"""The guard around every change to the target database: its verbs.

One service call per change, in this order: take the lock, take and verify
a backup, run the migration in a worker process (``supervision``), and
record the audit entry. If the backup cannot be taken or verified, nothing
runs. If a step fails, ``recovery`` puts the database back as it was.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from dashboard.engines import DatabaseUnreachable
from dashboard.errors import Conflict, DashboardError, NotFound
from dashboard.services import audit, backups, locking, recovery, runs, supervision
from dashboard.services.planning import ActionPlan, plan_action
from dashboard.services.project import Project
from dashboard.services.revisions import History
from dashboard.services.status import missing_sqlite_file

if TYPE_CHECKING:
    from dashboard.core import Target


def lock_key(project: Project) -> str:
    """What names the target database for the lock, whatever its spelling (no password)."""
    return project.engine.identity(project.database_url)


def acquire_lock(target: Target, holder: locking.LockHolder) -> locking.ActionLock:
    """This machine's file lock, then the database's own lock (servers only)."""
    project = target.project()
    lock = locking.acquire(target.locks_dir, lock_key(project), holder)
    try:
        lock.engine_lock = project.engine.acquire_lock(project, holder)
    except DatabaseUnreachable as exc:
        lock.release()
        raise Conflict(f"The database cannot be reached to lock it: {exc}") from exc
    except Exception:
        lock.release()
        raise
    return lock


def lock_holder(target: Target) -> str | None:
    """Who runs an action on this database now, for the pages; None when nobody.

    Reads only: the file lock is probed, the database lock looked up."""
    project = target.project()
    holder = locking.read_holder(target.locks_dir, lock_key(project))
    if holder is not None:
        return holder.describe()
    return project.engine.lock_holder(project)


def start_action(target: Target, history: History, state: str, action: str, destination: str,
                 user: str, background: bool = True) -> runs.RunRecord:
    """Validate, take the lock, and run the action (in a thread when ``background``).

    Raises ``BadRequest`` for a bad target and ``Conflict`` while another
    action holds the lock; both before anything is recorded or changed."""
    target.check_writable()
    recovery.reap_interrupted_runs(target)
    run_id = runs.new_run_id()
    # The lock comes first: while another action runs, the state it would be
    # planned from is in flux, and "already running" is the answer that helps.
    lock = acquire_lock(target, locking.LockHolder(
        os.getpid(), f"{action} {destination}", run_id, user, time.time()))
    try:
        new_file = missing_sqlite_file(target.project()) if action == "upgrade" else None
        if new_file:
            current = ()
            plan = replace(plan_action(history, (), action, destination), creates_file=new_file)
        else:
            current = recovery.live_revisions(target.project())
            plan = plan_action(history, current, action, destination, state)
        runs.create_run(target.instance_dir, run_id=run_id, action=action,
                        target=plan.destination, user=user, from_revs=current)
        runs.plan_steps(target.instance_dir, run_id, [
            {"revision": s.revision, "direction": s.direction} for s in plan.steps
        ])
    except Exception:
        lock.release()
        raise
    return _launch(target, run_id, lock, background,
                   lambda: _execute_action(target, run_id, plan, user, lock))


def start_restore(target: Target, backup_id: str, user: str,
                  background: bool = True) -> runs.RunRecord:
    """Restore a backup, itself behind the guard: the current state is backed up first."""
    target.check_writable()
    recovery.reap_interrupted_runs(target)
    record = backups.get_backup(target.instance_dir, backup_id)
    run_id = runs.new_run_id()
    lock = acquire_lock(target, locking.LockHolder(
        os.getpid(), f"restore {record.id}", run_id, user, time.time()))
    try:
        current = recovery.live_revisions(target.project(), allow_missing=True)
        runs.create_run(target.instance_dir, run_id=run_id, action="restore",
                        target=record.id, user=user, from_revs=current,
                        restore_backup_id=record.id)
        runs.plan_steps(target.instance_dir, run_id, [
            {"revision": ",".join(record.revisions) or "base", "direction": "restore"}
        ])
    except Exception:
        lock.release()
        raise
    return _launch(target, run_id, lock, background,
                   lambda: _execute_restore(target, run_id, record, current, user, lock))


def backup_now(target: Target, user: str) -> backups.BackupRecord:
    """A manual backup, under the lock so it never races a migration."""
    target.check_writable()
    lock = acquire_lock(target, locking.LockHolder(os.getpid(), "backup", "-", user, time.time()))
    started = time.time()
    try:
        try:
            current = recovery.live_revisions(target.project())
            record = backups.take_backup(target.project(), target.instance_dir,
                                         target.backup_dir, "manual backup",
                                         expected_revisions=current)
        except DashboardError as exc:
            audit.record_event(target, audit.BackupFailed(
                user=user, error=exc.message, duration=time.time() - started))
            raise
        backups.apply_retention(target.instance_dir, target.retention)
        audit.record_event(target, audit.BackupTaken(
            user=user, from_revs=record.revisions, to_revs=record.revisions, backup_id=record.id,
            duration=time.time() - started))
        return record
    finally:
        lock.release()


def delete_backup(target: Target, backup_id: str, user: str) -> None:
    target.check_writable()
    record = backups.get_backup(target.instance_dir, backup_id)
    backups.delete_backup(target.instance_dir, record.id)
    audit.record_event(target, audit.BackupDeleted(
        user=user, backup_id=record.id, from_revs=record.revisions))


def _launch(target, run_id, lock, background, work):
    if background:
        threading.Thread(target=work, name=f"run-{run_id}", daemon=True).start()
    else:
        work()
    return runs.get_run(target.instance_dir, run_id)


def _take_guard_backup(target: Target, run_id: str, label: str,
                       expected: tuple[str, ...]) -> backups.BackupRecord:
    runs.update_run(target.instance_dir, run_id, status=runs.BACKING_UP, started_at=time.time())
    started = time.time()
    record = backups.take_backup(target.project(), target.instance_dir,
                                 target.backup_dir, label,
                                 expected_revisions=expected)
    runs.update_run(target.instance_dir, run_id, backup_id=record.id,
                    backup_seconds=time.time() - started)
    backups.apply_retention(target.instance_dir, max(target.retention, 1))
    return record


def _execute_action(target: Target, run_id: str, plan: ActionPlan, user: str,
                    lock: locking.ActionLock) -> None:
    inst = target.instance_dir
    started = time.time()
    backup = None
    try:
        if plan.creates_file:
            _create_database(target, run_id, plan, user, lock, started)
            return
        try:
            expected = recovery.live_revisions(target.project())
            backup = _take_guard_backup(target, run_id, f"{plan.action} {plan.destination}",
                                        expected)
        except DashboardError as exc:
            message = f"The backup failed, so nothing was run: {exc.message}"
            runs.update_run(inst, run_id, status=runs.FAILED, error=message,
                            finished_at=time.time(), to_revs=plan.from_revs)
            audit.record_event(target, audit.ActionRefused(
                user=user, action=plan.action, destination=plan.destination,
                from_revs=plan.from_revs, to_revs=plan.from_revs, run_id=run_id,
                duration=time.time() - started, error=message))
            return
        runs.update_run(inst, run_id, status=runs.RUNNING)
        outcome = supervision.run_worker(target, run_id, plan, lock)
        if outcome.ok:
            runs.update_run(inst, run_id, status=runs.SUCCEEDED, finished_at=time.time(),
                            to_revs=outcome.heads)
            audit.record_event(target, audit.ActionSucceeded(
                user=user, action=plan.action, destination=plan.destination,
                from_revs=plan.from_revs, to_revs=outcome.heads, backup_id=backup.id,
                run_id=run_id, duration=time.time() - started))
            return
        recovery.recover(target, run_id, plan.action, plan.destination, plan.from_revs, backup,
                         user, started,
                         f"Step {outcome.failed_step or '?'} failed: {outcome.error}")
    except Exception as exc:  # never leave a run "running" behind
        error = target.project().scrub(f"{type(exc).__name__}: {exc}")
        if backup is not None:
            recovery.recover(target, run_id, plan.action, plan.destination, plan.from_revs,
                             backup, user, started, f"The run stopped: {error}")
        else:
            runs.update_run(inst, run_id, status=runs.FAILED, error=error,
                            finished_at=time.time())
    finally:
        lock.release()


def _create_database(target: Target, run_id: str, plan: ActionPlan, user: str,
                     lock: locking.ActionLock, started: float) -> None:
    """Upgrade a SQLite database that does not exist yet. Nothing to back up;
    if a step fails, the new file is removed, so it is absent as it was."""
    inst, path = target.instance_dir, plan.creates_file
    runs.update_run(inst, run_id, status=runs.RUNNING, started_at=time.time())
    runs.add_log(inst, run_id, "INFO", f"No backup: {path} did not exist; this upgrade creates it.")
    outcome = supervision.run_worker(target, run_id, plan, lock)
    if outcome.ok:
        runs.update_run(inst, run_id, status=runs.SUCCEEDED, finished_at=time.time(),
                        to_revs=outcome.heads)
        audit.record_event(target, audit.DatabaseCreated(
            user=user, action=plan.action, destination=plan.destination, to_revs=outcome.heads,
            run_id=run_id, duration=time.time() - started))
        return
    target.project().engine.remove_database(target.project().database_url)
    message = (f"Step {outcome.failed_step or '?'} failed: {outcome.error} The new database "
               f"file was removed: {path} does not exist, as before.")
    runs.update_run(inst, run_id, status=runs.RESTORED, error=message, finished_at=time.time())
    audit.record_event(target, audit.DatabaseCreationUndone(
        user=user, action=plan.action, destination=plan.destination, run_id=run_id,
        duration=time.time() - started, error=message))


def _execute_restore(target: Target, run_id: str, record, current: tuple[str, ...],
                     user: str, lock: locking.ActionLock) -> None:
    inst = target.instance_dir
    started = time.time()
    safety = None
    try:
        try:
            safety = _take_guard_backup(target, run_id, f"restore of {record.id}", current)
        except DashboardError as exc:
            message = f"The backup of the current state failed, so nothing was restored: " \
                      f"{exc.message}"
            runs.update_run(inst, run_id, status=runs.FAILED, error=message,
                            finished_at=time.time())
            audit.record_event(target, audit.RestoreRefused(
                user=user, action="restore", destination=record.id, from_revs=current,
                run_id=run_id, duration=time.time() - started, error=message))
            return
        runs.update_run(inst, run_id, status=runs.RUNNING)
        runs.update_step(inst, run_id, 1, status="running", started_at=time.time())
        try:
            backups.restore_backup_file(target.project(), record)
        except Exception as exc:
            runs.update_step(inst, run_id, 1, status="failed", finished_at=time.time())
            detail = exc.message if isinstance(exc, DashboardError) else str(exc)
            recovery.recover(target, run_id, "restore", record.id, current, safety, user, started,
                     f"Restoring {record.id} failed: {detail}")
            return
        runs.update_step(inst, run_id, 1, status="succeeded", finished_at=time.time())
        live = recovery.live_revisions(target.project(), allow_missing=True)
        runs.update_run(inst, run_id, status=runs.SUCCEEDED, finished_at=time.time(),
                        to_revs=live)
        audit.record_event(target, audit.RestoreSucceeded(
            user=user, action="restore", destination=record.id, from_revs=current, to_revs=live,
            backup_id=safety.id, run_id=run_id, duration=time.time() - started))
    except Exception as exc:
        runs.update_run(inst, run_id, status=runs.FAILED, finished_at=time.time(),
                        error=target.project().scrub(f"{type(exc).__name__}: {exc}"))
    finally:
        lock.release()


def cancel_run(target: Target, run_id: str, user: str) -> runs.RunRecord:
    """Stop a running migration's worker. The guard then puts the database back
    as for any failed step (rollback on PostgreSQL, the backup elsewhere)."""
    target.check_writable()
    run = runs.get_run(target.instance_dir, run_id)
    if run is None:
        raise NotFound(f"No run '{run_id}'.")
    pid = runs.worker_pid(target.instance_dir, run_id)
    if run.status != runs.RUNNING or not pid:
        raise Conflict(f"Run {run_id} is {run.status.replace('_', ' ')}: only a running "
                       "migration can be cancelled.")
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
    except OSError:
        cmdline = b""
    if b"alembic_worker.py" not in cmdline:  # the worker is gone; its pid may be reused
        raise Conflict(f"Run {run_id} has no worker left to stop.")
    runs.add_log(target.instance_dir, run_id, "WARNING", supervision.CANCEL_MARK + user)
    os.kill(pid, signal.SIGTERM)
    return runs.get_run(target.instance_dir, run_id)
