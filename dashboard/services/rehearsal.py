"""Rehearsal: the pending upgrade run on a copy of the database, never on the database.

A fresh verified backup is taken (``guard.backup_now``: under the lock for the
moment of the copy, recorded and audited like any backup); the engine makes a
scratch copy from it beside the real database (``scratch_copy``: a SQLite file,
a scratch PostgreSQL database, a scratch MariaDB schema); the project's own
migrations run on the copy through the same worker as a run, told the copy's
URL. With ``roundtrip`` the same steps go down and up again, and the schema
after the round trip must be the one after the upgrade. The copy is removed
afterwards whatever happens.

env.py must migrate the URL it is handed: one that picks its own database (an
environment variable, a fixed URL) is caught by the worker's identity check
before any step, and the rehearsal refuses rather than run on the real one.

The real database is locked only while its backup is taken: a rehearsal asked
for while a run holds the lock is refused (409), and a run may start while a
rehearsal works on its copy.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update

from dashboard.engines.base import remove_files
from dashboard.errors import BadRequest, DashboardError, NotFound
from dashboard.services import audit, guard, schema, store, supervision
from dashboard.services.locking import LockHeld
from dashboard.services.planning import ActionPlan, plan_action
from dashboard.services.recovery import live_revisions
from dashboard.services.runs import RunLog, add_log
from dashboard.services.status import missing_sqlite_file

if TYPE_CHECKING:
    from dashboard.core import Target
    from dashboard.services.project import Project
    from dashboard.services.revisions import History

RUNNING, PASSED, FAILED = "running", "passed", "failed"
COPIES_FOLDER = "rehearsals"  # in the instance folder: SQLite copies
UPGRADE, DOWNGRADE, UPGRADE_AGAIN = "upgrade", "downgrade", "upgrade again"
BACKUP_WAIT_SECONDS = 60.0  # for another rehearsal's (or a manual) backup to end
LEFT_COPY_SECONDS = 600.0  # a copy file older than this, named by no running rehearsal, is left


@dataclass(frozen=True)
class RehearsalStep:
    index: int
    phase: str  # upgrade, downgrade, upgrade again
    revision: str
    direction: str  # up, down
    status: str  # planned, running, succeeded, failed
    started_at: float | None
    finished_at: float | None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def as_json(self) -> dict:
        return {"revision": self.revision, "direction": self.direction, "phase": self.phase,
                "status": self.status, "duration_s": self.duration_s}


@dataclass(frozen=True)
class RehearsalRecord:
    id: str
    destination: str
    roundtrip: bool
    status: str
    user: str
    from_revs: tuple[str, ...]
    to_revs: tuple[str, ...]
    backup_id: str | None
    copy: str | None
    copy_removed: bool
    error: str | None
    failed_step: str | None
    created_at: float
    finished_at: float | None
    schema_before: dict | None = field(default=None, repr=False)
    schema_up: dict | None = field(default=None, repr=False)
    schema_down: dict | None = field(default=None, repr=False)
    schema_again: dict | None = field(default=None, repr=False)
    steps: tuple[RehearsalStep, ...] = ()
    logs: tuple[RunLog, ...] = field(default=(), repr=False)

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    @property
    def duration(self) -> float:
        return (self.finished_at or time.time()) - self.created_at

    @property
    def upgrade_diff(self) -> list[str] | None:
        """What the upgrade changed in the copy's schema."""
        return _diff(self.schema_before, self.schema_up)

    @property
    def downgrade_diff(self) -> list[str] | None:
        """What the downgrade left different from the schema before the upgrade."""
        return _diff(self.schema_before, self.schema_down)

    @property
    def roundtrip_diff(self) -> list[str] | None:
        """How the schema after down and up again differs from the one after up."""
        return _diff(self.schema_up, self.schema_again)

    def phase_seconds(self, phase: str) -> float:
        return sum(s.duration_s or 0.0 for s in self.steps if s.phase == phase)

    def as_json(self) -> dict:
        return {
            "id": self.id, "status": self.status, "target": self.destination,
            "roundtrip": self.roundtrip, "user": self.user,
            "from": list(self.from_revs), "to": list(self.to_revs),
            "steps": [s.as_json() for s in self.steps], "error": self.error,
            "failed_step": self.failed_step, "backup_id": self.backup_id,
            "copy": self.copy, "copy_removed": self.copy_removed,
            "created_at": self.created_at, "finished_at": self.finished_at,
            "schema_diff": {"upgrade": self.upgrade_diff,
                            "after_downgrade": self.downgrade_diff,
                            "roundtrip": self.roundtrip_diff},
            "logs": [{"ts": log.ts, "level": log.level, "message": log.message}
                     for log in self.logs[-200:]],
        }


