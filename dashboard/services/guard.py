"""The guard around every change to the target database: its verbs.

One service call per change, in this order: take the lock, take and verify
a backup, run the migration in a worker process (``supervision``), and
record the audit entry. If the backup cannot be taken or verified, nothing
runs. If a step fails, ``recovery`` puts the database back and says how.

Actions and restores are carried out by a runner process of their own
(``dashboard.runner``): ``start_*`` return once it has the lock and has
recorded the run, and the runner goes on whatever happens to the caller.
``prepare`` and ``execute`` are what the runner does.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from alembic.util import to_tuple

from dashboard.engines import DatabaseUnreachable
from dashboard.engines.base import remove_files
from dashboard.errors import BadRequest, Conflict, DashboardError, NotFound
from dashboard.services import audit, backups, locking, recovery, runs, schema, supervision
from dashboard.services.planning import ACTIONS, ActionPlan, plan_action
from dashboard.services.recovery import FailedRun, live_revisions, lock_file, lock_key
from dashboard.services.revisions import History
from dashboard.services.status import missing_sqlite_file

if TYPE_CHECKING:
    from dashboard.core import Target
    from dashboard.services.project import Project


def acquire_lock(target: Target, holder: locking.LockHolder,
                 project: Project | None = None) -> locking.ActionLock:
    """This machine's file lock, then the database's own lock (servers only)."""
    project = project or target.project()
    lock = locking.acquire(target.locks_dir, lock_key(project), holder,
                           beside=lock_file(project))
    try:
        lock.engine_lock = project.engine.acquire_lock(project, holder)
    except DatabaseUnreachable as exc:
        lock.release()
        raise Conflict(f"The database cannot be reached to lock it: {exc}") from exc
    except Exception:
        lock.release()
        raise
    return lock


def acquire_locks(target: Target, holder: locking.LockHolder,
                  databases: tuple[Project, ...]) -> locking.LockGroup:
    """Every database's lock, taken before anything; if one cannot be had, the ones
    taken are let go and the refusal (409) names who holds it."""
    taken: list[locking.ActionLock] = []
    try:
        for database in databases:
            taken.append(acquire_lock(target, holder, database))
    except BaseException as exc:
        for lock in reversed(taken):
            lock.release()
        if taken and isinstance(exc, Conflict):
            raise type(exc)(f"{database.masked_url}: {exc.message}") from exc
        raise
    return locking.LockGroup(taken)


def lock_holder(target: Target, but_backups: bool = False) -> str | None:
    """Who runs an action on this database now, for the pages; None when nobody (with
    ``but_backups``, also when it is a backup being taken, which holds it a moment).

    Reads only: the file lock is probed, the database lock looked up."""
    project = target.project()
    holder = locking.read_holder(target.locks_dir, lock_key(project), lock_file(project))
    if holder is not None:
        return None if but_backups and holder.action == "backup" else holder.describe()
    return project.engine.lock_holder(project)


# ------------------------------------------------------------------ the verbs

def start_action(target: Target, history: History, state: str, action: str, destination: str,
                 user: str, background: bool = True, bound: bool = False,
                 on_exit=None, forkserver=None) -> runs.RunRecord:
    """Start an upgrade, downgrade or stamp behind the guard; its run once started
    (with ``background`` False, once finished). ``bound``: the run dies with the
    calling process (a Celery task's: a lost worker leaves no run going on alone).
    ``on_exit()``: called once the run's runner has exited (a rollout's conductor
    wakes then, instead of at its next look). ``forkserver`` (runner.Forkserver):
    the runner is forked from it (a conductor starts many).

    Raises ``BadRequest`` for a bad destination and ``Conflict`` while another
    action holds the lock; both before anything is recorded or changed."""
    from dashboard import runner

    target.check_writable()
    recovery.reap_interrupted_runs(target)
    if action not in ACTIONS:
        raise BadRequest(f"Unknown action '{action}': use upgrade, downgrade or stamp.")
    _check_plan(target, history, state, action, destination)
    return runner.launch(target, {"verb": "action", "action": action,
                                  "destination": destination, "state": str(state),
                                  "user": user}, wait=not background, bound=bound,
                         on_exit=on_exit, forkserver=forkserver)


def _check_plan(target: Target, history: History, state: str, action: str,
                destination: str) -> None:
    """Refuse a bad destination, or nothing to do, at once, before a runner starts.

    Not while another action holds the lock: the state is in flux then, and the
    runner's "already running" is the answer that helps."""
    project = target.project()
    if locking.read_holder(target.locks_dir, lock_key(project), lock_file(project)):
        return
    if action == "upgrade" and missing_sqlite_file(project):
        plan_action(history, (), action, destination)
        return
    try:
        current = live_revisions(project)
    except Conflict:
        return  # the runner says what it finds
    plan_action(history, current, action, destination, state)


