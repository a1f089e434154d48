"""What every database engine answers for the guard, in one small protocol.

The guard, the status reader and the backup verbs ask the target's engine
(``project.engine``) and never test a dialect name themselves: what differs
between SQLite, PostgreSQL and MariaDB/MySQL lives in one module each beside
this one, as Alembic keeps one ``DefaultImpl`` subclass per dialect.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from dashboard.engines.risk import Catalog, ColumnType, TableFacts, column_type
from dashboard.errors import BackupError
from dashboard.redact import scrub

if TYPE_CHECKING:
    from dashboard.services.locking import LockHolder
    from dashboard.services.project import Project

NOT_RUN = "Nothing was run."
MEMO_SECONDS = 24 * 3600  # a copy's findings nobody checked within this are forgotten
T = TypeVar("T")


# An async driver, and the sync driver the dashboard reads the same database with.
SYNC_DRIVERS = {
    "aiosqlite": "pysqlite",
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
}


def sync_url(url: str) -> str:
    """The same database through a sync driver: the dashboard's own reads, backups
    and locks never run in an event loop, whatever driver the project's env.py uses."""
    try:
        parsed = make_url(url)
    except Exception:
        return url
    sync = SYNC_DRIVERS.get(parsed.get_driver_name())
    if sync is None:
        return url
    return parsed.set(drivername=f"{parsed.get_backend_name()}+{sync}").render_as_string(
        hide_password=False)


class DatabaseUnreachable(Exception):
    """The target database cannot be opened or read (the message is scrubbed)."""


@dataclass(frozen=True)
class CountedAtSwap:
    """Other sessions' writes a restore discarded, counted by the engine from the
    tables it replaced, at the moment it replaced them (``writes`` None: unknown).

    A count taken before the restore misses a row committed between the count and
    the swap; an engine that can read the replaced tables counts them instead."""
    writes: list[dict] | None


class CopyMemo(Generic[T]):
    """What an engine's ``copy`` found while it wrote a backup file, kept for the
    ``check`` of that same file in this process (which takes it once). A value
    nobody took within a day is forgotten, and ``forget`` is called with it."""

    def __init__(self, forget: Callable[[T], None] = lambda value: None) -> None:
        self._kept: dict[str, tuple[float, T]] = {}
        self._lock = threading.Lock()
        self._forget = forget

    def remember(self, path: str, value: T) -> None:
        now = time.time()
        with self._lock:
            for old in [key for key, (at, _) in self._kept.items()
                        if at < now - MEMO_SECONDS]:
                self._forget(self._kept.pop(old)[1])
            self._kept[os.path.abspath(path)] = (now, value)

    def recall(self, path: str) -> T | None:
        with self._lock:
            kept = self._kept.pop(os.path.abspath(path), None)
        return None if kept is None else kept[1]


@dataclass(frozen=True)
class FileCheck:
    ok: bool
    detail: str  # what was checked, or what is wrong
    revisions: tuple[str, ...]


