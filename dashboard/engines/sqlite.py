"""SQLite targets: one file, copied online, locked by the file itself.

The one rule for SQLite URLs and paths lives here (``sqlite_file``): the
status reader, the backup, the lock and the worker all name the same file
whatever the spelling (relative, through a symlink, with ``..``).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from dashboard.engines.base import (
    NOT_RUN,
    DatabaseEngine,
    DatabaseUnreachable,
    FileCheck,
    bounded_count,
    describe_failure,
    remove_files,
    version_numbers,
)
from dashboard.errors import BackupError

if TYPE_CHECKING:
    from dashboard.services.project import Project

log = logging.getLogger(__name__)

# Copy steps: see SqliteEngine.copy for the tradeoff.
FAST_COPY = True  # rollback-journal databases: copy the file under a read lock
COPY_STEP_BYTES = 64 << 20
MAX_COPY_RESTARTS = 2
LOCK_WAIT_SECONDS = 30.0
STATUS_TIMEOUT_SECONDS = 2


def sqlite_file(url: str) -> str | None:
    """The absolute path of a SQLite URL's database file; None for memory and URIs."""
    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def absolute_sqlite_url(url: str, base: str) -> str:
    """A relative SQLite path made absolute once, against ``base``, so status,
    backup, lock and the worker (which runs in the ini's folder) name one file."""
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


def file_uri(path: str, mode: str, *, immutable: bool = False) -> str:
    """A sqlite3 URI for ``path``: percent-encoded, so a '#' or '?' in it is a name."""
    return f"{Path(path).as_uri()}?mode={mode}" + ("&immutable=1" if immutable else "")


