"""Rollouts: one action over many targets, canary first, a bounded number at once.

Tenants with a database each, or one schema in many environments, are upgraded
by a loop over targets; this is that loop made safe and visible. A rollout
selects targets by label or by name, skips those already at the destination,
runs ``canary`` targets first and waits for them, then the rest with at most
``parallel`` at once, and on a failure halts (default) or continues. Each
target's run goes through the guard like any single run (lock, verified
backup, run, restore on failure, audit), started and polled by an executor
(services/executors.py).

The decisions are one pure function, ``next_moves``, over the rows' statuses;
``conduct`` is the loop around it that the conductor process
(``dashboard.conductor``) runs. Rollouts live in the root instance folder's
store: the conductor copies each run's status into its row, so a page reads a
rollout in two queries whatever the number of targets.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select, update

from dashboard.errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    DashboardError,
    Forbidden,
    NotFound,
)
from dashboard.services import audit, runs, store
from dashboard.services.executors import WAITING, Executor, RunRequest, TargetRun
from dashboard.services.locking import LockHeld
from dashboard.services.planning import ACTIONS, check_destination

if TYPE_CHECKING:
    from dashboard.core import Registry

# Rollout statuses.
RUNNING = "running"
SUCCEEDED = "succeeded"
HALTED = "halted"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (RUNNING, SUCCEEDED, HALTED, FAILED, CANCELLED)

# Target row statuses besides the run's own (runs.QUEUED ... runs.CANCELLED) and WAITING.
PENDING = "pending"
SKIPPED = "skipped"
NOT_STARTED = "not_started"
IN_FLIGHT = (WAITING, runs.QUEUED, runs.BACKING_UP, runs.RUNNING, runs.RESTORING)
ROW_FAILED = (runs.FAILED, runs.RESTORED, runs.CANCELLED)
ROW_STATUSES = (PENDING, SKIPPED, *IN_FLIGHT, runs.SUCCEEDED, *ROW_FAILED, NOT_STARTED)

HALT, CONTINUE = "halt", "continue"
ON_ERROR = (HALT, CONTINUE)
DEFAULT_CANARY = 1
DEFAULT_PARALLEL = 4
MAX_PARALLEL = 64
POLL_SECONDS = 0.3
LOCKED = "Locked"  # how a row's error starts when another action held its database
LOCK_FOLDER = "rollouts"  # in the root instance folder: one conductor lock per rollout


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class RolloutTarget:
    """One target's row of a rollout."""

    position: int
    name: str
    status: str
    canary: bool = False
    run_id: str | None = None
    handle: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    from_revs: tuple[str, ...] = ()
    to_revs: tuple[str, ...] = ()
    error: str | None = None

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT

    def as_json(self, run_url: str | None = None) -> dict:
        return {"name": self.name, "position": self.position, "status": self.status,
                "canary": self.canary, "run": run_url, "run_id": self.run_id,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "from": list(self.from_revs), "to": list(self.to_revs), "error": self.error}


@dataclass(frozen=True)
class Rollout:
    id: str
    status: str
    action: str
    destination: str
    label: str | None
    canary: int
    parallel: int
    on_error: str
    executor: str
    user: str
    created_at: float
    finished_at: float | None = None
    cancel_requested: bool = False
    error: str | None = None
    targets: tuple[RolloutTarget, ...] = ()

    @property
    def finished(self) -> bool:
        return self.status != RUNNING

    @property
    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.targets:
            found[row.status] = found.get(row.status, 0) + 1
        return found

    def as_json(self, run_url=lambda row: None) -> dict:
        return {"id": self.id, "status": self.status, "action": self.action,
                "destination": self.destination, "label": self.label, "canary": self.canary,
                "parallel": self.parallel, "on_error": self.on_error,
                "executor": self.executor, "user": self.user, "created_at": self.created_at,
                "finished_at": self.finished_at, "cancel_requested": self.cancel_requested,
                "error": self.error, "counts": self.counts,
                "targets": [row.as_json(run_url(row)) for row in self.targets]}


