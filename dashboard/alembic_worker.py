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
  databases --ini INI                which databases env.py migrates (online, no step run)
  drift --ini INI                    each database against env.py's target_metadata, as
                                    autogenerate compares them (online, nothing written)
  run --ini INI --action upgrade|downgrade|stamp --target T
                                    run an action, reporting each step

env.py runs as the project's own ``alembic`` would run it, with its own engine:
what the dashboard needs goes in through ``context.configure``, which this
module wraps to see each database env.py opens (and to refuse one the guard
did not back up) and to add Alembic's ``on_version_apply`` progress hook.
"""

from __future__ import annotations

import argparse
import contextlib
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
FLASK_APP_ENV = "DASHBOARD_FLASK_APP"
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


def emit_private(event: str, **fields) -> None:
    """Report to the supervisor alone what may hold a password (a database's full
    URL): never to the events file, never scrubbed (the dashboard needs it whole)."""
    fields["event"] = event
    fields.setdefault("ts", time.time())
    try:
        _protocol.write(json.dumps(fields, default=str) + "\n")
        _protocol.flush()
    except (OSError, ValueError):
        pass


def _add_secret(url: str) -> None:
    """The password of a database env.py named, kept out of everything reported."""
    from urllib.parse import quote, quote_plus

    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:
        return
    if not password:
        return
    password = str(password)
    forms = {password, quote(password, safe=""), quote(password), quote_plus(password)}
    forms |= {json.dumps(f)[1:-1] for f in forms}
    _SECRET_FORMS[:] = sorted(set(_SECRET_FORMS) | {f for f in forms if f}, key=len,
                              reverse=True)


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


def _add_environment_secrets() -> None:
    """The password of any URL in the environment (an env.py's own DATABASE_URL),
    kept out of what is reported even when env.py fails before naming its database."""
    for value in os.environ.values():
        if "://" in value and "@" in value:
            _add_secret(value)


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


def _config(ini: str, url: str | None, scratch_folder: bool = False):
    """The project's Alembic Config, as the dashboard read it (services/project.py),
    the process in the project's folder (as its own ``alembic`` or ``flask db`` runs
    there): the ini with the pyproject.toml (or the toml alone when ``ini`` is it),
    Flask-Migrate's script location (the folder of an ini without one, beside
    env.py), or a Flask app's own configuration. With ``scratch_folder``, the process
    is in a temporary folder instead, so nothing env.py writes (offline SQL files)
    lands in the project."""
    from alembic.config import Config

    if os.environ.get(FLASK_APP_ENV):
        config = _flask_config(ini)
    else:
        config = Config(None if ini == _toml else ini, toml_file=_toml, stdout=sys.stderr)
        folder = os.path.dirname(os.path.abspath(ini))
        if not config.get_alembic_option("script_location") and \
                os.path.isfile(os.path.join(folder, "env.py")):
            config.set_main_option("script_location", folder.replace("%", "%%"))
        os.chdir(folder)
        for entry in reversed(config.get_prepend_sys_paths_list() or []):
            sys.path.insert(0, os.path.abspath(entry))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if scratch_folder:
        import atexit
        import shutil
        import tempfile

        scratch = tempfile.mkdtemp(prefix="dashboard-worker-")
        atexit.register(shutil.rmtree, scratch, True)
        os.chdir(scratch)
    return config


def _flask_config(ini: str):
    """A Flask-Migrate project's Config, made as ``flask --app APP db ...`` makes it:
    the app loaded by Flask's own loader from the folder beside its migrations
    folder, an app context pushed for env.py, and Flask-Migrate's own ``get_config``
    (its directory, its configure callbacks)."""
    from flask.cli import ScriptInfo, load_dotenv

    script_folder = os.path.dirname(os.path.abspath(ini))
    os.chdir(os.path.dirname(script_folder))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    load_dotenv()
    name = os.environ[FLASK_APP_ENV]
    app = ScriptInfo(app_import_path=name).load_app()
    app.app_context().push()
    extension = app.extensions.get("migrate")
    if extension is None:
        raise RuntimeError(f"The Flask app {name} does not use Flask-Migrate "
                           "(app.extensions['migrate'] is missing).")
    config = extension.migrate.get_config(script_folder)
    config.stdout = sys.stderr
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
            results[path] = {"error": f"{type(exc).__name__}: {exc}{_where(exc)}"}
    emit("headers", results=results)


def offline_sql(ini: str, url: str, revisions: list[str],
                directions: tuple[str, ...] = ("up", "down")) -> None:
    """Emit the SQL of each revision's upgrade and of its downgrade, each on its own.

    Many revisions in one process: a preview of a long downgrade starts one
    Python, not one per step. One revision that fails does not stop the others."""
    from alembic.script import ScriptDirectory

    config = _config(ini, url, scratch_folder=True)
    script = ScriptDirectory.from_config(config)
    for revision in revisions:
        try:
            target = script.get_revision(revision)
        except BaseException as exc:
            for direction in directions:
                emit("sql", revision=revision, direction=direction, sql=None,
                     error=f"{type(exc).__name__}: {exc}{_where(exc)}")
            continue
        for direction in directions:
            try:
                sql = _offline_step_sql(config, script, target, direction)
            except BaseException as exc:
                emit("sql", revision=revision, direction=direction, sql=None,
                     error=f"{type(exc).__name__}: {exc}{_where(exc)}")
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

    configured = 0

    def into_our_buffer(url, kw):
        # An env.py that writes each database's SQL to a file of its own (the multidb
        # template) writes it here instead, each database after the first named.
        nonlocal configured
        configured += 1
        kw.pop("output_buffer", None)
        if configured > 1:
            shown = _described(url, kw)["masked_url"] if url else "another database"
            buffer.write(f"\n-- env.py's database #{configured}: {shown}\n\n")

    with _wrapped_configure(into_our_buffer, lambda _context, run: run()), \
            EnvironmentContext(config, script, fn=one_step, as_sql=True,
                               starting_rev=starting, destination_rev=target.revision):
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


class _Progress:
    """Each step as it starts (Alembic pulls it from our step generator) and as it
    ends (Alembic's ``on_version_apply``, added to env.py's configure call)."""

    def __init__(self, direction_of):
        self.direction_of = direction_of
        self.running: dict | None = None

    def steps(self, steps):
        total = len(steps)
        _attach_log_handler()
        emit("plan", steps=[{"revision": _step_revision(s), "direction": self.direction_of(s)}
                            for s in steps])
        for index, step in enumerate(steps, start=1):
            self.running = {"index": index, "total": total, "revision": _step_revision(step),
                            "direction": self.direction_of(step), "started": time.time()}
            emit("step_started", index=index, total=total, revision=self.running["revision"],
                 direction=self.running["direction"])
            yield step
            self.finished()  # in case env.py's context dropped our hook

    def finished(self, **_alembic_arguments) -> None:
        running, self.running = self.running, None
        if running is not None:
            emit("step_finished", index=running["index"], total=running["total"],
                 revision=running["revision"], direction=running["direction"],
                 elapsed=time.time() - running["started"])


def _step_revision(step) -> str:
    revision = getattr(step, "revision", None)
    if revision is not None:
        return revision.revision
    return ",".join(getattr(step, "to_revisions", ()) or getattr(step, "from_revisions", ()) or ())


class EnvPyFailed(Exception):
    """env.py raised before the first step; the message says so."""


def _database_of(args: tuple, kw: dict) -> str | None:
    """The full URL of the database one ``context.configure`` call names: its
    connection's (for an async env.py, the sync connection ``run_sync`` hands over),
    else its ``url``; None when it names none (offline by dialect name)."""
    connection = kw.get("connection", args[0] if args else None)
    url = kw.get("url", args[1] if len(args) > 1 else None)
    if connection is not None:
        url = getattr(getattr(connection, "engine", None), "url", None)
    if url is None:
        return None
    if hasattr(url, "render_as_string"):
        return url.render_as_string(hide_password=False)
    return str(url)


def _described(url: str, kw: dict) -> dict:
    from sqlalchemy.engine import make_url

    _add_secret(url)
    try:
        parsed = make_url(url)
        masked, dialect = parsed.render_as_string(hide_password=True), parsed.get_backend_name()
    except Exception:
        masked, dialect = url.split(":", 1)[0] + ":<unparseable URL>", "unknown"
    return {"url": url, "masked_url": masked, "dialect": dialect,
            "version_table": kw.get("version_table") or "alembic_version",
            "version_table_schema": kw.get("version_table_schema")}


@contextlib.contextmanager
def _wrapped_configure(on_configure, on_run):
    """``EnvironmentContext.configure`` and ``run_migrations`` wrapped for one pass
    of env.py: ``on_configure(url, kw)`` sees (and may refuse or extend) each
    configure call; ``on_run(context, run)`` calls ``run()`` to run the migrations,
    or does not."""
    from alembic.runtime.environment import EnvironmentContext

    configure, run_migrations = EnvironmentContext.configure, EnvironmentContext.run_migrations

    def wrapped_configure(self, *args, **kw):
        on_configure(_database_of(args, kw), kw)
        return configure(self, *args, **kw)

    def wrapped_run(self, **kw):
        return on_run(self, lambda: run_migrations(self, **kw))

    EnvironmentContext.configure = wrapped_configure
    EnvironmentContext.run_migrations = wrapped_run
    try:
        yield
    finally:
        EnvironmentContext.configure = configure
        EnvironmentContext.run_migrations = run_migrations


@contextlib.contextmanager
def _sqlite_read_only(held_path: str | None = None, stand_ins: dict | None = None):
    """While env.py is only asked which database it migrates: a SQLite file opens
    read-only, and one that does not exist is not created (an empty in-memory
    database stands in for it, and goes into ``stand_ins``, by id, with the missing
    file's path). The held file still goes to the held connection."""
    import sqlite3
    from pathlib import Path

    previous = sqlite3.connect

    def connect(database, *args, **kwargs):
        name = str(database)
        if name in ("", ":memory:") or name.startswith("file:") or \
                (held_path and os.path.realpath(name) == held_path):
            return previous(database, *args, **kwargs)
        kwargs.pop("uri", None)
        path = os.path.abspath(name)
        if not os.path.exists(path):
            stand_in = previous(":memory:", *args, **kwargs)
            if stand_ins is not None:
                stand_ins[id(stand_in)] = (stand_in, path)
            return stand_in
        return previous(Path(path).as_uri() + "?mode=ro", *args, uri=True, **kwargs)

    sqlite3.connect = sqlite3.dbapi2.connect = connect
    try:
        yield
    finally:
        sqlite3.connect = sqlite3.dbapi2.connect = previous


def _probe_databases(config, script, held_path: str | None = None) -> list[dict]:
    """Run env.py online, as ``alembic upgrade`` would, but with every
    ``run_migrations`` a no-op: each database a ``configure`` call names, in order.
    Nothing is created or changed."""
    found: list[dict] = []

    def seen(url, kw):
        if url is not None:
            found.append(_described(url, kw))

    with _wrapped_configure(seen, lambda _context, _run: None), \
            _sqlite_read_only(held_path), _env_py_step("asked which database it migrates"):
        with _online_without_steps(config, script):
            script.run_env()
    return found


@contextlib.contextmanager
def _env_py_step(doing: str):
    """An exception out of env.py (before any step) said as such, traceback kept."""
    try:
        yield
    except EnvPyFailed:
        raise
    except Exception as exc:
        raise EnvPyFailed(f"env.py failed before the first step ({doing}): "
                          f"{type(exc).__name__}: {exc}") from exc


def probe(ini: str, url: str) -> None:
    from alembic.script import ScriptDirectory

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)
    emit_private("databases", databases=_probe_databases(config, script), cwd=os.getcwd())