def start_restore(target: Target, backup_id: str, user: str,
                  background: bool = True) -> runs.RunRecord:
    """Restore a backup, itself behind the guard: the current state is backed up first."""
    from dashboard import runner

    target.check_writable()
    recovery.reap_interrupted_runs(target)
    backups.get_backup(target.instance_dir, backup_id)  # 400/404 before anything starts
    return runner.launch(target, {"verb": "restore", "backup_id": backup_id, "user": user},
                         wait=not background)


def start_recovery(target: Target, run: runs.RunRecord, why: str) -> None:
    """Put back the backup of a run whose supervisor died half-way (in a runner)."""
    from dashboard import runner

    try:
        runner.launch(target, {"verb": "recover", "run_id": run.id, "why": why,
                               "user": run.user}, wait=False)
    except locking.LockHeld:
        pass  # someone runs on this database now; the next look settles it


def backup_now(target: Target, user: str, why: str = "manual backup") -> backups.BackupRecord:
    """A backup taken now (``why``: a manual one, or a rehearsal's), under the lock so it
    never races a migration."""
    target.check_writable()
    lock = acquire_lock(target, locking.LockHolder(os.getpid(), "backup", "-", user, time.time()))
    started = time.time()
    try:
        project = target.project()
        try:
            current = live_revisions(project)
            record = backups.take_backup(project, target.instance_dir, target.backup_dir,
                                         why, expected_revisions=current)
        except DashboardError as exc:
            audit.record_event(target, audit.BackupFailed(
                user=user, error=exc.message, duration=time.time() - started))
            raise
        audit.record_event(target, audit.BackupTaken(
            user=user, from_revs=record.revisions, to_revs=record.revisions,
            backup_id=record.id, duration=time.time() - started))
        _apply_retention(target, user)
        return record
    finally:
        lock.release()


def verify_backup(target: Target, backup_id: str, user: str) -> backups.BackupRecord:
    """Check a backup again (on the server for PostgreSQL and MariaDB), and audit it."""
    started = time.time()
    record = backups.verify_backup(target.instance_dir, backup_id, target.project())
    event = audit.BackupVerified if record.verified else audit.BackupVerificationFailed
    audit.record_event(target, event(
        user=user, from_revs=record.revisions, to_revs=record.revisions, backup_id=record.id,
        duration=time.time() - started, error=None if record.verified else record.verification))
    return record


def deletable_backup(target: Target, backup_id: str) -> backups.BackupRecord:
    """The backup a delete would remove, or why it cannot be: what its confirmation names."""
    target.check_writable()
    return backups.deletable_backup(target.instance_dir, backup_id)


def delete_backup(target: Target, backup_id: str, user: str) -> None:
    """Delete one backup; never one an unfinished run needs (409)."""
    record = deletable_backup(target, backup_id)
    backups.delete_backup(target.instance_dir, record.id)
    audit.record_event(target, audit.BackupDeleted(
        user=user, backup_id=record.id, from_revs=record.revisions))


def cancellable_run(target: Target, run_id: str) -> tuple[runs.RunRecord, int]:
    """The running run a cancel would stop, and its worker's pid; or why not (404/409)."""
    target.check_writable()
    run = runs.get_run(target.instance_dir, run_id)
    if run is None:
        raise NotFound(f"No run '{run_id}'.")
    if run.executed_by and not run.finished:
        raise Conflict(f"Run {run_id} is carried out by the Celery worker {run.executed_by}: "
                       "it cannot be cancelled from this dashboard.")
    pid = runs.worker_pid(target.instance_dir, run_id)
    if run.status != runs.RUNNING or not pid:
        raise Conflict(f"Run {run_id} is {run.status.replace('_', ' ')}: only a running "
                       "migration can be cancelled.")
    if not supervision.process_is(pid, b"alembic_worker.py"):  # gone; its pid may be reused
        raise Conflict(f"Run {run_id} has no worker left to stop.")
    return run, pid


