"""Runs Alembic against a project, under the project's own interpreter.

Started by file path as ``DASHBOARD_PYTHON alembic_worker.py MODE ...`` so it
imports only the standard library, Alembic and SQLAlchemy (the project's
environment has no Flask). It reports as JSON lines on its standard output;
anything the project's env.py prints goes to standard error instead. The
database URL comes in the ``DASHBOARD_TARGET_URL`` environment variable, never
on the command line, where any user could read a password in the process list.

Modes (each after an optional ``--toml PYPROJECT``):
  headers --ini INI FILE...         import revision files whose headers are not literals
  sql --ini INI --revision R [--revision R2 ...] [--direction up|down]
                                    the SQL of each revision's upgrade and downgrade (offline)
  run --ini INI --action upgrade|downgrade|stamp --target T
                                    run an action, reporting each step
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import re
import sys
import time
import traceback

URL_ENV = "DASHBOARD_TARGET_URL"
EVENTS_ENV = "DASHBOARD_EVENTS_FILE"
_protocol = sys.stdout
_events = None  # the run's own record on disk, kept even when the supervisor is gone


def emit(event: str, **fields) -> None:
    """Report one event to the supervisor and to the run's events file.

    A supervisor that died (its pipe is broken) does not stop the action: it
    goes on to its end, and the events file tells the dashboard what happened."""
    fields["event"] = event
    fields.setdefault("ts", time.time())
    line = _scrub(json.dumps(fields, default=str)) + "\n"
    if _events is not None:
        try:
            _events.write(line)
            _events.flush()
        except (OSError, ValueError):
            pass
    try:
        _protocol.write(line)
        _protocol.flush()
    except (OSError, ValueError):
        pass


def _scrub(text: str) -> str:
    """The password out of what is reported, in each form the dashboard names
    (``DASHBOARD_SECRET_FORMS``, longest first), also as JSON escapes it."""
    for form in _SECRET_FORMS:
        text = text.replace(form, "***")
    return text


def _secret_forms() -> list[str]:
    try:
        forms = json.loads(os.environ.get("DASHBOARD_SECRET_FORMS") or "[]")
    except ValueError:
        return []
    found = set()
    for form in forms:
        found.add(form)
        found.add(json.dumps(form)[1:-1])  # as it stands inside a JSON string
    return sorted((f for f in found if f), key=len, reverse=True)


_SECRET_FORMS = _secret_forms()


def _open_events_file() -> None:
    global _events
    path = os.environ.get(EVENTS_ENV)
    if path:
        try:
            _events = open(path, "a", encoding="utf-8")
        except OSError:
            _events = None


def _redirect_stdout() -> None:
    """Keep fd 1 for the protocol; route everything else printed to stderr."""
    global _protocol
    _protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


_toml = None  # --toml: a pyproject.toml whose [tool.alembic] is read with the ini


def _config(ini: str, url: str | None):
    """The project's Config, as the dashboard read it (services/project.py):
    the ini with the pyproject.toml (or the toml alone when ``ini`` is it), and
    Flask-Migrate's script location (the folder of an ini without one, beside env.py)."""
    from alembic.config import Config

    config = Config(None if ini == _toml else ini, toml_file=_toml, stdout=sys.stderr)
    if not config.get_alembic_option("script_location"):
        folder = os.path.dirname(os.path.abspath(ini))
        if os.path.isfile(os.path.join(folder, "env.py")):
            config.set_main_option("script_location", folder.replace("%", "%%"))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    here = os.path.dirname(os.path.abspath(ini))
    os.chdir(here)
    for entry in reversed(config.get_prepend_sys_paths_list() or []):
        sys.path.insert(0, entry)
    return config


