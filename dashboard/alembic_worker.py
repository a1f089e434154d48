"""Runs Alembic against a project, under the project's own interpreter.

Started by file path as ``DASHBOARD_PYTHON alembic_worker.py MODE ...`` so it
imports only the standard library, Alembic and SQLAlchemy (the project's
environment has no Flask). It reports as JSON lines on its standard output;
anything the project's env.py prints goes to standard error instead. The
database URL comes in the ``DASHBOARD_TARGET_URL`` environment variable, never
on the command line, where any user could read a password in the process list.

Modes:
  headers --ini INI FILE...         import revision files whose headers are not literals
  sql --ini INI --revision R        the SQL of one revision's upgrade and downgrade (offline)
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
_protocol = sys.stdout


def emit(event: str, **fields) -> None:
    fields["event"] = event
    fields.setdefault("ts", time.time())
    _protocol.write(json.dumps(fields, default=str) + "\n")
    _protocol.flush()


def _redirect_stdout() -> None:
    """Keep fd 1 for the protocol; route everything else printed to stderr."""
    global _protocol
    _protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _config(ini: str, url: str | None):
    from alembic.config import Config

    config = Config(ini, stdout=sys.stderr)
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


def offline_sql(ini: str, url: str, revision: str) -> None:
    """Emit the SQL of the revision's upgrade and of its downgrade, each on its own."""
    from alembic.script import ScriptDirectory

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)
    target = script.get_revision(revision)
    for direction in ("up", "down"):
        try:
            sql = _offline_step_sql(config, script, target, direction)
        except BaseException as exc:
            emit("sql", direction=direction, sql=None, error=f"{type(exc).__name__}: {exc}")
        else:
            emit("sql", direction=direction, sql=sql, error=None)


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


def run_action(ini: str, url: str, action: str, target: str, purge: bool = False) -> None:
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    config = _config(ini, url)
    script = ScriptDirectory.from_config(config)

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
    engine = create_engine(url, poolclass=NullPool)
    try:
        # One transaction for the whole action, handed to env.py through
        # config.attributes: on PostgreSQL, whose DDL is transactional, a failing
        # step rolls back every step before it too, so the database ends at the
        # revision it started from, never half-way. On SQLite and MariaDB, where
        # DDL commits on its own, the dashboard restores its backup instead.
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            with EnvironmentContext(config, script, fn=fn, as_sql=False, starting_rev=None,
                                    destination_rev=target, purge=purge):
                script.run_env()
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
        emit("done", heads=sorted(heads))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    _redirect_stdout()
    parser = argparse.ArgumentParser(prog="alembic_worker")
    sub = parser.add_subparsers(dest="mode", required=True)
    p_headers = sub.add_parser("headers")
    p_headers.add_argument("--ini", required=True)
    p_headers.add_argument("paths", nargs="+")
    p_sql = sub.add_parser("sql")
    p_sql.add_argument("--ini", required=True)
    p_sql.add_argument("--revision", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--ini", required=True)
    p_run.add_argument("--action", choices=("upgrade", "downgrade", "stamp"), required=True)
    p_run.add_argument("--target", required=True)
    p_run.add_argument("--purge", action="store_true")
    args = parser.parse_args(argv)
    url = os.environ.get(URL_ENV, "")
    try:
        if args.mode == "headers":
            read_headers(args.ini, args.paths)
        elif args.mode == "sql":
            offline_sql(args.ini, url, args.revision)
        else:
            run_action(args.ini, url, args.action, args.target, args.purge)
    except BaseException as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}".strip(),
             traceback=traceback.format_exc(limit=8))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