def cancel_run(target: Target, run_id: str, user: str) -> runs.RunRecord:
    """Stop a running migration's worker. Its runner then stops the server sessions
    it left and puts the database back, as for any failed step."""
    run, pid = cancellable_run(target, run_id)
    runs.add_log(target.instance_dir, run.id, "WARNING", supervision.CANCEL_MARK + user)
    os.kill(pid, signal.SIGTERM)
    return runs.get_run(target.instance_dir, run.id)


def _apply_retention(target: Target, user: str) -> None:
    """Old backups beyond the retention go, never one a run needs; each is audited."""
    for record in backups.apply_retention(target.instance_dir, max(target.retention, 1)):
        audit.record_event(target, audit.BackupExpired(
            user=user, backup_id=record.id, from_revs=record.revisions,
            error=f"kept the newest {target.retention}"))


# ------------------------------------------------------------------ the runner's part

@dataclass
class Prepared:
    """A run whose lock is held and whose record exists: what the runner executes."""

    verb: str  # action, restore, recover
    run_id: str
    user: str
    lock: locking.ActionLock
    current: tuple[str, ...] = ()
    plan: ActionPlan | None = None
    reachable: frozenset[str] = frozenset()
    restoring: backups.BackupRecord | None = None
    dead_run: runs.RunRecord | None = None
    why: str = ""
    extra: dict = field(default_factory=dict)
    # Every database the run locks, backs up and restores: one, or each env.py migrates.
    databases: tuple = ()


def prepare(target: Target, request: dict) -> Prepared:
    """Take the lock, plan, and record the run; or raise what refuses it."""
    verb, user = request.get("verb"), str(request.get("user") or "?")
    if verb == "action":
        return _prepare_action(target, request, user)
    if verb == "restore":
        return _prepare_restore(target, request, user)
    if verb == "recover":
        run = runs.get_run(target.instance_dir, str(request.get("run_id")))
        if run is None or run.finished:
            raise Conflict("That run is already settled.")
        holder = locking.LockHolder(os.getpid(), f"recover {run.id}", run.id, user,
                                    time.time())
        if len(run.backups) > 1:
            databases = target.guarded_databases(target.project())
            lock = acquire_locks(target, holder, databases)
        else:
            databases, lock = (), acquire_lock(target, holder)
        return Prepared("recover", run.id, user, lock, dead_run=run,
                        why=str(request.get("why") or ""), databases=databases)
    raise BadRequest(f"Unknown request {verb!r}.")


def _prepare_action(target: Target, request: dict, user: str) -> Prepared:
    action, destination = str(request["action"]), str(request["destination"])
    run_id = runs.new_run_id()
    databases = target.guarded_databases(target.project())
    holder = locking.LockHolder(os.getpid(), f"{action} {destination}", run_id, user,
                                time.time())
    # The lock comes first: while another action runs, the state it would be
    # planned from is in flux, and "already running" is the answer that helps.
    lock = acquire_lock(target, holder) if len(databases) == 1 \
        else acquire_locks(target, holder, databases)
    try:
        project = target.project()
        history = target.history(project)
        new_file = missing_sqlite_file(project) if action == "upgrade" else None
        missing = [d.masked_url for d in databases[1:] if missing_sqlite_file(d)]
        if len(databases) > 1 and (new_file or missing):
            raise Conflict(
                f"env.py migrates {len(databases)} databases, and "
                f"{', '.join(([project.masked_url] if new_file else []) + missing)} does not "
                "exist yet: a run over several databases backs up each before any step, so "
                "it cannot create one. Create it first (the project's own `alembic upgrade`).")
        if new_file:
            current: tuple[str, ...] = ()
            plan = replace(plan_action(history, (), action, destination), creates_file=new_file)
        else:
            current = live_revisions(project)
            plan = plan_action(history, current, action, destination, request.get("state"))
        runs.create_run(target.instance_dir, run_id=run_id, action=action,
                        target=plan.destination, user=user, from_revs=current)
        runs.plan_steps(target.instance_dir, run_id, [
            {"revision": s.revision, "direction": s.direction} for s in plan.steps
        ])
    except Exception:
        lock.release()
        raise
    return Prepared("action", run_id, user, lock, current=current, plan=plan,
                    reachable=_reachable(history, plan), databases=databases,
                    extra={"bound": bool(request.get("bound"))})


