"""Several named target databases, from a TOML file.

Applications whose migrations matter run several databases (development,
staging, production; one per tenant). Each target names its alembic.ini, its
database (a URL, or the name of an environment variable that holds one, so
passwords stay out of the file), where its backups go, and whether actions
are allowed on it. Relative paths are relative to the TOML file. A target's
``env`` table is given to its project's process (the worker that runs
env.py), so one env.py that reads ``DATABASE_URL`` serves every target; a
``${NAME}`` in a value is read from the dashboard's own environment, so
secrets stay out of the file too.

    default = "dev"

    [targets.dev]
    alembic_ini = "alembic.ini"
    database_url = "sqlite:///instance/dev.db"

    [targets.prod]
    alembic_ini = "alembic.ini"
    database_url_env = "PROD_DATABASE_URL"
    backup_dir = "/var/backups/migrations/prod"
    read_only = true

    [targets.prod.env]
    DATABASE_URL = "${PROD_DATABASE_URL}"

A target's ``labels = ["tenant", "eu"]`` let a rollout (services/rollouts.py)
select many targets at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass

from dashboard.errors import ConfigurationError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEYS = {"alembic_ini", "database_url", "database_url_env", "backup_dir", "read_only",
         "python", "version_table", "backup_verify", "backup_method",
         "flask_app", "env", "labels"}
_STRING_KEYS = _KEYS - {"read_only", "env", "labels"}
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The dashboard's own variables for its worker: a target's env may not set them.
_RESERVED_PREFIX = "DASHBOARD_"


@dataclass(frozen=True)
class TargetConfig:
    name: str
    alembic_ini: str
    database_url: str | None = None
    database_url_env: str | None = None
    backup_dir: str | None = None
    read_only: bool = False
    python: str | None = None
    version_table: str | None = None
    backup_verify: str | None = None  # "full" or "quick"
    backup_method: str | None = None  # "dump" or "physical"
    flask_app: str | None = None  # as `flask --app` takes it
    env: tuple[tuple[str, str], ...] = ()  # as written: "${NAME}" not yet read
    labels: tuple[str, ...] = ()  # for rollouts: select many targets by label

    def resolve_env(self, environ) -> dict[str, str]:
        """The variables for the project's process, each ``${NAME}`` read from ``environ``."""
        def read(variable: str, match: re.Match) -> str:
            value = environ.get(match.group(1))
            if value is None:
                raise ConfigurationError(
                    f"Target '{self.name}': the environment variable {match.group(1)} "
                    f"that its env {variable} reads is not set."
                )
            return value

        return {variable: _REFERENCE.sub(lambda m, v=variable: read(v, m), value)
                for variable, value in self.env}

    def resolve_url(self, environ) -> str | None:
        if self.database_url_env:
            value = environ.get(self.database_url_env)
            if not value:
                raise ConfigurationError(
                    f"Target '{self.name}': the environment variable "
                    f"{self.database_url_env} that should hold its database URL is not set."
                )
            return value
        return self.database_url


def load_targets_file(path: str) -> tuple[list[TargetConfig], str]:
    """The targets and the name of the default one."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigurationError(f"Targets file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"Targets file {path} is not valid TOML: {exc}") from exc
    base = os.path.dirname(os.path.abspath(path))
    tables = data.get("targets")
    if not isinstance(tables, dict) or not tables:
        raise ConfigurationError(f"Targets file {path} has no [targets.<name>] tables.")
    targets = [_target(name, spec, base, path) for name, spec in tables.items()]
    default = data.get("default", targets[0].name)
    if default not in tables:
        raise ConfigurationError(f"Targets file {path}: default = '{default}' names no target.")
    return targets, default


def _target(name: str, spec, base: str, path: str) -> TargetConfig:
    where = f"Targets file {path}, target '{name}'"
    if not _NAME.match(name):
        raise ConfigurationError(f"{where}: a name may hold letters, digits, '_', '-', '.'.")
    if not isinstance(spec, dict):
        raise ConfigurationError(f"{where}: expected a table.")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigurationError(f"{where}: unknown keys {sorted(unknown)}; "
                                 f"known: {sorted(_KEYS)}.")
    if "alembic_ini" not in spec:
        raise ConfigurationError(f"{where}: alembic_ini is required.")
    if "database_url" in spec and "database_url_env" in spec:
        raise ConfigurationError(f"{where}: give database_url or database_url_env, not both.")
    for key in _STRING_KEYS:
        if key in spec and not isinstance(spec[key], str):
            raise ConfigurationError(f"{where}: {key} must be a string.")
    env = _env_table(spec.get("env", {}), where)
    labels = spec.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and _NAME.match(x)
                                                for x in labels):
        raise ConfigurationError(f"{where}: labels must be a list of names "
                                 f"(letters, digits, '_', '-', '.'), such as [\"tenant\"].")
    if spec.get("backup_verify", "full") not in ("full", "quick"):
        raise ConfigurationError(f"{where}: backup_verify must be 'full' or 'quick'.")
    if spec.get("backup_method", "dump") not in ("dump", "physical"):
        raise ConfigurationError(f"{where}: backup_method must be 'dump' or 'physical'.")
    if not isinstance(spec.get("read_only", False), bool):
        raise ConfigurationError(f"{where}: read_only must be true or false.")

    def local(value: str | None) -> str | None:
        return os.path.normpath(os.path.join(base, value)) if value else None

    url = spec.get("database_url")
    if url:
        from dashboard.engines.sqlite import absolute_sqlite_url

        url = absolute_sqlite_url(url, base)
    return TargetConfig(
        name=name,
        alembic_ini=local(spec["alembic_ini"]),
        database_url=url,
        database_url_env=spec.get("database_url_env"),
        backup_dir=local(spec.get("backup_dir")),
        read_only=spec.get("read_only", False),
        python=spec.get("python"),
        version_table=spec.get("version_table"),
        backup_verify=spec.get("backup_verify"),
        backup_method=spec.get("backup_method"),
        flask_app=spec.get("flask_app") or None,
        env=env,
        labels=tuple(dict.fromkeys(labels)),
    )


def _env_table(table, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(table, dict):
        raise ConfigurationError(f"{where}: env must be a table of variables "
                                 f"([targets.<name>.env]).")
    for variable, value in table.items():
        if not _VARIABLE.match(variable):
            raise ConfigurationError(f"{where}: env names '{variable}', which is not a "
                                     f"variable name (letters, digits, '_').")
        if variable.upper().startswith(_RESERVED_PREFIX):
            raise ConfigurationError(f"{where}: env may not set {variable}: variables "
                                     f"named {_RESERVED_PREFIX}* are the dashboard's own.")
        if not isinstance(value, str):
            # Never echo the value: it may be a secret written into the file.
            raise ConfigurationError(f"{where}: env {variable} must be a string.")
    return tuple(table.items())
