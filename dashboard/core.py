"""The dashboard's long-lived objects for one configuration, Flask-free.

The web app keeps one ``Dashboard`` in ``app.extensions``; the command line
builds its own from the same settings. Services take what they need from it
as explicit arguments.
"""

from __future__ import annotations

import os
import subprocess

from dashboard.errors import ConfigurationError
from dashboard.services import alembic_process
from dashboard.services.project import Project, load_project
from dashboard.services.revisions import History, HistoryCache
from dashboard.settings import REPO_ROOT


class Dashboard:
    """One target database and its project."""

    def __init__(self, settings: dict, *, name: str = "default", read_only: bool = False,
                 backup_dir: str | None = None, lock_dir: str | None = None):
        self.settings = dict(settings)
        self.name = name
        self.read_only = read_only
        self.backup_dir = backup_dir
        self.lock_dir = lock_dir
        self.instance_dir = str(settings["DASHBOARD_INSTANCE_DIR"])
        self.timeout = float(settings["DASHBOARD_SUBPROCESS_TIMEOUT"])
        self._history_cache = HistoryCache(self._import_headers)
        self._sql_cache: dict = {}

    def project(self) -> Project:
        return load_project(
            str(self.settings["DASHBOARD_ALEMBIC_INI"]),
            self.settings.get("DASHBOARD_DATABASE_URL") or None,
            version_table=str(self.settings["DASHBOARD_VERSION_TABLE"]),
            python=str(self.settings["DASHBOARD_PYTHON"]),
        )

    def history(self, project: Project | None = None) -> History:
        return self._history_cache.load(project or self.project())

    def read_state(self):
        """The project, its parsed history and the database's status, read now."""
        from dashboard.services.status import migration_status

        project = self.project()
        history = self.history(project)
        return project, history, migration_status(project, history)

    def revision_detail(self, revision_id: str):
        """One revision's page data (with its offline SQL), as the pages and API show it."""
        from dashboard.services.inspection import revision_detail
        from dashboard.services.revisions import resolve_revision

        project, history, status = self.read_state()
        script = resolve_revision(history, revision_id)
        detail = revision_detail(project, history, script, status,
                                 self.offline_sql(project, script))
        return project, status, detail

    def target(self, project: Project | None = None):
        """What the guard needs to change this project's database."""
        from dashboard.services.operations import Target

        return Target(project or self.project(), self.instance_dir,
                      int(self.settings.get("DASHBOARD_BACKUP_RETENTION", 20)),
                      backup_folder=self.backup_dir, lock_dir=self.lock_dir,
                      read_only=self.read_only)

    def reap_interrupted_runs(self) -> list[str]:
        """Mark runs whose process died as failed; at start-up and before actions."""
        from dashboard.services.operations import reap_interrupted_runs

        try:
            return reap_interrupted_runs(self.target())
        except ConfigurationError:
            return []

    def _import_headers(self, project: Project, paths):
        return alembic_process.import_headers(project, paths, self.timeout)

    def offline_sql(self, project: Project, revision) -> alembic_process.OfflineSql:
        """Offline SQL of one revision, cached until its file or env.py changes."""
        env_py = os.path.join(project.script_location, "env.py")
        key = (
            revision.revision,
            _mtime(revision.path),
            _mtime(env_py),
            project.database_url,
            project.ini_path,
        )
        if key not in self._sql_cache:
            if len(self._sql_cache) > 256:
                self._sql_cache.clear()
            self._sql_cache[key] = alembic_process.offline_sql(
                project, revision.revision, self.timeout
            )
        return self._sql_cache[key]

    def ensure_sample_database(self) -> bool:
        """On first start against the sample project, create its database at an
        early revision with demo rows, so the page has something real to show."""
        if not self.settings.get("DASHBOARD_SEED_SAMPLE"):
            return False
        ini = os.path.realpath(str(self.settings["DASHBOARD_ALEMBIC_INI"]))
        if ini != os.path.realpath(REPO_ROOT / "alembic.ini"):
            return False
        try:
            project = self.project()
        except ConfigurationError:
            return False
        from sqlalchemy.engine import make_url

        url = make_url(project.database_url)
        if url.get_backend_name() != "sqlite" or not url.database:
            return False
        if os.path.exists(url.database):
            return False
        subprocess.run(
            [project.python, "-m", "app_models.seed", project.database_url, "--ini", ini],
            cwd=str(REPO_ROOT), check=True, timeout=120,
            stdin=subprocess.DEVNULL, capture_output=True,
        )
        return True


class Registry:
    """Every target the dashboard serves: one from the DASHBOARD_* settings, or
    the named targets of ``DASHBOARD_TARGETS_FILE``. Each named target keeps
    its own store (runs, backups, audit) under ``<instance>/targets/<name>``;
    locks live in the shared instance folder, so two targets naming one
    database still take one lock."""

    def __init__(self, settings: dict, environ=None):
        from dashboard.targets import load_targets_file

        environ = os.environ if environ is None else environ
        self.settings = dict(settings)
        root = str(settings["DASHBOARD_INSTANCE_DIR"])
        path = settings.get("DASHBOARD_TARGETS_FILE")
        self.targets: dict[str, Dashboard] = {}
        self.errors: dict[str, str] = {}
        if not path:
            self.default = "default"
            self.targets["default"] = Dashboard(self.settings)
            self.multiple = False
            return
        configs, self.default = load_targets_file(str(path))
        self.multiple = True
        for config in configs:
            overrides = {
                "DASHBOARD_ALEMBIC_INI": config.alembic_ini,
                "DASHBOARD_INSTANCE_DIR": os.path.join(root, "targets", config.name),
                "DASHBOARD_SEED_SAMPLE": False,
            }
            if config.python:
                overrides["DASHBOARD_PYTHON"] = config.python
            if config.version_table:
                overrides["DASHBOARD_VERSION_TABLE"] = config.version_table
            try:
                overrides["DASHBOARD_DATABASE_URL"] = config.resolve_url(environ)
            except ConfigurationError as exc:
                self.errors[config.name] = exc.message
                overrides["DASHBOARD_DATABASE_URL"] = None
            self.targets[config.name] = Dashboard(
                {**self.settings, **overrides}, name=config.name, read_only=config.read_only,
                backup_dir=config.backup_dir, lock_dir=root,
            )

    def get(self, name: str | None = None) -> Dashboard:
        from dashboard.errors import NotFound

        dashboard = self.targets.get(name or self.default)
        if dashboard is None:
            raise NotFound(f"No target named '{name}'. Known: {', '.join(self.targets)}.")
        if dashboard.name in self.errors:
            raise ConfigurationError(self.errors[dashboard.name])
        return dashboard


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0