def _diff(before: dict | None, after: dict | None) -> list[str] | None:
    if before is None or after is None:
        return None
    return schema.differences(before, after)


# ------------------------------------------------------------------ starting


def start_rehearsal(target: Target, history: History, destination: str, roundtrip: bool,
                    user: str, background: bool = True) -> RehearsalRecord:
    """Start a rehearsal of the upgrade to ``destination`` in a runner process of its
    own; its record once started (with ``background`` False, once finished).

    Refused at once (400) for a bad destination, nothing pending, a database that
    does not exist yet or several databases; (409) while a run holds the lock."""
    from dashboard import runner

    target.check_writable()  # it takes a backup
    project = target.project()
    if guard.lock_holder(target, but_backups=True):
        raise LockHeld("A run holds this database's lock now: a rehearsal takes a fresh "
                       "backup of the database first, so it waits for the run to end. "
                       "Rehearse again once it has finished.")
    if missing_sqlite_file(project):
        raise BadRequest(f"The database {project.masked_url} does not exist yet: there is "
                         "nothing to copy. Its first upgrade creates it.")
    if len(target.guarded_databases(project)) > 1:
        raise BadRequest("env.py migrates several databases: a rehearsal copies one "
                         "database, so it cannot rehearse this project.")
    current = live_revisions(project)
    plan_action(history, current, "upgrade", destination)  # 400 for a bad one, or none
    if roundtrip and len(current) > 1:
        raise BadRequest(f"The database is at several heads ({', '.join(current)}): a round "
                         "trip downgrades back to one revision, so it cannot. Rehearse "
                         "without the round trip.")
    return runner.launch(target, {"verb": "rehearse", "destination": destination,
                                  "roundtrip": bool(roundtrip), "user": user},
                         wait=not background, get=get_rehearsal)


@dataclass
class Prepared:
    """A rehearsal recorded and about to run: what the runner executes."""

    run_id: str
    destination: str
    roundtrip: bool
    user: str


def prepare(target: Target, request: dict) -> Prepared:
    """Record the rehearsal (the runner's first part: it then answers "started")."""
    destination = str(request.get("destination") or "heads")
    rehearsal_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-r" + \
        secrets.token_hex(4)
    with store.store_engine(target.instance_dir).begin() as conn:
        conn.execute(insert(store.rehearsals).values(
            id=rehearsal_id, destination=destination, roundtrip=bool(request.get("roundtrip")),
            status=RUNNING, user=str(request.get("user") or "?"), from_revs="[]",
            to_revs="[]", runner_pid=os.getpid(), created_at=time.time()))
    return Prepared(rehearsal_id, destination, bool(request.get("roundtrip")),
                    str(request.get("user") or "?"))


# ------------------------------------------------------------------ the runner's part


class _Stopped(BaseException):
    """The runner was told to stop (SIGTERM): the copy is still removed on the way out."""