@dataclass(frozen=True)
class RolloutPlan:
    """A rollout request, checked: which targets, in the targets file's order, and how."""

    names: tuple[str, ...]
    action: str
    destination: str
    canary: int = DEFAULT_CANARY
    parallel: int = DEFAULT_PARALLEL
    on_error: str = HALT
    label: str | None = None


# ------------------------------------------------------------------ the plan


def plan_rollout(registry: Registry, *, label=None, names=None, action="upgrade",
                 destination="heads", canary=DEFAULT_CANARY, parallel=DEFAULT_PARALLEL,
                 on_error=HALT) -> RolloutPlan:
    """Check a rollout request against the registry: a 400 naming what is wrong, a 403
    naming read-only targets, a 503 naming targets whose configuration is broken."""
    if (label is None) == (names is None):
        raise BadRequest('Name the targets by "label" or by "targets" (a list of names), '
                         "one of the two.")
    if label is not None:
        if not isinstance(label, str) or not label.strip():
            raise BadRequest('"label" must be a label name.')
        label = label.strip()
        chosen = [t.name for t in registry.targets.values() if label in t.labels]
        if not chosen:
            known = sorted({lb for t in registry.targets.values() for lb in t.labels})
            raise BadRequest(f"No target carries the label '{label}'. Labels: "
                             f"{', '.join(known) or 'none (add labels = [...] to targets)'}.")
    else:
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(n, str) for n in names)):
            raise BadRequest('"targets" must be a non-empty list of target names.')
        unknown = [n for n in names if n not in registry.targets]
        if unknown:
            raise BadRequest(f"No target named {', '.join(repr(n) for n in unknown)}. "
                             f"Known: {', '.join(registry.targets)}.")
        wanted = set(names)
        chosen = [name for name in registry.targets if name in wanted]  # the file's order
    if not isinstance(action, str) or action not in ACTIONS:
        raise BadRequest(f"Unknown action '{action}': use upgrade, downgrade or stamp.")
    if not isinstance(destination, str):
        raise BadRequest('"target" (the destination revision) must be a string.')
    destination = check_destination(destination)
    canary = _whole("canary", canary, least=0)
    parallel = _whole("parallel", parallel, least=1, most=MAX_PARALLEL)
    if on_error not in ON_ERROR:
        raise BadRequest(f'"on_error" must be "halt" or "continue", not {on_error!r}.')
    read_only = [n for n in chosen if registry.targets[n].read_only]
    if read_only:
        raise Forbidden(f"Read-only targets cannot take part in a rollout: "
                        f"{', '.join(read_only)}.")
    broken = [n for n in chosen if n in registry.errors]
    if broken:
        raise ConfigurationError("Targets whose configuration is broken cannot take part: "
                                 + "; ".join(f"{n}: {registry.errors[n]}" for n in broken))
    return RolloutPlan(tuple(chosen), action, destination, canary, parallel, on_error, label)


def _whole(name: str, value, least: int, most: int | None = None) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (
            most is not None and value > most):
        upto = f" and at most {most}" if most is not None else ""
        raise BadRequest(f'"{name}" must be a whole number of at least {least}{upto}.')
    return value


def confirm_risk(registry: Registry, plan: RolloutPlan, confirmed: bool) -> None:
    """A risky upgrade (an `error` finding: data loss) needs ``confirmed``, as a single
    run does: checked once per distinct project, on its first target with something to
    apply. Raises ``findings.RiskNotConfirmed``."""
    from dashboard.services import findings
    from dashboard.services.planning import plan_for_status

    if confirmed or plan.action != "upgrade":
        return
    checked: set[str] = set()
    for name in plan.names:
        target = registry.targets[name]
        ini = os.path.abspath(str(target.settings["DASHBOARD_ALEMBIC_INI"]))
        if ini in checked:
            continue
        try:
            project, history, status = target.read_state()
            plan_for_status(history, status, "upgrade", plan.destination)
        except DashboardError:
            continue  # nothing to apply here, or unreadable: its turn says why
        checked.add(ini)
        findings.confirm_upgrade(target, project, history, status, plan.destination, False)