def drift(ini: str, url: str) -> None:
    """Compare each database env.py opens with its ``target_metadata``, as
    ``alembic check`` (autogenerate) compares them, and report the differences.

    env.py runs online as ``alembic check`` runs it, its ``context.configure``
    options (``include_object``, ``include_name``, ``compare_type``,
    ``compare_server_default``, ``include_schemas``) kept: in place of its
    migrations, Alembic's ``compare_metadata`` reads each database. Nothing is
    written: server sessions are read-only, a SQLite file is opened read-only and
    a missing one is not created, and no migration (nor version table) runs."""
    from alembic.autogenerate import compare_metadata
    from alembic.script import ScriptDirectory

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)
    _read_only_sessions()
    configured: list[dict] = []
    stand_ins: dict = {}
    reported = 0

    def seen(database_url, kw):
        configured.append(_described(database_url, kw) if database_url else
                          {"masked_url": "", "dialect": "unknown"})

    def compare(context, _run_migrations):
        nonlocal reported
        reported += 1
        database = configured[-1] if configured else {"masked_url": "", "dialect": "unknown"}
        migration = context.get_context()
        found = {"database": database["masked_url"], "dialect": database["dialect"]}
        metadata = migration.opts.get("target_metadata")
        raw = getattr(getattr(migration.bind, "connection", None), "dbapi_connection", None)
        if id(raw) in stand_ins and stand_ins[id(raw)][0] is raw:
            emit("drift", **found, state="unavailable",
                 reason=f"The SQLite database file {stand_ins[id(raw)][1]} does not exist "
                        "(it was not created).")
            return
        if metadata is None:
            emit("drift", **found, state="unavailable",
                 reason="env.py gives no target_metadata to context.configure, so there "
                        "are no models to compare the database with (autogenerate cannot "
                        "run either).")
            return
        try:
            current = sorted(migration.get_current_heads())
            differences = [_said(d, migration.dialect)
                           for d in _flat(compare_metadata(migration, metadata))]
        except Exception as exc:
            emit("drift", **found, state="unavailable",
                 reason=f"Alembic could not compare it: {type(exc).__name__}: {exc}{_where(exc)}")
            return
        emit("drift", **found, state="drift" if differences else "in_sync",
             differences=differences, current=current)

    with _wrapped_configure(seen, compare), _sqlite_read_only(stand_ins=stand_ins), \
            _env_py_step("asked to compare the database with the models"):
        with _online_without_steps(config, script):
            script.run_env()
    if not reported:
        raise EnvPyFailed("env.py never called context.run_migrations() online: "
                          "there is nothing to compare.")
    emit("files", files=_project_files(script.env_py_location))


