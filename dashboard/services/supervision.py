"""Supervising the worker process that runs a migration.

The worker (``dashboard/alembic_worker.py``) runs under the project's own
interpreter and reports each step as a JSON line; this records each report
in the dashboard's store as it arrives, so any page shows live progress.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dashboard.services import locking, runs
from dashboard.services.alembic_process import parse_events, worker_command, worker_environment
from dashboard.services.planning import ActionPlan
from dashboard.services.project import Project

if TYPE_CHECKING:
    from dashboard.core import Target

CANCEL_MARK = "Cancel requested by "


@dataclass
class WorkerOutcome:
    ok: bool
    heads: tuple[str, ...] = ()
    error: str | None = None
    failed_step: str | None = None


def run_worker(target: Target, run_id: str, plan: ActionPlan,
                lock: locking.ActionLock) -> WorkerOutcome:
    """Run the worker and record what it reports, line by line, as it happens."""
    project, inst = target.project(), target.instance_dir
    args = ["run", "--ini", project.ini_path, "--action", plan.action, "--target", plan.destination]
    if plan.purge:
        args.append("--purge")
    report = _WorkerReport()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as stderr:
        with subprocess.Popen(
            worker_command(project, *args), env=worker_environment(project),
            cwd=os.path.dirname(project.ini_path), stdout=subprocess.PIPE, stderr=stderr,
            stdin=subprocess.DEVNULL, text=True, pass_fds=(lock.fd,),
        ) as proc:
            runs.update_run(inst, run_id, pid=proc.pid)
            assert proc.stdout is not None
            for line in proc.stdout:
                for event in parse_events(line):
                    report = _record_event(inst, run_id, project, event, report)
            returncode = proc.wait()
        heads, error, running_step = report.heads, report.error, report.running_step
        if heads is not None and returncode == 0 and error is None:
            return WorkerOutcome(True, heads)
        if error is None and returncode == -signal.SIGTERM and _cancel_requested(inst, run_id):
            error = "the run was cancelled, and its worker stopped"
        if error is None:
            stderr.seek(0)
            tail = project.scrub(stderr.read()[-2000:]).strip()
            error = f"the worker exited with status {returncode}" + (f": {tail}" if tail else "")
    failed = None
    if running_step is not None:
        failed = running_step["revision"]
        runs.update_step(inst, run_id, running_step["index"], status="failed",
                         finished_at=time.time())
    runs.update_run(inst, run_id, failed_step=failed)
    return WorkerOutcome(False, error=error, failed_step=failed)


@dataclass
class _WorkerReport:
    running_step: dict | None = None
    heads: tuple[str, ...] | None = None
    error: str | None = None


def _record_event(inst: str, run_id: str, project: Project, event: dict,
                  report: _WorkerReport) -> _WorkerReport:
    """Store one line the worker reported; returns what the supervisor must remember."""
    kind = event.get("event")
    if kind == "plan":
        runs.plan_steps(inst, run_id, event["steps"])
    elif kind == "step_started":
        report.running_step = event
        runs.update_step(inst, run_id, event["index"], status="running", started_at=event["ts"])
    elif kind == "step_finished":
        report.running_step = None
        runs.update_step(inst, run_id, event["index"], status="succeeded",
                         finished_at=event["ts"])
    elif kind == "log":
        runs.add_log(inst, run_id, event.get("level", "INFO"),
                     project.scrub(event.get("message", "")), event.get("ts"))
    elif kind == "done":
        report.heads = tuple(event.get("heads", ()))
    elif kind == "error":
        report.error = project.scrub(event.get("error", "unknown error"))
        runs.add_log(inst, run_id, "ERROR", project.scrub(event.get("traceback", report.error)))
    return report


CANCEL_MARK = "Cancel requested by "


def _cancel_requested(inst: str, run_id: str) -> bool:
    run = runs.get_run(inst, run_id)
    return bool(run and any(log.message.startswith(CANCEL_MARK) for log in run.logs))