def execute(target: Target, prepared: Prepared) -> None:
    """Back up, copy, rehearse on the copy, remove the copy; the outcome recorded."""
    inst, rid, user = target.instance_dir, prepared.run_id, prepared.user
    project = target.project()
    started = time.time()
    audit.record_event(target, audit.RehearsalStarted(
        user=user, action="rehearse", destination=prepared.destination, run_id=rid))

    def stop(_signum, _frame):
        raise _Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    error = None
    try:
        backup = _fresh_backup(target, prepared)
        _update(inst, rid, backup_id=backup.id, from_revs=store.dumps(backup.revisions))
        folder = os.path.join(inst, COPIES_FOLDER)
        _sweep_copies(inst, folder)
        try:
            with project.engine.scratch_copy(project, backup.path, folder) as url:
                copy = replace(project, database_url=url, hands_url=True,
                               env=tuple({**dict(project.env),
                                          **_pointed_at_copy(project, url)}.items()))
                _update(inst, rid, copy=copy.masked_url)
                error = _rehearse(target, prepared, copy, backup.revisions)
        finally:
            _update(inst, rid, copy_removed=True)
    except _Stopped:
        error = "The rehearsal was stopped (its process was told to end); its copy was removed."
    except DashboardError as exc:
        error = exc.message
    except Exception as exc:
        error = project.scrub(f"The rehearsal stopped unexpectedly: {type(exc).__name__}: "
                              f"{exc}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_files(supervision.events_path(inst, rid))
    _update(inst, rid, status=PASSED if error is None else FAILED, error=error,
            finished_at=time.time())
    event = audit.RehearsalPassed if error is None else audit.RehearsalFailed
    record = get_rehearsal(inst, rid)
    audit.record_event(target, event(
        user=user, action="rehearse", destination=prepared.destination,
        from_revs=record.from_revs if record else (), to_revs=record.to_revs if record else (),
        backup_id=record.backup_id if record else None, run_id=rid,
        duration=time.time() - started, error=error))


def _pointed_at_copy(project, copy_url: str) -> dict[str, str]:
    """The environment variables (the dashboard's and the target's) that name the real
    database, now naming the copy: an env.py (or a Flask app's config) that reads its
    URL from one then migrates the copy. Whatever env.py opens is still checked against
    the copy before any step."""
    if not project.database_url:
        return {}
    real = project.engine.identity(project.database_url)
    pointed = {}
    for name, value in {**os.environ, **dict(project.env)}.items():
        if name.startswith("DASHBOARD_") or "://" not in value:
            continue
        try:
            same = project.engine.identity(value) == real
        except Exception:  # not a URL this engine reads
            same = False
        if same:
            pointed[name] = copy_url
    return pointed


def _sweep_copies(inst: str, folder: str) -> None:
    """Files a rehearsal killed outright (``kill -9``) left in the copies folder: removed,
    unless a running rehearsal names it or it is too new to be named yet."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    table = store.rehearsals
    with store.store_engine(inst).connect() as conn:
        in_use = [copy for copy in conn.execute(select(table.c.copy).where(
            table.c.status == RUNNING)).scalars() if copy]
    for name in names:
        path = os.path.join(folder, name)
        try:
            fresh = time.time() - os.path.getmtime(path) < LEFT_COPY_SECONDS
        except OSError:
            continue
        if not fresh and not any(path in copy for copy in in_use):
            remove_files(path)


def _fresh_backup(target: Target, prepared: Prepared):
    """The backup the copy is made from. Another rehearsal's backup (a moment) is
    waited for; a run that took the lock since the rehearsal was asked for is not."""
    deadline = time.monotonic() + BACKUP_WAIT_SECONDS
    while True:
        try:
            return guard.backup_now(target, prepared.user,
                                    why=f"rehearsal {prepared.destination}")
        except LockHeld:
            if time.monotonic() > deadline or guard.lock_holder(target, but_backups=True):
                raise
            time.sleep(0.2)


def _rehearse(target: Target, prepared: Prepared, copy: Project,
              current: tuple[str, ...]) -> str | None:
    """The phases on the copy, each in a worker; why the rehearsal failed, or None."""
    inst, rid = target.instance_dir, prepared.run_id
    back_to = current[0] if current else "base"
    phases = [(UPGRADE, "upgrade", prepared.destination, "schema_up")]
    if prepared.roundtrip:
        phases += [(DOWNGRADE, "downgrade", back_to, "schema_down"),
                   (UPGRADE_AGAIN, "upgrade", prepared.destination, "schema_again")]
    _keep_schema(inst, rid, copy, "schema_before")
    offset = 0
    for phase, action, destination, column in phases:
        journal = RehearsalJournal(inst, rid, phase, offset)
        worker = supervision.Worker(target, rid, ActionPlan(action, destination, current, ()),
                                    None, project=copy, journal=journal)
        try:
            try:
                worker.wait_for("ready")
            except supervision.WorkerFailed as exc:
                return f"The {phase} could not start on the copy: {exc}"
            if supervision.wrong_databases(copy, worker.report.databases):
                worker.abort()
                return _not_the_copy(copy, worker.report.databases)
            outcome = worker.run_to_end()
        finally:
            worker.close()
        offset = journal.last_index
        if not outcome.ok:
            where = f"step {outcome.failed_step} ({action})" if outcome.failed_step \
                else "env.py, before the first step,"
            return f"The {phase} on the copy failed at {where}: {outcome.error}"
        current = outcome.heads
        _update(inst, rid, to_revs=store.dumps(current))
        _keep_schema(inst, rid, copy, column)
    if prepared.roundtrip:
        record = get_rehearsal(inst, rid)
        differs = record.roundtrip_diff if record else None
        if differs is None:
            return "The schema could not be read after each direction, so the round trip " \
                   "could not be compared."
        if differs:
            return ("After the downgrade and the upgrade again, the schema differs from the "
                    "one after the upgrade: " + "; ".join(differs))
    return None


def _not_the_copy(copy: Project, databases) -> str:
    named = ", ".join(dict.fromkeys(d.masked_url for d in databases or ())) or "no database"
    return (f"env.py migrates {named}, not the copy {copy.masked_url} the dashboard made and "
            "handed it: the rehearsal was refused before any step, and nothing ran on "
            "either database. A rehearsal needs env.py to migrate the URL Alembic hands it "
            "(config.get_main_option(\"sqlalchemy.url\"), as `alembic init` writes it), "
            "not one it reads itself from an environment variable or a fixed string.")


def _keep_schema(inst: str, rid: str, copy: Project, column: str) -> None:
    taken = schema.snapshot(copy)
    if taken.tables is not None:
        _update(inst, rid, **{column: store.dumps(taken.tables)})
    else:
        add_log(inst, rid, "WARNING", f"The copy's schema ({column}): {taken.reason}")


class RehearsalJournal(supervision.RunJournal):
    """What the worker reports in one phase, as the rehearsal's steps: numbered on
    after the phases before it."""

    def __init__(self, instance_dir: str, rehearsal_id: str, phase: str, offset: int):
        super().__init__(instance_dir, rehearsal_id)
        self.phase, self.offset, self.last_index = phase, offset, offset

    def plan_steps(self, steps: list[dict]) -> None:
        table = store.rehearsal_steps
        with store.store_engine(self.instance_dir).begin() as conn:
            conn.execute(table.delete().where(table.c.rehearsal_id == self.run_id,
                                              table.c.idx > self.offset))
            if steps:
                conn.execute(insert(table), [
                    {"rehearsal_id": self.run_id, "idx": self.offset + i, "phase": self.phase,
                     "revision": s["revision"] or "", "direction": s["direction"],
                     "status": "planned"} for i, s in enumerate(steps, start=1)])
        self.last_index = self.offset + len(steps)

    def update_step(self, index: int, **values) -> None:
        table = store.rehearsal_steps
        with store.store_engine(self.instance_dir).begin() as conn:
            conn.execute(update(table).where(
                table.c.rehearsal_id == self.run_id, table.c.idx == self.offset + index
            ).values(**values))

    def update_run(self, **values) -> None:
        values = {k: v for k, v in values.items() if k in ("pid", "failed_step")}
        if values:
            _update(self.instance_dir, self.run_id, **values)

    def cancelled(self) -> bool:
        return False


def _update(inst: str, rid: str, **values) -> None:
    with store.store_engine(inst).begin() as conn:
        conn.execute(update(store.rehearsals).where(store.rehearsals.c.id == rid)
                     .values(**values))


# ------------------------------------------------------------------ reading


def get_rehearsal(instance_dir: str, rehearsal_id: str) -> RehearsalRecord | None:
    """One rehearsal as recorded; one whose runner died is settled as failed first."""
    engine = store.store_engine(instance_dir)
    table, steps_table = store.rehearsals, store.rehearsal_steps
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.id == rehearsal_id)).mappings().first()
        if row is None:
            return None
        steps = conn.execute(select(steps_table).where(
            steps_table.c.rehearsal_id == rehearsal_id).order_by(steps_table.c.idx)
        ).mappings().all()
        logs = conn.execute(select(store.run_logs).where(
            store.run_logs.c.run_id == rehearsal_id).order_by(store.run_logs.c.id)
        ).mappings().all()
    if row["status"] == RUNNING and not supervision.process_is(
            row["runner_pid"], b"dashboard.runner"):
        _update(instance_dir, rehearsal_id, status=FAILED, finished_at=time.time(),
                error="The rehearsal's process ended before it finished. " + (
                    f"Its copy {row['copy']} may be left behind (a file is removed by the "
                    "next rehearsal; drop a scratch database by hand)."
                    if row["copy"] and not row["copy_removed"] else ""))
        return get_rehearsal(instance_dir, rehearsal_id)
    return RehearsalRecord(
        id=row["id"], destination=row["destination"], roundtrip=bool(row["roundtrip"]),
        status=row["status"], user=row["user"],
        from_revs=tuple(store.loads(row["from_revs"])),
        to_revs=tuple(store.loads(row["to_revs"])), backup_id=row["backup_id"],
        copy=row["copy"], copy_removed=bool(row["copy_removed"]), error=row["error"],
        failed_step=row["failed_step"], created_at=row["created_at"],
        finished_at=row["finished_at"],
        schema_before=_json(row["schema_before"]), schema_up=_json(row["schema_up"]),
        schema_down=_json(row["schema_down"]), schema_again=_json(row["schema_again"]),
        steps=tuple(RehearsalStep(s["idx"], s["phase"], s["revision"], s["direction"],
                                  s["status"], s["started_at"], s["finished_at"])
                    for s in steps),
        logs=tuple(RunLog(entry["ts"], entry["level"], entry["message"]) for entry in logs))


def find_rehearsal(instance_dir: str, rehearsal_id: str) -> RehearsalRecord:
    record = get_rehearsal(instance_dir, rehearsal_id)
    if record is None:
        raise NotFound(f"No rehearsal '{rehearsal_id}'.")
    return record


def _json(value: str | None):
    return None if value is None else store.loads(value)