def _prepare_restore(target: Target, request: dict, user: str) -> Prepared:
    record = backups.get_backup(target.instance_dir, str(request["backup_id"]))
    database = _database_of_backup(target, record)
    run_id = runs.new_run_id()
    lock = acquire_lock(target, locking.LockHolder(
        os.getpid(), f"restore {record.id}", run_id, user, time.time()), database)
    try:
        current = live_revisions(database, allow_missing=True)
        runs.create_run(target.instance_dir, run_id=run_id, action="restore",
                        target=record.id, user=user, from_revs=current,
                        restore_backup_id=record.id)
        runs.plan_steps(target.instance_dir, run_id, [
            {"revision": ",".join(record.revisions) or "base", "direction": "restore"}
        ])
    except Exception:
        lock.release()
        raise
    return Prepared("restore", run_id, user, lock, current=current, restoring=record,
                    reachable=frozenset(current) | frozenset(record.revisions),
                    databases=(database,))


def _database_of_backup(target: Target, record: backups.BackupRecord) -> Project:
    """The database a backup is restored into: the target's, or, where env.py migrates
    several, the one the backup was taken of (never another one)."""
    project = target.project()
    databases = target.guarded_databases(project)
    if len(databases) == 1:
        return project
    for database in databases:
        if database.masked_url == record.database:
            return database
    raise Conflict(f"Backup {record.id} is of {record.database}, which is none of the "
                   f"databases env.py migrates ({', '.join(d.masked_url for d in databases)}):"
                   " it was not restored. Restore it by hand if needed.")


def _reachable(history: History, plan: ActionPlan) -> frozenset[str]:
    """Every revision the plan's steps could leave the database at."""
    found: set[str] = set(plan.from_revs)
    for step in plan.steps:
        for name in step.revision.split(","):
            found.add(name)
            script = history.revisions.get(name)
            if script is not None:
                found.update(to_tuple(script.down_revision, default=()))
    return frozenset(found)


def execute(target: Target, prepared: Prepared) -> None:
    """Carry out a prepared run to its final status; the lock is released at the end.

    An action or a restore keeps the schema as it was before and after it (one
    inspector pass each, under the lock), for the run page's diff."""
    changes = prepared.verb in ("action", "restore")
    if changes:
        _keep_schema(target, prepared, "before")
    try:
        if prepared.verb == "action" and len(prepared.databases) > 1:
            _execute_several(target, prepared)
        elif prepared.verb == "action":
            _execute_action(target, prepared)
        elif prepared.verb == "restore":
            _execute_restore(target, prepared)
        else:
            _execute_recovery(target, prepared)
    except Exception as exc:  # never leave a run "running" behind
        runs.update_run(target.instance_dir, prepared.run_id, status=runs.FAILED,
                        finished_at=time.time(),
                        error=target.project().scrub(
                            f"The run stopped unexpectedly: {type(exc).__name__}: {exc}"))
    finally:
        if changes and _schema_after_unread(target, prepared):  # a run that did not succeed
            _keep_schema(target, prepared, "after")
        prepared.lock.release()
        # The worker's own record matters only to a run nobody saw end.
        remove_files(supervision.events_path(target.instance_dir, prepared.run_id))


def _keep_schema(target: Target, prepared: Prepared, when: str) -> None:
    """The run's database's schema now (``when`` "before" or "after"), stored with the
    run; one that cannot be read is noted, and never fails the run."""
    try:
        databases = prepared.databases or (target.project(),)
        # A database the upgrade creates had no schema at all before it.
        taken = [schema.SchemaSnapshot({}) if when == "before" and missing_sqlite_file(d)
                 else schema.snapshot(d) for d in databases]
        if len(databases) > 1:  # several: each table named with its database
            taken = [schema.SchemaSnapshot(
                None if t.tables is None else
                {f"{d.masked_url}: {name}": spec for name, spec in t.tables.items()},
                t.reason and f"{d.masked_url}: {t.reason}")
                for d, t in zip(databases, taken, strict=True)]
        unread = [t.reason or "not read" for t in taken if t.tables is None]
        taken = schema.SchemaSnapshot(
            None if unread else {k: v for t in taken for k, v in t.tables.items()},
            "; ".join(unread) or None)
        values: dict = {f"schema_{when}": taken.tables}
        if taken.reason:
            values["schema_note"] = f"The schema {when} the run: {taken.reason}"
        if when == "after":  # the note ("" for none) says the diff is final
            earlier = runs.get_run(target.instance_dir, prepared.run_id)
            values["schema_note"] = " ".join(filter(None, (
                earlier.schema_note if earlier else None, values.get("schema_note")))) or ""
        runs.update_run(target.instance_dir, prepared.run_id, **values)
    except Exception:
        pass  # the store itself failing is said by the run's own updates


