"""Where the migrations and the database are: read from the project as Alembic reads it.

Reading goes through Alembic's own ``Config``, for an alembic.ini and for a
pyproject.toml's ``[tool.alembic]`` alike, so every option Alembic honours
(``%(here)s``, ``version_locations`` and their separator, recursive
locations, ``prepend_sys_path``) means here what it means to ``alembic``.
It never loads ``env.py``: that is the project's code and runs only in a
subprocess, where the worker builds the same ``Config`` from ``ini_path``
and ``toml_path``.
"""

from __future__ import annotations

import configparser
import os
import tomllib
import warnings
from dataclasses import dataclass

from alembic.config import Config
from alembic.util import CommandError, coerce_resource_to_filename
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from dashboard.engines import DatabaseEngine, backend_name, engine_for
from dashboard.engines.sqlite import absolute_sqlite_url
from dashboard.errors import ConfigurationError
from dashboard.redact import mask_url, password_of, scrub_secrets, secret_forms, secrets_in_values

PYPROJECT = "pyproject.toml"
ALEMBIC_INI = "alembic.ini"
# Flask-Migrate's `flask db init` writes its project here, ini included.
FLASK_MIGRATE_INI = os.path.join("migrations", "alembic.ini")
BACKUP_METHODS = ("dump", "physical")
WHAT_TO_DO = "set DASHBOARD_DATABASE_URL, or let env.py supply the URL"


@dataclass(frozen=True)
class Project:
    # The file the worker reads: the alembic.ini, or the pyproject.toml of a
    # project that has no ini. The worker runs in its folder.
    ini_path: str
    script_location: str
    version_locations: tuple[str, ...]
    recursive_version_locations: bool
    database_url: str | None  # may hold a password: never render it, use masked_url
    version_table: str
    python: str
    lock_timeout: float = 60.0  # seconds a restore waits for other sessions' locks
    backup_verify: str = "full"  # "full" or "quick": how deeply a fresh backup is checked
    # "dump" or "physical" (MariaDB on this machine: mariadb-backup's copy of its files)
    backup_method: str = "dump"
    flask_app: str | None = None  # a Flask-Migrate app, as `flask --app` takes it
    # Variables for the project's process (a target's env table, "${NAME}" already read):
    # may hold secrets, so never shown, and scrubbed like the password.
    env: tuple[tuple[str, str], ...] = ()
    # A pyproject.toml whose [tool.alembic] the worker reads together with ini_path.
    toml_path: str | None = None
    # Why database_url is None (no sqlalchemy.url, or a placeholder), said to the user.
    url_problem: str | None = None
    # False: the database is the one env.py names itself (asked, see env_py_databases),
    # and the worker hands env.py no URL, so it runs exactly as `alembic` runs it.
    hands_url: bool = True

    @property
    def masked_url(self) -> str:
        return mask_url(self.database_url) if self.database_url else ""

    def secrets(self) -> set[str]:
        """What no text the dashboard shows or stores may hold: the database's
        password and the values of the project's variables."""
        password = password_of(self.database_url)
        return secrets_in_values(v for _, v in self.env) | ({password} if password else set())

    def secret_forms(self) -> set[str]:
        """Every spelling of every secret, for a process that scrubs its own output."""
        return set().union(*(secret_forms(s) for s in self.secrets()))

    def scrub(self, text: str | None) -> str:
        """``text`` without this database's password or the project's variables'
        values, in any of their forms."""
        return scrub_secrets(text, self.secrets())

    @property
    def dialect(self) -> str:
        return backend_name(self.database_url) if self.database_url else ""

    @property
    def engine(self) -> DatabaseEngine:
        """What this database's engine does differently (backups, locks, DDL)."""
        if not self.database_url:
            raise ConfigurationError("No database URL.", detail=self.url_problem)
        return engine_for(self.database_url)