class DatabaseEngine:
    """One database engine. Subclasses override what their engine does differently."""

    name = "unknown"  # the SQLAlchemy backend name this engine serves
    label = "database"  # for people
    extension = ".backup"  # of its backup files
    damage_hint = ""  # what to do when a fresh copy fails its check
    # DDL inside a transaction is rolled back with it (Alembic's transactional_ddl).
    transactional_ddl = False
    # Whether other sessions' writes can be held off for a whole run.
    holds_off_writers = False
    # Whether ``restore`` counts, at the moment it replaces the tables, the writes it
    # discards (then no count is taken before it).
    counts_writes_at_restore = False
    # Whether ``schema_differs`` tells every schema change: what a run left outside a
    # transaction (DDL that commits by itself) is then seen without a restore.
    compares_schema = False

    # ---------------------------------------------------------- identity

    def identity(self, url: str) -> str:
        """What names this one database wherever it is spelled: the lock's key.

        Holds no password."""
        return mask_url_for_identity(url)

    def database_path(self, url: str) -> str | None:
        """The database's file, for engines that keep one; None for servers."""
        return None

    def lock_file(self, url: str) -> str | None:
        """Where the machine-wide lock of this database lives when the database
        itself says (a file beside a SQLite file); None: the dashboard's own folder."""
        return None

    def missing_file(self, url: str) -> str | None:
        """A database file that does not exist yet and that an upgrade would create."""
        return None

    def remove_database(self, url: str) -> None:
        """Remove a database this dashboard has just created (a failed first upgrade);
        only an engine whose ``missing_file`` names one ever creates one."""

    # ---------------------------------------------------------- reading

    def open_engine(self, url: str, read_only: bool = True) -> Engine:
        """A SQLAlchemy engine on the database, for reads (or the lock's connection)."""
        try:
            return create_engine(make_url(sync_url(url)), poolclass=NullPool,
                                 connect_args=self.connect_args())
        except Exception as exc:  # missing driver, bad options
            raise DatabaseUnreachable(scrub(f"{type(exc).__name__}: {exc}", url)) from exc

    def connect_args(self) -> dict:
        return {}

    # ---------------------------------------------------------- backups

    def preflight(self, project: Project) -> None:
        """Raise BackupError, before anything is written, if the tools or server won't do."""
        raise self.unsupported()

    def unsupported(self) -> BackupError:
        """What an engine the dashboard cannot back up says to every backup verb."""
        return BackupError(f"Backups of {self.name} databases are not supported yet",
                           detail=NOT_RUN)

    def source_name(self, project: Project) -> str:
        raise self.unsupported()

    def source_size(self, project: Project) -> int:
        raise self.unsupported()

    def space_needed(self, project: Project) -> int:
        """Bytes a backup of the project's database needs in the backup folder while it
        is taken and checked (before the safety margin)."""
        return self.source_size(project)

    def extension_for(self, project: Project) -> str:
        """The file extension of the backup ``copy`` makes for this project."""
        return self.extension

    def live_revisions(self, project: Project) -> tuple[str, ...]:
        raise self.unsupported()

    def copy(self, project: Project, destination: str) -> None:
        raise self.unsupported()

    def check(self, path: str, version_table: str, project: Project | None = None) -> FileCheck:
        """Is the file a sound backup, and of which revisions.

        With ``project``, a server engine restores the file into a scratch
        database on that server; without, it checks the file alone."""
        raise self.unsupported()

    def check_live(self, project: Project) -> FileCheck:
        raise self.unsupported()

    def restore(self, project: Project, backup_path: str, marks: dict | None = None,
                touched: frozenset[str] = frozenset()) -> CountedAtSwap | None:
        """Put the backup's content in place of the database's. Given the run's write
        ``marks``, an engine that can count what the swap discarded (see
        ``discarded_writes``) returns that count; None when it did not count."""
        raise self.unsupported()

    @contextmanager
    def scratch_copy(self, project: Project, backup_path: str, folder: str) -> Iterator[str]:
        """A throwaway database made from a backup file, beside the real one (a file in
        ``folder``, or a scratch database on the same server), whose URL is yielded;
        removed afterwards whatever happens. A rehearsal runs its migrations on it."""
        raise self.unsupported()
        yield ""  # a generator, for contextmanager

    def worker_args(self, project: Project) -> list[str]:
        """Extra arguments for the worker that runs an action on this database."""
        return []

    def settle(self, project: Project) -> None:
        """Let the database finish undoing what a dead writer left (before it is read
        after a crash)."""

    def schema_differs(self, project: Project, backup_path: str) -> str | None:
        """After a rollback: how the live schema differs from the backup's, or None
        when it is the same (or the engine cannot tell cheaply)."""
        return None

    # ---------------------------------------------------------- other sessions

    def write_marks(self, project: Project) -> dict | None:
        """A mark per table of its rows as they are now, taken with the pre-run backup,
        so that ``discarded_writes`` can tell later which tables others wrote to.

        None where writers are held off for the whole run (nothing can be lost) or
        where the engine cannot tell."""
        return None

    def discarded_writes(self, project: Project, marks: dict | None,
                         touched: set[str]) -> list[dict] | None:
        """Before a restore: [{"table", "rows"}] written by other sessions since
        ``marks`` in tables the run did not touch (``touched``); [] when none; None
        when unknown. The restore is about to discard those writes."""
        return [] if self.holds_off_writers else None

    def session_id_sql(self) -> str | None:
        """SQL that names a connection's server session (the worker reports it)."""
        return None

    def read_only_session_sql(self) -> str | None:
        """SQL that makes a new server session refuse every write, for the worker's
        sessions that only read (the drift check); None where the engine has none
        (SQLite: the worker opens the file read-only)."""
        return None

    def end_sessions(self, project: Project, session_ids: list[str]) -> list[str]:
        """Stop what these server sessions run, then end them (a cancelled run's worker
        may be gone while its session still runs a statement and holds locks).
        Returns the ids that were still there."""
        return []

    # ---------------------------------------------------------- locks

    def acquire_lock(self, project: Project, holder: LockHolder):
        """The database's own lock for one action, or None where the engine has none.

        Raises LockHeld naming who holds it."""
        return None

    def lock_holder(self, project: Project) -> str | None:
        """Who holds the database's own lock now, without taking it; None when free."""
        return None

    # ---------------------------------------------------------- risk findings

    def risk_rules(self):
        """This engine's rules over its offline SQL (``risk_*`` modules beside this
        one), or None where the dashboard knows none."""
        return None

    @contextmanager
    def catalog(self, project: Project) -> Iterator[Catalog]:
        """The live database as the risk rules see it, read-only while the block
        runs: the server's version, and each table's rows (an estimate; exact when
        small), size and column types, read when first asked for. An unreachable
        database gives ``reachable=False`` and the reason in ``note``."""
        from sqlalchemy import inspect

        engine = None
        try:
            engine = self.open_engine(project.database_url)
            conn = engine.connect()
        except Exception as exc:
            if engine is not None:
                engine.dispose()
            yield Catalog(False, note=_reason(exc, project.database_url))
            return
        try:
            try:
                version_text, version = self.server_version(conn)
                inspector = inspect(conn)
                existing = set(inspector.get_table_names())
            except Exception as exc:
                found = Catalog(False, note=_reason(exc, project.database_url))
            else:
                def load(table: str) -> TableFacts | None:
                    if table not in existing:
                        return None
                    try:
                        rows, size = self.table_sizes(conn, [table]).get(table, (None, None))
                        columns = {c["name"]: column_type_of(c["type"])
                                   for c in inspector.get_columns(table)}
                    except Exception:
                        conn.rollback()  # PostgreSQL: the failed statement ended the transaction
                        return TableFacts(None, None)
                    return TableFacts(rows, size, columns)

                found = Catalog(True, version, version_text, load=load)
            yield found
        finally:
            conn.close()
            engine.dispose()

    def server_version(self, conn) -> tuple[str, tuple[int, ...] | None]:
        """(as the server says it, as numbers) for the version-aware rules."""
        return "", None

    def table_sizes(self, conn, tables: list[str]) -> dict[str, tuple[int | None, int | None]]:
        """Each table's (rows, bytes): from the catalog, counted when small."""
        return {table: (bounded_count(conn, table), None) for table in tables}