# ------------------------------------------------------------------ store


def new_rollout_id() -> str:
    return "r" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def create_rollout(root: str, plan: RolloutPlan, executor: str, user: str) -> str:
    """Record a rollout and its rows (all pending); a 409 naming the running rollout
    whose targets overlap. The check and the insert hold one lock."""
    rollout_id = new_rollout_id()
    with _creation_lock(root):
        engine = store.store_engine(root)
        with engine.begin() as conn:
            busy = conn.execute(
                select(store.rollout_targets.c.rollout_id, store.rollout_targets.c.name)
                .join(store.rollouts, store.rollouts.c.id == store.rollout_targets.c.rollout_id)
                .where(store.rollouts.c.status == RUNNING,
                       store.rollout_targets.c.name.in_(plan.names))).all()
            if busy:
                others = sorted({row[0] for row in busy})
                raise Conflict(f"Rollout {', '.join(others)} is running on "
                               f"{', '.join(sorted({row[1] for row in busy}))}: wait for it to "
                               "finish, or cancel it.")
            conn.execute(insert(store.rollouts).values(
                id=rollout_id, status=RUNNING, action=plan.action,
                destination=plan.destination, label=plan.label, canary=plan.canary,
                parallel=plan.parallel, on_error=plan.on_error, executor=executor, user=user,
                created_at=time.time(), cancel_requested=False))
            conn.execute(insert(store.rollout_targets), [
                {"rollout_id": rollout_id, "position": i, "name": name, "status": PENDING,
                 "canary": False, "from_revs": "[]", "to_revs": "[]"}
                for i, name in enumerate(plan.names, start=1)])
    return rollout_id