def has_tool_alembic(path: str) -> bool:
    """Whether ``path`` is a TOML file with a ``[tool.alembic]`` table."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    tool = data.get("tool")
    return isinstance(tool, dict) and isinstance(tool.get("alembic"), dict)


def find_project_files(path: str) -> tuple[str, str | None]:
    """(ini_path, toml_path) of what ``DASHBOARD_ALEMBIC_INI`` names: an alembic.ini,
    a pyproject.toml, or a project folder.

    As ``alembic`` run in the file's folder does, an ini is read together with a
    pyproject.toml beside it that has ``[tool.alembic]`` (``alembic init -t
    pyproject`` splits a project so), and a pyproject.toml with the alembic.ini
    beside it. A folder is searched for an alembic.ini, then a pyproject.toml
    with ``[tool.alembic]``, then Flask-Migrate's ``migrations/alembic.ini``."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        candidates = (os.path.join(path, ALEMBIC_INI), os.path.join(path, PYPROJECT),
                      os.path.join(path, FLASK_MIGRATE_INI))
        for candidate in candidates:
            if os.path.isfile(candidate) and (not candidate.endswith(".toml")
                                              or has_tool_alembic(candidate)):
                return find_project_files(candidate)
        raise ConfigurationError(
            f"No Alembic project in {path}.",
            detail=(f"Looked for {ALEMBIC_INI}, a {PYPROJECT} with a [tool.alembic] table, "
                    f"and Flask-Migrate's {FLASK_MIGRATE_INI}. Set DASHBOARD_ALEMBIC_INI to "
                    "your project's alembic.ini, pyproject.toml or folder."),
        )
    if not os.path.isfile(path):
        raise ConfigurationError(
            f"{PYPROJECT if path.endswith('.toml') else ALEMBIC_INI} not found: {path}",
            detail="Set DASHBOARD_ALEMBIC_INI to your project's alembic.ini, "
                   "pyproject.toml or folder.",
        )
    folder = os.path.dirname(path)
    if path.endswith(".toml"):
        if not has_tool_alembic(path):
            raise ConfigurationError(
                f"{path} has no [tool.alembic] table.",
                detail="Alembic reads its options from [tool.alembic] of a pyproject.toml "
                       "(alembic init -t pyproject writes one).",
            )
        ini = os.path.join(folder, ALEMBIC_INI)
        return (ini if os.path.isfile(ini) else path), path
    toml = os.path.join(folder, PYPROJECT)
    return path, (toml if has_tool_alembic(toml) else None)


def alembic_config(ini_path: str, toml_path: str | None) -> Config:
    """The ``Config`` Alembic builds for this project (the worker builds the same).

    An ini without ``script_location`` beside an env.py is Flask-Migrate's: its
    script location is the ini's own folder, as ``Migrate.get_config`` sets it."""
    config = Config(None if ini_path == toml_path else ini_path, toml_file=toml_path)
    if not config.get_alembic_option("script_location"):
        folder = os.path.dirname(os.path.abspath(ini_path))
        if os.path.isfile(os.path.join(folder, "env.py")):
            config.set_main_option("script_location", folder.replace("%", "%%"))
    return config


def _local_path(value: str, folder: str) -> str:
    """A location as Alembic resolves it, relative ones against the worker's folder."""
    path = str(coerce_resource_to_filename(value))
    return os.path.normpath(os.path.join(folder, path))


