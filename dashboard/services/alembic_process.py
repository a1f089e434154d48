"""Everything that executes Alembic against the project, in a subprocess.

The project's env.py imports its application and calls
``logging.config.fileConfig``; running that inside the web process would
tie the dashboard to the project's imports and silence its loggers. So the
worker script runs under ``DASHBOARD_PYTHON`` and answers in JSON lines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dashboard.engines import read_only_session_sql
from dashboard.redact import mask_url
from dashboard.services.project import Project
from dashboard.services.revisions import RevisionHeader, UnreadableFile

WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "alembic_worker.py")
URL_ENV = "DASHBOARD_TARGET_URL"
FLASK_APP_ENV = "DASHBOARD_FLASK_APP"
# A question asked in the background yields the CPU to the requests being served.
BACKGROUND_NICENESS = 10


class WorkerFailed(Exception):
    def __init__(self, message: str, traceback: str = ""):
        super().__init__(message)
        self.traceback = traceback  # scrubbed, as the worker printed it


def worker_command(project: Project, *args: str) -> list[str]:
    toml = ["--toml", project.toml_path] if project.toml_path else []
    return [project.python, WORKER_SCRIPT, *toml, *args]


def worker_environment(project: Project) -> dict[str, str]:
    """The environment of every process that runs the project's env.py: the
    dashboard's own, the target's variables over it, then what the worker
    needs from the dashboard (the database, the version table, the Flask app,
    every spelling of the secrets it must keep out of its output)."""
    env = dict(os.environ)
    env.pop("DASHBOARD_DATABASE_URL", None)
    env.update(project.env)
    env.pop(URL_ENV, None)
    if project.hands_url and project.database_url:
        env[URL_ENV] = project.database_url
    env["PYTHONUNBUFFERED"] = "1"
    env["DASHBOARD_VERSION_TABLE"] = project.version_table
    env["DASHBOARD_SECRET_FORMS"] = json.dumps(sorted(project.secret_forms()))
    env["DASHBOARD_READ_ONLY_SQL"] = json.dumps(read_only_session_sql())
    if project.flask_app:
        env[FLASK_APP_ENV] = project.flask_app
    else:
        env.pop(FLASK_APP_ENV, None)
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


def call_worker(project: Project, args: list[str], timeout: float,
                background: bool = False) -> list[dict]:
    """Run the worker and return its events. ``background``: at a low CPU priority
    (``nice``), for a question no request waits on."""
    command = worker_command(project, *args)
    nice = shutil.which("nice") if background else None
    if nice:
        command = [nice, "-n", str(BACKGROUND_NICENESS), *command]
    try:
        proc = subprocess.run(
            command,
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
            raise WorkerFailed(project.scrub(event.get("error", "unknown error")),
                               project.scrub(event.get("traceback") or ""))
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
class StepSql:
    """The offline SQL of one revision in one direction, or why there is none."""

    sql: str | None
    error: str | None = None
    lasting: bool = True  # False when the worker itself failed (a timeout): try again later


@dataclass(frozen=True)
class OfflineSql:
    upgrade_sql: str | None
    downgrade_sql: str | None
    upgrade_error: str | None = None
    downgrade_error: str | None = None

    @classmethod
    def of(cls, up: StepSql, down: StepSql) -> OfflineSql:
        return cls(up.sql, down.sql, up.error, down.error)


# A batch may take the subprocess timeout once per this many revisions.
REVISIONS_PER_TIMEOUT = 50


def offline_sql(project: Project, revisions: list[str], timeout: float,
                directions: tuple[str, ...] = ("up", "down")) -> dict[tuple[str, str], StepSql]:
    """The SQL each revision's upgrade and downgrade would run on the target's dialect,
    keyed by (revision, direction): every revision in one subprocess."""
    args = ["sql", "--ini", project.ini_path]
    for revision in revisions:
        args += ["--revision", revision]
    for direction in directions:
        args += ["--direction", direction]
    allowed = timeout * max(1, -(-len(revisions) // REVISIONS_PER_TIMEOUT))
    try:
        events = call_worker(project, args, allowed)
    except WorkerFailed as exc:
        failed = StepSql(None, str(exc), lasting=False)
        return {(r, d): failed for r in revisions for d in directions}
    found = {(e.get("revision"), e.get("direction")): e for e in events
             if e.get("event") == "sql"}
    out = {}
    for revision in revisions:
        for direction in directions:
            event = found.get((revision, direction))
            if event is None:
                out[revision, direction] = StepSql(None, "no output", lasting=False)
            elif event.get("error"):
                out[revision, direction] = StepSql(None, project.scrub(event["error"]))
            else:
                out[revision, direction] = StepSql(event.get("sql"))
    return out


@dataclass(frozen=True)
class EnvDatabase:
    """One database env.py migrates, as it said when asked."""

    url: str  # may hold a password: never render, log or store it; use masked_url
    masked_url: str
    dialect: str
    version_table: str

    @property
    def identity(self) -> str:
        """The engine seam's name for it, read now (a SQLite file created since
        has a new one): what the guard compares with the database it locks."""
        from dashboard.engines import engine_for

        return engine_for(self.url).identity(self.url)

    def as_json(self) -> dict:
        return {"url": self.masked_url, "dialect": self.dialect,
                "version_table": self.version_table}


@dataclass(frozen=True)
class EnvPyDatabases:
    """Which databases env.py migrates, or why it could not be asked."""

    databases: tuple[EnvDatabase, ...] = ()
    error: str | None = None  # scrubbed
    traceback: str = ""  # scrubbed, down to the user's own file and line

    def as_json(self) -> dict:
        return {"databases": [d.as_json() for d in self.databases], "error": self.error,
                "traceback": self.traceback}


def databases_of(event: dict, cwd: str) -> tuple[EnvDatabase, ...]:
    """The databases of a worker's "databases" report; a relative SQLite path is made
    absolute against the folder env.py ran in."""
    from dashboard.engines.sqlite import absolute_sqlite_url

    cwd = str(event.get("cwd") or cwd)
    found = []
    for data in event.get("databases") or ():
        if not data.get("url"):
            continue
        url = absolute_sqlite_url(str(data["url"]), cwd)
        found.append(EnvDatabase(url=url, masked_url=mask_url(url),
                                 dialect=str(data.get("dialect") or "unknown"),
                                 version_table=str(data.get("version_table") or
                                                   "alembic_version")))
    return tuple(found)


def env_py_databases(project: Project, timeout: float,
                     background: bool = False) -> EnvPyDatabases:
    """Ask env.py which databases it migrates: the worker runs it online, as
    ``alembic upgrade`` would, stopping at each ``context.configure``; no step runs
    and nothing is created (a missing SQLite file stays missing)."""
    try:
        events = call_worker(project, ["databases", "--ini", project.ini_path], timeout,
                             background)
    except WorkerFailed as exc:
        return EnvPyDatabases(error=str(exc), traceback=exc.traceback)
    event = next((e for e in events if e.get("event") == "databases"), None)
    if event is None:
        return EnvPyDatabases(error="The worker gave no answer.")
    found = databases_of(event, os.path.dirname(project.ini_path))
    if not found:
        return EnvPyDatabases(error="env.py opened no database when run online (it never "
                                    "called context.configure with a connection).")
    return EnvPyDatabases(tuple(found))
