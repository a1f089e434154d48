"""Where a rollout's runs execute: one protocol, two homes.

A rollout (services/rollouts.py) decides which target runs when; an executor
only starts one target's run behind the guard and tells how it stands. The
embedded default, ``LocalExecutor``, starts each run in its own runner
process on this machine (dashboard/runner.py): the conductor keeps at most
``parallel`` of them alive, so the runner processes are the pool. With a
broker, ``dashboard.fleet.CeleryExecutor`` sends each run to Celery workers
instead. Either way every target goes through the same guard: lock, verified
backup, run, restore on failure, audit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dashboard.services import runs

if TYPE_CHECKING:
    from dashboard.core import Target

# Before a run is recorded: waiting for a worker (Celery), or being started.
WAITING = "waiting"


@dataclass(frozen=True)
class TargetRun:
    """How one target's run stands, as an executor reports it."""

    status: str  # WAITING, or a run status (runs.QUEUED ... runs.CANCELLED)
    run_id: str | None = None
    run: runs.RunRecord | None = None
    error: str | None = None  # why it failed when there is no run to say it

    @property
    def finished(self) -> bool:
        return self.status in runs.FINISHED


@dataclass(frozen=True)
class RunRequest:
    """One target's part of a rollout: what the guard is asked to do."""

    rollout_id: str
    action: str  # upgrade, downgrade, stamp
    destination: str
    user: str


class Executor(Protocol):
    name: str  # "local" or "celery", shown on the rollout page
    # Set by the conductor: called (from any thread) when a run may have changed, so
    # it looks at once rather than at its next poll. An executor may never call it.
    on_change: Callable[[], None] | None

    def start(self, target: Target, request: RunRequest) -> str:
        """Start the target's run; a handle to poll it by. Raises a DashboardError
        (``Conflict`` when another action holds the database) when it cannot."""

    def poll(self, target: Target, handle: str) -> TargetRun:
        """How the run started under ``handle`` stands now."""

    def close(self) -> None:
        """Let go of what the executor holds (connections to a broker)."""


class LocalExecutor:
    """Each run in its own runner process on this machine (the embedded pool)."""

    name = "local"

    def __init__(self) -> None:
        self.on_change: Callable[[], None] | None = None
        self._forkserver = None
        self._forkserver_lock = threading.Lock()

    def start(self, target: Target, request: RunRequest) -> str:
        from dashboard.services import guard

        project, history, status = target.read_state()
        # The runner's exit ends the run: the conductor looks then (at parallel 1 its
        # poll interval was otherwise paid once per target).
        run = guard.start_action(target.pinned(project), history, status.state,
                                 request.action, request.destination, request.user,
                                 on_exit=lambda: self.on_change and self.on_change(),
                                 forkserver=self.forkserver())
        return run.id

    def forkserver(self):
        """Runners forked ready-imported (runner.Forkserver): made at the first start."""
        from dashboard.runner import Forkserver

        with self._forkserver_lock:
            if self._forkserver is None:
                self._forkserver = Forkserver()
            return self._forkserver

    def poll(self, target: Target, handle: str) -> TargetRun:
        run = runs.get_run(target.instance_dir, handle)
        if run is not None and not run.finished:
            # A runner that died leaves its run unfinished and the lock free: settled
            # (recovered) by the guard, as at the dashboard's next start.
            target.reap_interrupted_runs()
            run = runs.get_run(target.instance_dir, handle)
        if run is None:
            return TargetRun(runs.FAILED, handle, None, f"Run '{handle}' is not recorded.")
        return TargetRun(run.status, run.id, run, run.error)

    def close(self) -> None:
        pass


def executor_name(settings: dict) -> str:
    """Which executor ``executor_for`` gives, without making it (for the rollout's record)."""
    return "celery" if settings.get("DASHBOARD_BROKER_URL") else "local"


def executor_for(settings: dict) -> Executor:
    """Celery's when ``DASHBOARD_BROKER_URL`` is set, else the local one. Imported only
    then, so the dashboard runs without Celery installed."""
    if settings.get("DASHBOARD_BROKER_URL"):
        from dashboard.fleet import CeleryExecutor

        return CeleryExecutor(settings)
    return LocalExecutor()
