"""Where the database stands: its revisions against the script heads.

Reads only: SQLite files are opened read-only (a status page must never
create a missing database file), servers with a short connect timeout.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field

from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from dashboard.errors import ConfigurationError
from dashboard.services.alembic_process import scrub
from dashboard.services.project import Project
from dashboard.services.revisions import (
    History,
    applied_revisions,
    pending_revisions,
    unknown_revisions,
)

UP_TO_DATE = "up_to_date"
PENDING = "pending"
UNINITIALIZED = "uninitialized"
UNKNOWN_REVISION = "unknown_revision"
UNREACHABLE = "unreachable"


class DatabaseUnreachable(Exception):
    pass


@dataclass(frozen=True)
class DatabaseInfo:
    url: str  # masked
    dialect: str


@dataclass(frozen=True)
class DatabaseRevisions:
    has_version_table: bool
    current: tuple[str, ...]
    table_count: int


@dataclass(frozen=True)
class PendingRevision:
    revision: str
    message: str


@dataclass
class MigrationStatus:
    state: str
    database: DatabaseInfo
    current: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    pending: list[PendingRevision] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    applied: frozenset[str] = frozenset()
    explanation: str = ""
    table_count: int = 0
    creatable: bool = False  # a SQLite file that does not exist yet: an upgrade creates it

    def as_json(self) -> dict:
        return {
            "state": self.state,
            "current": sorted(self.current),
            "heads": sorted(self.heads),
            "pending": [{"revision": p.revision, "message": p.message} for p in self.pending],
            "database": {"url": self.database.url, "dialect": self.database.dialect},
            "unknown": self.unknown,
            "explanation": self.explanation,
            "creatable": self.creatable,
        }


def _sqlite_path(project: Project) -> str | None:
    url = make_url(project.database_url)
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def missing_sqlite_file(project: Project) -> str | None:
    """The path of a SQLite database that does not exist yet in an existing folder."""
    try:
        if make_url(project.database_url).get_backend_name() != "sqlite":
            return None
    except Exception:
        return None
    path = _sqlite_path(project)
    if path and not os.path.exists(path) and os.path.isdir(os.path.dirname(path) or "."):
        return path
    return None


def open_engine(project: Project, read_only: bool = True):
    """An engine on the target; for SQLite files read-only unless asked otherwise."""
    try:
        url = make_url(project.database_url)
    except Exception as exc:
        raise DatabaseUnreachable(f"The database URL cannot be parsed: {exc}") from exc
    if url.get_backend_name() == "sqlite":
        path = _sqlite_path(project)
        if path is not None:
            if not os.path.exists(path):
                raise DatabaseUnreachable(f"The SQLite database file does not exist: {path}")
            mode = "ro" if read_only else "rw"
            uri = f"file:{path}?mode={mode}"
            return create_engine(
                "sqlite://",
                creator=lambda: sqlite3.connect(uri, uri=True, timeout=2, check_same_thread=False),
                poolclass=NullPool,
            )
    connect_args = {}
    if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        connect_args["connect_timeout"] = 5
    try:
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    except Exception as exc:  # missing driver, bad options
        raise DatabaseUnreachable(scrub(f"{type(exc).__name__}: {exc}", project)) from exc


def read_database_revisions(project: Project) -> DatabaseRevisions:
    engine = open_engine(project)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"version_table": project.version_table}
            )
            inspector = inspect(connection)
            tables = inspector.get_table_names()
            has_table = project.version_table in tables
            current = tuple(context.get_current_heads()) if has_table else ()
            return DatabaseRevisions(has_table, current, len(tables))
    except DatabaseUnreachable:
        raise
    except Exception as exc:
        message = getattr(exc, "orig", None) or exc
        raise DatabaseUnreachable(scrub(f"{type(message).__name__}: {message}", project)) from exc
    finally:
        engine.dispose()


def migration_status(project: Project, history: History) -> MigrationStatus:
    database = DatabaseInfo(url=project.masked_url, dialect=project.dialect)
    if history.error:
        raise ConfigurationError(
            "The revision history cannot be read.", detail=history.error
        )
    heads = list(history.heads)
    try:
        db = read_database_revisions(project)
    except DatabaseUnreachable as exc:
        new_file = missing_sqlite_file(project)
        if new_file:
            everything = pending_revisions(history, ())
            return MigrationStatus(
                UNREACHABLE, database, heads=heads, creatable=True,
                pending=[PendingRevision(r.revision, r.doc) for r in everything],
                explanation=(f"The SQLite database file does not exist yet: {new_file}. "
                             "Upgrading creates it (there is nothing to back up)."),
            )
        return MigrationStatus(
            UNREACHABLE, database, heads=heads,
            explanation=f"The database cannot be read: {exc}",
        )
    current = sorted(db.current)
    if not db.has_version_table:
        explanation = (
            f"The database has {db.table_count} tables but no {project.version_table} table: "
            "it was created outside Alembic. Stamp it at the revision its schema matches."
            if db.table_count else
            f"The database has no {project.version_table} table yet: no migration has run."
        )
        pending = [PendingRevision(r.revision, r.doc) for r in pending_revisions(history, ())]
        return MigrationStatus(
            UNINITIALIZED, database, heads=heads, pending=pending,
            explanation=explanation, table_count=db.table_count,
        )
    unknown = unknown_revisions(history, current)
    if unknown:
        return MigrationStatus(
            UNKNOWN_REVISION, database, current=current, heads=heads, unknown=unknown,
            explanation=(
                "The database is at revision " + ", ".join(unknown) + ", which no script in "
                "this project defines. The database was migrated by a newer or different "
                "version of the code, or the revision file was deleted. Check out the code "
                "that has it, or stamp the database at the revision its schema really matches."
            ),
            table_count=db.table_count,
        )
    pending = [PendingRevision(r.revision, r.doc)
               for r in pending_revisions(history, tuple(current))]
    state = PENDING if pending else UP_TO_DATE
    return MigrationStatus(
        state, database, current=current, heads=heads, pending=pending,
        applied=applied_revisions(history, tuple(current)),
        explanation=(f"{len(pending)} revision{'s' if len(pending) != 1 else ''} to apply."
                     if pending
                     else "The database is at the latest revision."),
        table_count=db.table_count,
    )
