"""Rollouts on Celery: each target's run is a task that Celery workers carry out.

When a fleet outgrows one machine, its runs go to an engine operators already
run: with ``DASHBOARD_BROKER_URL`` (Redis), the dashboard sends each target's
run as a task (``CeleryExecutor``), and workers started with
``celery -A dashboard.fleet worker`` carry it out behind the same guard (lock,
verified backup, run, restore on failure, audit), on this machine or on others
that share the targets file and the backup location. A worker keeps the
guard's state (its run store, its lock files) in its own
``DASHBOARD_INSTANCE_DIR``; what the dashboard shows reaches it only through
the broker: the task reports its run as JSON in its state, and the executor
copies it into the dashboard's own store.

What a lost worker leaves: the run is bound to the task's process (it dies
with it, so the database rolls its transaction back or the guard's recovery
puts the backup back), the task comes back (``acks_late``), and a task that
was started once is never run again: the one that comes back settles what
the lost worker left and reports that instead. Target names travel in a task,
never URLs: a worker reads the targets file (and the variables holding the
passwords) itself.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass, replace

from celery import Celery, signals
from celery.exceptions import Ignore
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from dashboard.errors import ConfigurationError, DashboardError, Unavailable
from dashboard.lifeline import process_alive
from dashboard.redact import password_of, scrub_secrets, secrets_in_values
from dashboard.services import runs
from dashboard.services.executors import WAITING, RunRequest, TargetRun
from dashboard.settings import settings_from_environ

TASK_NAME = "dashboard.fleet.run_target"
PROGRESS = "PROGRESS"
KEY_PREFIX = "migration-dashboard:fleet:"
FOLLOW_SECONDS = 0.25  # how often the task reads its run's record
HEARTBEAT_SECONDS = 2.0  # how often a task says it is alive (and keeps its message)
HEARTBEAT_TTL = 10  # a task silent this long is taken as lost
MARKER_TTL = 7 * 24 * 3600  # how long "this task was started" is remembered
SETTLE_SECONDS = 600.0  # how long a task that came back waits for a recovery to end
# Kombu's Redis transport: delivered, unacknowledged messages (its ack emulation).
UNACKED_INDEX = "unacked_index"
# How often each worker looks for unacknowledged messages older than the visibility
# timeout (their worker was lost) and puts them back in their queue.
RESTORE_SWEEP_SECONDS = 5


BROKER_ERRORS = (OperationalError, RedisError, OSError, RuntimeError)


class FleetTaskFailed(Exception):
    """What a task says when it cannot carry out its target's run (scrubbed)."""


def celery_config(broker_url: str | None, queue: str, visibility_timeout: int) -> dict:
    """The Celery settings the dashboard and its workers share."""
    return {
        "broker_url": broker_url, "result_backend": broker_url,
        "task_default_queue": queue, "task_serializer": "json",
        "result_serializer": "json", "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A task is acknowledged when it has ended, and put back when its worker is
        # lost: a run never vanishes with a worker.
        "task_acks_late": True, "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1, "task_track_started": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": RESTORE_SWEEP_SECONDS,
            "unacked_restore_throttle": 1,
        },
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def make_celery(settings: dict) -> Celery:
    """A Celery app for ``settings`` (the dashboard's, or a worker's own)."""
    celery = Celery("dashboard.fleet", set_as_current=False)
    celery.conf.update(celery_config(
        settings.get("DASHBOARD_BROKER_URL") or None,
        str(settings.get("DASHBOARD_FLEET_QUEUE") or "migration-dashboard"),
        int(settings.get("DASHBOARD_FLEET_VISIBILITY_TIMEOUT") or 60)))
    return celery


# The workers' app: `celery -A dashboard.fleet worker`, configured from their environment.
app = make_celery(settings_from_environ())


@signals.worker_init.connect
def _broker_required(**_) -> None:
    if not settings_from_environ().get("DASHBOARD_BROKER_URL"):
        # SystemExit: Celery logs and ignores what else a signal handler raises.
        raise SystemExit("DASHBOARD_BROKER_URL is not set: a fleet worker needs the broker "
                         "the dashboard sends its runs to (redis://...).")


@signals.worker_process_init.connect
def _pool_child_dies_with_its_worker(**_) -> None:
    """A pool child (and the run it carries out) dies with the worker's main process:
    a killed worker leaves nothing running unattended."""
    from dashboard.lifeline import die_with_parent

    die_with_parent()