class SqliteEngine(DatabaseEngine):
    """SQLite: a file. The lock follows the file itself; backups copy it online."""

    name = "sqlite"
    label = "SQLite"
    transactional_ddl = False
    # The worker runs a whole action as one transaction that took the write lock
    # before the backup was copied: others' writes wait, none is lost.
    holds_off_writers = True
    compares_schema = True
    extension = ".sqlite3"
    damage_hint = "The database itself may be damaged: run PRAGMA integrity_check on it. "


    def identity(self, url: str) -> str:
        path = sqlite_file(url)
        if path is None:
            return f"sqlite:{url}"
        # The file itself, whatever the spelling: a symlink or '..' meet the same lock.
        real = os.path.realpath(path)
        try:
            info = os.stat(real)
        except OSError:
            return f"sqlite:{real}"
        return f"sqlite:dev={info.st_dev}:ino={info.st_ino}"

    def database_path(self, url: str) -> str | None:
        return sqlite_file(url)

    def lock_file(self, url: str) -> str | None:
        path = sqlite_file(url)
        if path is None:
            return None
        # Beside the file itself, as SQLite keeps its -journal: every dashboard and
        # command line on this machine meets the same lock, whatever spelling or
        # instance folder it has.
        real = os.path.realpath(path)
        return real + "-mdlock"

    def worker_args(self, project: Project) -> list[str]:
        path = sqlite_file(project.database_url)
        if path is None:
            return []
        return ["--hold-sqlite", path, "--lock-timeout", f"{project.lock_timeout:g}"]

    def settle(self, project: Project) -> None:
        path = sqlite_file(project.database_url)
        if path is None or not os.path.exists(path):
            return
        # A read-write connection rolls a dead writer's hot journal back.
        try:
            with closing(_connect(path, "rw", timeout=LOCK_WAIT_SECONDS)) as conn:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            log.warning("could not settle %s: %s", path, exc)

    def schema_differs(self, project: Project, backup_path: str) -> str | None:
        def schema(path: str, immutable: bool) -> set[tuple]:
            with closing(_connect(path, "ro", immutable=immutable)) as conn:
                return set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))

        try:
            live = schema(_sqlite_path(project), False)
            saved = schema(backup_path, True)
        except sqlite3.Error as exc:
            return f"the schema cannot be read: {exc}"
        if live == saved:
            return None
        names = sorted({row[1] for row in live ^ saved})
        return "these objects differ from the backup: " + ", ".join(names[:10])

    def missing_file(self, url: str) -> str | None:
        path = sqlite_file(url)
        if path and not os.path.exists(path) and os.path.isdir(os.path.dirname(path) or "."):
            return path
        return None

    def remove_database(self, url: str) -> None:
        path = sqlite_file(url)
        if path:
            remove_files(*(path + suffix for suffix in ("", "-journal", "-wal", "-shm")))

    def open_engine(self, url: str, read_only: bool = True) -> Engine:
        path = sqlite_file(url)
        if path is None:
            return super().open_engine(url, read_only)
        if not os.path.exists(path):
            raise DatabaseUnreachable(f"The SQLite database file does not exist: {path}")
        uri = file_uri(path, "ro" if read_only else "rw")
        return create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(uri, uri=True, timeout=STATUS_TIMEOUT_SECONDS,
                                            check_same_thread=False),
            poolclass=NullPool,
        )

    def risk_rules(self):
        from dashboard.engines import risk_sqlite

        return risk_sqlite.RULES

    def server_version(self, conn):
        from sqlalchemy import text

        shown = str(conn.execute(text("SELECT sqlite_version()")).scalar_one())
        return shown, version_numbers(shown)

    def table_sizes(self, conn, tables):
        """Rows counted (up to a limit: SQLite keeps no estimate); bytes from the
        dbstat table where this SQLite has it."""
        from sqlalchemy import text

        found = {}
        for table in tables:
            try:
                size = conn.execute(text("SELECT SUM(pgsize) FROM dbstat WHERE name = :t"),
                                    {"t": table}).scalar()
            except Exception:  # built without SQLITE_ENABLE_DBSTAT_VTAB
                size = None
            found[table] = (bounded_count(conn, table), None if size is None else int(size))
        return found

    def preflight(self, project: Project) -> None:
        _sqlite_path(project)

    def source_name(self, project: Project) -> str:
        return Path(_sqlite_path(project)).stem

    def source_size(self, project: Project) -> int:
        with closing(_open_live(project)) as source:
            try:
                pages = source.execute("PRAGMA page_count").fetchone()[0]
                page_size = source.execute("PRAGMA page_size").fetchone()[0]
            except sqlite3.Error as exc:
                raise describe_failure("the database cannot be read", exc) from exc
        return pages * page_size

    def live_revisions(self, project: Project) -> tuple[str, ...]:
        # Not status.read_database_revisions: its 2 s lock timeout is too short
        # for a busy database, and a backup may wait for a lock.
        with closing(_open_live(project)) as source:
            try:
                return _read_revisions(source, project.version_table)
            except sqlite3.Error as exc:
                raise describe_failure("the database's revisions cannot be read", exc) from exc

    def copy(self, project: Project, destination: str) -> None:
        """An online, consistent copy.

        Rollback-journal mode: the file is copied whole by ``cp`` while we
        hold SQLite's shared lock (see ``_copy_file_under_read_lock``), at the
        kernel's speed; writers wait for that lock as for any long reader.
        Otherwise, and if that is not possible: SQLite's backup API, which
        writes the copy one page per system call (about 3x slower). Copying
        in steps releases the read lock between steps, so writers wait at
        most one step (64 MiB); but a write from another connection restarts
        the copy from page 1, so after a few chunked attempts it copies in
        one step, which always finishes. In WAL mode readers never block
        writers and the main file alone is not a snapshot, so the backup API
        copies in one step from the start. mmap on the source would gain
        about 15% but turns a disk read error into SIGBUS in the web process.
        """
        with closing(_open_live(project)) as source:
            try:
                page_size = source.execute("PRAGMA page_size").fetchone()[0]
                wal = source.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            except sqlite3.Error as exc:
                raise describe_failure("the database cannot be read", exc) from exc
            if not wal and FAST_COPY:
                try:
                    _copy_file_under_read_lock(source, _sqlite_path(project), destination)
                    return
                except _FastCopyUnavailable as exc:
                    log.info("fast copy unavailable (%s): using the backup API", exc)
            if not wal:
                step = max(1, COPY_STEP_BYTES // page_size)
                try:
                    _backup_into(source, destination, step, MAX_COPY_RESTARTS)
                    return
                except _TooManyRestarts:
                    log.info("backup kept restarting under writes: copying in one step")
            _backup_into(source, destination, -1, None)

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        # A backup file is opened immutable: no locks, no -wal/-shm beside it.
        return _check_file(path, version_table, immutable=True)

    def check_live(self, project: Project) -> FileCheck:
        return _check_file(_sqlite_path(project), project.version_table, immutable=False)

    @contextmanager
    def scratch_copy(self, project: Project, backup_path: str, folder: str) -> Iterator[str]:
        path = os.path.join(folder, f"{self.source_name(project)}-copy-"
                                    f"{secrets.token_hex(4)}{self.extension}")
        try:
            try:
                os.makedirs(folder, exist_ok=True)
                shutil.copyfile(backup_path, path)
                os.chmod(path, 0o600)
            except OSError as exc:
                raise describe_failure("the scratch copy cannot be written", exc,
                                       folder) from exc
            # The project's own driver (an async env.py needs sqlite+aiosqlite).
            driver = make_url(project.database_url).drivername
            yield URL.create(driver, database=path).render_as_string()
        finally:
            remove_files(*(path + suffix for suffix in ("", "-journal", "-wal", "-shm")))

    def restore(self, project: Project, backup_path: str, marks: dict | None = None,
                touched: frozenset[str] = frozenset()) -> None:
        live = _sqlite_path(project)
        if not os.path.isfile(live):
            raise BackupError(f"The database file does not exist: {live}. Nothing was restored.")
        # Through the backup API, not a file copy: the live file keeps its inode
        # and the application's open connections see the new content. The
        # destination is written in one transaction, so a failure leaves it as it was.
        try:
            with closing(_connect(backup_path, "ro", immutable=True)) as source, \
                    closing(_connect(live, "rw", timeout=LOCK_WAIT_SECONDS)) as target:
                source.backup(target, pages=-1, progress=_CopyWatch(None), sleep=0.05)
        except _Locked as exc:
            raise BackupError(f"The database stayed locked for {LOCK_WAIT_SECONDS:g} s; "
                              "it was not changed.") from exc
        except sqlite3.Error as exc:
            raise BackupError(f"The restore could not write the database: {exc}. "
                              "It was left as it was.", detail=str(exc)) from exc


class _TooManyRestarts(Exception):
    pass


class _Locked(Exception):
    pass


class _CopyWatch:
    """Progress callback of ``Connection.backup``: bounds restarts and lock waits.

    Python's backup loop retries a busy source forever and cannot be told to
    stop except by the callback raising.
    """

    def __init__(self, max_restarts: int | None):
        self.max_restarts = max_restarts
        self.restarts = 0
        self.remaining: int | None = None
        self.busy_since: float | None = None

    def __call__(self, status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            self.busy_since = self.busy_since or time.monotonic()
            if time.monotonic() - self.busy_since > LOCK_WAIT_SECONDS:
                raise _Locked()
            return
        self.busy_since = None
        if self.remaining is not None and remaining >= self.remaining:
            self.restarts += 1  # another connection wrote: SQLite started over
            if self.max_restarts is not None and self.restarts > self.max_restarts:
                raise _TooManyRestarts()
        self.remaining = remaining


class _FastCopyUnavailable(Exception):
    pass


def _copy_file_under_read_lock(source: sqlite3.Connection, path: str, destination: str) -> None:
    """Copy the database file whole while holding SQLite's shared lock on it.

    In rollback-journal mode a writer changes the database file only under an
    exclusive lock, which it cannot get while we hold a shared one, so the file
    is a consistent snapshot for as long as our read transaction lasts (writers
    queue on their busy timeout meanwhile, as they would for the backup API's
    single step). The copy is made by ``cp`` in a child process, not by
    opening the file here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included. This copies at the
    kernel's speed (copy_file_range) instead of one page per system call."""
    remove_files(destination)
    try:
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the lock
    except sqlite3.Error as exc:
        raise _FastCopyUnavailable(f"cannot take a read lock: {exc}") from exc
    try:
        try:
            subprocess.run(["cp", "--", path, destination], check=True, timeout=3600,
                           stdin=subprocess.DEVNULL, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            remove_files(destination)
            raise _FastCopyUnavailable(f"cp failed: {exc}") from exc
    finally:
        source.execute("COMMIT")


def _backup_into(
    source: sqlite3.Connection, destination: str, pages: int, max_restarts: int | None
) -> None:
    remove_files(destination)
    try:
        with closing(_connect(destination, "rwc")) as target:
            # The file is fsynced and verified before it counts; no journal needed.
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            source.backup(target, pages=pages, progress=_CopyWatch(max_restarts), sleep=0.05)
    except _Locked as exc:
        raise BackupError(
            f"The database stayed locked for {LOCK_WAIT_SECONDS:g} s and could not be copied. "
            f"{NOT_RUN}"
        ) from exc


def _sqlite_path(project: Project) -> str:
    path = sqlite_file(project.database_url)
    if path is None:
        raise BackupError(f"Only SQLite database files can be backed up, not {project.masked_url}.")
    return path


def _open_live(project: Project) -> sqlite3.Connection:
    path = _sqlite_path(project)
    if not os.path.isfile(path):
        raise BackupError(f"The database file does not exist: {path}. {NOT_RUN}")
    try:
        return _connect(path, "ro", timeout=LOCK_WAIT_SECONDS)
    except sqlite3.Error as exc:
        raise describe_failure("the database cannot be opened", exc) from exc


def _connect(path: str, mode: str, *, immutable: bool = False,
             timeout: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(file_uri(path, mode, immutable=immutable), uri=True, timeout=timeout,
                           isolation_level=None, check_same_thread=False)


def _check_file(path: str, version_table: str, *, immutable: bool) -> FileCheck:
    try:
        with closing(_connect(path, "ro", immutable=immutable)) as conn:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                return FileCheck(False, "integrity_check: " + "; ".join(rows[:5]), ())
            return FileCheck(True, "integrity_check ok", _read_revisions(conn, version_table))
    except sqlite3.Error as exc:
        return FileCheck(False, f"the file cannot be read as SQLite: {exc}", ())


def _read_revisions(conn: sqlite3.Connection, version_table: str) -> tuple[str, ...]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (version_table,)
    ).fetchone()
    if not exists:
        return ()
    quoted = '"' + version_table.replace('"', '""') + '"'
    return tuple(sorted(row[0] for row in conn.execute(f"SELECT version_num FROM {quoted}")))
