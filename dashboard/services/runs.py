"""Run records: an action's state and per-step progress, in the dashboard's store.

The process that supervises a worker writes here as the worker reports;
pages and the API read from here, so progress survives a page reload and is
visible from any server process.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from sqlalchemy import func, insert, select, update

from dashboard.services import schema, store

QUEUED = "queued"
BACKING_UP = "backing_up"
RUNNING = "running"
RESTORING = "restoring"
SUCCEEDED = "succeeded"
FAILED = "failed"
RESTORED = "restored"  # a step failed; the database was put back and checked
CANCELLED = "cancelled"  # stopped by a person; the database was put back and checked
FINISHED = (SUCCEEDED, FAILED, RESTORED, CANCELLED)


@dataclass(frozen=True)
class RunStep:
    index: int
    revision: str
    direction: str
    status: str  # planned, running, succeeded, failed
    started_at: float | None
    finished_at: float | None

    @property
    def elapsed(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def as_json(self) -> dict:
        return {
            "revision": self.revision, "direction": self.direction, "status": self.status,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "elapsed": self.elapsed,
        }


@dataclass(frozen=True)
class RunLog:
    ts: float
    level: str
    message: str


@dataclass(frozen=True)
class RunRecord:
    id: str
    action: str
    target: str
    status: str
    from_revs: tuple[str, ...]
    to_revs: tuple[str, ...]
    backup_id: str | None
    restore_backup_id: str | None
    error: str | None
    failed_step: str | None
    user: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    backup_seconds: float | None
    # Writes other sessions made during the run that its restore threw away:
    # [{"table", "rows"}]; [] when none; None when unknown or no restore happened.
    discarded_writes: list | None = None
    # Each database's own backup, [{"database": masked URL, "backup_id"}], for a run of
    # an env.py that migrates several databases; [] for one database (see backup_id).
    backups: tuple[dict, ...] = ()
    # The schema before and after the run (services/schema.py), None where it could not
    # be read; ``schema_note`` says why.
    schema_before: dict | None = field(default=None, repr=False)
    schema_after: dict | None = field(default=None, repr=False)
    schema_note: str | None = None
    # Where the run was carried out when not by this dashboard: a Celery worker's name.
    executed_by: str | None = None
    steps: tuple[RunStep, ...] = ()
    logs: tuple[RunLog, ...] = field(default=(), repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def current_step(self) -> RunStep | None:
        return next((s for s in self.steps if s.status == "running"), None)

    @property
    def done_steps(self) -> int:
        return sum(1 for s in self.steps if s.status == "succeeded")

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @property
    def schema_diff(self) -> list[str] | None:
        """What the run changed in the schema, one line each; None when a side of it
        could not be read (or the run has not ended)."""
        if self.schema_before is None or self.schema_after is None:
            return None
        return schema.differences(self.schema_before, self.schema_after)

    @property
    def schema_pending(self) -> bool:
        """The run has ended and its schema after is being read (a moment, after a run
        that did not succeed)."""
        return (self.finished and self.schema_note is None
                and time.time() - (self.finished_at or 0) < 30)

    def undid(self, step: RunStep) -> bool:
        """Whether a step that succeeded was undone since: the run ended with the
        database put back as it was before (restored or cancelled, checked)."""
        return step.status == SUCCEEDED and self.status in (RESTORED, CANCELLED)

    def as_json(self) -> dict:
        return {
            "id": self.id, "action": self.action, "target": self.target,
            "status": self.status, "from": list(self.from_revs), "to": list(self.to_revs),
            "backup_id": self.backup_id, "restore_backup_id": self.restore_backup_id,
            "steps": [{**s.as_json(), "undone": self.undid(s)} for s in self.steps],
            "error": self.error,
            "failed_step": self.failed_step, "user": self.user,
            "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "backup_seconds": self.backup_seconds,
            "destination": self.target, "discarded_writes": self.discarded_writes,
            "backups": [dict(b) for b in self.backups],
            "schema_diff": self.schema_diff, "schema_note": self.schema_note or None,
            "executed_by": self.executed_by,
            "logs": [{"ts": log.ts, "level": log.level, "message": log.message}
                     for log in self.logs[-200:]],
        }


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def create_run(instance_dir: str, *, run_id: str, action: str, target: str, user: str,
               from_revs: tuple[str, ...], restore_backup_id: str | None = None) -> None:
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(insert(store.runs).values(
            id=run_id, action=action, target=target, status=QUEUED,
            from_revs=store.dumps(from_revs), to_revs="[]", user=user,
            created_at=time.time(), restore_backup_id=restore_backup_id,
        ))


def update_run(instance_dir: str, run_id: str, **values) -> None:
    for key in ("from_revs", "to_revs"):
        if key in values:
            values[key] = store.dumps(values[key])
    if "backups" in values:
        values["backups"] = store.dumps(values["backups"])
    for key in ("schema_before", "schema_after"):
        if key in values and values[key] is not None:
            values[key] = store.dumps(values[key])
    if "discarded_writes" in values:
        values["discarded_writes"] = (None if values["discarded_writes"] is None
                                      else store.dumps(values["discarded_writes"]))
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(update(store.runs).where(store.runs.c.id == run_id).values(**values))


def plan_steps(instance_dir: str, run_id: str, steps: list[dict]) -> None:
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(store.run_steps.delete().where(store.run_steps.c.run_id == run_id))
        if steps:
            conn.execute(insert(store.run_steps), [
                {"run_id": run_id, "idx": i, "revision": s["revision"] or "",
                 "direction": s["direction"], "status": "planned"}
                for i, s in enumerate(steps, start=1)
            ])


def update_step(instance_dir: str, run_id: str, index: int, **values) -> None:
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(update(store.run_steps).where(
            store.run_steps.c.run_id == run_id, store.run_steps.c.idx == index
        ).values(**values))


def add_log(instance_dir: str, run_id: str, level: str, message: str,
            ts: float | None = None) -> None:
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(insert(store.run_logs).values(
            run_id=run_id, ts=ts or time.time(), level=level, message=message[:4000]
        ))


def get_run(instance_dir: str, run_id: str) -> RunRecord | None:
    engine = store.store_engine(instance_dir)
    with engine.connect() as conn:
        row = conn.execute(select(store.runs).where(store.runs.c.id == run_id)).mappings().first()
        if row is None:
            return None
        steps = conn.execute(select(store.run_steps).where(
            store.run_steps.c.run_id == run_id).order_by(store.run_steps.c.idx)).mappings().all()
        logs = conn.execute(select(store.run_logs).where(
            store.run_logs.c.run_id == run_id).order_by(store.run_logs.c.id)).mappings().all()
    return _record(row, steps, logs)


def _record(row, steps=(), logs=()) -> RunRecord:
    return RunRecord(
        id=row["id"], action=row["action"], target=row["target"], status=row["status"],
        from_revs=tuple(store.loads(row["from_revs"])), to_revs=tuple(store.loads(row["to_revs"])),
        backup_id=row["backup_id"], restore_backup_id=row["restore_backup_id"],
        error=row["error"], failed_step=row["failed_step"], user=row["user"],
        created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], backup_seconds=row["backup_seconds"],
        discarded_writes=(None if row.get("discarded_writes") is None
                          else store.loads(row["discarded_writes"])),
        backups=tuple(store.loads(row.get("backups"))),
        schema_before=_json_or_none(row.get("schema_before")),
        schema_after=_json_or_none(row.get("schema_after")),
        schema_note=row.get("schema_note"),
        executed_by=row.get("executed_by"),
        steps=tuple(RunStep(s["idx"], s["revision"], s["direction"], s["status"],
                            s["started_at"], s["finished_at"]) for s in steps),
        logs=tuple(RunLog(entry["ts"], entry["level"], entry["message"]) for entry in logs),
    )


def _json_or_none(value: str | None):
    return None if value is None else store.loads(value)


def list_runs(instance_dir: str, limit: int = 50) -> list[RunRecord]:
    engine = store.store_engine(instance_dir)
    with engine.connect() as conn:
        rows = conn.execute(select(store.runs).order_by(
            store.runs.c.created_at.desc()).limit(limit)).mappings().all()
    return [_record(row) for row in rows]


STATUSES = (QUEUED, BACKING_UP, RUNNING, RESTORING, *FINISHED)
ACTIONS = ("upgrade", "downgrade", "stamp", "restore")


def find_runs(instance_dir: str, where: dict, page: int, per_page: int) -> store.Page:
    """One page of runs, newest first, whose ``status``/``action`` equal ``where``'s."""
    return store.paged(instance_dir, store.runs, (store.runs.c.created_at.desc(),), where,
                       page, per_page, lambda row: _record(row._mapping))