def _online_without_steps(config, script):
    """env.py's context as ``alembic upgrade heads`` makes it, with no step to run."""
    from alembic.runtime.environment import EnvironmentContext

    return EnvironmentContext(config, script, fn=lambda _rev, _context: [], as_sql=False,
                              starting_rev=None, destination_rev="heads")


def _flat(diffs) -> list:
    """Alembic's diffs: a column's changes come as a list of tuples of their own."""
    flat = []
    for diff in diffs:
        flat.extend(diff if isinstance(diff, list) else [diff])
    return flat


def _said(diff: tuple, dialect) -> dict:
    """One difference as plain data; one this module cannot take apart, as Alembic
    prints it, rather than no answer at all."""
    try:
        return _difference(diff, dialect)
    except Exception:
        return {"kind": str(diff[0]), "detail": repr(diff[1:])}


def _difference(diff: tuple, dialect) -> dict:
    """One of Alembic's diff tuples as plain data: what kind, which table, column or
    named object, and the two sides in SQL as the database's dialect spells them."""
    kind = diff[0]
    out: dict = {"kind": kind}
    if kind in ("add_table", "remove_table"):
        table = diff[1]
        out.update(schema=table.schema, table=table.name,
                   columns=[c.name for c in table.columns])
    elif kind in ("add_column", "remove_column"):
        column = diff[3]
        out.update(schema=diff[1], table=diff[2], column=column.name,
                   type=_sql(column.type, dialect), nullable=column.nullable)
    elif kind in ("add_index", "remove_index"):
        index = diff[1]
        out.update(schema=index.table.schema if index.table is not None else None,
                   table=index.table.name if index.table is not None else None,
                   name=_name(index.name), unique=bool(index.unique),
                   columns=[_sql(e, dialect) if not hasattr(e, "name") else e.name
                            for e in index.expressions])
    elif kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        table = getattr(constraint, "table", None)
        out.update(schema=getattr(table, "schema", None), table=getattr(table, "name", None),
                   name=_name(constraint.name),
                   constraint=type(constraint).__name__,
                   columns=[c.name for c in getattr(constraint, "columns", ())])
        if kind.endswith("_fk"):
            # By name: a reflected key's referred table may not be in its MetaData.
            targets = [e.target_fullname.rsplit(".", 1) for e in constraint.elements]
            out.update(columns=[e.parent.name for e in constraint.elements],
                       referred_table=targets[0][0] if targets else None,
                       referred_columns=[t[-1] for t in targets])
    elif kind in ("modify_type", "modify_nullable", "modify_default", "modify_comment"):
        out.update(schema=diff[1], table=diff[2], column=diff[3],
                   database_side=_side(kind, diff[5], dialect),
                   model_side=_side(kind, diff[6], dialect))
        existing = diff[4] or {}
        if existing.get("existing_type") is not None:
            out["type"] = _sql(existing["existing_type"], dialect)
    elif kind in ("add_table_comment", "remove_table_comment"):
        table = diff[1]
        out.update(schema=table.schema, table=table.name, model_side=table.comment,
                   database_side=diff[2] if len(diff) > 2 else None)
    else:  # a comparator of a plugin: said as Alembic says it
        out["detail"] = repr(diff[1:])
    return out


