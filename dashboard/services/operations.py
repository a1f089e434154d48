"""The guard around every change to the target database.

One service call per change, in this order: take the lock, take and verify
a backup, run the migration in a worker process, and record the audit entry.
If the backup cannot be taken or verified, nothing runs. If a step fails on
a database whose DDL is not transactional (SQLite, MariaDB), the pre-action
backup is restored and verified, so the database ends as it was.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace

from alembic.script.revision import RevisionError
from alembic.util import CommandError

from dashboard.errors import (
    BackupError,
    BadRequest,
    Conflict,
    DashboardError,
    Forbidden,
    NotFound,
)
from dashboard.services import audit, backups, locking, runs
from dashboard.services.alembic_process import (
    parse_events,
    scrub,
    worker_command,
    worker_environment,
)
from dashboard.services.project import Project
from dashboard.services.revisions import History, applied_revisions
from dashboard.services.status import (
    UNKNOWN_REVISION,
    UNREACHABLE,
    DatabaseUnreachable,
    missing_sqlite_file,
    open_engine,
    read_database_revisions,
)

ACTIONS = ("upgrade", "downgrade", "stamp")
_TARGET = re.compile(r"^[A-Za-z0-9_@+\-.,:]{1,200}$")
# Engines whose DDL commits implicitly: a failed step is undone by restoring the backup.
RESTORE_ON_FAILURE = ("sqlite", "mysql", "mariadb")


class NothingToDo(BadRequest):
    title = "Nothing to do"


@dataclass(frozen=True)
class PlannedStep:
    revision: str
    message: str
    direction: str  # up, down, stamp


@dataclass(frozen=True)
class ActionPlan:
    action: str
    target: str
    from_revs: tuple[str, ...]
    steps: tuple[PlannedStep, ...]
    purge: bool = False
    creates_file: str | None = None  # a new SQLite database: nothing to back up


def target_key(project: Project) -> str:
    """What identifies the target database for the lock (no password in it)."""
    return project.masked_url


def acquire_lock(target: Target, holder: locking.LockHolder) -> locking.ActionLock:
    """This machine's file lock, then the database's own lock (servers only)."""
    lock = locking.acquire(target.locks_dir, target_key(target.project), holder)
    try:
        lock.engine_lock = locking.acquire_engine_lock(
            lambda: _open_connection(target.project), target.project.dialect, holder)
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
    holder = locking.read_holder(target.locks_dir, target_key(target.project))
    if holder is not None:
        return holder.describe()
    if target.project.dialect not in ("postgresql", "mysql", "mariadb"):
        return None
    try:
        engine, connection = _open_connection(target.project)
    except DatabaseUnreachable:
        return None
    try:
        who = locking.engine_lock_holder(connection, target.project.dialect)
    except Exception:
        return None
    finally:
        connection.close()
        engine.dispose()
    return f"A migration is already running on this database ({who})." if who else None


def _open_connection(project: Project):
    engine = open_engine(project, read_only=False)
    try:
        return engine, engine.connect()
    except Exception as exc:
        engine.dispose()
        raise DatabaseUnreachable(scrub(f"{type(exc).__name__}: {exc}", project)) from exc


# ------------------------------------------------------------------ planning

def plan_action(history: History, current: tuple[str, ...], action: str, target: str,
                state: str | None = None) -> ActionPlan:
    """Validate an action and list the steps Alembic would take, without running it."""
    if action not in ACTIONS:
        raise BadRequest(f"Unknown action '{action}': use upgrade, downgrade or stamp.")
    target = (target or "").strip()
    if not target or not _TARGET.match(target):
        raise BadRequest(f"'{target}' is not a revision target. Use a revision id, a partial "
                         "id, head, heads, base, label@head, +N or -N.")
    if history.error:
        raise BadRequest(f"The revision history cannot be read: {history.error}")
    if state == UNREACHABLE:
        raise Conflict("The database cannot be reached; nothing can run.")
    revision_map = history.revision_map
    purge = False
    try:
        if action == "stamp":
            if state == UNKNOWN_REVISION:
                purge = True  # the unknown row must go: Alembic cannot walk from it
            names = [t for t in target.split(",") if t]
            for name in names:
                if name not in ("base", "heads", "head"):
                    revision_map.get_revisions(name)
            steps = tuple(PlannedStep(name, "", "stamp") for name in names)
        elif state == UNKNOWN_REVISION:
            raise Conflict("The database is at a revision no script defines; "
                           "stamp it at the revision its schema matches first.")
        elif action == "upgrade":
            revs = list(revision_map.iterate_revisions(target, current, implicit_base=True))
            steps = tuple(PlannedStep(r.revision, r.doc, "up") for r in reversed(revs))
        else:
            revs = list(revision_map.iterate_revisions(current, target,
                                                       select_for_downgrade=True))
            steps = tuple(PlannedStep(r.revision, r.doc, "down") for r in revs)
    except (RevisionError, CommandError) as exc:
        raise BadRequest(f"Cannot {action} to '{target}': {exc}") from exc
    if action != "stamp" and not steps:
        raise NothingToDo(f"Nothing to {action}: the database is already at "
                          f"{', '.join(current) or 'base'} for target '{target}'.")
    return ActionPlan(action, target, tuple(current), steps, purge)


def resulting_revisions(history: History, plan: ActionPlan) -> tuple[str, ...]:
    """Where the database will be after the plan, for the confirmation page:
    the heads of what is applied then."""
    if plan.action == "stamp":
        names = [s.revision for s in plan.steps if s.revision != "base"]
        return tuple(sorted(r.revision for r in history.revision_map.get_revisions(names)
                            if r is not None)) if names else ()
    applied = set(applied_revisions(history, plan.from_revs))
    changed = {s.revision for s in plan.steps}
    applied = applied | changed if plan.action == "upgrade" else applied - changed
    return tuple(sorted(
        rev for rev in applied
        if not any(child in applied for child in history.revisions[rev].nextrev)
    ))


# ------------------------------------------------------------------ running

@dataclass
class Target:
    """What the guard needs: the project and where the dashboard keeps its state."""

    project: Project
    instance_dir: str
    retention: int = 20
    backup_folder: str | None = None  # default: <instance_dir>/backups
    lock_dir: str | None = None  # default: instance_dir; shared by targets of one dashboard
    read_only: bool = False

    @property
    def backup_dir(self) -> str:
        return self.backup_folder or os.path.join(self.instance_dir, "backups")

    @property
    def locks_dir(self) -> str:
        return self.lock_dir or self.instance_dir

    def check_writable(self) -> None:
        if self.read_only:
            raise Forbidden("This target is read-only: actions, restores and backups are "
                            "disabled for it in the targets file.")


def start_action(target: Target, history: History, state: str, action: str, target_rev: str,
                 user: str, background: bool = True) -> runs.RunRecord:
    """Validate, take the lock, and run the action (in a thread when ``background``).

    Raises ``BadRequest`` for a bad target and ``Conflict`` while another
    action holds the lock; both before anything is recorded or changed."""
    target.check_writable()
    reap_interrupted_runs(target)
    run_id = runs.new_run_id()
    # The lock comes first: while another action runs, the state it would be
    # planned from is in flux, and "already running" is the answer that helps.
    lock = acquire_lock(target, locking.LockHolder(
        os.getpid(), f"{action} {target_rev}", run_id, user, time.time()))
    try:
        new_file = missing_sqlite_file(target.project) if action == "upgrade" else None
        if new_file:
            current = ()
            plan = replace(plan_action(history, (), action, target_rev), creates_file=new_file)
        else:
            current = _live_revisions(target.project)
            plan = plan_action(history, current, action, target_rev, state)
        runs.create_run(target.instance_dir, run_id=run_id, action=action,
                        target=plan.target, user=user, from_revs=current)
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
    reap_interrupted_runs(target)
    record = backups.get_backup(target.instance_dir, backup_id)
    run_id = runs.new_run_id()
    lock = acquire_lock(target, locking.LockHolder(
        os.getpid(), f"restore {record.id}", run_id, user, time.time()))
    try:
        current = _live_revisions(target.project, allow_missing=True)
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
            current = _live_revisions(target.project)
            record = backups.take_backup(target.project, target.instance_dir,
                                         target.backup_dir, "manual backup",
                                         expected_revisions=current)
        except DashboardError as exc:
            _audit(target, "backup_failed", "failed", user, error=exc.message,
                   duration=time.time() - started)
            raise
        backups.apply_retention(target.instance_dir, target.retention)
        _audit(target, "backup_taken", "succeeded", user, from_revs=record.revisions,
               to_revs=record.revisions, backup_id=record.id, duration=time.time() - started)
        return record
    finally:
        lock.release()


def delete_backup(target: Target, backup_id: str, user: str) -> None:
    target.check_writable()
    record = backups.get_backup(target.instance_dir, backup_id)
    backups.delete_backup(target.instance_dir, record.id)
    _audit(target, "backup_deleted", "succeeded", user, backup_id=record.id,
           from_revs=record.revisions)


def _launch(target, run_id, lock, background, work):
    if background:
        threading.Thread(target=work, name=f"run-{run_id}", daemon=True).start()
    else:
        work()
    return runs.get_run(target.instance_dir, run_id)


def _live_revisions(project: Project, allow_missing: bool = False) -> tuple[str, ...]:
    try:
        return tuple(sorted(read_database_revisions(project).current))
    except DatabaseUnreachable as exc:
        if allow_missing:
            return ()
        raise Conflict(f"The database cannot be read: {exc}") from exc


def _take_guard_backup(target: Target, run_id: str, label: str,
                       expected: tuple[str, ...]) -> backups.BackupRecord:
    runs.update_run(target.instance_dir, run_id, status=runs.BACKING_UP, started_at=time.time())
    started = time.time()
    record = backups.take_backup(target.project, target.instance_dir,
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
            expected = _live_revisions(target.project)
            backup = _take_guard_backup(target, run_id, f"{plan.action} {plan.target}", expected)
        except DashboardError as exc:
            message = f"The backup failed, so nothing was run: {exc.message}"
            runs.update_run(inst, run_id, status=runs.FAILED, error=message,
                            finished_at=time.time(), to_revs=plan.from_revs)
            _audit(target, "action_refused", "failed", user, action=plan.action,
                   target_rev=plan.target, from_revs=plan.from_revs, to_revs=plan.from_revs,
                   run_id=run_id, duration=time.time() - started, error=message)
            return
        runs.update_run(inst, run_id, status=runs.RUNNING)
        outcome = _run_worker(target, run_id, plan, lock)
        if outcome.ok:
            runs.update_run(inst, run_id, status=runs.SUCCEEDED, finished_at=time.time(),
                            to_revs=outcome.heads)
            _audit(target, "action_succeeded", "succeeded", user, action=plan.action,
                   target_rev=plan.target, from_revs=plan.from_revs, to_revs=outcome.heads,
                   backup_id=backup.id, run_id=run_id, duration=time.time() - started)
            return
        _recover(target, run_id, plan.action, plan.target, plan.from_revs, backup, user,
                 started, f"Step {outcome.failed_step or '?'} failed: {outcome.error}")
    except Exception as exc:  # never leave a run "running" behind
        error = scrub(f"{type(exc).__name__}: {exc}", target.project)
        if backup is not None:
            _recover(target, run_id, plan.action, plan.target, plan.from_revs, backup, user,
                     started, f"The run stopped: {error}")
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
    outcome = _run_worker(target, run_id, plan, lock)
    if outcome.ok:
        runs.update_run(inst, run_id, status=runs.SUCCEEDED, finished_at=time.time(),
                        to_revs=outcome.heads)
        _audit(target, "database_created", "succeeded", user, action=plan.action,
               target_rev=plan.target, to_revs=outcome.heads, run_id=run_id,
               duration=time.time() - started)
        return
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
    message = (f"Step {outcome.failed_step or '?'} failed: {outcome.error} The new database "
               f"file was removed: {path} does not exist, as before.")
    runs.update_run(inst, run_id, status=runs.RESTORED, error=message, finished_at=time.time())
    _audit(target, "database_creation_undone", "restored", user, action=plan.action,
           target_rev=plan.target, run_id=run_id, duration=time.time() - started, error=message)


def _recover(target: Target, run_id: str, action: str, target_rev: str,
             from_revs: tuple[str, ...], backup, user: str, started: float,
             failure: str) -> None:
    """After a failed step: put the database back as it was, and say how."""
    inst = target.instance_dir
    dialect = target.project.dialect
    if dialect not in RESTORE_ON_FAILURE:
        live = _live_revisions(target.project, allow_missing=True)
        if live == tuple(from_revs):
            message = (f"{failure} The transaction was rolled back; the database is at "
                       f"{', '.join(live) or 'base'} as before.")
            runs.update_run(inst, run_id, status=runs.RESTORED, error=message,
                            finished_at=time.time(), to_revs=live)
            _audit(target, "action_rolled_back", "restored", user, action=action,
                   target_rev=target_rev, from_revs=from_revs, to_revs=live,
                   backup_id=backup.id, run_id=run_id, duration=time.time() - started,
                   error=message)
            return
    runs.update_run(inst, run_id, status=runs.RESTORING, error=failure)
    try:
        backups.restore_backup_file(target.project, backup)
    except Exception as exc:
        detail = exc.message if isinstance(exc, DashboardError) else str(exc)
        message = (f"{failure} Restoring the pre-action backup {backup.id} ALSO failed: "
                   f"{detail}. The database may be half-migrated; the verified backup is at "
                   f"{backup.path}.")
        runs.update_run(inst, run_id, status=runs.FAILED, error=message, finished_at=time.time())
        _audit(target, "action_failed", "failed", user, action=action, target_rev=target_rev,
               from_revs=from_revs, backup_id=backup.id, run_id=run_id,
               duration=time.time() - started, error=message)
        return
    live = _live_revisions(target.project, allow_missing=True)
    message = (f"{failure} The database was restored from the pre-action backup {backup.id} "
               f"(verified) and is at {', '.join(live) or 'base'} as before.")
    runs.update_run(inst, run_id, status=runs.RESTORED, error=message,
                    finished_at=time.time(), to_revs=live)
    _audit(target, "action_restored", "restored", user, action=action, target_rev=target_rev,
           from_revs=from_revs, to_revs=live, backup_id=backup.id, run_id=run_id,
           duration=time.time() - started, error=message)


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
            _audit(target, "restore_refused", "failed", user, action="restore",
                   target_rev=record.id, from_revs=current, run_id=run_id,
                   duration=time.time() - started, error=message)
            return
        runs.update_run(inst, run_id, status=runs.RUNNING)
        runs.update_step(inst, run_id, 1, status="running", started_at=time.time())
        try:
            backups.restore_backup_file(target.project, record)
        except Exception as exc:
            runs.update_step(inst, run_id, 1, status="failed", finished_at=time.time())
            detail = exc.message if isinstance(exc, DashboardError) else str(exc)
            _recover(target, run_id, "restore", record.id, current, safety, user, started,
                     f"Restoring {record.id} failed: {detail}")
            return
        runs.update_step(inst, run_id, 1, status="succeeded", finished_at=time.time())
        live = _live_revisions(target.project, allow_missing=True)
        runs.update_run(inst, run_id, status=runs.SUCCEEDED, finished_at=time.time(),
                        to_revs=live)
        _audit(target, "restore_succeeded", "succeeded", user, action="restore",
               target_rev=record.id, from_revs=current, to_revs=live, backup_id=safety.id,
               run_id=run_id, duration=time.time() - started)
    except Exception as exc:
        runs.update_run(inst, run_id, status=runs.FAILED, finished_at=time.time(),
                        error=scrub(f"{type(exc).__name__}: {exc}", target.project))
    finally:
        lock.release()


@dataclass
class WorkerOutcome:
    ok: bool
    heads: tuple[str, ...] = ()
    error: str | None = None
    failed_step: str | None = None


def _run_worker(target: Target, run_id: str, plan: ActionPlan,
                lock: locking.ActionLock) -> WorkerOutcome:
    """Run the worker and record what it reports, line by line, as it happens."""
    project, inst = target.project, target.instance_dir
    args = ["run", "--ini", project.ini_path, "--action", plan.action, "--target", plan.target]
    if plan.purge:
        args.append("--purge")
    report = _WorkerReport()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as stderr:
        with subprocess.Popen(
            worker_command(project, *args), env=worker_environment(project),
            cwd=os.path.dirname(project.ini_path), stdout=subprocess.PIPE, stderr=stderr,
            stdin=subprocess.DEVNULL, text=True, pass_fds=(lock.fd,),
        ) as proc:
            runs.update_run(inst, run_id, pid=proc.pid)
            assert proc.stdout is not None
            for line in proc.stdout:
                for event in parse_events(line):
                    report = _record_event(inst, run_id, project, event, report)
            returncode = proc.wait()
        heads, error, running_step = report.heads, report.error, report.running_step
        if heads is not None and returncode == 0 and error is None:
            return WorkerOutcome(True, heads)
        if error is None and returncode == -signal.SIGTERM and _cancel_requested(inst, run_id):
            error = "the run was cancelled, and its worker stopped"
        if error is None:
            stderr.seek(0)
            tail = scrub(stderr.read()[-2000:], project).strip()
            error = f"the worker exited with status {returncode}" + (f": {tail}" if tail else "")
    failed = None
    if running_step is not None:
        failed = running_step["revision"]
        runs.update_step(inst, run_id, running_step["index"], status="failed",
                         finished_at=time.time())
    runs.update_run(inst, run_id, failed_step=failed)
    return WorkerOutcome(False, error=error, failed_step=failed)


@dataclass
class _WorkerReport:
    running_step: dict | None = None
    heads: tuple[str, ...] | None = None
    error: str | None = None


def _record_event(inst: str, run_id: str, project: Project, event: dict,
                  report: _WorkerReport) -> _WorkerReport:
    """Store one line the worker reported; returns what the supervisor must remember."""
    kind = event.get("event")
    if kind == "plan":
        runs.plan_steps(inst, run_id, event["steps"])
    elif kind == "step_started":
        report.running_step = event
        runs.update_step(inst, run_id, event["index"], status="running", started_at=event["ts"])
    elif kind == "step_finished":
        report.running_step = None
        runs.update_step(inst, run_id, event["index"], status="succeeded",
                         finished_at=event["ts"])
    elif kind == "log":
        runs.add_log(inst, run_id, event.get("level", "INFO"),
                     scrub(event.get("message", ""), project), event.get("ts"))
    elif kind == "done":
        report.heads = tuple(event.get("heads", ()))
    elif kind == "error":
        report.error = scrub(event.get("error", "unknown error"), project)
        runs.add_log(inst, run_id, "ERROR", scrub(event.get("traceback", report.error), project))
    return report


_CANCEL_MARK = "Cancel requested by "


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
    runs.add_log(target.instance_dir, run_id, "WARNING", _CANCEL_MARK + user)
    os.kill(pid, signal.SIGTERM)
    return runs.get_run(target.instance_dir, run_id)


def _cancel_requested(inst: str, run_id: str) -> bool:
    run = runs.get_run(inst, run_id)
    return bool(run and any(log.message.startswith(_CANCEL_MARK) for log in run.logs))


def reap_interrupted_runs(target: Target) -> list[str]:
    """Runs left unfinished by a process that died: their lock is free again.

    They are marked failed with what to check, never silently retried."""
    if locking.read_holder(target.locks_dir, target_key(target.project)) is not None:
        return []
    reaped = []
    for run in runs.unfinished_runs(target.instance_dir):
        message = ("The process running this action stopped before it finished (the server "
                   "or worker died). The database may be half-migrated: compare it with "
                   f"backup {run.backup_id or '(none taken)'} and restore that backup if needed.")
        runs.update_run(target.instance_dir, run.id, status=runs.FAILED, error=message,
                        finished_at=time.time())
        _audit(target, "action_interrupted", "failed", run.user, action=run.action,
               target_rev=run.target, from_revs=run.from_revs, backup_id=run.backup_id,
               run_id=run.id, error=message)
        reaped.append(run.id)
    return reaped


def _audit(target: Target, event: str, outcome: str, user: str, *, action=None,
           target_rev=None, from_revs=(), to_revs=(), backup_id=None, run_id=None,
           duration=None, error=None) -> None:
    audit.record(target.instance_dir, audit.AuditEntry(
        event=event, outcome=outcome, database=target.project.masked_url, user=user,
        action=action, target=target_rev, from_revs=tuple(from_revs), to_revs=tuple(to_revs),
        backup_id=backup_id, run_id=run_id, duration=duration,
        error=scrub(error, target.project) if error else None,
    ))


__all__ = ["BackupError", "start_action", "start_restore", "backup_now", "plan_action"]
