"""One module per database engine, behind the protocol in ``base``.

``engine_for(url)`` is the only place a URL's dialect is looked at.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url

from dashboard.engines.base import DatabaseEngine, DatabaseUnreachable, FileCheck, sync_url
from dashboard.engines.mariadb import MariaDbEngine
from dashboard.engines.postgresql import PostgresEngine
from dashboard.engines.sqlite import SqliteEngine

ENGINES: dict[str, DatabaseEngine] = {
    "sqlite": SqliteEngine(),
    "postgresql": PostgresEngine(),
    "mysql": MariaDbEngine(),
}
ENGINES["mariadb"] = ENGINES["mysql"]


def backend_name(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except Exception:
        return "unknown"


def read_only_session_sql() -> dict[str, str]:
    """Each dialect's SQL that makes a session read-only (for an env.py that opens
    databases of several engines), keyed by SQLAlchemy's dialect name."""
    return {name: sql for name, engine in ENGINES.items()
            if (sql := engine.read_only_session_sql())}


def engine_for(url: str) -> DatabaseEngine:
    """The engine of the database a URL names; a generic one that backs nothing up
    for dialects the dashboard does not know."""
    name = backend_name(url)
    engine = ENGINES.get(name)
    if engine is None:
        engine = DatabaseEngine()
        engine.name = name
    return engine


__all__ = ["DatabaseEngine", "DatabaseUnreachable", "FileCheck", "engine_for", "backend_name",
           "read_only_session_sql", "sync_url"]
