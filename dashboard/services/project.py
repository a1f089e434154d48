"""Where the migrations and the database are: read from the project's alembic.ini.

Reading the ini goes through Alembic's own ``Config`` (which interpolates
``%(here)s`` and knows ``version_locations`` separators) but never loads
``env.py``: that is the project's code and runs only in a subprocess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.util import CommandError, coerce_resource_to_filename

from dashboard.engines import DatabaseEngine, backend_name, engine_for
from dashboard.engines.sqlite import absolute_sqlite_url
from dashboard.errors import ConfigurationError
from dashboard.redact import mask_url, scrub


@dataclass(frozen=True)
class Project:
    ini_path: str
    script_location: str
    version_locations: tuple[str, ...]
    recursive_version_locations: bool
    database_url: str  # may hold a password: never render it, use masked_url
    version_table: str
    python: str
    lock_timeout: float = 60.0  # seconds a restore waits for other sessions' locks
    backup_verify: str = "full"  # "full" or "quick": how deeply a fresh backup is checked
    # False: the database is the one env.py names itself (asked, see env_py_databases),
    # and the worker hands env.py no URL, so it runs exactly as `alembic` runs it.
    hands_url: bool = True
    flask_app: str | None = None  # a Flask-Migrate app, as `flask --app` takes it

    @property
    def masked_url(self) -> str:
        return mask_url(self.database_url)

    def scrub(self, text: str | None) -> str:
        """``text`` without this database's password, in any of its forms."""
        return scrub(text, self.database_url)

    @property
    def dialect(self) -> str:
        return backend_name(self.database_url)

    @property
    def engine(self) -> DatabaseEngine:
        """What this database's engine does differently (backups, locks, DDL)."""
        return engine_for(self.database_url)


def load_project(
    ini_path: str,
    database_url: str | None,
    version_table: str = "alembic_version",
    python: str = "python3",
    lock_timeout: float = 60.0,
    backup_verify: str = "full",
    require_url: bool = True,
) -> Project:
    if not os.path.isfile(ini_path):
        raise ConfigurationError(
            f"alembic.ini not found: {ini_path}",
            detail="Set DASHBOARD_ALEMBIC_INI to the path of your project's alembic.ini.",
        )
    try:
        config = Config(ini_path)
        location = config.get_alembic_option("script_location")
        here = os.path.dirname(os.path.abspath(ini_path))
        if not location and os.path.isfile(os.path.join(here, "env.py")):
            location = here  # Flask-Migrate's alembic.ini: in its script folder, naming none
        if not location:
            raise ConfigurationError(f"No script_location in {ini_path}.")
        script_location = str(coerce_resource_to_filename(location))
        version_locations = tuple(
            str(coerce_resource_to_filename(v)) for v in (config.get_version_locations_list() or ())
        ) or (str(Path(script_location, "versions")),)
        recursive = config.get_alembic_boolean_option("recursive_version_locations")
        if database_url:
            url = absolute_sqlite_url(database_url, os.getcwd())
        else:
            url = config.get_main_option("sqlalchemy.url")
            if url:
                url = absolute_sqlite_url(url, os.path.dirname(os.path.abspath(ini_path)))
    except CommandError as exc:
        raise ConfigurationError(f"Cannot read {ini_path}: {exc}") from exc
    except Exception as exc:  # configparser errors and the like
        raise ConfigurationError(f"Cannot read {ini_path}: {exc}") from exc
    if not url and require_url:
        raise ConfigurationError(
            "No database URL.",
            detail="Set DASHBOARD_DATABASE_URL, or sqlalchemy.url in the alembic.ini.",
        )
    if not os.path.isdir(script_location):
        raise ConfigurationError(
            f"Script directory not found: {script_location}",
            detail=f"script_location in {ini_path} names a folder that does not exist.",
        )
    return Project(
        ini_path=os.path.abspath(ini_path),
        script_location=script_location,
        version_locations=version_locations,
        recursive_version_locations=bool(recursive),
        database_url=url,
        version_table=version_table,
        python=python,
        lock_timeout=float(lock_timeout),
        backup_verify=backup_verify if backup_verify in ("full", "quick") else "full",
    )
