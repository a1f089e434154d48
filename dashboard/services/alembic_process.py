"""Everything that executes Alembic against the project, in a subprocess.

The project's env.py imports its application and calls
``logging.config.fileConfig``; running that inside the web process would
tie the dashboard to the project's imports and silence its loggers. So the
worker script runs under ``DASHBOARD_PYTHON`` and answers in JSON lines.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dashboard.services.project import Project
from dashboard.services.revisions import RevisionHeader, UnreadableFile

WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "alembic_worker.py")
URL_ENV = "DASHBOARD_TARGET_URL"


class WorkerFailed(Exception):
    pass


def worker_command(project: Project, *args: str) -> list[str]:
    return [project.python, WORKER_SCRIPT, *args]


def worker_environment(project: Project) -> dict[str, str]:
    env = dict(os.environ)
    env[URL_ENV] = project.database_url
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DASHBOARD_DATABASE_URL", None)
    return env


def parse_events(output: str) -> list[dict]:
    events = []
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def call_worker(project: Project, args: list[str], timeout: float) -> list[dict]:
    try:
        proc = subprocess.run(
            worker_command(project, *args),
            env=worker_environment(project),
            cwd=os.path.dirname(project.ini_path),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise WorkerFailed(f"Cannot start the project's Python ({project.python}): {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise WorkerFailed(f"Alembic did not answer within {timeout:g} s.") from exc
    events = parse_events(proc.stdout)
    for event in events:
        if event.get("event") == "error":
            raise WorkerFailed(project.scrub(event.get("error", "unknown error")))
    if not events:
        tail = project.scrub(proc.stderr.strip()[-2000:])
        raise WorkerFailed(f"The worker exited with status {proc.returncode}: {tail}")
    return events


def import_headers(project: Project, paths: list[str], timeout: float
                   ) -> dict[str, RevisionHeader | UnreadableFile]:
    """Headers of files that are not plain literals, by importing them."""
    try:
        events = call_worker(project, ["headers", "--ini", project.ini_path, *paths], timeout)
    except WorkerFailed as exc:
        return {path: UnreadableFile(path, str(exc)) for path in paths}
    results = next((e["results"] for e in events if e.get("event") == "headers"), {})
    out: dict[str, RevisionHeader | UnreadableFile] = {}
    for path in paths:
        data = results.get(path)
        if not data:
            out[path] = UnreadableFile(path, "the import gave no result")
        elif "error" in data:
            out[path] = UnreadableFile(path, project.scrub(data["error"]))
        else:
            out[path] = RevisionHeader(
                path=path,
                revision=data["revision"],
                down_revision=tuple(data["down_revision"]),
                branch_labels=tuple(data["branch_labels"]),
                depends_on=tuple(data["depends_on"]),
                docstring=data["docstring"],
            )
    return out


@dataclass(frozen=True)
class OfflineSql:
    upgrade_sql: str | None
    downgrade_sql: str | None
    upgrade_error: str | None = None
    downgrade_error: str | None = None


def offline_sql(project: Project, revision: str, timeout: float) -> OfflineSql:
    """The SQL a revision's upgrade and downgrade would run on the target's dialect."""
    try:
        events = call_worker(
            project, ["sql", "--ini", project.ini_path, "--revision", revision], timeout
        )
    except WorkerFailed as exc:
        return OfflineSql(None, None, str(exc), str(exc))
    found = {e["direction"]: e for e in events if e.get("event") == "sql"}
    up, down = found.get("up", {}), found.get("down", {})
    missing = "no output"
    return OfflineSql(
        upgrade_sql=up.get("sql"),
        downgrade_sql=down.get("sql"),
        upgrade_error=project.scrub(up["error"]) if up.get("error") else (None if up else missing),
        downgrade_error=(project.scrub(down["error"]) if down.get("error")
                         else (None if down else missing)),
    )
