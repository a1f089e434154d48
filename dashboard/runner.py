"""The process that owns one run, from its lock to its final word.

A web request or the command line starts it and waits only for its first
line ("started", or why not: the lock is held, the destination is unknown);
from then on it runs by itself, in a session of its own. So killing the web
server, or the command line, never leaves a run without its supervisor: the
runner takes and checks the backup, lets the worker run, puts the database
back if a step fails, and records every outcome in the dashboard's store.

Started as ``python -m dashboard.runner``; the request (the target's
settings, which may hold a URL with a password) comes in an environment
variable, never on the command line.
"""

from __future__ import annotations

import json
import os
import selectors
import site
import subprocess
import sys
import threading
import time
from pathlib import Path

from dashboard.errors import DashboardError, Unavailable, error_named
from dashboard.settings import REPO_ROOT

REQUEST_ENV = "DASHBOARD_RUN_REQUEST"
HANDSHAKE_SECONDS = 300.0
POLL_SECONDS = 0.1


def launch(target, request: dict, wait: bool, get=None, bound: bool = False,
           on_exit=None, forkserver: Forkserver | None = None):
    """Start a runner for ``request`` on ``target``; return its run once it has
    started (or, with ``wait``, once it has finished). Raises what the runner
    refused with: a held lock, a bad destination, a read-only instance folder.

    ``get(instance_dir, id)`` reads what the runner records (a run, unless told:
    a rehearsal). ``bound``: the runner, and the worker it starts, die with this
    process instead of going on by themselves (a Celery task's run:
    dashboard/lifeline.py). ``on_exit()`` is called (in another thread) once the
    runner has exited: its run is settled then, as far as it could say.
    ``forkserver``: the runner is forked from it rather than started afresh (a
    caller that starts many: a rollout's conductor)."""
    from dashboard.services import runs

    get = get or runs.get_run

    payload = {"target": {"settings": json_safe(target.settings), "name": target.name,
                          "read_only": target.read_only, "backup_dir": target.backup_folder,
                          "lock_dir": target.lock_dir, "env": target.env},
               **request, "bound": bound}
    if forkserver is not None and not bound:
        started = forkserver.start(json.dumps(payload))
    else:
        started = start_process("dashboard.runner", REQUEST_ENV, payload, what="The run",
                                bound=bound)
    # Reap it whenever it ends, so no zombie is left in a long-lived server.
    threading.Thread(target=reap, args=(started, on_exit), name="runner-reaper",
                     daemon=True).start()
    answer = handshake(started)
    if not answer.get("ok"):
        error = answer.get("error") or {}
        raise error_named(error.get("kind", ""), error.get("message", "The run did not start."),
                          error.get("detail"))
    run_id = answer["run_id"]
    if not wait:
        return get(target.instance_dir, run_id)
    while True:
        run = get(target.instance_dir, run_id)
        if run is None or run.finished:
            return run
        if started.exited():  # it died without its final word
            target.reap_interrupted_runs()
            run = get(target.instance_dir, run_id)
            if run is None or run.finished:
                return run
        time.sleep(POLL_SECONDS)