def _ids(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def read_headers(ini: str, paths: list[str]) -> None:
    _config(ini, None)
    results = {}
    for path in paths:
        try:
            module_id = re.sub(r"\W", "_", os.path.basename(path))
            spec = importlib.util.spec_from_file_location(module_id, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if not hasattr(module, "revision"):
                raise ValueError("the file defines no 'revision'")
            results[path] = {
                "revision": str(module.revision),
                "down_revision": _ids(module.down_revision),
                "branch_labels": _ids(getattr(module, "branch_labels", None)),
                "depends_on": _ids(getattr(module, "depends_on", None)),
                "docstring": (module.__doc__ or "").strip(),
            }
        except BaseException as exc:  # a revision file may even call sys.exit
            results[path] = {"error": f"{type(exc).__name__}: {exc}"}
    emit("headers", results=results)


def offline_sql(ini: str, url: str, revisions: list[str],
                directions: tuple[str, ...] = ("up", "down")) -> None:
    """Emit the SQL of each revision's upgrade and of its downgrade, each on its own.

    Many revisions in one process: a preview of a long downgrade starts one
    Python, not one per step. One revision that fails does not stop the others."""
    from alembic.script import ScriptDirectory

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)
    for revision in revisions:
        try:
            target = script.get_revision(revision)
        except BaseException as exc:
            for direction in directions:
                emit("sql", revision=revision, direction=direction, sql=None,
                     error=f"{type(exc).__name__}: {exc}")
            continue
        for direction in directions:
            try:
                sql = _offline_step_sql(config, script, target, direction)
            except BaseException as exc:
                emit("sql", revision=revision, direction=direction, sql=None,
                     error=f"{type(exc).__name__}: {exc}")
            else:
                emit("sql", revision=revision, direction=direction, sql=sql, error=None)


def _offline_step_sql(config, script, target, direction: str) -> str:
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationStep

    buffer = io.StringIO()
    config.output_buffer = buffer
    if direction == "up":
        step = MigrationStep.upgrade_from_script(script.revision_map, target)
        starting = list(target._versioned_down_revisions) or "base"
    else:
        step = MigrationStep.downgrade_from_script(script.revision_map, target)
        starting = [target.revision]

    def one_step(_heads, _context):
        return [step]

    with EnvironmentContext(
        config, script, fn=one_step, as_sql=True,
        starting_rev=starting, destination_rev=target.revision,
    ):
        script.run_env()
    return buffer.getvalue()


class _LogToProtocol(logging.Handler):
    def emit(self, record):  # noqa: D401 - logging API
        try:
            emit("log", level=record.levelname, logger=record.name, message=record.getMessage())
        except Exception:
            pass


def _attach_log_handler() -> None:
    # env.py's fileConfig() runs before our step function is called and may
    # have disabled loggers or replaced handlers: re-attach every time.
    handler = _LogToProtocol(logging.INFO)
    for name in ("alembic", "alembic.runtime.migration"):
        logger = logging.getLogger(name)
        logger.disabled = False
        if not any(isinstance(h, _LogToProtocol) for h in logger.handlers):
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = name == "alembic.runtime.migration" and False


def _report(steps, direction_of):
    """Yield Alembic's steps one by one, reporting each as it starts and ends.

    Alembic pulls the next step only after the previous one ran, so the moment
    we are resumed is the moment the step finished. Its changes are committed
    with the whole action (see ``run_action``)."""
    total = len(steps)
    _attach_log_handler()
    emit("plan", steps=[{"revision": _step_revision(s), "direction": direction_of(s)}
                        for s in steps])
    for index, step in enumerate(steps, start=1):
        revision = _step_revision(step)
        started = time.time()
        emit("step_started", index=index, total=total, revision=revision,
             direction=direction_of(step))
        yield step
        emit("step_finished", index=index, total=total, revision=revision,
             direction=direction_of(step), elapsed=time.time() - started)


def _step_revision(step) -> str:
    revision = getattr(step, "revision", None)
    if revision is not None:
        return revision.revision
    return ",".join(getattr(step, "to_revisions", ()) or getattr(step, "from_revisions", ()) or ())


def run_action(ini: str, url: str, action: str, target: str, purge: bool = False,
               hold_file: str | None = None, lock_timeout: float = 60.0) -> None:
    """Run one action, reporting each step, every commit and each table written.

    With ``hold_file`` (a SQLite database) the whole action is one SQLite
    transaction begun with BEGIN IMMEDIATE before the backup is copied (by this
    process, on the supervisor's word): other writers wait from the start of the
    backup to the end of the run, so no write they saw commit can be lost, and a
    failure (or this process dying) rolls everything back. Nothing changes before
    the supervisor, having verified the backup, says "go" on stdin.
    """
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool, StaticPool

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)
    _watch_connections()

    def direction_of(step):
        return "up" if step.is_upgrade else "down"

    def upgrade(rev, _context):
        return _report(list(script._upgrade_revs(target, rev)), direction_of)

    def downgrade(rev, _context):
        return _report(list(script._downgrade_revs(target, rev)), direction_of)

    def stamp(rev, _context):
        targets = tuple(t for t in target.split(",") if t)
        return _report(list(script._stamp_revs(targets, rev)), lambda s: "stamp")

    fn = {"upgrade": upgrade, "downgrade": downgrade, "stamp": stamp}[action]
    held = _HeldSqlite(hold_file, lock_timeout) if hold_file else None
    if not _wait_for_go(held):
        if held is not None:
            held.release(commit=False)
        emit("aborted")
        return
    if held is not None:
        engine = create_engine("sqlite://", creator=held.proxy, poolclass=StaticPool)
    else:
        engine = create_engine(url, poolclass=NullPool)
    try:
        # Handed to env.py through config.attributes (env.py may also open its own):
        # Alembic begins and ends the transactions itself, as `alembic upgrade` does,
        # so op.get_context().autocommit_block() works; on PostgreSQL the default is
        # one transaction for the whole action. Every commit is reported, so the
        # supervisor never calls a failure "rolled back" when something was committed.
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            try:
                with EnvironmentContext(config, script, fn=fn, as_sql=False,
                                        starting_rev=None, destination_rev=target,
                                        purge=purge):
                    script.run_env()
            except BaseException:
                if held is not None:
                    held.release(commit=False)
                    emit("rolled_back")
                raise
            if held is not None:
                held.release(commit=True)
        with engine.connect() as connection:
            heads = MigrationContext.configure(
                connection, opts={"version_table": _version_table()}
            ).get_current_heads() if held is None else held.heads
        emit("done", heads=sorted(heads))
    finally:
        engine.dispose()