COUNT_LIMIT = 100_000  # a count stops here: above it the catalog's estimate is enough


def bounded_count(conn, table: str, limit: int = COUNT_LIMIT) -> int | None:
    """How many rows ``table`` has, counting at most ``limit`` + 1 of them."""
    from sqlalchemy import func, literal_column, select
    from sqlalchemy import table as table_clause

    inner = select(literal_column("1")).select_from(table_clause(table)).limit(limit + 1)
    return int(conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one())


def column_type_of(sa_type) -> ColumnType:
    """A SQLAlchemy (reflected) type as the risk rules compare types."""
    name = str(getattr(sa_type, "__visit_name__", "")).lower()
    name = {"small_integer": "smallint", "big_integer": "bigint", "string": "varchar",
            "unicode": "varchar", "unicode_text": "text"}.get(name, name)
    kind = column_type(name, values=tuple(getattr(sa_type, "enums", ()) or ()))
    if kind.family == "string":
        return column_type(name, getattr(sa_type, "length", None))
    if kind.family == "numeric":
        return column_type(name, getattr(sa_type, "precision", None),
                           getattr(sa_type, "scale", None))
    return kind


def version_numbers(text: str) -> tuple[int, ...] | None:
    """(10, 11, 6) from "10.11.6-MariaDB"; None when it does not start with a number."""
    numbers = []
    for part in text.split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits or digits != part.strip():
            break
        numbers.append(int(digits))
    return tuple(numbers) or None


def _reason(exc: BaseException, url: str) -> str:
    message = getattr(exc, "orig", None) or exc
    return scrub(f"{type(message).__name__}: {message}", url)


def mask_url_for_identity(url: str) -> str:
    """Backend, host, port and database of a URL: no user, no password."""
    try:
        parsed = make_url(url)
    except Exception:
        return url.split(":", 1)[0]
    host = parsed.host or "localhost"
    return f"{parsed.get_backend_name()}://{host}:{parsed.port or ''}/{parsed.database or ''}"


def describe_failure(what: str, exc: BaseException, backup_dir: str | None = None) -> BackupError:
    """A BackupError saying what failed, in words, for OS and SQLite errors."""
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper around the driver's error
    code = getattr(exc, "sqlite_errorcode", None)
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
            code == sqlite3.SQLITE_FULL:
        reason = f"the disk holding {backup_dir or 'the backup'} is full"
    elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"permission denied ({exc.strerror})"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    elif code == sqlite3.SQLITE_CORRUPT or code == sqlite3.SQLITE_NOTADB:
        reason = f"the database file is damaged ({exc})"
    elif code == sqlite3.SQLITE_BUSY or code == sqlite3.SQLITE_LOCKED:
        reason = f"the database is locked ({exc})"
    else:
        reason = str(exc)
    filename = getattr(exc, "filename", None)
    where = f" ({filename})" if filename else ""
    return BackupError(f"Backup failed: {what}: {reason}{where}. {NOT_RUN}", detail=str(exc))


def remove_files(*paths: str) -> None:
    """Remove what exists of ``paths``; a failure is logged, never raised."""
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError:
            logging.getLogger(__name__).warning("could not remove %s", path)