# ------------------------------------------------------------------ the worker's side


@dataclass(frozen=True)
class Marker:
    """What Redis remembers of a task once it started: who carries it out, where its
    run's record is."""

    worker: str
    host: str
    pid: int  # the pool process carrying the task out
    instance_dir: str
    run_id: str | None = None
    done: bool = False
    refusal: str | None = None  # why it ended without a run (said again if it comes back)

    def dumps(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def loads(cls, raw) -> Marker:
        return cls(**json.loads(raw))


def _redis(broker_url: str):
    import redis

    return redis.Redis.from_url(broker_url)


@app.task(name=TASK_NAME, bind=True)
def run_target(self, rollout_id: str, target_name: str, action: str, destination: str,
               user: str) -> dict:
    """Carry out one target's run behind the guard, and report it (``{"run": the run's
    JSON, "worker": this worker}``, in the PROGRESS state's meta as it goes and as the
    result). Never twice: a task that comes back after its worker was lost settles the
    run that worker left instead."""
    from dashboard.core import Registry

    try:
        target = Registry(settings_from_environ()).get(target_name)
    except DashboardError as exc:
        raise FleetTaskFailed(f"This worker ({self.request.hostname}) cannot carry out a "
                              f"run on target '{target_name}': {exc.message}") from None
    client = _redis(str(app.conf.broker_url))
    key = KEY_PREFIX + self.request.id
    me = Marker(worker=self.request.hostname or "?", host=socket.gethostname(),
                pid=os.getpid(), instance_dir=target.instance_dir)
    secrets = _secrets_of(target)
    if not client.set(key, me.dumps(), nx=True, ex=MARKER_TTL):
        # Waiting for the first one, or settling what it left, may take long too.
        with Heartbeat(client, key, self.request, alive=False):
            return _came_back(self, client, key, target, secrets)
    with Heartbeat(client, key, self.request):
        try:
            project, history, status = target.read_state()
            run = _start(target, project, history, status, action, destination, user)
        except Exception as exc:  # refused (a held lock, a bad destination), or broken
            why = exc.message if isinstance(exc, DashboardError) else \
                f"The run could not start: {type(exc).__name__}: {exc}"
            raise _refused(client, key, me, scrub_secrets(why, secrets)) from None
        me = _keep(client, key, replace(me, run_id=run.id))
        run = _follow(self, target, run.id)
        _keep(client, key, replace(me, done=True))
    return _report(run, self.request.hostname)


def _start(target, project, history, status, action, destination, user) -> runs.RunRecord:
    from dashboard.services import guard

    return guard.start_action(target.pinned(project), history, status.state, action,
                              destination, user, bound=True)


def _follow(task, target, run_id: str) -> runs.RunRecord:
    """Report the run whenever it changes, until it ends. Its runner is bound to this
    process; should it die anyway, the guard's recovery settles the run."""
    seen, looks = None, 0
    while True:
        run = runs.get_run(target.instance_dir, run_id)
        looks += 1
        if run is not None and not run.finished and looks % 8 == 0:
            target.reap_interrupted_runs()  # nothing while its runner holds the lock
            run = runs.get_run(target.instance_dir, run_id)
        if run is None:
            raise FleetTaskFailed(f"Run {run_id} vanished from {target.instance_dir}.")
        now = (run.status, tuple(s.status for s in run.steps), len(run.logs))
        if run.finished:
            return run
        if now != seen:
            task.update_state(state=PROGRESS, meta=_report(run, task.request.hostname))
            seen = now
        time.sleep(FOLLOW_SECONDS)


def _report(run: runs.RunRecord, worker: str | None, error: str | None = None) -> dict:
    body = run.as_json()
    if run.finished:  # the schema before and after, for the run page's diff
        body["schema_before"], body["schema_after"] = run.schema_before, run.schema_after
    report = {"run": body, "worker": worker}
    if error:
        report["error"] = error
    return report


def _came_back(task, client, key: str, target, secrets) -> dict:
    """This task was started before, by a worker that was lost (or that still runs
    it: Redis handed the message out again). The action is never run again."""
    lost = Marker.loads(client.get(key))
    while not lost.done and client.exists(key + ":alive") and not _gone(lost):
        time.sleep(HEARTBEAT_SECONDS)  # the first worker still runs it: it reports
        lost = Marker.loads(client.get(key))
    if lost.done and lost.refusal:
        raise FleetTaskFailed(lost.refusal)  # as it said (its state may be overwritten)
    if lost.done:
        raise Ignore()  # it ended and reported: nothing to add (a success is kept)
    said = (f"The Celery worker {lost.worker} carrying out this run was lost (killed or "
            "stopped) before it ended; the task came back and was not run again.")
    here = lost.host == socket.gethostname() and \
        os.path.realpath(lost.instance_dir) == os.path.realpath(target.instance_dir)
    if not here:
        where = f"run {lost.run_id}" if lost.run_id else "its run (if it had started)"
        raise _refused(client, key, lost, scrub_secrets(
            f"{said} {where} is recorded on {lost.host} in {lost.instance_dir}, where this "
            f"worker ({task.request.hostname}) cannot settle it: check the database of "
            f"target '{target.name}' (its revision) there; the next run on that machine "
            "settles the record with the guard's recovery.", secrets))
    deadline = time.monotonic() + SETTLE_SECONDS
    run = None
    while time.monotonic() < deadline:
        target.reap_interrupted_runs()
        run = runs.get_run(target.instance_dir, lost.run_id) if lost.run_id else None
        if run is None or run.finished:
            break
        time.sleep(FOLLOW_SECONDS)
    if run is None:
        raise _refused(client, key, lost, f"{said} It was lost before its run was "
                       f"recorded; any run it had started on target '{target.name}' was "
                       "settled by the guard's recovery.")
    if not run.finished:
        raise _refused(client, key, lost, f"{said} Its run {run.id} is still being settled "
                       f"by the guard's recovery on {lost.host}: see its record in "
                       f"{lost.instance_dir}.")
    _keep(client, key, replace(lost, done=True))
    runs.add_log(target.instance_dir, run.id, "WARNING",
                 f"{said} This worker ({task.request.hostname}) settled the run with the "
                 "guard's recovery.")
    run = runs.get_run(target.instance_dir, run.id)
    return _report(run, task.request.hostname, error=f"{said} {run.error or ''}".strip())


def _keep(client, key: str, marker: Marker) -> Marker:
    client.set(key, marker.dumps(), ex=MARKER_TTL)
    return marker


def _refused(client, key: str, marker: Marker, why: str) -> FleetTaskFailed:
    """The task's last word when it ends without a run to report, remembered."""
    _keep(client, key, replace(marker, done=True, refusal=why))
    return FleetTaskFailed(why)


def _gone(marker: Marker) -> bool:
    """Whether the process that started the task is known to be dead (on this machine:
    without waiting for its heartbeat to expire)."""
    return marker.host == socket.gethostname() and not process_alive(marker.pid)


class Heartbeat:
    """While a task works: its message kept from being handed out again (its place in
    the transport's unacknowledged index renewed: the visibility timeout is a lease),
    and, for the task carrying out the run (``alive``), a key that says so and expires
    unless renewed."""

    def __init__(self, client, key: str, request, alive: bool = True):
        self.client, self.key = client, key + ":alive" if alive else None
        self.tag = (getattr(request, "properties", None) or {}).get("delivery_tag")
        prefix = (app.conf.broker_transport_options or {}).get("global_keyprefix", "")
        self.index = prefix + UNACKED_INDEX
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="fleet-heartbeat",
                                       daemon=True)

    def __enter__(self) -> Heartbeat:
        self._touch()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if self.key:
            self.client.delete(self.key)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self._touch()
            except Exception:
                continue  # Redis away a moment: the next beat tries again

    def _touch(self) -> None:
        if self.key:
            self.client.set(self.key, "1", ex=HEARTBEAT_TTL)
        if self.tag:
            self.client.zadd(self.index, {self.tag: time.time()}, xx=True)