def _wait_for_go(held) -> bool:
    """Say "ready", then obey the supervisor: copy the held database somewhere, "go",
    or "abort" (or no answer at all: the supervisor is gone, so nothing runs)."""
    emit("ready")
    for line in sys.stdin:
        try:
            command = json.loads(line)
        except ValueError:
            continue
        kind = command.get("command")
        if kind == "go":
            return True
        if kind == "copy" and held is not None:
            try:
                held.copy_to(command["path"])
            except Exception as exc:
                emit("error", error=f"the copy failed: {type(exc).__name__}: {exc}",
                     traceback="")
                return False
            emit("backup_copied", path=command["path"])
        elif kind == "abort":
            return False
    return False


def _version_table() -> str:
    return os.environ.get("DASHBOARD_VERSION_TABLE") or "alembic_version"


_WRITE = re.compile(
    r"^\s*(?:INSERT\s+(?:IGNORE\s+)?INTO|UPDATE|DELETE\s+FROM|ALTER\s+TABLE|CREATE\s+"
    r"(?:UNIQUE\s+)?(?:TABLE|INDEX(?:\s+CONCURRENTLY)?\s+(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON)|"
    r"DROP\s+TABLE(?:\s+IF\s+EXISTS)?|TRUNCATE(?:\s+TABLE)?|RENAME\s+TABLE)\s+"
    r"(?:ONLY\s+)?(?:IF\s+(?:NOT\s+)?EXISTS\s+)?([`\"\[]?[\w.$]+[`\"\]]?)", re.IGNORECASE)


