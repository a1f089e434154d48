"""Every setting of the dashboard, declared once with its default and help.

The README's settings table is checked against this tuple by a test, so a
setting cannot exist without documentation.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# In a checkout of the repository the sample project sits beside the package and is
# the default; an installed package (pip install .) has none: the current folder's.
FROM_CHECKOUT = (REPO_ROOT / "alembic.ini").is_file() and (REPO_ROOT / "app_models").is_dir()
DEFAULT_FOLDER = REPO_ROOT if FROM_CHECKOUT else Path.cwd()


@dataclass(frozen=True)
class Setting:
    name: str
    default: object
    help: str
    kind: type = str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DASHBOARD_ALEMBIC_INI",
        str(DEFAULT_FOLDER / "alembic.ini"),
        "The project: its alembic.ini, its pyproject.toml ([tool.alembic]) or its folder "
        "(alembic.ini, pyproject.toml with [tool.alembic], or Flask-Migrate's "
        "migrations/alembic.ini). Default: the sample application's (installed: the "
        "current folder's).",
    ),
    Setting(
        "DASHBOARD_DATABASE_URL",
        None,
        "SQLAlchemy URL of the target database. Default: the ini's sqlalchemy.url.",
    ),
    Setting(
        "DASHBOARD_INSTANCE_DIR",
        str(DEFAULT_FOLDER / "instance"),
        "Folder for the dashboard's own state store (dashboard.db and the audit journal "
        "audit.jsonl) and backups. Default: instance/ of the repository (installed: of the "
        "current folder).",
    ),
    Setting(
        "DASHBOARD_PYTHON",
        sys.executable,
        "Python interpreter of the project whose migrations these are; "
        "offline SQL and migration runs execute under it. Default: the dashboard's own.",
    ),
    Setting(
        "DASHBOARD_VERSION_TABLE",
        "alembic_version",
        "Name of Alembic's version table in the target database.",
    ),
    Setting(
        "DASHBOARD_ALLOWED_HOSTS",
        "localhost,127.0.0.1,[::1]",
        "Comma-separated Host header names the dashboard answers (DNS-rebinding guard).",
    ),
    Setting(
        "DASHBOARD_SUBPROCESS_TIMEOUT",
        60,
        "Seconds allowed for one offline-SQL or header-import subprocess (a preview's "
        "batch of offline SQL gets this once per 50 revisions).",
        int,
    ),
    Setting(
        "DASHBOARD_SEED_SAMPLE",
        True,
        "Create the sample SQLite database with demo rows on first start "
        "(only when pointed at the sample project and the file is missing).",
        bool,
    ),
    Setting(
        "DASHBOARD_TARGETS_FILE",
        None,
        "TOML file naming several targets (each an alembic.ini, a database URL or the "
        "environment variable holding one, a backup folder, read_only). Unset: one target "
        "from the settings above.",
    ),
    Setting(
        "DASHBOARD_BACKUP_RETENTION",
        20,
        "How many backups to keep; older ones are deleted after each new backup.",
        int,
    ),
    Setting(
        "DASHBOARD_LOCK_TIMEOUT",
        60,
        "Seconds a restore (or a run's own statements, where the engine allows) waits for "
        "another session's locks before it gives up and says so.",
    ),
    Setting(
        "DASHBOARD_BACKUP_VERIFY",
        "full",
        "How deeply a fresh backup is checked before anything runs: 'full' restores it "
        "into a scratch database (servers) or runs integrity_check (SQLite); 'quick' reads "
        "the file alone (archive listing, revisions, checksum). See the README for the cost.",
    ),
    Setting(
        "DASHBOARD_BACKUP_METHOD",
        "dump",
        "How a MariaDB database is copied: 'dump' (mariadb-dump, from anywhere; its full "
        "check loads every row, about 6x the dump's time on 0.5 GiB) or 'physical' "
        "(mariadb-backup's copy of the schema's files, checked by a private scratch server "
        "with CHECK TABLE on every table, about 1.4x: needs the server on this machine). "
        "Per target: backup_method.",
    ),
    Setting(
        "DASHBOARD_FLASK_APP",
        "",
        "A Flask-Migrate project's app, as `flask --app` takes it; the worker loads the "
        "app and runs Flask-Migrate's configuration. Per target: flask_app. Set by "
        "`flask migration-dashboard`.",
    ),
    Setting(
        "DASHBOARD_BROKER_URL",
        None,
        "Redis URL of the Celery broker (and result backend) for rollouts: set, each "
        "target's run is a task carried out by `celery -A dashboard.fleet worker` "
        "processes; unset, by runner processes on this machine.",
    ),
    Setting(
        "DASHBOARD_FLEET_QUEUE",
        "migration-dashboard",
        "The Celery queue rollout runs are sent to and fleet workers consume.",
    ),
    Setting(
        "DASHBOARD_FLEET_VISIBILITY_TIMEOUT",
        60,
        "Seconds after which Redis hands a task out again when the worker that took it "
        "stopped renewing it (killed, machine lost); a worker renews its task every few "
        "seconds while it runs. Dashboard and workers should agree.",
        int,
    ),
    Setting(
        "DASHBOARD_SECRET_KEY",
        None,
        "Secret for session and CSRF signing. Default: a random key kept in the instance folder.",
    ),
)


def _coerce(setting: Setting, raw: str) -> object:
    if setting.kind is bool:
        return raw.strip().lower() not in ("0", "false", "no", "off", "")
    if setting.kind is int:
        return int(raw)
    return raw


def settings_from_environ(environ: dict[str, str] | None = None) -> dict[str, object]:
    """Each setting's value: the environment's when set, else its default."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        values[setting.name] = setting.default if raw in (None, "") else _coerce(setting, raw)
    return values
