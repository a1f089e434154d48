"""The process that conducts one rollout, from its first target to its last.

Like a run's runner (dashboard/runner.py), it is started detached, in a session
of its own, so the web server or the command line that started it can stop
without stopping the rollout. The request (the dashboard's settings, which may
hold a URL with a password) comes in an environment variable, never on the
command line. It answers one handshake line once it holds the rollout's lock
(an flock the kernel lets go when it dies, so a dead conductor is seen and a
new one resumes the rollout), then runs ``rollouts.conduct``.

Started as ``python -m dashboard.conductor``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from dashboard.errors import Conflict, DashboardError, error_named

REQUEST_ENV = "DASHBOARD_ROLLOUT_REQUEST"
LOCK_SECONDS = 1.0


def launch(settings: dict, rollout_id: str, environ=None) -> int:
    """Start a conductor for ``rollout_id``; its pid once it holds the rollout's lock.
    ``Conflict`` when another conductor holds it already."""
    from dashboard import runner

    started = runner.start_process(
        "dashboard.conductor", REQUEST_ENV,
        {"settings": runner.json_safe(settings), "rollout_id": rollout_id},
        what="The rollout's conductor", environ=environ)
    threading.Thread(target=runner.reap, args=(started,), name="conductor-reaper",
                     daemon=True).start()
    answer = runner.handshake(started)
    if not answer.get("ok"):
        error = answer.get("error") or {}
        raise error_named(error.get("kind", ""), error.get("message", "The rollout's "
                          "conductor did not start."), error.get("detail"))
    return started.pid


def _take_lock(rollouts, root: str, rollout_id: str) -> int | None:
    """The rollout's lock; a reader checking whether a conductor lives holds it for a
    moment, so it is tried for a little while before saying another conductor has it."""
    deadline = time.monotonic() + LOCK_SECONDS
    while True:
        fd = rollouts.hold_conductor_lock(root, rollout_id)
        if fd is not None or time.monotonic() > deadline:
            return fd
        time.sleep(0.05)


def main() -> int:
    from dashboard.core import Registry
    from dashboard.services import rollouts, store
    from dashboard.services.executors import executor_for

    raw = os.environ.pop(REQUEST_ENV, "")
    handshake = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w", encoding="utf-8")

    def answer(data: dict) -> None:
        try:
            handshake.write(json.dumps(data) + "\n")
            handshake.close()
        except OSError:
            pass  # the caller is gone; the rollout goes on

    root = rollout_id = None
    try:
        request = json.loads(raw)
        settings, rollout_id = request["settings"], request["rollout_id"]
        root = str(settings["DASHBOARD_INSTANCE_DIR"])
        lock = _take_lock(rollouts, root, rollout_id)
        if lock is None:
            raise Conflict(f"Rollout {rollout_id} has a conductor already.")
        rollouts.get_rollout(root, rollout_id)  # a 404 said at once
        rollouts.mark_conducted(root, rollout_id, os.getpid())
        registry = Registry(settings)
        executor = executor_for(settings)
    except DashboardError as exc:
        answer({"ok": False, "error": {"kind": type(exc).__name__, "message": exc.message,
                                       "detail": exc.detail}})
        return 0
    except Exception as exc:  # noqa: BLE001 - said to the caller, scrubbed of the URL
        answer({"ok": False, "error": {"kind": "Unavailable", "message":
                f"The rollout's conductor could not start: {type(exc).__name__}."}})
        return 1
    answer({"ok": True})
    try:
        rollouts.conduct(registry, root, rollout_id, executor)
    except Exception as exc:  # noqa: BLE001 - the rollout says it failed, and why
        message = exc.message if isinstance(exc, DashboardError) else \
            f"The conductor failed: {type(exc).__name__}."
        try:
            rollouts.fail_rollout(root, rollout_id, message)
        except DashboardError:
            pass
        return 1
    finally:
        executor.close()
        store.close_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
