"""Putting the database back after a failed or cancelled run, and saying how.

A run's outcome is said only after it is checked: "rolled back" when the
database undid the action itself (SQLite's one held transaction; PostgreSQL's
transaction when nothing was committed on the way) and its revisions, and
where the engine can tell its schema, are as before; "restored" when the
pre-run backup was loaded and checked; otherwise "failed", with the state
left and where the backup is. A restore never runs over changes the run did
not make. A run left unfinished by a dead process is settled at the next
start from what its worker recorded and what the database holds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dashboard.errors import Conflict, DashboardError
from dashboard.services import audit, backups, locking, runs, supervision
from dashboard.services.project import Project
from dashboard.services.status import DatabaseUnreachable, read_database_revisions

if TYPE_CHECKING:
    from dashboard.core import Target


def lock_key(project: Project) -> str:
    """What names the target database for the lock, whatever its spelling (no password)."""
    return project.engine.identity(project.database_url)


def lock_file(project: Project) -> str | None:
    return project.engine.lock_file(project.database_url)


def live_revisions(project: Project, allow_missing: bool = False) -> tuple[str, ...]:
    """The database's revisions, read now."""
    try:
        return tuple(sorted(read_database_revisions(project).current))
    except DatabaseUnreachable as exc:
        if allow_missing:
            return ()
        raise Conflict(f"The database cannot be read: {exc}") from exc


@dataclass
class FailedRun:
    """What recovery needs to know of the run it puts right."""

    run_id: str
    action: str
    destination: str
    from_revs: tuple[str, ...]
    user: str
    started: float
    failure: str  # what went wrong, in words
    backup: backups.BackupRecord | None
    # Every revision this run could have left the database at: a restore refuses to
    # run over a database found anywhere else (someone else changed it).
    reachable: frozenset[str] = frozenset()
    rolled_back: bool = False  # the database undid the action itself
    cancelled: bool = False
    sessions: tuple[str, ...] = ()
    touched: frozenset[str] = frozenset()
    marks: dict | None = field(default=None, repr=False)


def recover(target: Target, failed: FailedRun, project: Project | None = None) -> str:
    """After a failed or cancelled run: put the database back as it was, check it,
    record what happened. Returns the run's final status. ``project``: the database,
    when it is not the target's own (one of several env.py migrates)."""
    named = (project.masked_url,) if project is not None and \
        project.masked_url != target.project().masked_url else ()
    project = project or target.project()
    inst = target.instance_dir
    if failed.sessions:
        # A worker that is gone may leave a statement running on the server, holding
        # its locks: stop it before anything is said or restored.
        still = project.engine.end_sessions(project, list(failed.sessions))
        if still:
            runs.add_log(inst, failed.run_id, "WARNING",
                         f"Stopped {len(still)} server session(s) the worker left running: "
                         + ", ".join(still))
    project.engine.settle(project)
    live = live_revisions(project, allow_missing=True)
    if failed.rolled_back:
        problem = _differs_from_start(project, failed, live)
        if problem is None:
            how = ("The run's one transaction was rolled back" if not failed.cancelled
                   else "The run was stopped and its transaction rolled back")
            message = (f"{_sentence(failed.failure)} {how}; the database is at "
                       f"{_revs(live)} as before (checked).")
            return _final(target, failed, named,
                          runs.CANCELLED if failed.cancelled else runs.RESTORED, message,
                          live, discarded=[],
                          event=audit.ActionCancelled if failed.cancelled
                          else audit.ActionRolledBack)
        runs.add_log(inst, failed.run_id, "WARNING",
                     f"The rollback did not bring the database back as it was ({problem}); "
                     "restoring the pre-action backup instead.")
    if failed.backup is None:
        message = (f"{_sentence(failed.failure)} There is no backup to restore; the database is at "
                   f"{_revs(live)}.")
        return _final(target, failed, named, runs.FAILED, message, live, discarded=None,
                      event=audit.ActionFailed)
    unexpected = set(live) - set(failed.reachable) - set(failed.from_revs)
    if unexpected:
        message = (f"{_sentence(failed.failure)} The database is now at {_revs(live)}, "
                   "which this run "
                   "could not have left it at: something else changed it, so its backup "
                   f"{failed.backup.id} was NOT restored over those changes. Compare the "
                   f"database with the backup ({failed.backup.path}) and restore it by hand "
                   "if needed.")
        return _final(target, failed, named, runs.FAILED, message, live, discarded=None,
                      event=audit.ActionFailed)
    runs.update_run(inst, failed.run_id, status=runs.RESTORING, error=failed.failure)
    discarded = None if project.engine.counts_writes_at_restore else \
        _discarded_writes(project, failed)
    try:
        counted = backups.restore_backup_file(project, failed.backup, failed.marks,
                                              frozenset(failed.touched))
    except Exception as exc:
        detail = exc.message if isinstance(exc, DashboardError) else str(exc)
        live = live_revisions(project, allow_missing=True)
        message = (f"{_sentence(failed.failure)} Restoring the pre-action backup "
                   f"{failed.backup.id} ALSO "
                   f"failed: {detail}. The database is at {_revs(live)} and may be "
                   f"half-migrated; the verified backup is at {failed.backup.path}.")
        return _final(target, failed, named, runs.FAILED, message, live, discarded=None,
                      event=audit.ActionFailed)
    if counted is not None:
        discarded = counted.writes
    live = live_revisions(project, allow_missing=True)
    message = (f"{_sentence(failed.failure)} The database was restored from the pre-action backup "
               f"{failed.backup.id} (checked) and is at {_revs(live)} as before.")
    if discarded:
        lost = ", ".join(f"{d['rows']} row{'s' if d['rows'] != 1 else ''} written to "
                         f"{d['table']}" for d in discarded)
        message += (f" The restore discarded writes other sessions made during the run "
                    f"({lost}).")
    elif discarded is None:
        message += (" Whether other sessions wrote to the database during the run cannot be "
                    "told: any such writes were discarded with it.")
    return _final(target, failed, named,
                  runs.CANCELLED if failed.cancelled else runs.RESTORED,
                  message, live, discarded=discarded,
                  event=audit.ActionCancelled if failed.cancelled else audit.ActionRestored)