def _secrets_of(target) -> set[str]:
    found = secrets_in_values(target.env.values())
    found.add(password_of(target.settings.get("DASHBOARD_DATABASE_URL")))
    found.discard(None)
    return found


# ------------------------------------------------------------------ the dashboard's side


class CeleryExecutor:
    """Each target's run as a Celery task (``run_target``) on the configured queue;
    its reports come back through the result backend and are copied into the
    dashboard's own store for that target."""

    name = "celery"
    on_change = None  # its runs change on other machines: the conductor polls them

    def __init__(self, settings: dict):
        if not settings.get("DASHBOARD_BROKER_URL"):
            raise ConfigurationError("DASHBOARD_BROKER_URL is not set: the Celery executor "
                                     "needs a broker (redis://...).")
        self.celery = make_celery(settings)
        # A broker that is away is said at once (503), not after 20 s of reconnecting.
        self.celery.conf.result_backend_transport_options = {"retry_policy": {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}}
        self.queue = str(self.celery.conf.task_default_queue)
        self._copied: dict[str, str] = {}  # handle -> the report last copied
        self._client = None  # Redis, to read a task's marker

    def start(self, target, request: RunRequest) -> str:
        task_id = f"{request.rollout_id}:{target.name}"
        try:
            self.celery.send_task(TASK_NAME, task_id=task_id, queue=self.queue,
                                  args=(request.rollout_id, target.name, request.action,
                                        request.destination, request.user))
        except BROKER_ERRORS as exc:  # said without the URL: it may hold a password
            raise Unavailable(f"The run could not be sent to the Celery broker: "
                              f"{self._why(exc)}") from None
        return task_id

    def _why(self, exc: BaseException) -> str:
        """What went wrong talking to the broker, never its URL's password."""
        cause = exc
        for _ in range(10):  # the first error of the chain (a chain may loop)
            if (cause.__cause__ or cause.__context__) is None:
                break
            cause = cause.__cause__ or cause.__context__
        url = str(self.celery.conf.broker_url or "")
        text = scrub_secrets(f"{type(cause).__name__}: {cause}", {password_of(url)} - {None})
        return text.replace(url, "<broker URL>") if url else text

    def poll(self, target, handle: str) -> TargetRun:
        result = AsyncResult(handle, app=self.celery)
        try:
            state, info = result.state, result.info
        except BROKER_ERRORS as exc:
            raise Unavailable(f"The Celery result backend cannot be read: "
                              f"{self._why(exc)}") from None
        if state == "FAILURE":
            message = str(info) if isinstance(info, Exception) else repr(info)
            if type(info).__name__ == "WorkerLostError":
                message = f"The Celery worker carrying out this run was lost: {message}"
            return self._failed(target, handle, scrub_secrets(message, _secrets_of(target)))
        if state == "REVOKED":
            return TargetRun(runs.FAILED, None, None, "The task was revoked in Celery.")
        if state not in (PROGRESS, "SUCCESS") or not isinstance(info, dict) or \
                not isinstance(info.get("run"), dict):
            return TargetRun(WAITING)
        run_json = info["run"]
        report = json.dumps(info, sort_keys=True, default=str)
        if self._copied.get(handle) != report:  # only what changed is written
            runs.upsert_run_json(target.instance_dir, run_json,
                                 executed_by=str(info.get("worker") or "a Celery worker"))
            self._copied[handle] = report
        run = runs.get_run(target.instance_dir, str(run_json["id"]))
        status = str(run_json["status"])
        if state == "SUCCESS" and status not in runs.FINISHED:
            status = runs.FAILED  # ended without its run ending: never a success
        return TargetRun(status, str(run_json["id"]), run,
                         info.get("error") or run_json.get("error"))

    def _failed(self, target, handle: str, message: str) -> TargetRun:
        """A task that ended without a final run: a copy of its run kept here earlier
        (its worker was lost elsewhere) ends too, saying why, rather than show
        "running" for ever."""
        try:
            if self._client is None:
                self._client = _redis(str(self.celery.conf.broker_url))
            raw = self._client.get(KEY_PREFIX + handle)
            run_id = Marker.loads(raw).run_id if raw else None
        except (*BROKER_ERRORS, TypeError, ValueError):
            run_id = None
        kept = runs.get_run(target.instance_dir, run_id) if run_id else None
        if kept is None:
            return TargetRun(runs.FAILED, None, None, message)
        if kept.executed_by and not kept.finished:
            runs.update_run(target.instance_dir, kept.id, status=runs.FAILED,
                            finished_at=time.time(), error=message)
            kept = runs.get_run(target.instance_dir, kept.id)
        return TargetRun(runs.FAILED, kept.id, kept, message)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.celery.close()
