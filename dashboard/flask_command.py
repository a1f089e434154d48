"""``flask migration-dashboard``: the dashboard on the Flask-Migrate application at hand.

Registered through Flask's ``flask.commands`` entry point (pyproject.toml), so
every application whose environment has the dashboard installed gains the
command. It hands the dashboard the application as ``flask --app`` named it
(``DASHBOARD_FLASK_APP``) and Flask-Migrate's own folder as the project, then
serves as ``migration-dashboard serve`` does.
"""

from __future__ import annotations

import os
import re
import sys

import click
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext

from dashboard.cli import DEFAULT_HOST, DEFAULT_PORT, EXIT_ERROR, MessageWriter, serve

DEFAULT_APP_FILES = ("wsgi.py", "app.py")  # where `flask` looks without --app, in order


def app_import_string(info: ScriptInfo) -> str | None:
    """The application as ``flask --app`` names it, made independent of the current
    folder: its module or file path absolute, its ``:name`` or ``:factory()`` kept."""
    given = info.app_import_path
    if not given:
        given = next((name for name in DEFAULT_APP_FILES if os.path.isfile(name)), None)
    if not given:  # an application made by a custom FlaskGroup's create_app
        return None
    # Split as flask.cli.ScriptInfo.load_app does: at a ':' not followed by a separator.
    path, *name = re.split(r":(?![\\/])", given, maxsplit=1)
    return ":".join([os.path.abspath(path), *name])


@click.command("migration-dashboard")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, type=click.IntRange(0, 65535), show_default=True,
              help="Port to listen on (0: any free one).")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host that is not local. The dashboard has no login: whoever "
                   "reaches it can run migrations.")
@click.option("--instance-dir", metavar="PATH",
              help="The dashboard's instance folder (default: DASHBOARD_INSTANCE_DIR).")
@with_appcontext
def migration_dashboard(host: str, port: int, allow_remote: bool,
                        instance_dir: str | None) -> None:
    """Serve the Migration Dashboard on this application's migrations (Flask-Migrate)."""
    ctx = click.get_current_context()
    writer = MessageWriter(sys.stdout, sys.stderr)
    migrate = current_app.extensions.get("migrate")
    if migrate is None:
        writer.warn(f"error: the application {current_app.import_name!r} has no Flask-Migrate: "
                    "set it up with Migrate(app, db) and `flask db init`, or run "
                    "`migration-dashboard serve PROJECT` on an Alembic project.")
        ctx.exit(EXIT_ERROR)
    ctx.exit(serve(os.path.abspath(migrate.directory), host=host, port=port,
                   allow_remote=allow_remote, instance_dir=instance_dir,
                   flask_app=app_import_string(ctx.ensure_object(ScriptInfo)), writer=writer))