@dataclass
class DatabasePart:
    """One database of a run over several: its own project, its verified backup, the
    revisions it was at, and whether the worker held its whole run in one transaction."""

    project: Project
    backup: backups.BackupRecord
    from_revs: tuple[str, ...]
    marks: dict | None = field(default=None, repr=False)
    held: bool = False


def recover_several(target: Target, failed: FailedRun, parts: list[DatabasePart],
                    report: supervision.WorkerReport) -> str:
    """After a failed or cancelled run over several databases: each database that is
    not provably as it was is restored from its own backup and checked. The run is
    "restored" only when every database is back and checked; otherwise "failed",
    saying which database is in which state and where each backup is."""
    inst = target.instance_dir
    committed = _committed_identities(report)
    if failed.sessions:
        # A worker that is gone may leave statements running, holding their locks.
        for part in parts:
            try:
                still = part.project.engine.end_sessions(part.project, list(failed.sessions))
            except Exception as exc:
                still = [f"none could be stopped ({type(exc).__name__})"]
            if still:
                runs.add_log(inst, failed.run_id, "WARNING",
                             f"Stopped server session(s) the worker left running on "
                             f"{part.project.masked_url}: " + ", ".join(still))
    runs.update_run(inst, failed.run_id, status=runs.RESTORING, error=failed.failure)
    said, trouble, restored, discarded_all = [], False, False, []
    unknown_discards = False
    for part in parts:
        project, name = part.project, part.project.masked_url
        try:
            project.engine.settle(project)
            live = live_revisions(project, allow_missing=True)
            identity = project.engine.identity(project.database_url)
            undone = part.held or (identity not in committed and "*" not in committed and (
                project.engine.transactional_ddl or project.engine.compares_schema))
            if undone and tuple(sorted(live)) == tuple(sorted(part.from_revs)) and \
                    project.engine.schema_differs(project, part.backup.path) is None:
                said.append(f"Database {name}: "
                            + ("its transaction was rolled back" if part.held or
                               project.engine.transactional_ddl else "nothing of the run "
                               "remains")
                            + f"; it is at {_revs(live)} as before (checked).")
                continue
            unexpected = set(live) - set(failed.reachable) - set(part.from_revs)
            if unexpected:
                trouble = True
                said.append(f"Database {name}: it is now at {_revs(live)}, which this run "
                            "could not have left it at: something else changed it, so its "
                            f"backup {part.backup.id} was NOT restored over those changes "
                            f"(the backup is at {part.backup.path}).")
                continue
            lost = None if project.engine.counts_writes_at_restore else \
                _discarded_writes(project, FailedRun(**{**failed.__dict__,
                                                        "marks": part.marks}))
            counted = backups.restore_backup_file(project, part.backup, part.marks,
                                                  frozenset(failed.touched))
            if counted is not None:
                lost = counted.writes
            live = live_revisions(project, allow_missing=True)
            problem = _differs_from_start(project, FailedRun(
                **{**failed.__dict__, "from_revs": part.from_revs, "backup": part.backup}),
                live)
            if problem is not None:
                raise DashboardError(f"after the restore {problem}")
        except Exception as exc:
            trouble = True
            detail = exc.message if isinstance(exc, DashboardError) else \
                project.scrub(f"{type(exc).__name__}: {exc}")
            live = live_revisions(project, allow_missing=True)
            said.append(f"Database {name}: restoring its backup {part.backup.id} ALSO "
                        f"failed: {_sentence(detail)} It is at {_revs(live)} and may be "
                        f"half-migrated; the backup file is at {part.backup.path}.")
            continue
        restored = True
        text = (f"Database {name}: restored from its backup {part.backup.id}; it is at "
                f"{_revs(live)} as before (checked).")
        if lost:
            discarded_all += [{**d, "table": f"{d['table']} ({name})"} for d in lost]
            text += " The restore discarded writes other sessions made during the run (" + \
                ", ".join(f"{d['rows']} row{'s' if d['rows'] != 1 else ''} written to "
                          f"{d['table']}" for d in lost) + ")."
        elif lost is None:
            unknown_discards = True
            text += (" Whether other sessions wrote to it during the run cannot be told: "
                     "any such writes were discarded with it.")
        said.append(text)
    primary = parts[0].project
    live = live_revisions(primary, allow_missing=True)
    if trouble:
        message = (f"{_sentence(failed.failure)} Not every database could be put back as "
                   f"it was: {' '.join(said)}")
        status, event = runs.FAILED, audit.ActionFailed
    else:
        message = (f"{_sentence(failed.failure)} Each of the {len(parts)} databases is as "
                   f"it was before: {' '.join(said)}")
        status = runs.CANCELLED if failed.cancelled else runs.RESTORED
        event = audit.ActionCancelled if failed.cancelled else (
            audit.ActionRestored if restored else audit.ActionRolledBack)
    audit.record_event(target, event(
        user=failed.user, action=failed.action, destination=failed.destination,
        from_revs=failed.from_revs, to_revs=live, backup_id=parts[0].backup.id,
        run_id=failed.run_id, duration=time.time() - failed.started, error=message,
        databases=tuple(p.project.masked_url for p in parts)))
    runs.update_run(inst, failed.run_id, status=status, error=message,
                    finished_at=time.time(), to_revs=live,
                    discarded_writes=None if trouble or unknown_discards and not discarded_all
                    else discarded_all)
    return status