class _Runner:
    """A started runner process: its handshake to read, its end to wait for."""

    def __init__(self, pid: int | None, handshake_fd: int, wait_for_end, close_handshake):
        self.pid = pid
        self.handshake_fd = handshake_fd
        self._wait_for_end = wait_for_end
        self.close_handshake = close_handshake
        self._ended = threading.Event()
        self.status: int | None = None

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status, once it has exited (only the reaper thread calls it
        without a timeout: the others wait for the reaper)."""
        if timeout is None:
            self.status = self._wait_for_end()
            self._ended.set()
        else:
            self._ended.wait(timeout)
        return self.status

    def exited(self) -> bool:
        return self._ended.is_set()


def start_process(module: str, request_env: str, payload: dict, *, what: str,
                  bound: bool = False, environ=None) -> _Runner:
    """``python -m <module>`` with ``payload`` in the variable ``request_env`` (never
    on its command line: it may hold a password), answering on its standard output;
    in a session of its own, or ``bound`` to this process. A runner, or a rollout's
    conductor (``what`` names it in the error)."""
    env = dict(os.environ if environ is None else environ)
    env[request_env] = json.dumps(payload)
    if not _installed():  # a checkout: `-m dashboard....` needs its root, from any folder
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if bound:
        from dashboard.lifeline import bound_to_this_process

        detach = {"preexec_fn": bound_to_this_process()}
    else:
        detach = {"start_new_session": True}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, **detach)
    except OSError as exc:
        raise Unavailable(f"{what} could not be started: {exc.strerror}.") from exc
    assert proc.stdout is not None
    return _Runner(proc.pid, proc.stdout.fileno(), proc.wait, proc.stdout.close)


class Forkserver:
    """Runners forked from one process that has already imported what a runner needs
    (the standard library's multiprocessing forkserver), for a caller that starts
    many: a rollout's conductor. A runner started afresh spends about 0.3 s of CPU
    importing SQLAlchemy, Alembic and the dashboard before it can take its lock; a
    forked one starts at once. Each still runs in a session of its own, so it goes on
    by itself whatever happens to its caller (or to the forkserver)."""

    PRELOAD = ["dashboard.runner", "dashboard.core", "dashboard.services.guard",
               "dashboard.services.rehearsal", "dashboard.services.store"]

    def __init__(self) -> None:
        import multiprocessing

        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(self.PRELOAD)

    def start(self, raw: str) -> _Runner:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_forked, args=(raw, writer),
                                        name="migration-dashboard-runner")
        try:
            process.start()
        except OSError as exc:
            reader.close()
            raise Unavailable(f"The run could not be started: {exc.strerror}.") from exc
        finally:
            writer.close()

        def wait_for_end() -> int:
            process.join()
            return process.exitcode if process.exitcode is not None else 255

        return _Runner(process.pid, reader.fileno(), wait_for_end, reader.close)


def _forked(raw: str, writer) -> None:
    """A forked runner's start: a session of its own, then what ``main`` does."""
    os.setsid()
    handshake_fd = os.dup(writer.fileno())
    writer.close()
    sys.exit(main(raw, handshake_fd))


def reap(started: _Runner, on_exit=None) -> None:
    """Wait for a started process's end (so no zombie is left), then ``on_exit()``."""
    started.wait()
    if on_exit is not None:
        on_exit()


def _installed() -> bool:
    """Whether the package lies in a site-packages of this interpreter. Its folder must
    then stay off PYTHONPATH: the worker inherits it, under the project's own Python,
    which would import the dashboard's packages instead of the project's."""
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    return REPO_ROOT in {Path(folder).resolve() for folder in sites}


def handshake(started: _Runner) -> dict:
    """Its first line, as JSON: whether it started (a run: its id), or why not."""
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    line = b""
    # A selector (epoll here), not select(): a long-lived server may hold descriptors
    # numbered past 1024, which select() refuses.
    with selectors.DefaultSelector() as selector:
        selector.register(started.handshake_fd, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable("The run did not say whether it started within "
                                  f"{HANDSHAKE_SECONDS:g} s; see the runs page.")
            if not selector.select(left):
                continue
            chunk = os.read(started.handshake_fd, 65536)
            if not chunk:
                break
            line += chunk
    started.close_handshake()
    try:
        return json.loads(line.decode("utf-8"))
    except ValueError:
        return {"ok": False, "error": {"kind": "Unavailable", "message":
                "The run stopped before it started (its process exited with status "
                f"{started.wait(timeout=10)})."}}


def json_safe(settings: dict) -> dict:
    return {key: (str(value) if not isinstance(value, (str, int, float, bool, type(None)))
                  else value) for key, value in settings.items()}


# ------------------------------------------------------------------ the runner


def main(raw: str | None = None, handshake_fd: int | None = None) -> int:
    """Carry out one request: from ``REQUEST_ENV``, answering on standard output (a
    runner started afresh), or as given (a forked one)."""
    from dashboard.core import Target
    from dashboard.services import guard, rehearsal, store

    if raw is None:
        raw = os.environ.pop(REQUEST_ENV, "")
    handshake = os.fdopen(os.dup(1) if handshake_fd is None else handshake_fd, "w",
                          encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")

    def answer(data: dict) -> None:
        if not data.get("ok"):
            # Let go of the instance folder before saying no: the caller may act at
            # once (try again, remount the folder) while this process is still exiting.
            store.close_all()
        try:
            handshake.write(json.dumps(data) + "\n")
            handshake.close()
        except OSError:
            pass  # the caller is gone; the run goes on and records itself

    try:
        request = json.loads(raw)
        spec = request["target"]
        target = Target(spec["settings"], name=spec["name"], read_only=spec["read_only"],
                        backup_dir=spec["backup_dir"], lock_dir=spec["lock_dir"],
                        env=spec.get("env"))
        target = target.pinned(target.project())
        verbs = rehearsal if request.get("verb") == "rehearse" else guard
        prepared = verbs.prepare(target, request)
    except DashboardError as exc:
        answer({"ok": False, "error": {"kind": type(exc).__name__, "message": exc.message,
                                       "detail": exc.detail}})
        return 0
    except Exception as exc:
        from dashboard.redact import password_of, scrub_secrets, secrets_in_values

        spec = json.loads(raw or "{}").get("target", {})
        secrets = secrets_in_values((spec.get("env") or {}).values())
        secrets.add(password_of(spec.get("settings", {}).get("DASHBOARD_DATABASE_URL")))
        answer({"ok": False, "error": {"kind": "Unavailable", "message": scrub_secrets(
            f"The run could not start: {type(exc).__name__}: {exc}", secrets)}})
        return 1
    answer({"ok": True, "run_id": prepared.run_id})
    verbs.execute(target, prepared)
    store.close_all()  # the run is settled: nothing of the instance folder stays open
    return 0


if __name__ == "__main__":
    sys.exit(main())
