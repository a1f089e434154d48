"""Supervising the worker process that runs a migration.

The worker (``dashboard/alembic_worker.py``) runs under the project's own
interpreter, waits for a word on its standard input before it changes
anything, and reports each step, commit, table written and server session as
a JSON line. This records each report in the dashboard's store as it
arrives, so any page shows live progress. The worker also keeps its own
events file, so a run whose supervisor died can still be told apart later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dashboard.lifeline import bound_to_this_process
from dashboard.services import locking, runs
from dashboard.services.alembic_process import (
    EnvDatabase,
    databases_of,
    parse_events,
    worker_command,
    worker_environment,
)
from dashboard.services.planning import ActionPlan

if TYPE_CHECKING:
    from dashboard.core import Target

CANCEL_MARK = "Cancel requested by "
EVENTS_FOLDER = "runs"


class WorkerFailed(Exception):
    """The worker stopped before it said what the supervisor waited for."""


@dataclass
class WorkerReport:
    """What the worker said so far, as far as the guard must remember it."""

    running_step: dict | None = None
    heads: tuple[str, ...] | None = None
    error: str | None = None
    committed: bool = False  # something was committed before the end
    # Which of ``databases`` (their index) had something committed before the end.
    committed_databases: set[int] = field(default_factory=set)
    rolled_back: bool = False  # the worker rolled its one held transaction back
    sessions: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)  # kinds seen, in order
    # Each database env.py said it migrates (full URLs: never stored or shown).
    databases: list[EnvDatabase] | None = None


@dataclass
class WorkerOutcome:
    ok: bool
    heads: tuple[str, ...] = ()
    error: str | None = None
    failed_step: str | None = None
    cancelled: bool = False
    # The database undid the action itself: the one transaction of a database that
    # holds writers off, or of transactional DDL when nothing was committed.
    rolled_back: bool = False
    sessions: tuple[str, ...] = ()
    touched: frozenset[str] = frozenset()


class RunJournal:
    """Where a worker's reports go: a run's record in the store. A rehearsal has a
    journal of its own with the same verbs (``services/rehearsal.py``)."""

    def __init__(self, instance_dir: str, run_id: str):
        self.instance_dir, self.run_id = instance_dir, run_id

    def plan_steps(self, steps: list[dict]) -> None:
        runs.plan_steps(self.instance_dir, self.run_id, steps)

    def update_step(self, index: int, **values) -> None:
        runs.update_step(self.instance_dir, self.run_id, index, **values)

    def add_log(self, level: str, message: str, ts: float | None = None) -> None:
        runs.add_log(self.instance_dir, self.run_id, level, message, ts)

    def update_run(self, **values) -> None:
        runs.update_run(self.instance_dir, self.run_id, **values)

    def cancelled(self) -> bool:
        return cancel_requested(self.instance_dir, self.run_id)


def events_path(instance_dir: str, run_id: str) -> str:
    return os.path.join(instance_dir, EVENTS_FOLDER, f"{run_id}.jsonl")


class Worker:
    """One worker process running one action, and what it reported."""

    def __init__(self, target: Target, run_id: str, plan: ActionPlan,
                 lock: locking.ActionLock | None, project=None, journal=None,
                 bound: bool = False):
        """``project`` (the target's, unless given: a rehearsal's copy) is the database
        the worker is told to migrate; ``journal`` records what it reports (the run's).
        ``bound``: the worker dies with this process (a Celery task's run)."""
        self.target = target
        self.project = project or target.project()
        self.journal = journal or RunJournal(target.instance_dir, run_id)
        self.run_id = run_id
        self.plan = plan
        self.report = WorkerReport()
        self.holds_writers = self.project.engine.holds_off_writers
        args = ["run", "--ini", self.project.ini_path, "--action", plan.action,
                "--target", plan.destination,
                *self.project.engine.worker_args(self.project)]
        if plan.purge:
            args.append("--purge")
        env = worker_environment(self.project)
        env["DASHBOARD_EVENTS_FILE"] = self._events_file()
        session_sql = self.project.engine.session_id_sql()
        if session_sql:
            env["DASHBOARD_SESSION_SQL"] = session_sql
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.proc = subprocess.Popen(
            worker_command(self.project, *args), env=env,
            cwd=os.path.dirname(self.project.ini_path), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            pass_fds=lock.fds if lock is not None else (),
            preexec_fn=bound_to_this_process() if bound else None,
        )
        self.journal.update_run(pid=self.proc.pid)

    def _events_file(self) -> str:
        path = events_path(self.target.instance_dir, self.run_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    # ------------------------------------------------------------ talking

    def wait_for(self, kind: str) -> dict:
        """Record what the worker reports until it says ``kind``; WorkerFailed if it
        stops first (its error, or how it exited)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            for event in parse_events(line):
                self._record(event)
                if event.get("event") == kind:
                    return event
                if event.get("event") == "error":
                    raise WorkerFailed(self.report.error)
        self.proc.wait()
        raise WorkerFailed(self.report.error or self._exit_description())

    def send(self, command: str, **fields) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"command": command, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it is gone; the end of its output says why

    def copy_database(self, destination: str) -> None:
        """The held database copied by the worker, under the write lock it holds."""
        self.send("copy", path=destination)
        self.wait_for("backup_copied")

    def abort(self) -> None:
        """Nothing may run: the worker rolls back what it holds and exits."""
        self.send("abort")
        self._finish()

    def run_to_end(self) -> WorkerOutcome:
        """Let the worker run the action, and record everything it reports."""
        self.send("go")
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            for event in parse_events(line):
                self._record(event)
        returncode = self._finish()
        return self._outcome(returncode)

    def _finish(self) -> int:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        returncode = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return returncode

    def _outcome(self, returncode: int) -> WorkerOutcome:
        report = self.report
        if report.heads is not None and returncode == 0 and report.error is None:
            return WorkerOutcome(True, report.heads, sessions=tuple(report.sessions),
                                 touched=frozenset(report.touched))
        cancelled = self.journal.cancelled()
        error = report.error
        if cancelled:
            error = "the run was cancelled, and its worker stopped"
        if error is None:
            error = self._exit_description()
        failed = None
        if report.running_step is not None:
            failed = report.running_step["revision"]
            self.journal.update_step(report.running_step["index"], status="failed",
                                     finished_at=time.time())
        self.journal.update_run(failed_step=failed)
        engine = self.project.engine
        # Held writers: the worker's one transaction, rolled back by it or, if it died,
        # by SQLite from its journal. Transactional DDL: rolled back by the server,
        # unless something was committed on the way (an autocommit block, env.py's own
        # commits), which only the backup can undo.
        rolled_back = self.holds_writers or (engine.transactional_ddl and not report.committed)
        return WorkerOutcome(False, error=error, failed_step=failed, cancelled=cancelled,
                             rolled_back=rolled_back, sessions=tuple(report.sessions),
                             touched=frozenset(report.touched))

    def _exit_description(self) -> str:
        returncode = self.proc.poll()
        if returncode == -signal.SIGTERM and self.journal.cancelled():
            return "the run was cancelled, and its worker stopped"
        self._stderr.seek(0)
        tail = self.project.scrub(self._stderr.read()[-2000:]).strip()
        return f"the worker exited with status {returncode}" + (f": {tail}" if tail else "")

    def _record(self, event: dict) -> None:
        record_event(self.journal, self.project, event, self.report)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def record_event(journal: RunJournal, project, event: dict, report: WorkerReport) -> None:
    """Store one line the worker reported, and remember what the guard needs."""
    kind = event.get("event")
    report.events.append(str(kind))
    if kind == "plan":
        journal.plan_steps(event["steps"])
    elif kind == "step_started":
        report.running_step = event
        journal.update_step(event["index"], status="running", started_at=event["ts"])
    elif kind == "step_finished":
        report.running_step = None
        journal.update_step(event["index"], status="succeeded", finished_at=event["ts"])
    elif kind == "log":
        journal.add_log(event.get("level", "INFO"), project.scrub(event.get("message", "")),
                        event.get("ts"))
    elif kind == "committed":
        if report.heads is None and "step_started" in report.events:
            report.committed = True
            if isinstance(event.get("database"), int):
                report.committed_databases.add(event["database"])
            else:  # a connection to no database env.py named: assume any
                report.committed_databases.add(-1)
    elif kind == "rolled_back":
        report.rolled_back = True
    elif kind == "session":
        report.sessions.append(str(event.get("id")))
    elif kind == "touched":
        report.touched.add(str(event.get("table")))
    elif kind == "databases":
        report.databases = list(databases_of(event, os.path.dirname(project.ini_path)))
    elif kind == "done":
        report.heads = tuple(event.get("heads", ()))
    elif kind == "error":
        report.error = project.scrub(event.get("error", "unknown error"))
        journal.add_log("ERROR", project.scrub(event.get("traceback") or report.error))


def wrong_databases(project, databases: list[EnvDatabase] | None,
                    guarded: tuple = ()) -> str | None:
    """Why a run must be refused because env.py would migrate a database other than
    the one the guard locked and backs up (named masked); None when every database
    env.py names is that one. With ``guarded`` (several databases, each locked and
    backed up as one run), env.py must migrate exactly those."""
    if not databases:
        return ("env.py opened no database when asked which one it migrates, so "
                "nothing was run.")
    if len(guarded) > 1:
        return _not_the_guarded_set(databases, guarded)
    locked = project.engine.identity(project.database_url)
    others = [d for d in databases if d.identity != locked]
    if not others:
        return None
    if len({d.identity for d in databases}) > 1:
        named = ", ".join(dict.fromkeys(d.masked_url for d in databases))
        return (f"env.py migrates {len(databases)} databases ({named}), but the dashboard "
                f"locks and backs up one, {project.masked_url}: the run was refused before "
                "any step, and nothing was run. Unset DASHBOARD_DATABASE_URL (or the "
                "target's url) to let env.py name its databases: each is then locked and "
                "backed up, and restored on a failure, as one run.")
    return (f"env.py migrates {others[0].masked_url}, but the dashboard locked "
            f"{project.masked_url}, the database it backs up for this run: the run was "
            "refused before any step, and nothing was run. Point DASHBOARD_DATABASE_URL "
            "at the database env.py migrates, or unset it to let env.py name the database.")


def _not_the_guarded_set(databases: list[EnvDatabase], guarded: tuple) -> str | None:
    locked = {d.engine.identity(d.database_url): d.masked_url for d in guarded}
    opened = {d.identity: d.masked_url for d in databases}
    if set(opened) == set(locked):
        return None
    extra = [url for identity, url in opened.items() if identity not in locked]
    gone = [url for identity, url in locked.items() if identity not in opened]
    said = []
    if extra:
        said.append(f"env.py now migrates {', '.join(extra)}, which the dashboard did not "
                    "lock or back up")
    if gone:
        said.append(f"env.py no longer migrates {', '.join(gone)}")
    return (f"The dashboard locked and backs up {', '.join(locked.values())}, but "
            + " and ".join(said) + ": the run was refused before any step, and nothing "
            "was run.")


def replay_events(inst: str, run_id: str, project) -> WorkerReport:
    """What a worker wrote in its events file: for a run whose supervisor died."""
    report = WorkerReport()
    try:
        with open(events_path(inst, run_id), encoding="utf-8") as handle:
            lines = handle.read()
    except OSError:
        return report
    for event in parse_events(lines):
        try:
            record_event(RunJournal(inst, run_id), project, event, report)
        except Exception:
            continue
    return report


def process_is(pid: int | None, marker: bytes) -> bool:
    """Whether process ``pid`` runs still and is the one its command line's ``marker``
    names (a worker, a runner), not another that was given its number since."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return marker in handle.read()
    except OSError:
        return False


def cancel_requested(inst: str, run_id: str) -> bool:
    run = runs.get_run(inst, run_id)
    return bool(run and any(log.message.startswith(CANCEL_MARK) for log in run.logs))