def _committed_identities(report: supervision.WorkerReport) -> set[str]:
    """The databases (engine identities) something was committed to during the run."""
    found = set()
    if -1 in report.committed_databases:  # to some connection we cannot place: all
        return {d.identity for d in report.databases or ()} | {"*"}
    for index in report.committed_databases:
        if report.databases and 0 <= index < len(report.databases):
            try:
                found.add(report.databases[index].identity)
            except Exception:
                continue
    return found


def _differs_from_start(project: Project, failed: FailedRun,
                        live: tuple[str, ...]) -> str | None:
    if tuple(sorted(live)) != tuple(sorted(failed.from_revs)):
        return f"it is at {_revs(live)}, not {_revs(failed.from_revs)}"
    if failed.backup is not None:
        return project.engine.schema_differs(project, failed.backup.path)
    return None


def _discarded_writes(project: Project, failed: FailedRun) -> list | None:
    try:
        return project.engine.discarded_writes(project, failed.marks, set(failed.touched))
    except Exception:
        return None


def _final(target: Target, failed: FailedRun, named: tuple[str, ...], status: str,
           message: str, live: tuple[str, ...], *, discarded, event) -> str:
    inst = target.instance_dir
    audit.record_event(target, event(databases=named,
        user=failed.user, action=failed.action, destination=failed.destination,
        from_revs=failed.from_revs, to_revs=live,
        backup_id=failed.backup.id if failed.backup else None, run_id=failed.run_id,
        duration=time.time() - failed.started, error=message))
    runs.update_run(inst, failed.run_id, status=status, error=message,
                    finished_at=time.time(), to_revs=live, discarded_writes=discarded)
    return status