def _schema_after_unread(target: Target, prepared: Prepared) -> bool:
    run = runs.get_run(target.instance_dir, prepared.run_id)
    return run is not None and run.schema_note is None


def _succeeded(target: Target, prepared: Prepared, **values) -> None:
    """The run's final word when it went through: the schema after it is read first, so
    whoever sees it finished sees what it changed too."""
    _keep_schema(target, prepared, "after")
    runs.update_run(target.instance_dir, prepared.run_id, status=runs.SUCCEEDED,
                    finished_at=time.time(), **values)


def _execute_action(target: Target, prepared: Prepared) -> None:
    plan, run_id, user = prepared.plan, prepared.run_id, prepared.user
    assert plan is not None
    inst, project = target.instance_dir, target.project()
    started = time.time()
    runs.update_run(inst, run_id, status=runs.BACKING_UP, started_at=started)
    worker = supervision.Worker(target, run_id, plan, prepared.lock,
                               bound=prepared.extra.get("bound", False))
    backup = None
    try:
        try:
            worker.wait_for("ready")  # a SQLite worker holds the write lock from here on
        except supervision.WorkerFailed as exc:
            _refuse(target, prepared, started,
                    f"Nothing was run, and nothing was backed up: {exc}")
            return
        refusal = supervision.wrong_databases(project, worker.report.databases)
        if refusal:
            worker.abort()
            _refuse(target, prepared, started, refusal)
            return
        marks = None
        if plan.creates_file:
            runs.add_log(inst, run_id, "INFO", f"No backup: {plan.creates_file} did not exist; "
                                               "this upgrade creates it.")
        else:
            backup_started = time.time()
            try:
                expected = live_revisions(project)
                copy = worker.copy_database if project.engine.holds_off_writers else None
                backup = backups.take_backup(
                    project, inst, target.backup_dir, f"{plan.action} {plan.destination}",
                    expected_revisions=expected, copy=copy)
            except (DashboardError, supervision.WorkerFailed) as exc:
                worker.abort()
                detail = exc.message if isinstance(exc, DashboardError) else str(exc)
                _refuse(target, prepared, started,
                        f"The backup failed, so nothing was run: {detail}")
                return
            runs.update_run(inst, run_id, backup_id=backup.id,
                            backup_seconds=time.time() - backup_started)
            _apply_retention(target, user)
            try:
                marks = project.engine.write_marks(project)
            except Exception:
                marks = None
        runs.update_run(inst, run_id, status=runs.RUNNING)
        outcome = worker.run_to_end()
    except Exception as exc:
        worker.close()
        error = project.scrub(f"{type(exc).__name__}: {exc}")
        if backup is None:
            runs.update_run(inst, run_id, status=runs.FAILED, error=error,
                            finished_at=time.time())
            return
        recovery.recover(target, _failed_run(prepared, started, f"The run stopped: {error}",
                                             backup))
        return
    worker.close()
    if outcome.ok:
        event = audit.DatabaseCreated if plan.creates_file else audit.ActionSucceeded
        # The audit entry first: whoever sees the run finished finds it in the log too.
        audit.record_event(target, event(
            user=user, action=plan.action, destination=plan.destination,
            from_revs=plan.from_revs, to_revs=outcome.heads,
            backup_id=backup.id if backup else None, run_id=run_id,
            duration=time.time() - started))
        _succeeded(target, prepared, to_revs=outcome.heads)
        return
    failure = _failure_of(outcome)
    if plan.creates_file:
        _undo_creation(target, prepared, started, failure)
        return
    recovery.recover(target, _failed_run(prepared, started, failure, backup, outcome, marks))