def url_problem(url: str, where: str) -> str | None:
    """Why ``url`` (read from ``where``) is no database URL the dashboard can use, or None."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return f"{where} is not a database URL ({mask_url(url)}): {WHAT_TO_DO}."
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        if parsed.drivername == "driver" or url.startswith("driver://"):
            return f"{where} is the placeholder {mask_url(url)}: {WHAT_TO_DO}."
        return (f"{where} names the dialect '{parsed.drivername}', which SQLAlchemy cannot "
                f"load ({mask_url(url)}): {WHAT_TO_DO}.")
    return None


def load_project(
    ini_path: str,
    database_url: str | None,
    version_table: str = "alembic_version",
    python: str = "python3",
    lock_timeout: float = 60.0,
    backup_verify: str = "full",
    flask_app: str | None = None,
    env: dict[str, str] | None = None,
    *,
    require_url: bool = True,
    backup_method: str = "dump",
) -> Project:
    """The project ``ini_path`` names (an alembic.ini, a pyproject.toml or a folder).

    The database is ``database_url`` (DASHBOARD_DATABASE_URL), else the ini's
    ``sqlalchemy.url``. Without a usable one (none, or a placeholder such as
    ``alembic init`` writes) this raises, or with ``require_url=False`` returns
    a project whose ``database_url`` is None and ``url_problem`` says why."""
    ini, toml = find_project_files(ini_path)
    name = ini  # the file the messages name
    folder = os.path.dirname(ini)
    try:
        with warnings.catch_warnings():
            # Alembic's own deprecation notices (no path_separator...) are not ours to raise.
            warnings.simplefilter("ignore")
            config = alembic_config(ini, toml)
            location = config.get_alembic_option("script_location")
            if not location:
                raise ConfigurationError(
                    f"No script_location in {name}" + (f" or {toml}." if toml and toml != ini
                                                       else "."),
                    detail="Alembic needs script_location to find env.py and the revisions.",
                )
            script_location = _local_path(str(location), folder)
            version_locations = tuple(
                _local_path(v, folder) for v in (config.get_version_locations_list() or ())
            ) or (os.path.join(script_location, "versions"),)
            recursive = config.get_alembic_boolean_option("recursive_version_locations")
            ini_url, ini_url_problem = (None, None) if ini == toml else _ini_url(config, name)
    except (CommandError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read {name}: {exc}") from exc
    except ConfigurationError:
        raise
    except Exception as exc:  # configparser errors and the like
        raise ConfigurationError(f"Cannot read {name}: {exc}") from exc

    problem = None
    if database_url:
        url = absolute_sqlite_url(database_url, os.getcwd())
        given = ("The database URL given to the dashboard (DASHBOARD_DATABASE_URL, --url or "
                 "the targets file)")
        explicit_problem = url_problem(url, given)
        if explicit_problem:
            raise ConfigurationError(explicit_problem.replace(f": {WHAT_TO_DO}", ""),
                                     detail="Give the SQLAlchemy URL of the database to migrate.")
    elif ini_url:
        url = absolute_sqlite_url(ini_url, folder)
        problem = url_problem(url, f"sqlalchemy.url in {name}")
        if problem:
            url = None
    elif ini_url_problem:
        url, problem = None, ini_url_problem
    else:
        url = None
        problem = (f"No database URL: DASHBOARD_DATABASE_URL is not set and {name} has no "
                   f"sqlalchemy.url: {WHAT_TO_DO}.")
    if url is None and require_url:
        raise ConfigurationError(problem)
    if not os.path.isdir(script_location):
        raise ConfigurationError(
            f"Script directory not found: {script_location}",
            detail=f"script_location in {toml or name} names a folder that does not exist.",
        )
    return Project(
        ini_path=ini,
        script_location=script_location,
        version_locations=version_locations,
        recursive_version_locations=bool(recursive),
        database_url=url,
        version_table=version_table,
        python=python,
        lock_timeout=float(lock_timeout),
        backup_verify=backup_verify if backup_verify in ("full", "quick") else "full",
        backup_method=backup_method if backup_method in BACKUP_METHODS else "dump",
        flask_app=flask_app or None,
        env=tuple(sorted((env or {}).items())),
        toml_path=toml,
        url_problem=problem,
    )


def _ini_url(config: Config, name: str) -> tuple[str | None, str | None]:
    """The ini's sqlalchemy.url, or why it cannot be read (an interpolation of a
    variable the ini does not define, as some projects fill in from env.py)."""
    section = config.config_ini_section
    if not config.file_config.has_section(section):
        return None, None
    try:
        return config.file_config.get(section, "sqlalchemy.url", fallback=None) or None, None
    except configparser.Error as exc:
        return None, (f"sqlalchemy.url in {name} cannot be read ({type(exc).__name__}): "
                      f"{WHAT_TO_DO}.")
