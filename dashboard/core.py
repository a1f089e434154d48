"""Targets: each named database with its project, Flask-free.

A *target* is one database and the Alembic project that migrates it: its
configuration, its project, its status, and what the guard needs to change
it (where its backups go, its lock, whether it is read-only). The web app
keeps a ``Registry`` of them in ``app.extensions``; the command line builds
its own from the same settings. The revision a run goes to is its
*destination*, never its target.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import secrets
import subprocess
import threading
import time
from dataclasses import replace

from dashboard.errors import ConfigurationError, DashboardError
from dashboard.services import alembic_process
from dashboard.services.instance_files import read_json_object, write_json_object
from dashboard.services.project import Project, load_project
from dashboard.services.revisions import RACY_NS, History, HistoryCache
from dashboard.settings import REPO_ROOT

log = logging.getLogger(__name__)

SQL_CACHE_ENTRIES = 4096  # offline SQL of one revision in one direction each
FAILED_PROBE_SECONDS = 5.0  # how long "env.py could not be asked" is believed
# How long a drift answer is shown without comparing again, while the version table
# and the project's files stay as they were (a change made by hand to the schema is
# seen after this, or at once with "Check again").
DRIFT_SECONDS = 300.0
ENV_PY_ANSWER_FILE = "env-py-answer.json"  # in the instance folder


class Target:
    """One database and its project: config, project, status, and the guard's needs."""

    def __init__(self, settings: dict, *, name: str = "default", read_only: bool = False,
                 backup_dir: str | None = None, lock_dir: str | None = None,
                 env: dict[str, str] | None = None, labels: tuple[str, ...] = ()):
        self.settings = dict(settings)
        self.labels = tuple(labels)
        self.env = dict(env or {})  # for the project's process; may hold secrets
        self.name = name
        self.read_only = read_only
        self.backup_folder = backup_dir  # None: <instance_dir>/backups
        self.lock_dir = lock_dir
        self.instance_dir = str(settings["DASHBOARD_INSTANCE_DIR"])
        self.timeout = float(settings["DASHBOARD_SUBPROCESS_TIMEOUT"])
        self.retention = int(settings.get("DASHBOARD_BACKUP_RETENTION", 20))
        self._history_cache = HistoryCache(
            self._import_headers, os.path.join(self.instance_dir, "history-cache.json"))
        self._sql_cache: dict = {}
        self._pinned: Project | None = None
        self._project_read: tuple | None = None  # (files' signature, Project)
        self._env_py_cache: dict = {}
        self._drift_cache: dict = {}
        # env.py's last answer as kept on disk (masked), for pages only: see _remembered.
        self._env_py_file = os.path.join(self.instance_dir, ENV_PY_ANSWER_FILE)
        self._env_py_on_disk: dict | None = None
        self._asking: set = set()  # questions to env.py being asked in the background
        self._asking_lock = threading.Lock()

    @property
    def backup_dir(self) -> str:
        return self.backup_folder or os.path.join(self.instance_dir, "backups")

    @property
    def locks_dir(self) -> str:
        """Shared by every target of one dashboard, so one database takes one lock."""
        return self.lock_dir or self.instance_dir

    def check_writable(self) -> None:
        from dashboard.errors import Forbidden

        if self.read_only:
            raise Forbidden("This target is read-only: actions, restores and backups are "
                            "disabled for it in the targets file.")

    def pinned(self, project: Project) -> Target:
        """This target with its project read once: what one action works on throughout."""
        bound = copy.copy(self)
        bound._pinned = project
        return bound

    def project(self) -> Project:
        """The project, and its database: ``DASHBOARD_DATABASE_URL`` (handed to env.py
        as ``sqlalchemy.url``) when set, else the one env.py names when asked."""
        if self._pinned is not None:
            return self._pinned
        given = self.settings.get("DASHBOARD_DATABASE_URL") or None
        project = self._read_project(given)
        if given:
            return project
        asked = self.env_py_databases(replace(project, hands_url=False))
        if asked.databases:
            return replace(project, database_url=asked.databases[0].url, hands_url=False)
        if project.database_url:  # env.py cannot say: the ini's sqlalchemy.url, handed over
            return project
        raise ConfigurationError(
            "No database URL: env.py could not be asked which database it migrates."
            + (f" {project.url_problem}" if project.url_problem else ""),
            detail=f"{asked.error}\n\n{asked.traceback}".strip() + "\n\nSet "
                   "DASHBOARD_DATABASE_URL, or let env.py (or the ini's sqlalchemy.url) "
                   "name the database.")

    def _read_project(self, given: str | None) -> Project:
        """``load_project``'s answer, read again only when a file it may have read
        changed (or the working folder, against which a relative SQLite path is
        read): a warm request does not parse the ini again."""
        path = os.path.abspath(str(self.settings["DASHBOARD_ALEMBIC_INI"]))
        signature = (os.getcwd(), _signatures(_project_files(path)))
        read = self._project_read
        if read is not None and read[0] == signature and os.path.isdir(read[1].script_location):
            return read[1]
        project = load_project(
            path,
            given,
            version_table=str(self.settings["DASHBOARD_VERSION_TABLE"]),
            python=str(self.settings["DASHBOARD_PYTHON"]),
            lock_timeout=float(self.settings.get("DASHBOARD_LOCK_TIMEOUT") or 60),
            backup_verify=str(self.settings.get("DASHBOARD_BACKUP_VERIFY") or "full"),
            backup_method=str(self.settings.get("DASHBOARD_BACKUP_METHOD") or "dump"),
            flask_app=str(self.settings.get("DASHBOARD_FLASK_APP") or "") or None,
            env=self.env,
            require_url=False,
        )
        # A file changed within the last tick may change again keeping its times.
        settled = all(s is None or max(s[2], s[3]) < time.time_ns() - RACY_NS
                      for s in signature[1])
        self._project_read = (signature, project) if settled else None
        return project

    def env_py_databases(self, project: Project, wait: bool = True
                         ) -> alembic_process.EnvPyDatabases | None:
        """Which databases env.py migrates, asked in a subprocess: cached until env.py,
        the ini or the environment handed to the project changes (an answer that is a
        failure, such as a server that is down, for a few seconds only).

        ``wait=False``: the cached answer, else the one a previous start kept on disk
        for the same question (masked: for showing only), else None, the question
        being asked in the background meanwhile (for pages that only show it: a run
        asks again anyway)."""
        key = (project.ini_path, _mtime(project.ini_path),
               _mtime(os.path.join(project.script_location, "env.py")), project.python,
               tuple(sorted(alembic_process.worker_environment(project).items())))
        cached = self._env_py_cache.get(key)
        if cached is not None and (cached[1].databases or
                                   time.monotonic() - cached[0] < FAILED_PROBE_SECONDS):
            return cached[1]
        if not wait:
            remembered = self._remembered(key)
            if remembered is not None:
                return remembered
            with self._asking_lock:
                if key in self._asking:
                    return None
                self._asking.add(key)
            threading.Thread(target=self._ask_env_py, args=(key, project, True), daemon=True,
                             name=f"ask-env-py-{self.name}").start()
            return None
        return self._ask_env_py(key, project)

    def _ask_env_py(self, key, project: Project, background: bool = False
                    ) -> alembic_process.EnvPyDatabases:
        try:
            asked = alembic_process.env_py_databases(project, self.timeout, background)
            if len(self._env_py_cache) > 16:
                self._env_py_cache.clear()
            self._env_py_cache[key] = (time.monotonic(), asked)
            if asked.databases:
                self._remember(key, asked, project)
            return asked
        finally:
            with self._asking_lock:
                self._asking.discard(key)

    def _remembered(self, key) -> alembic_process.EnvPyDatabases | None:
        """What env.py answered a previous start asking the same question (the same
        ini, env.py, interpreter and environment, compared by a salted hash: no
        value of the environment is kept), its URLs masked: for showing only, never
        for finding the database a run works on (those callers wait for env.py)."""
        if self._env_py_on_disk is None:
            self._env_py_on_disk = read_json_object(self._env_py_file)
        kept = self._env_py_on_disk
        try:
            if kept.get("format") != 1 or kept.get("key") != _question_hash(key, kept["salt"]):
                return None
            return alembic_process.EnvPyDatabases(tuple(
                alembic_process.EnvDatabase(url=d["masked_url"] + "", masked_url=d["masked_url"],
                                            dialect=d["dialect"] + "",
                                            version_table=d["version_table"] + "")
                for d in kept["databases"]))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring %s (%s): env.py is asked again", self._env_py_file, exc)
            self._env_py_on_disk = {}
            return None

    def _remember(self, key, asked: alembic_process.EnvPyDatabases, project: Project) -> None:
        salt = secrets.token_hex(16)
        body = {"format": 1, "salt": salt, "key": _question_hash(key, salt), "databases": [
            {"masked_url": project.scrub(d.masked_url), "dialect": d.dialect,
             "version_table": d.version_table} for d in asked.databases]}
        write_json_object(self._env_py_file, body, "env.py's answer")
        self._env_py_on_disk = body

    def guarded_databases(self, project: Project) -> tuple[Project, ...]:
        """Every database a run must lock, back up and restore as one: ``project``'s
        own, then each other database env.py migrates (the multidb template), each
        as a project of its own. One when the database was given to the dashboard
        (handed to env.py; any other env.py opens is refused) or env.py names one."""
        if project.hands_url or not project.database_url:
            return (project,)
        asked = self.env_py_databases(replace(project, hands_url=False))
        found = {project.engine.identity(project.database_url): project}
        for database in asked.databases:
            identity = database.identity
            if identity not in found:
                found[identity] = replace(project, database_url=database.url)
        return tuple(found.values())

    def history(self, project: Project | None = None) -> History:
        return self._history_cache.load(project or self.project())

    def read_state(self, ask_env_py: bool = False):
        """The project, its parsed history and the database's status, read now; with
        ``ask_env_py``, also which databases env.py migrates (the overview shows it;
        None while it is first asked, when the database was given to the dashboard)."""
        from dashboard.services.status import migration_status

        project = self.project()
        history = self.history(project)
        status = migration_status(project, history)
        if ask_env_py:
            # Given the database, the answer is only shown (a run asks env.py again before
            # its backup): the page does not wait for it the first time.
            status.env_py = self.env_py_databases(project, wait=not project.hands_url)
            databases = self.guarded_databases(project)
            if len(databases) > 1:
                status.guarded = tuple(d.masked_url for d in databases)
        return project, history, status

    def drift(self, project: Project, status, wanted: str = "now"):
        """The database against the project's models (services/drift.py): compared in
        a subprocess (``wanted="fresh"``), or the last answer while the version table,
        env.py, the ini and every project file the check read are as they were and it
        is recent ("now" compares only without such an answer; "cached" returns None
        then)."""
        from dashboard.services import drift

        key = (project.ini_path, _mtime(project.ini_path), project.toml_path,
               _mtime(project.toml_path or ""), project.python, project.database_url,
               str(status.state), tuple(status.current),
               tuple(sorted(alembic_process.worker_environment(project).items())))
        cached = self._drift_cache.get(key)
        if wanted != "fresh" and cached is not None:
            taken, files, report = cached
            lasts = DRIFT_SECONDS if report.files else FAILED_PROBE_SECONDS
            if time.monotonic() - taken < lasts and \
                    all(_mtime(path) == mtime for path, mtime in files):
                return report
        if wanted == "cached":
            return None
        taken, started = time.monotonic(), time.time_ns()
        report = drift.check_drift(project, status, self.timeout)
        files = tuple((f, _mtime(f)) for f in report.files)
        if len(self._drift_cache) > 16:
            self._drift_cache.clear()
        # A file changed while it was being read: this answer may be of the old one.
        if all(mtime < started for _, mtime in files):
            self._drift_cache[key] = (taken, files, report)
        return report

    def revision_detail(self, revision_id: str, sql: str = "now"):
        """One revision's page data, as the pages and API show it, with its offline
        SQL: generated now (``sql="now"``), or only if already generated ("cached":
        ``detail.sql`` is None otherwise, for the page to fetch it in a fragment)."""
        from dashboard.services.findings import revision_findings
        from dashboard.services.inspection import revision_detail
        from dashboard.services.revisions import resolve_revision

        project, history, status = self.read_state()
        script = resolve_revision(history, revision_id)
        offline = (self.offline_sql(project, script) if sql == "now"
                   else self.cached_offline_sql(project, script))
        findings = revision_findings(project, script.revision, offline) if offline else None
        detail = revision_detail(project, history, script, status, offline, findings)
        return project, status, detail

    def reap_interrupted_runs(self) -> list[str]:
        """Mark runs whose process died as failed; at start-up and before actions."""
        from dashboard.services.recovery import reap_interrupted_runs

        try:
            return reap_interrupted_runs(self)
        except ConfigurationError:
            return []

    def settle_store(self) -> None:
        """At start-up: list again any backup whose record a lost store took with it,
        and settle runs left unfinished. A store that cannot be used (a read-only or
        full folder, a damaged file) does not stop the start: every page that needs
        it says why (503/507) until it can be used."""
        from dashboard.services.backups import import_manifests

        try:
            project = self.project()
            import_manifests(self.instance_dir, self.backup_dir, project.masked_url)
            self.reap_interrupted_runs()
        except DashboardError as exc:
            log.warning("target %s: %s", self.name, exc.message)

    def _import_headers(self, project: Project, paths):
        return alembic_process.import_headers(project, paths, self.timeout)

    def offline_sql(self, project: Project, revision) -> alembic_process.OfflineSql:
        """Offline SQL of one revision, both ways, cached until its file or env.py changes."""
        found = self._step_sql(project, [revision], ("up", "down"))
        return alembic_process.OfflineSql.of(found[revision.revision, "up"],
                                             found[revision.revision, "down"])

    def upgrade_sql(self, project: Project, revisions) -> dict[str, alembic_process.StepSql]:
        """Each revision's upgrade SQL: what is not cached comes from one subprocess."""
        return self.step_sql(project, revisions, "upgrade")

    def step_sql(self, project: Project, revisions, direction: str
                 ) -> dict[str, alembic_process.StepSql]:
        """Each revision's SQL in one direction ("upgrade" or "downgrade"): what is not
        cached comes from one subprocess."""
        short = direction[:-len("grade")]
        found = self._step_sql(project, revisions, (short,))
        return {r.revision: found[r.revision, short] for r in revisions}

    def cached_step_sql(self, project: Project, revisions, direction: str
                        ) -> dict[str, alembic_process.StepSql] | None:
        """Each revision's SQL in one direction if all are cached, else None."""
        keys = self._sql_keys(project, revisions, (direction[:-len("grade")],))
        found = {pair[0]: self._sql_cache.get(key) for pair, key in keys.items()}
        return None if any(step is None for step in found.values()) else found

    def cached_offline_sql(self, project: Project, revision) -> alembic_process.OfflineSql | None:
        """Offline SQL of one revision if both directions are cached, else None."""
        keys = self._sql_keys(project, [revision], ("up", "down"))
        found = {pair: self._sql_cache.get(key) for pair, key in keys.items()}
        if any(step is None for step in found.values()):
            return None
        return alembic_process.OfflineSql.of(found[revision.revision, "up"],
                                             found[revision.revision, "down"])

    def cached_downgrade_sql(self, project: Project, revisions
                             ) -> dict[str, alembic_process.StepSql] | None:
        """Each revision's downgrade SQL if all are cached, else None."""
        return self.cached_step_sql(project, revisions, "downgrade")

    def downgrade_sql(self, project: Project, revisions) -> dict[str, alembic_process.StepSql]:
        """Each revision's downgrade SQL: what is not cached comes from one subprocess."""
        return self.step_sql(project, revisions, "downgrade")

    def _step_sql(self, project: Project, revisions, directions: tuple[str, ...]
                  ) -> dict[tuple[str, str], alembic_process.StepSql]:
        keys = self._sql_keys(project, revisions, directions)
        missing = list(dict.fromkeys(name for (name, _), key in keys.items()
                                     if key not in self._sql_cache))
        fresh = (alembic_process.offline_sql(project, missing, self.timeout, directions)
                 if missing else {})
        if len(self._sql_cache) + len(fresh) > SQL_CACHE_ENTRIES:
            self._sql_cache.clear()
        for pair, step in fresh.items():
            if step.lasting:  # a timeout is tried again next time
                self._sql_cache[keys[pair]] = step
        return {pair: fresh.get(pair) or self._sql_cache[key] for pair, key in keys.items()}

    def _sql_keys(self, project: Project, revisions, directions: tuple[str, ...]) -> dict:
        """Cache keys: a revision's SQL holds until its file, env.py or the database changes."""
        env_mtime = _mtime(os.path.join(project.script_location, "env.py"))
        return {
            (r.revision, direction): (r.revision, direction, _mtime(r.path), env_mtime,
                                      project.database_url, project.ini_path)
            for r in revisions for direction in directions
        }

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
        # Only a database file that does not exist yet: never over anything.
        if not project.engine.missing_file(project.database_url):
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
        self.targets: dict[str, Target] = {}
        self.errors: dict[str, str] = {}
        if not path:
            self.default = "default"
            self.targets["default"] = Target(self.settings)
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
            if config.backup_verify:
                overrides["DASHBOARD_BACKUP_VERIFY"] = config.backup_verify
            if config.backup_method:
                overrides["DASHBOARD_BACKUP_METHOD"] = config.backup_method
            if config.flask_app:
                overrides["DASHBOARD_FLASK_APP"] = config.flask_app
            env: dict[str, str] = {}
            try:
                overrides["DASHBOARD_DATABASE_URL"] = config.resolve_url(environ)
                env = config.resolve_env(environ)
            except ConfigurationError as exc:
                self.errors[config.name] = exc.message
                overrides.setdefault("DASHBOARD_DATABASE_URL", None)
            self.targets[config.name] = Target(
                {**self.settings, **overrides}, name=config.name, read_only=config.read_only,
                backup_dir=config.backup_dir, lock_dir=root, env=env, labels=config.labels,
            )

    def get(self, name: str | None = None) -> Target:
        from dashboard.errors import NotFound

        target = self.targets.get(name or self.default)
        if target is None:
            raise NotFound(f"No target named '{name}'. Known: {', '.join(self.targets)}.")
        if target.name in self.errors:
            raise ConfigurationError(self.errors[target.name])
        return target


def _question_hash(key, salt: str) -> str:
    return hashlib.blake2b(repr(key).encode("utf-8", "surrogatepass"),
                           salt=bytes.fromhex(salt)[:16]).hexdigest()


def _project_files(path: str) -> tuple[str, ...]:
    """Every file ``load_project`` may read or look for, given what
    DASHBOARD_ALEMBIC_INI names (an ini, a pyproject.toml or a folder)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    return (path, *(os.path.join(folder, name) for name in (
        "alembic.ini", "pyproject.toml", "env.py", os.path.join("migrations", "alembic.ini"),
        os.path.join("migrations", "pyproject.toml"), os.path.join("migrations", "env.py"),
        "migrations")))


def _signatures(paths: tuple[str, ...]) -> tuple:
    """(device, inode, mtime, ctime, size) of each path, None where there is none:
    an edit in place shows in its change time even with its mtime put back."""
    found = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            found.append(None)
            continue
        found.append((stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns,
                      stat.st_size))
    return tuple(found)


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0
