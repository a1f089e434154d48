"""Where the database stands: its revisions against the script heads.

Reads only: SQLite files are opened read-only (a status page must never
create a missing database file), servers with a short connect timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dashboard.engines import DatabaseUnreachable
from dashboard.errors import ConfigurationError
from dashboard.services.alembic_process import EnvPyDatabases
from dashboard.services.project import Project
from dashboard.services.revisions import (
    History,
    applied_revisions,
    pending_messages,
    unknown_revisions,
)


class State(StrEnum):
    """Where a database stands against its project's history."""

    UP_TO_DATE = "up_to_date"
    PENDING = "pending"
    UNINITIALIZED = "uninitialized"  # no version table
    UNKNOWN_REVISION = "unknown_revision"  # a revision no script defines
    UNREACHABLE = "unreachable"  # cannot be opened or read


UP_TO_DATE = State.UP_TO_DATE
PENDING = State.PENDING
UNINITIALIZED = State.UNINITIALIZED
UNKNOWN_REVISION = State.UNKNOWN_REVISION
UNREACHABLE = State.UNREACHABLE


@dataclass(frozen=True)
class DatabaseInfo:
    url: str  # masked
    dialect: str
    identity: str = ""  # the engine seam's name for it (no password)
    # Other sessions' writes are held off for a whole run (SQLite): none can be lost.
    writes_held_off: bool = False
    # A failed run is undone by the database itself when nothing was committed on the
    # way (PostgreSQL), so writes made meanwhile survive it.
    transactional_ddl: bool = False


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
    state: State
    database: DatabaseInfo
    current: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    pending: list[PendingRevision] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    applied: frozenset[str] = frozenset()
    explanation: str = ""
    table_count: int = 0
    creatable: bool = False  # a SQLite file that does not exist yet: an upgrade creates it
    env_py: EnvPyDatabases | None = None  # which databases env.py says it migrates
    # Every database a run locks, backs up and restores as one (masked), when env.py
    # names several itself (the multidb template); empty otherwise.
    guarded: tuple[str, ...] = ()

    @property
    def env_py_elsewhere(self) -> list:
        """Databases env.py migrates that are not this one: a run would be refused."""
        if self.env_py is None or self.guarded:
            return []
        return [d for d in self.env_py.databases if d.identity != self.database.identity]

    def as_json(self) -> dict:
        return {
            "state": str(self.state),
            "current": sorted(self.current),
            "heads": sorted(self.heads),
            "pending": [{"revision": p.revision, "message": p.message} for p in self.pending],
            "database": {"url": self.database.url, "dialect": self.database.dialect},
            "unknown": self.unknown,
            "explanation": self.explanation,
            "creatable": self.creatable,
            "env_py": None if self.env_py is None else {
                **self.env_py.as_json(), "elsewhere": [d.masked_url for d in
                                                       self.env_py_elsewhere],
                "guarded": list(self.guarded)},
        }


def missing_sqlite_file(project: Project) -> str | None:
    """The path of a database file that does not exist yet, which an upgrade creates."""
    return project.engine.missing_file(project.database_url)


def open_engine(project: Project, read_only: bool = True):
    """An engine on the target (SQLite files read-only unless asked otherwise)."""
    return project.engine.open_engine(project.database_url, read_only)


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
        raise DatabaseUnreachable(project.scrub(f"{type(message).__name__}: {message}")) from exc
    finally:
        engine.dispose()


def migration_status(project: Project, history: History) -> MigrationStatus:
    database = DatabaseInfo(url=project.masked_url, dialect=project.dialect,
                            identity=project.engine.identity(project.database_url),
                            writes_held_off=project.engine.holds_off_writers,
                            transactional_ddl=project.engine.transactional_ddl)
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
            return MigrationStatus(
                UNREACHABLE, database, heads=heads, creatable=True,
                pending=_pending(history, ()),
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
        pending = _pending(history, ())
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
    pending = _pending(history, tuple(current))
    state = PENDING if pending else UP_TO_DATE
    return MigrationStatus(
        state, database, current=current, heads=heads, pending=pending,
        applied=applied_revisions(history, tuple(current)),
        explanation=(f"{len(pending)} revision{'s' if len(pending) != 1 else ''} to apply."
                     if pending
                     else "The database is at the latest revision."),
        table_count=db.table_count,
    )


def _pending(history: History, current: tuple[str, ...]) -> list[PendingRevision]:
    """What ``alembic upgrade heads`` would apply, as the status lists it: made once
    per version of the history (thousands of them, on every request otherwise)."""
    made = history.memo(("pending status", tuple(sorted(current))), lambda: tuple(
        PendingRevision(revision, message)
        for revision, message in pending_messages(history, current)))
    return list(made)