def _execute_several(target: Target, prepared: Prepared) -> None:
    """A run of an env.py that migrates several databases, guarded as one run: each
    locked (in ``prepare``), each backed up and verified before any step, the worker
    allowed exactly these, and on a failure each one that is not as it was restored
    from its own backup and checked (``recovery.recover_several``)."""
    plan, run_id, user = prepared.plan, prepared.run_id, prepared.user
    assert plan is not None
    inst, databases = target.instance_dir, prepared.databases
    project = databases[0]
    named = tuple(d.masked_url for d in databases)
    started = time.time()
    runs.update_run(inst, run_id, status=runs.BACKING_UP, started_at=started)
    runs.add_log(inst, run_id, "INFO", f"env.py migrates {len(databases)} databases "
                 f"({', '.join(named)}): each is locked and backed up before any step, and "
                 "restored from its own backup if the run fails.")
    unheld = [d.masked_url for d in databases[1:] if d.engine.holds_off_writers]
    if unheld:
        runs.add_log(inst, run_id, "WARNING", (
            f"Only {project.masked_url} is held against other writers for the whole run; "
            f"writes other sessions make to {', '.join(unheld)} during the run are not "
            "held off, and a restore of it would discard them."))
    worker = supervision.Worker(target, run_id, plan, prepared.lock,
                               bound=prepared.extra.get("bound", False))
    parts: list[recovery.DatabasePart] = []
    going = False
    try:
        try:
            worker.wait_for("ready")
        except supervision.WorkerFailed as exc:
            _refuse(target, prepared, started,
                    f"Nothing was run, and nothing was backed up: {exc}")
            return
        refusal = supervision.wrong_databases(project, worker.report.databases, databases)
        if refusal:
            worker.abort()
            _refuse(target, prepared, started, refusal)
            return
        backup_started = time.time()
        for index, database in enumerate(databases):
            try:
                expected = live_revisions(database)
                held = index == 0 and database.engine.holds_off_writers
                backup = backups.take_backup(
                    database, inst, target.backup_dir, f"{plan.action} {plan.destination}",
                    expected_revisions=expected,
                    copy=worker.copy_database if held else None)
            except (DashboardError, supervision.WorkerFailed) as exc:
                worker.abort()
                detail = exc.message if isinstance(exc, DashboardError) else str(exc)
                kept = "".join(f" The backup {p.backup.id} of {p.project.masked_url} is kept."
                               for p in parts)
                _refuse(target, prepared, started,
                        f"The backup of {database.masked_url} failed, so nothing was run: "
                        f"{detail}{kept}")
                return
            try:
                marks = database.engine.write_marks(database)
            except Exception:
                marks = None
            parts.append(recovery.DatabasePart(database, backup, expected, marks,
                                               held=held))
            runs.update_run(inst, run_id, backup_id=parts[0].backup.id,
                            backups=[{"database": p.project.masked_url,
                                      "backup_id": p.backup.id} for p in parts],
                            backup_seconds=time.time() - backup_started)
        _apply_retention(target, user)
        runs.update_run(inst, run_id, status=runs.RUNNING)
        going = True
        outcome = worker.run_to_end()
    except Exception as exc:
        worker.close()
        error = project.scrub(f"{type(exc).__name__}: {exc}")
        if not going:
            runs.update_run(inst, run_id, status=runs.FAILED, finished_at=time.time(),
                            error=f"{error}. Nothing was run.")
            return
        recovery.recover_several(target, _failed_run(
            prepared, started, f"The run stopped: {error}", parts[0].backup), parts,
            worker.report)
        return
    worker.close()
    if outcome.ok:
        elsewhere = [f"{p.project.masked_url} is at {_revs(live)}" for p in parts
                     for live in [live_revisions(p.project, allow_missing=True)]
                     if tuple(sorted(live)) != tuple(sorted(outcome.heads))]
        if elsewhere:
            runs.add_log(inst, run_id, "WARNING",
                         f"env.py ended at {_revs(outcome.heads)}, but " + "; ".join(elsewhere))
        audit.record_event(target, audit.ActionSucceeded(
            user=user, action=plan.action, destination=plan.destination,
            from_revs=plan.from_revs, to_revs=outcome.heads, backup_id=parts[0].backup.id,
            run_id=run_id, duration=time.time() - started, databases=named))
        _succeeded(target, prepared, to_revs=outcome.heads)
        return
    failure = _failure_of(outcome)
    recovery.recover_several(target, _failed_run(prepared, started, failure, parts[0].backup,
                                                 outcome), parts, worker.report)