def _side(kind: str, value, dialect):
    if kind == "modify_nullable":
        return bool(value)
    if kind == "modify_type":
        return _sql(value, dialect)
    if kind == "modify_default":
        if value is None or value is False:
            return None
        return _sql(getattr(value, "arg", value), dialect)
    return value


def _name(name) -> str | None:
    return None if name is None or type(name).__name__ == "_NoneName" else str(name)


def _sql(thing, dialect) -> str:
    """A type, default or expression as the database's dialect writes it in DDL."""
    if isinstance(thing, str):
        return thing
    text = getattr(thing, "text", None)
    if isinstance(text, str):
        return text
    from sqlalchemy.types import TypeEngine

    try:
        if isinstance(thing, TypeEngine):
            return str(thing.compile(dialect=dialect))
        if hasattr(thing, "compile"):
            return str(thing.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except Exception:
        pass
    return repr(thing)


def _read_only_sessions() -> None:
    """Every server session env.py opens starts read-only, by the SQL the dashboard's
    engines name for each dialect (``DASHBOARD_READ_ONLY_SQL``, a JSON object), so
    that nothing run while comparing can write."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    try:
        statements = json.loads(os.environ.get("DASHBOARD_READ_ONLY_SQL") or "{}")
    except ValueError:
        statements = {}

    @event.listens_for(Engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        statement = statements.get(dialect.name)
        if not statement:
            return None
        connection = dialect.connect(*cargs, **cparams)
        cursor = connection.cursor()
        cursor.execute(statement)
        cursor.close()
        connection.commit()  # a SET inside a transaction rolled back would not last
        return connection


def _project_files(env_py: str) -> list[str]:
    """The project's own source files this process imported (its models, its app) and
    env.py: what the dashboard watches to know when an answer is out of date."""
    outside = _outside_paths()
    here = os.path.realpath(__file__)
    files = {os.path.realpath(env_py)}
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if not name:
            continue
        path = os.path.realpath(name)
        if path != here and os.path.isfile(path) and \
                not any(path.startswith(p + os.sep) for p in outside):
            files.add(path)
    return sorted(files)


def run_action(ini: str, url: str, action: str, target: str, purge: bool = False,
               hold_file: str | None = None, lock_timeout: float = 60.0) -> None:
    """Run one action, reporting each step, every commit and each table written.

    env.py is first asked which databases it migrates (no step runs); the
    supervisor compares them with the one it locked and backs up, and says "go"
    only when they are that one. In the run itself, a database env.py did not
    name when asked is refused before its first step.

    With ``hold_file`` (a SQLite database) the whole action is one SQLite
    transaction begun with BEGIN IMMEDIATE before the backup is copied (by this
    process, on the supervisor's word): other writers wait from the start of the
    backup to the end of the run, so no write they saw commit can be lost, and a
    failure (or this process dying) rolls everything back. Nothing changes before
    the supervisor, having verified the backup, says "go" on stdin.
    """
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)
    watched = _watch_connections()

    def direction_of(step):
        return "up" if step.is_upgrade else "down"

    progress = _Progress(direction_of if action != "stamp" else lambda s: "stamp")

    def upgrade(rev, _context):
        return progress.steps(list(script._upgrade_revs(target, rev)))

    def downgrade(rev, _context):
        return progress.steps(list(script._downgrade_revs(target, rev)))

    def stamp(rev, _context):
        targets = tuple(t for t in target.split(",") if t)
        return progress.steps(list(script._stamp_revs(targets, rev)))

    fn = {"upgrade": upgrade, "downgrade": downgrade, "stamp": stamp}[action]
    held = _HeldSqlite(hold_file, lock_timeout) if hold_file else None
    try:
        databases = _probe_databases(config, script, held.path if held else None)
    except BaseException:
        if held is not None:
            held.release(commit=False)
        raise
    emit_private("databases", databases=databases, cwd=os.getcwd())
    watched[:] = [d["url"] for d in databases]
    if not _wait_for_go(held):
        if held is not None:
            held.release(commit=False)
        emit("aborted")
        return
    approved = {d["url"] for d in databases}
    heads: list[str] | None = None

    def check(url, kw):
        if url not in approved:
            shown = _described(url, kw)["masked_url"] if url else "no database"
            raise EnvPyFailed(f"env.py opened {shown}, which it did not name when asked "
                              "which database it migrates: refused before its first step.")
        kw["on_version_apply"] = (progress.finished,
                                  *_as_tuple(kw.get("on_version_apply")))

    def run(context, run_migrations):
        nonlocal heads
        run_migrations()
        # Read through env.py's own connection, inside its transaction.
        heads = list(context.get_context().get_current_heads())

    # Alembic begins and ends the transactions through env.py's own connection, as
    # `alembic upgrade` does; every commit is reported, so the supervisor never calls
    # a failure "rolled back" when something was committed.
    try:
        with _wrapped_configure(check, run):
            with EnvironmentContext(config, script, fn=fn, as_sql=False,
                                    starting_rev=None, destination_rev=target, purge=purge):
                script.run_env()
        if heads is None:
            raise EnvPyFailed("env.py never called context.run_migrations(): nothing ran.")
    except BaseException:
        if held is not None:
            held.release(commit=False)
            emit("rolled_back")
        raise
    if held is not None:
        held.release(commit=True)
        heads = held.heads
    emit("done", heads=sorted(heads))


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if callable(value):
        return (value,)
    return tuple(value)


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


def _watch_connections() -> list[str]:
    """Report, from every engine env.py may make: each server session opened, each
    commit (with the index of its database among those env.py named, when it is
    one), and each table a statement writes (for the discarded-writes count).
    Returns the list to fill with the databases' URLs."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    session_sql = os.environ.get("DASHBOARD_SESSION_SQL")
    touched: set[str] = set()
    urls: list[str] = []

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
        try:
            url = conn.engine.url.render_as_string(hide_password=False)
        except Exception:
            url = None
        emit("committed", database=urls.index(url) if url in urls else None)

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        match = _WRITE.match(statement or "")
        if match:
            name = match.group(1).strip('`"[]').split(".")[-1]
            if name not in touched:
                touched.add(name)
                emit("touched", table=name)

    return urls


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


def _outside_paths() -> set[str]:
    """Where Python and its installed packages live: not the project's own code."""
    import sysconfig

    paths = sysconfig.get_paths()
    return {os.path.realpath(paths[k]) for k in ("stdlib", "purelib", "platlib") if paths.get(k)}


def _where(exc: BaseException) -> str:
    """Where in the project's own code (env.py, a revision, the app) the error was
    raised: the deepest frame outside Python, its packages and this worker."""
    outside = _outside_paths()
    here = os.path.realpath(__file__)
    found = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            path = os.path.realpath(frame.filename)
            if path != here and not frame.filename.startswith("<") and \
                    not any(path.startswith(p + os.sep) for p in outside):
                found = frame
        if found is not None:
            break
        exc = exc.__cause__ or exc.__context__
    if found is None:
        return ""
    return f" (at {found.filename}, line {found.lineno})"


def main(argv: list[str] | None = None) -> int:
    _redirect_stdout()
    _add_environment_secrets()
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
    p_databases = sub.add_parser("databases")
    p_databases.add_argument("--ini", required=True)
    p_drift = sub.add_parser("drift")
    p_drift.add_argument("--ini", required=True)
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
        elif args.mode == "databases":
            probe(args.ini, url)
        elif args.mode == "drift":
            drift(args.ini, url)
        elif args.mode == "sql":
            offline_sql(args.ini, url, args.revision, tuple(args.direction or ("up", "down")))
        else:
            run_action(args.ini, url, args.action, args.target, args.purge,
                       hold_file=args.hold_sqlite, lock_timeout=args.lock_timeout)
    except BaseException as exc:
        error = str(exc) if isinstance(exc, EnvPyFailed) else f"{type(exc).__name__}: {exc}"
        emit("error", error=error.strip() + _where(exc), traceback=traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
