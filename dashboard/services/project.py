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
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dashboard.errors import ConfigurationError


@dataclass(frozen=True)
class Project:
    ini_path: str
    script_location: str
    version_locations: tuple[str, ...]
    recursive_version_locations: bool
    database_url: str  # may hold a password: never render it, use masked_url
    version_table: str
    python: str

    @property
    def masked_url(self) -> str:
        return mask_url(self.database_url)

    @property
    def dialect(self) -> str:
        try:
            return make_url(self.database_url).get_backend_name()
        except ArgumentError:
            return "unknown"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***; never raises."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not a URL SQLAlchemy understands: show only its scheme.
        return url.split(":", 1)[0] + ":<unparseable URL>"


def absolute_sqlite_url(url: str, base: str) -> str:
    """A relative SQLite path made absolute once, so status, backup, lock and
    the worker (which runs in the ini's folder) all name the same file."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url
    database = parsed.database
    if (parsed.get_backend_name() != "sqlite" or not database or database == ":memory:"
            or database.startswith("file:") or os.path.isabs(database)):
        return url
    absolute = parsed.set(database=os.path.normpath(os.path.join(base, database)))
    return absolute.render_as_string(hide_password=False)


def load_project(
    ini_path: str,
    database_url: str | None,
    version_table: str = "alembic_version",
    python: str = "python3",
) -> Project:
    if not os.path.isfile(ini_path):
        raise ConfigurationError(
            f"alembic.ini not found: {ini_path}",
            detail="Set DASHBOARD_ALEMBIC_INI to the path of your project's alembic.ini.",
        )
    try:
        config = Config(ini_path)
        location = config.get_alembic_option("script_location")
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
    if not url:
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
    )