def _failure_of(outcome: supervision.WorkerOutcome) -> str:
    """What went wrong, as the run's error begins: the step, env.py, or a cancel."""
    if outcome.cancelled:
        return f"The run was cancelled: {outcome.error}."
    if outcome.failed_step:
        return f"Step {outcome.failed_step} failed: {outcome.error}"
    return f"env.py failed before the first step: {outcome.error}"


def _failed_run(prepared: Prepared, started: float, failure: str, backup,
                outcome: supervision.WorkerOutcome | None = None, marks=None) -> FailedRun:
    plan = prepared.plan
    return FailedRun(
        run_id=prepared.run_id, action=plan.action if plan else prepared.verb,
        destination=plan.destination if plan else "", from_revs=prepared.current,
        user=prepared.user, started=started, failure=failure, backup=backup,
        reachable=prepared.reachable,
        rolled_back=bool(outcome and outcome.rolled_back),
        cancelled=bool(outcome and outcome.cancelled),
        sessions=outcome.sessions if outcome else (),
        touched=outcome.touched if outcome else frozenset(), marks=marks)


def _refuse(target: Target, prepared: Prepared, started: float, message: str) -> None:
    plan = prepared.plan
    audit.record_event(target, audit.ActionRefused(
        user=prepared.user, action=plan.action if plan else prepared.verb,
        destination=plan.destination if plan else None, from_revs=prepared.current,
        to_revs=prepared.current, run_id=prepared.run_id, duration=time.time() - started,
        error=message, databases=tuple(d.masked_url for d in prepared.databases)
        if len(prepared.databases) > 1 else ()))
    runs.update_run(target.instance_dir, prepared.run_id, status=runs.FAILED, error=message,
                    finished_at=time.time(), to_revs=prepared.current)


def _undo_creation(target: Target, prepared: Prepared, started: float, failure: str) -> None:
    """A failed upgrade that created its database: the new file goes, as it was absent."""
    plan = prepared.plan
    project = target.project()
    project.engine.remove_database(project.database_url)
    message = (f"{failure} The new database file was removed: {plan.creates_file} does not "
               "exist, as before.")
    audit.record_event(target, audit.DatabaseCreationUndone(
        user=prepared.user, action=plan.action, destination=plan.destination,
        run_id=prepared.run_id, duration=time.time() - started, error=message))
    runs.update_run(target.instance_dir, prepared.run_id, status=runs.RESTORED, error=message,
                    finished_at=time.time())


def _execute_restore(target: Target, prepared: Prepared) -> None:
    record, run_id, user = prepared.restoring, prepared.run_id, prepared.user
    assert record is not None
    inst = target.instance_dir
    project = prepared.databases[0] if prepared.databases else target.project()
    # Where env.py migrates several databases, the one restored is named in the audit.
    named = (project.masked_url,) if project.masked_url != target.project().masked_url else ()
    started = time.time()
    runs.update_run(inst, run_id, status=runs.BACKING_UP, started_at=started)
    try:
        safety = backups.take_backup(project, inst, target.backup_dir,
                                     f"restore of {record.id}",
                                     expected_revisions=prepared.current)
    except DashboardError as exc:
        message = ("The backup of the current state failed, so nothing was restored: "
                   f"{exc.message}")
        audit.record_event(target, audit.RestoreRefused(
            user=user, action="restore", destination=record.id, from_revs=prepared.current,
            run_id=run_id, duration=time.time() - started, databases=named, error=message))
        runs.update_run(inst, run_id, status=runs.FAILED, error=message,
                        finished_at=time.time())
        return
    runs.update_run(inst, run_id, backup_id=safety.id, backup_seconds=time.time() - started,
                    status=runs.RUNNING)
    _apply_retention(target, user)
    runs.update_step(inst, run_id, 1, status="running", started_at=time.time())
    try:
        backups.restore_backup_file(project, record)
    except Exception as exc:
        runs.update_step(inst, run_id, 1, status="failed", finished_at=time.time())
        detail = exc.message if isinstance(exc, DashboardError) else project.scrub(str(exc))
        failure = f"Restoring {record.id} failed: {detail}"
        live = live_revisions(project, allow_missing=True)
        if tuple(sorted(live)) == tuple(sorted(prepared.current)) and \
                project.engine.schema_differs(project, safety.path) is None:
            message = (f"{failure} The database was left as it was, at {_revs(live)} "
                       f"(checked); backup {safety.id} of it was taken first.")
            audit.record_event(target, audit.RestoreFailed(
                user=user, action="restore", destination=record.id,
                from_revs=prepared.current, to_revs=live, backup_id=safety.id, run_id=run_id,
                duration=time.time() - started, error=message, databases=named))
            runs.update_run(inst, run_id, status=runs.FAILED, error=message,
                            finished_at=time.time(), to_revs=live)
            return
        failed = _failed_run(prepared, started, failure, safety)
        failed.action, failed.destination = "restore", record.id
        recovery.recover(target, failed, project)
        return
    runs.update_step(inst, run_id, 1, status="succeeded", finished_at=time.time())
    live = live_revisions(project, allow_missing=True)
    audit.record_event(target, audit.RestoreSucceeded(
        user=user, action="restore", destination=record.id, from_revs=prepared.current,
        to_revs=live, backup_id=safety.id, run_id=run_id, duration=time.time() - started,
        databases=named))
    _succeeded(target, prepared, to_revs=live)