def unfinished_runs(instance_dir: str) -> list[RunRecord]:
    """Runs of this store not ended yet, but those carried out elsewhere (a Celery
    worker's, mirrored here: their own worker settles them)."""
    engine = store.store_engine(instance_dir)
    with engine.connect() as conn:
        rows = conn.execute(select(store.runs).where(
            store.runs.c.status.not_in(FINISHED),
            store.runs.c.executed_by.is_(None))).mappings().all()
    return [_record(row) for row in rows]


def _rank(status: str, steps_done: int, finished_at) -> tuple:
    """How far a run has come, to let the newer of two reports of it win."""
    return (status in FINISHED, finished_at or 0, steps_done)


def upsert_run_json(instance_dir: str, run_json: dict, executed_by: str) -> bool:
    """Keep here a run carried out elsewhere, as its worker reported it
    (``RunRecord.as_json()``, with ``schema_before``/``schema_after`` when it has
    ended): its row, steps and log lines. Idempotent; an older report than the one
    kept changes nothing (False). A run this store has of its own (same id, not
    mirrored: the worker shares this instance folder) is never touched (False)."""
    run_id = str(run_json["id"])
    steps = list(run_json.get("steps") or [])
    done = sum(1 for s in steps if s.get("status") == SUCCEEDED)
    values = {
        "action": run_json["action"], "target": run_json.get("destination") or
        run_json.get("target") or "", "status": run_json["status"],
        "from_revs": store.dumps(list(run_json.get("from") or [])),
        "to_revs": store.dumps(list(run_json.get("to") or [])),
        "backup_id": run_json.get("backup_id"),
        "restore_backup_id": run_json.get("restore_backup_id"),
        "error": run_json.get("error"), "failed_step": run_json.get("failed_step"),
        "user": run_json.get("user") or "", "created_at": run_json.get("created_at") or
        time.time(), "started_at": run_json.get("started_at"),
        "finished_at": run_json.get("finished_at"),
        "backup_seconds": run_json.get("backup_seconds"),
        "discarded_writes": None if run_json.get("discarded_writes") is None
        else store.dumps(run_json["discarded_writes"]),
        "backups": store.dumps(list(run_json.get("backups") or [])),
        "schema_note": run_json.get("schema_note"), "executed_by": executed_by,
    }
    for key in ("schema_before", "schema_after"):
        if run_json.get(key) is not None:
            values[key] = store.dumps(run_json[key])
    with store.store_engine(instance_dir).begin() as conn:
        kept = conn.execute(select(store.runs.c.status, store.runs.c.finished_at,
                                   store.runs.c.executed_by)
                            .where(store.runs.c.id == run_id)).first()
        if kept is not None:
            if kept.executed_by is None:
                return False  # the guard's own record, in a shared instance folder
            kept_done = conn.execute(select(store.run_steps.c.idx).where(
                store.run_steps.c.run_id == run_id,
                store.run_steps.c.status == SUCCEEDED)).all()
            if _rank(kept.status, len(kept_done), kept.finished_at) > \
                    _rank(values["status"], done, values["finished_at"]):
                return False
            conn.execute(update(store.runs).where(store.runs.c.id == run_id).values(**values))
        else:
            conn.execute(insert(store.runs).values(id=run_id, **values))
        conn.execute(store.run_steps.delete().where(store.run_steps.c.run_id == run_id))
        if steps:
            conn.execute(insert(store.run_steps), [
                {"run_id": run_id, "idx": i, "revision": s.get("revision") or "",
                 "direction": s.get("direction") or "", "status": s.get("status") or "planned",
                 "started_at": s.get("started_at"), "finished_at": s.get("finished_at")}
                for i, s in enumerate(steps, start=1)])
        # Log lines come as the newest 200: those newer than the last kept are added.
        last = conn.execute(select(func.max(store.run_logs.c.ts)).where(
            store.run_logs.c.run_id == run_id)).scalar()
        fresh = [entry for entry in run_json.get("logs") or []
                 if last is None or (entry.get("ts") or 0) > last]
        if fresh:
            conn.execute(insert(store.run_logs), [
                {"run_id": run_id, "ts": entry.get("ts") or time.time(),
                 "level": entry.get("level") or "INFO",
                 "message": str(entry.get("message") or "")[:4000]} for entry in fresh])
    return True


def pinned_backups(instance_dir: str) -> set[str]:
    """Backups an unfinished run needs: its pre-run backup (one per database), or the
    one it restores."""
    return {bid for run in unfinished_runs(instance_dir)
            for bid in (run.backup_id, run.restore_backup_id,
                        *(b.get("backup_id") for b in run.backups)) if bid}


def worker_pid(instance_dir: str, run_id: str) -> int | None:
    with store.store_engine(instance_dir).connect() as conn:
        return conn.execute(select(store.runs.c.pid).where(store.runs.c.id == run_id)).scalar()