def _watch_connections() -> None:
    """Report, from every engine env.py may make: each server session opened, each
    commit, and each table a statement writes (for the discarded-writes count)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    session_sql = os.environ.get("DASHBOARD_SESSION_SQL")
    touched: set[str] = set()

    @event.listens_for(Pool, "connect")
    def _session(dbapi_connection, _record):
        if not session_sql:
            return
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute(session_sql)
            emit("session", id=str(cursor.fetchone()[0]))
            cursor.close()
        except Exception:
            pass

    @event.listens_for(Engine, "commit")
    def _commit(conn):
        emit("committed")

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        match = _WRITE.match(statement or "")
        if match:
            name = match.group(1).strip('`"[]').split(".")[-1]
            if name not in touched:
                touched.add(name)
                emit("touched", table=name)


class _HeldSqlite:
    """One SQLite connection holding the write lock for the whole action.

    env.py may open its own engine on the same file: ``sqlite3.connect`` for that
    file is answered with this same connection (through a proxy whose commit,
    rollback and close wait for the end of the action), so every statement of the
    action runs inside the one transaction that holds the lock."""

    def __init__(self, path: str, timeout: float):
        import sqlite3

        self.path = os.path.realpath(path)
        self.timeout = timeout
        self.real_connect = sqlite3.connect
        self.connection = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                                          check_same_thread=False)
        self.connection.execute("BEGIN IMMEDIATE")
        emit("write_locked")
        self.heads: list[str] = []
        held = self

        def connect(database, *args, **kwargs):
            name = str(database)
            if name.startswith("file:") or name == ":memory:" or \
                    os.path.realpath(name) != held.path:
                return held.real_connect(database, *args, **kwargs)
            return held.proxy()

        # SQLAlchemy's pysqlite dialect calls sqlite3.dbapi2.connect.
        sqlite3.connect = sqlite3.dbapi2.connect = connect

    def proxy(self):
        return _ConnectionProxy(self.connection)

    def copy_to(self, destination: str) -> None:
        """Copy the database while this transaction holds the write lock: nobody can
        change it, so the copy is exactly what a failure must come back to."""
        import subprocess

        wal = self.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if not wal:
            # cp in a child: closing a descriptor of the file here would drop our lock.
            subprocess.run(["cp", "--", self.path, destination], check=True,
                           stdin=subprocess.DEVNULL, capture_output=True)
            return
        # The backup API cannot read through the connection that holds the write
        # lock (SQLITE_LOCKED); a second one reads the last commit, which is the
        # database as it stands, since nobody else can commit now.
        deadline = time.monotonic() + self.timeout

        def progress(status, remaining, total):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the copy did not finish within {self.timeout:g} s")

        source = self.real_connect(self.path, timeout=self.timeout)
        target = self.real_connect(destination, isolation_level=None)
        try:
            source.backup(target, progress=progress, sleep=0.05)
        finally:
            target.close()
            source.close()

    def release(self, commit: bool) -> None:
        import sqlite3

        sqlite3.connect = sqlite3.dbapi2.connect = self.real_connect
        if self.connection is None:
            return
        try:
            if commit:
                self.connection.execute("COMMIT")
                table = _version_table().replace('"', '""')
                try:
                    self.heads = [row[0] for row in
                                  self.connection.execute(f'SELECT version_num FROM "{table}"')]
                except sqlite3.Error:
                    self.heads = []
            else:
                try:
                    self.connection.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
        finally:
            self.connection.close()
            self.connection = None


class _ConnectionProxy:
    """The held connection as env.py's engine sees it: its own commits, rollbacks and
    closes wait for the end of the action, which commits or rolls back once."""

    def __init__(self, connection):
        object.__setattr__(self, "_connection", connection)

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def __setattr__(self, name, value):
        if name != "isolation_level":  # the held transaction decides
            setattr(self._connection, name, value)

    def commit(self):
        pass

    def rollback(self):
        pass

    def close(self):
        pass


def main(argv: list[str] | None = None) -> int:
    _redirect_stdout()
    _open_events_file()
    parser = argparse.ArgumentParser(prog="alembic_worker")
    parser.add_argument("--toml", help="a pyproject.toml with [tool.alembic], read with --ini")
    sub = parser.add_subparsers(dest="mode", required=True)
    p_headers = sub.add_parser("headers")
    p_headers.add_argument("--ini", required=True)
    p_headers.add_argument("paths", nargs="+")
    p_sql = sub.add_parser("sql")
    p_sql.add_argument("--ini", required=True)
    p_sql.add_argument("--revision", action="append", required=True)
    p_sql.add_argument("--direction", choices=("up", "down"), action="append")
    p_run = sub.add_parser("run")
    p_run.add_argument("--ini", required=True)
    p_run.add_argument("--action", choices=("upgrade", "downgrade", "stamp"), required=True)
    p_run.add_argument("--target", required=True)
    p_run.add_argument("--purge", action="store_true")
    p_run.add_argument("--hold-sqlite", help="hold this SQLite file's write lock throughout")
    p_run.add_argument("--lock-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    global _toml
    _toml = args.toml
    url = os.environ.get(URL_ENV, "")
    try:
        if args.mode == "headers":
            read_headers(args.ini, args.paths)
        elif args.mode == "sql":
            offline_sql(args.ini, url, args.revision, tuple(args.direction or ("up", "down")))
        else:
            run_action(args.ini, url, args.action, args.target, args.purge,
                       hold_file=args.hold_sqlite, lock_timeout=args.lock_timeout)
    except BaseException as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}".strip(),
             traceback=traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