def _execute_recovery(target: Target, prepared: Prepared) -> None:
    """A run whose supervisor died half-way: its own backup is put back."""
    run = prepared.dead_run
    assert run is not None
    if len(run.backups) > 1:
        _recover_several_dead(target, prepared, run)
        return
    try:
        backup = backups.get_backup(target.instance_dir, run.backup_id or "")
    except DashboardError:
        backup = None
    reachable = frozenset(run.from_revs) | {
        name for step in run.steps for name in step.revision.split(",")}
    recovery.recover(target, FailedRun(
        run_id=run.id, action=run.action, destination=run.target, from_revs=run.from_revs,
        user=run.user, started=run.started_at or time.time(), failure=prepared.why,
        backup=backup, reachable=reachable))


def _recover_several_dead(target: Target, prepared: Prepared, run: runs.RunRecord) -> None:
    """A run over several databases whose supervisor died: each database is checked
    and, unless the database itself provably undid the run, restored from its own
    backup. Nothing is restored when a backup or a database cannot be matched."""
    reachable = frozenset(run.from_revs) | {
        name for step in run.steps for name in step.revision.split(",")}
    by_url = {d.masked_url: d for d in prepared.databases}
    parts, missing = [], []
    for entry in run.backups:
        database = by_url.get(str(entry.get("database")))
        try:
            backup = backups.get_backup(target.instance_dir, str(entry.get("backup_id")))
        except DashboardError:
            backup = None
        if database is None or backup is None:
            missing.append(f"{entry.get('database')} (backup {entry.get('backup_id')})")
            continue
        parts.append(recovery.DatabasePart(
            database, backup, tuple(sorted(backup.revisions)),
            held=not parts and database.engine.holds_off_writers))
    failure = prepared.why
    if missing or len(parts) != len(prepared.databases):
        message = (f"{recovery._sentence(failure)} Nothing was restored automatically: "
                   f"the databases env.py migrates now do not match this run's backups "
                   f"({', '.join(missing) or 'a database without a backup'}). Compare each "
                   "database with its backup and restore by hand: " + ", ".join(
                       f"{b.get('database')} from {b.get('backup_id')}" for b in run.backups)
                   + ".")
        audit.record_event(target, audit.ActionInterrupted(
            user=run.user, action=run.action, destination=run.target,
            from_revs=run.from_revs, backup_id=run.backup_id, run_id=run.id, error=message,
            databases=tuple(str(b.get("database")) for b in run.backups)))
        runs.update_run(target.instance_dir, run.id, status=runs.FAILED, error=message,
                        finished_at=time.time())
        return
    # What the worker committed cannot be placed now (its report of the databases is
    # not kept on disk): every database it did not hold is taken as changed.
    report = supervision.WorkerReport(committed_databases={-1})
    recovery.recover_several(target, FailedRun(
        run_id=run.id, action=run.action, destination=run.target, from_revs=run.from_revs,
        user=run.user, started=run.started_at or time.time(), failure=failure,
        backup=parts[0].backup, reachable=reachable), parts, report)


def _revs(revisions) -> str:
    return ", ".join(revisions) if revisions else "base (no revision)"


__all__ = ["start_action", "start_restore", "backup_now", "deletable_backup", "delete_backup",
           "cancellable_run", "cancel_run", "lock_key", "lock_holder"]