@contextmanager
def _creation_lock(root: str):
    """One rollout recorded at a time, so two cannot both find no overlap."""
    fd = _open_lock_file(os.path.join(root, LOCK_FOLDER, "create.lock"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_lock_file(path: str) -> int:
    """A descriptor of the lock file at ``path`` (made with its folder if need be); a
    folder that cannot be written is said as the store says it (503/507)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise store.storage_error(exc, path) from exc


def get_rollout(root: str, rollout_id: str) -> Rollout:
    """A rollout and all its rows: two queries. A 404 when there is none."""
    engine = store.store_engine(root)
    with engine.connect() as conn:
        row = conn.execute(select(store.rollouts).where(
            store.rollouts.c.id == rollout_id)).mappings().first()
        if row is None:
            raise NotFound(f"No rollout '{rollout_id}'.")
        rows = conn.execute(select(store.rollout_targets).where(
            store.rollout_targets.c.rollout_id == rollout_id).order_by(
            store.rollout_targets.c.position)).mappings().all()
    return _rollout(row, rows)


def _rollout(row, rows=()) -> Rollout:
    return Rollout(
        id=row["id"], status=row["status"], action=row["action"],
        destination=row["destination"], label=row["label"], canary=row["canary"],
        parallel=row["parallel"], on_error=row["on_error"], executor=row["executor"],
        user=row["user"], created_at=row["created_at"], finished_at=row["finished_at"],
        cancel_requested=bool(row["cancel_requested"]), error=row["error"],
        targets=tuple(RolloutTarget(
            position=r["position"], name=r["name"], status=r["status"], canary=bool(r["canary"]),
            run_id=r["run_id"], handle=r["handle"], started_at=r["started_at"],
            finished_at=r["finished_at"], from_revs=tuple(store.loads(r["from_revs"])),
            to_revs=tuple(store.loads(r["to_revs"])), error=r["error"]) for r in rows))


def find_rollouts(root: str, where: dict, page: int, per_page: int) -> store.Page:
    """One page of rollouts, newest first (without their rows), and per-status counts
    of every rollout's rows on the page in one more query."""
    found = store.paged(root, store.rollouts, (store.rollouts.c.created_at.desc(),), where,
                        page, per_page, lambda row: row._mapping)
    ids = [row["id"] for row in found.items]
    counts: dict[str, dict[str, int]] = {i: {} for i in ids}
    if ids:
        with store.store_engine(root).connect() as conn:
            for rollout_id, status, n in conn.execute(
                    select(store.rollout_targets.c.rollout_id, store.rollout_targets.c.status,
                           func.count()).where(store.rollout_targets.c.rollout_id.in_(ids))
                    .group_by(store.rollout_targets.c.rollout_id,
                              store.rollout_targets.c.status)):
                counts[rollout_id][status] = n
    items = [(_rollout(row), counts[row["id"]]) for row in found.items]
    return store.Page(items, found.total, found.page, found.per_page)


def running_rollout_ids(root: str) -> list[str]:
    with store.store_engine(root).connect() as conn:
        return list(conn.execute(select(store.rollouts.c.id).where(
            store.rollouts.c.status == RUNNING)).scalars())


def mark_conducted(root: str, rollout_id: str, pid: int) -> None:
    """Which process conducts the rollout now (shown, and for tests to stop it)."""
    with store.store_engine(root).begin() as conn:
        conn.execute(update(store.rollouts).where(store.rollouts.c.id == rollout_id)
                     .values(conductor_pid=pid))


def _update_row(root: str, rollout_id: str, position: int, *, only_if: tuple = (),
                **values) -> bool:
    """Change one row; with ``only_if``, only while its status is one of those (a row
    is claimed this way, so a Cancel between the decision and the start wins)."""
    for key in ("from_revs", "to_revs"):
        if key in values:
            values[key] = store.dumps(values[key])
    conditions = [store.rollout_targets.c.rollout_id == rollout_id,
                  store.rollout_targets.c.position == position]
    if only_if:
        conditions.append(store.rollout_targets.c.status.in_(only_if))
    with store.store_engine(root).begin() as conn:
        return conn.execute(update(store.rollout_targets).where(*conditions)
                            .values(**values)).rowcount > 0


# ------------------------------------------------------------------ deciding


@dataclass(frozen=True)
class Moves:
    """What the conductor does next: rows to try to start (each to be skipped if it is
    at the destination already), whether they are canaries, rows that will not start,
    and the rollout's final status once nothing runs."""

    start: tuple[int, ...] = ()
    as_canary: bool = False
    give_up: tuple[int, ...] = ()
    final: str | None = None


def next_moves(rows, canary: int, parallel: int, on_error: str, cancelled: bool) -> Moves:
    """The scheduling decision, pure: ``rows`` in order, each with ``position``,
    ``status`` and ``canary``.

    Canaries are the first ``canary`` rows started (skipped rows are not counted);
    the others start only once every canary succeeded. A canary failure halts
    whatever ``on_error``; another failure halts under "halt". Halted or cancelled:
    nothing new starts, the pending rows will not start, running ones finish."""
    pending = [r.position for r in rows if r.status == PENDING]
    in_flight = [r for r in rows if r.status in IN_FLIGHT]
    failed = [r for r in rows if r.status in ROW_FAILED]
    canaries = [r for r in rows if r.canary]
    canary_failed = any(r.canary for r in failed)
    halted = canary_failed or (bool(failed) and on_error == HALT)
    if cancelled or halted:
        if in_flight:
            return Moves(give_up=tuple(pending))
        return Moves(give_up=tuple(pending), final=CANCELLED if cancelled else HALTED)
    if not pending:
        if in_flight:
            return Moves()
        done = all(r.status in (runs.SUCCEEDED, SKIPPED) for r in rows)
        return Moves(final=SUCCEEDED if done else FAILED)
    free = parallel - len(in_flight)
    if free <= 0:
        return Moves()
    if len(canaries) < canary:
        return Moves(start=tuple(pending[:min(free, canary - len(canaries))]), as_canary=True)
    if any(r.status != runs.SUCCEEDED for r in canaries):
        return Moves()  # a canary is still running
    return Moves(start=tuple(pending[:free]))


# ------------------------------------------------------------------ conducting


def conduct(registry: Registry, root: str, rollout_id: str, executor: Executor,
            poll_seconds: float = POLL_SECONDS) -> Rollout:
    """Drive a rollout to its end: poll the runs under way, copy each one's status
    into its row, start what ``next_moves`` says. A start (reading the target's
    revision, then the executor's start, which waits for the run's lock) happens in
    a thread of its own, so ``parallel`` targets start at once, not one after the
    other. Resumable: a conductor started on a rollout a dead one left goes on from
    its rows (a run under way is polled by its handle, never started again)."""
    from concurrent.futures import ThreadPoolExecutor

    rollout = get_rollout(root, rollout_id)
    wake = threading.Event()
    executor.on_change = wake.set
    starting: set[int] = set()
    with ThreadPoolExecutor(max_workers=rollout.parallel,
                            thread_name_prefix=f"start-{rollout_id}") as pool:

        def started(position: int, future) -> None:
            starting.discard(position)
            wake.set()

        while True:
            wake.clear()
            busy = set(starting)  # before reading: a start that ended since has written
            rollout = get_rollout(root, rollout_id)
            if rollout.finished:
                return rollout
            for row in rollout.targets:
                if not row.in_flight or row.position in busy:
                    continue
                if row.handle:
                    _copy_run(registry, root, rollout.id, row, executor)
                else:
                    # Claimed by a conductor that died (or a start that could not record
                    # itself) before the run's handle was kept: its turn comes again. Had
                    # the run started, the guard's lock refuses a second one, or the
                    # target is at the destination by then and is skipped.
                    _update_row(root, rollout_id, row.position, status=PENDING,
                                canary=False, started_at=None)
            rollout = get_rollout(root, rollout_id)
            moves = next_moves(rollout.targets, rollout.canary, rollout.parallel,
                               rollout.on_error, rollout.cancel_requested)
            for position in moves.give_up:
                _update_row(root, rollout_id, position, only_if=(PENDING,), status=NOT_STARTED)
            if moves.final is not None and not starting:
                return _finish(root, rollout_id, moves.final)
            for position in moves.start:
                # Claimed here, before the thread runs: the next decision counts it.
                if _update_row(root, rollout_id, position, only_if=(PENDING,), status=WAITING,
                               canary=moves.as_canary, started_at=time.time()):
                    starting.add(position)
                    future = pool.submit(_start_row, registry, root, rollout, position,
                                         executor)
                    future.add_done_callback(lambda f, p=position: started(p, f))
            wake.wait(poll_seconds)


def _copy_run(registry: Registry, root: str, rollout_id: str, row: RolloutTarget,
              executor: Executor) -> None:
    """The run's status (and revisions, error, end) into its row, when it changed."""
    try:
        found = executor.poll(registry.get(row.name), row.handle)
    except DashboardError as exc:
        found = TargetRun(runs.FAILED, row.run_id, None, exc.message)
    values: dict = {"status": found.status, "run_id": found.run_id or row.run_id}
    if found.run is not None:
        values["from_revs"] = tuple(found.run.from_revs)
        values["to_revs"] = tuple(found.run.to_revs)
    if found.error:
        values["error"] = found.error
    if found.finished:
        values["finished_at"] = (found.run.finished_at if found.run and found.run.finished_at
                                 else row.finished_at or time.time())
    if any(getattr(row, key) != value for key, value in values.items()):
        _update_row(root, rollout_id, row.position, **values)


def _start_row(registry: Registry, root: str, rollout: Rollout, position: int,
               executor: Executor) -> None:
    """Start one claimed row's run, or skip it (already at the destination), or say why
    it could not start."""
    from dashboard.services.planning import NothingToDo, plan_for_status, resulting_revisions

    row = next(r for r in rollout.targets if r.position == position)
    try:
        target = registry.get(row.name)
        target.check_writable()
        project, history, status = target.read_state()
        try:
            plan = plan_for_status(history, status, rollout.action, rollout.destination)
        except NothingToDo:
            plan = None
        if plan is None or (plan.action == "stamp"
                            and set(resulting_revisions(history, plan)) == set(status.current)):
            _update_row(root, rollout.id, position, status=SKIPPED, canary=False,
                        started_at=None, finished_at=time.time(), from_revs=status.current,
                        to_revs=status.current)
            return
        handle = executor.start(target.pinned(project), RunRequest(
            rollout.id, rollout.action, rollout.destination, rollout.user))
    except DashboardError as exc:
        why = LOCKED if isinstance(exc, LockHeld) else "Could not start"
        _update_row(root, rollout.id, position, status=runs.FAILED, finished_at=time.time(),
                    error=f"{why}: {exc.message}")
        return
    except Exception as exc:  # noqa: BLE001 - this target fails; the rollout goes on
        _update_row(root, rollout.id, position, status=runs.FAILED, finished_at=time.time(),
                    error=f"Could not start: {type(exc).__name__}.")
        return
    _update_row(root, rollout.id, position, handle=handle, from_revs=status.current)
    _copy_run(registry, root, rollout.id, _row(root, rollout.id, position), executor)


def _row(root: str, rollout_id: str, position: int) -> RolloutTarget:
    return next(r for r in get_rollout(root, rollout_id).targets if r.position == position)


def _finish(root: str, rollout_id: str, status: str, error: str | None = None) -> Rollout:
    with store.store_engine(root).begin() as conn:
        changed = conn.execute(update(store.rollouts).where(
            store.rollouts.c.id == rollout_id, store.rollouts.c.status == RUNNING).values(
            status=status, finished_at=time.time(), error=error)).rowcount
    rollout = get_rollout(root, rollout_id)
    if changed:
        record_event(root, rollout, _FINISHED_EVENTS[status](
            user=rollout.user, action=rollout.action, destination=rollout.destination,
            error=error, duration=(rollout.finished_at or time.time()) - rollout.created_at))
    return rollout


def fail_rollout(root: str, rollout_id: str, error: str) -> Rollout:
    """The conductor itself failed: nothing more starts; the rollout says why."""
    with store.store_engine(root).begin() as conn:
        conn.execute(update(store.rollout_targets).where(
            store.rollout_targets.c.rollout_id == rollout_id,
            store.rollout_targets.c.status == PENDING).values(status=NOT_STARTED))
    return _finish(root, rollout_id, FAILED, error)


def request_cancel(root: str, rollout_id: str, user: str) -> Rollout:
    """Cancel: what has not started does not start (at once, in the store); runs under
    way finish. A 409 when the rollout has finished."""
    rollout = get_rollout(root, rollout_id)
    if rollout.finished:
        raise Conflict(f"Rollout {rollout_id} has finished ({rollout.status}): nothing to "
                       "cancel.")
    with store.store_engine(root).begin() as conn:
        conn.execute(update(store.rollouts).where(store.rollouts.c.id == rollout_id)
                     .values(cancel_requested=True))
        conn.execute(update(store.rollout_targets).where(
            store.rollout_targets.c.rollout_id == rollout_id,
            store.rollout_targets.c.status == PENDING).values(status=NOT_STARTED))
    if not rollout.cancel_requested:
        record_event(root, rollout, audit.RolloutCancelled(
            user=user, action=rollout.action, destination=rollout.destination))
    return get_rollout(root, rollout_id)


# ------------------------------------------------------------------ liveness


def conductor_lock_path(root: str, rollout_id: str) -> str:
    return os.path.join(root, LOCK_FOLDER, f"{rollout_id}.lock")


def hold_conductor_lock(root: str, rollout_id: str) -> int | None:
    """The conductor's flock, held for its life (the kernel lets go when it dies); its
    descriptor, or None when another conductor holds it."""
    fd = _open_lock_file(conductor_lock_path(root, rollout_id))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def conductor_alive(root: str, rollout_id: str) -> bool:
    fd = hold_conductor_lock(root, rollout_id)
    if fd is None:
        return True
    os.close(fd)
    return False


def keep_conducted(settings: dict, rollout: Rollout, environ=None) -> bool:
    """A running rollout whose conductor died gets a new one (it resumes from the rows);
    whether one was started. Called at start-up and when a rollout is read."""
    from dashboard import conductor

    root = str(settings["DASHBOARD_INSTANCE_DIR"])
    if rollout.finished or conductor_alive(root, rollout.id):
        return False
    try:
        conductor.launch(settings, rollout.id, environ)
    except Conflict:
        return False  # another reader started one just now
    return True


def resume_orphans(settings: dict) -> list[str]:
    """At start-up: every running rollout without a live conductor gets one."""
    root = str(settings["DASHBOARD_INSTANCE_DIR"])
    resumed = []
    for rollout_id in running_rollout_ids(root):
        if keep_conducted(settings, get_rollout(root, rollout_id)):
            resumed.append(rollout_id)
    return resumed


def start_rollout(settings: dict, registry: Registry, plan: RolloutPlan, user: str,
                  environ=None) -> Rollout:
    """Record the rollout, audit it, and start its conductor (detached: it survives the
    web server and the command line). Returns once the conductor holds its lock."""
    from dashboard import conductor
    from dashboard.services.executors import executor_name

    root = str(settings["DASHBOARD_INSTANCE_DIR"])
    rollout_id = create_rollout(root, plan, executor_name(settings), user)
    rollout = get_rollout(root, rollout_id)
    record_event(root, rollout, audit.RolloutStarted(
        user=user, action=plan.action, destination=plan.destination))
    try:
        conductor.launch(settings, rollout_id, environ)
    except DashboardError as exc:
        fail_rollout(root, rollout_id, f"The conductor could not start: {exc.message}")
        raise
    return get_rollout(root, rollout_id)


def request_rollout(registry: Registry, *, label=None, names=None, action="upgrade",
                    destination="heads", canary=DEFAULT_CANARY, parallel=DEFAULT_PARALLEL,
                    on_error=HALT, confirmed: bool = False, user: str, environ=None) -> Rollout:
    """A rollout as asked by a person: checked, its risk confirmed, started."""
    plan = plan_rollout(registry, label=label, names=names, action=action,
                        destination=destination, canary=canary, parallel=parallel,
                        on_error=on_error)
    confirm_risk(registry, plan, confirmed)
    return start_rollout(registry.settings, registry, plan, user, environ)


def read_rollout(settings: dict, rollout_id: str, environ=None) -> Rollout:
    """A rollout as pages show it; one whose conductor died gets a new one first."""
    root = str(settings["DASHBOARD_INSTANCE_DIR"])
    rollout = get_rollout(root, rollout_id)
    if keep_conducted(settings, rollout, environ):
        rollout = get_rollout(root, rollout_id)
    return rollout


def read_rollout_with_events(settings: dict, rollout_id: str, environ=None
                             ) -> tuple[Rollout, list[audit.AuditEntry]]:
    """A rollout and its own audit entries (started, cancelled, its end), newest first:
    they live in the root store, which no target's audit page shows."""
    rollout = read_rollout(settings, rollout_id, environ)
    events = audit.find_entries(str(settings["DASHBOARD_INSTANCE_DIR"]),
                                {"run_id": rollout.id}, 1, 50).items
    return rollout, events


# ------------------------------------------------------------------ audit

_FINISHED_EVENTS = {SUCCEEDED: audit.RolloutSucceeded, HALTED: audit.RolloutHalted,
                    FAILED: audit.RolloutFailed, CANCELLED: audit.RolloutFinishedCancelled}


def record_event(root: str, rollout: Rollout, event: audit.AuditEvent) -> None:
    """One rollout event in the root store's audit log (each target's own run is audited
    in its own store by the guard); ``run_id`` holds the rollout's id."""
    names = [row.name for row in rollout.targets]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    audit.record(root, audit.AuditEntry(
        event=event.name, outcome=event.outcome,
        database=f"rollout of {len(names)} target(s): {shown}", user=event.user,
        action=event.action, target=event.destination, run_id=rollout.id,
        duration=event.duration, error=event.error))