def _sentence(text: str) -> str:
    """``text`` ending as a sentence, so what follows does not run into it."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _revs(revisions) -> str:
    return ", ".join(revisions) if revisions else "base (no revision)"


# ------------------------------------------------------------------ dead runs

def reap_interrupted_runs(target: Target) -> list[str]:
    """Settle runs left unfinished by a process that died (their lock is free again).

    What the worker wrote in its events file is brought into the run; then, from
    what the database holds: finished by its worker (succeeded), undone by the
    database (failed, nothing applied), or somewhere between (its backup is
    restored, behind the lock). Never silently retried."""
    project = target.project()
    if locking.read_holder(target.locks_dir, lock_key(project), lock_file(project)):
        return []
    unfinished = runs.unfinished_runs(target.instance_dir)
    if not unfinished:
        return []
    reaped = []
    for run in unfinished:
        try:
            _settle_dead_run(target, project, run)
        except Exception as exc:  # a damaged record must not stop the others
            runs.update_run(target.instance_dir, run.id, status=runs.FAILED,
                            finished_at=time.time(),
                            error=project.scrub(f"Settling this interrupted run failed: "
                                                f"{type(exc).__name__}: {exc}"))
        reaped.append(run.id)
    return reaped


def _settle_dead_run(target: Target, project: Project, run: runs.RunRecord) -> None:
    from dashboard.services import guard

    inst = target.instance_dir
    report = supervision.replay_events(inst, run.id, project)
    project.engine.settle(project)
    live = live_revisions(project, allow_missing=True)
    prefix = "The process supervising this run died before it finished."
    if "step_started" not in report.events:
        message = f"{prefix} Nothing had run yet; the database is at {_revs(live)}."
        _dead_final(target, run, runs.FAILED, message, live)
        return
    if report.heads is not None and tuple(sorted(report.heads)) == tuple(sorted(live)):
        message = (f"{prefix} Its worker went on and finished the action by itself: the "
                   f"database is at {_revs(live)}.")
        _dead_final(target, run, runs.SUCCEEDED, message, live, error=False)
        return
    if len(run.backups) > 1:
        # Several databases: what one of them holds says nothing of the others. Each is
        # checked, and restored from its own backup unless provably as before.
        guard.start_recovery(target, run, f"{prefix} The first database was left at "
                                          f"{_revs(live)}.")
        return
    undone_by_database = project.engine.holds_off_writers or (
        project.engine.transactional_ddl and not report.committed)
    if tuple(sorted(live)) == tuple(sorted(run.from_revs)) and undone_by_database:
        message = (f"{prefix} Its transaction was rolled back by the database: the database "
                   f"is at {_revs(live)} as before; nothing of the run remains.")
        _dead_final(target, run, runs.FAILED, message, live)
        return
    if run.backup_id is None or run.action == "restore":
        message = (f"{prefix} The database is at {_revs(live)}; it may be half-changed, and "
                   "there is no backup of this run to restore: check it by hand.")
        _dead_final(target, run, runs.FAILED, message, live)
        return
    # Between revisions, or changes a non-transactional engine cannot undo: put the
    # run's own backup back, behind the lock, as the runner of any restore does.
    guard.start_recovery(target, run, f"{prefix} The database was left at {_revs(live)}.")


def _dead_final(target: Target, run: runs.RunRecord, status: str, message: str,
                live: tuple[str, ...], error: bool = True) -> None:
    runs.add_log(target.instance_dir, run.id, "WARNING", message)
    event = audit.ActionSucceeded if status == runs.SUCCEEDED else audit.ActionInterrupted
    # The audit entry first: whoever sees the run finished finds it in the log too.
    audit.record_event(target, event(
        user=run.user, action=run.action, destination=run.target, from_revs=run.from_revs,
        to_revs=live, backup_id=run.backup_id, run_id=run.id, error=message))
    runs.update_run(target.instance_dir, run.id, status=status, finished_at=time.time(),
                    to_revs=live, error=message if error else None)
