"""The dashboard's own state: backups, runs and their steps, the audit log.

It lives in its own SQLite file in the instance folder, never in the target
database, so restoring the target cannot erase the record of having done
so. Web requests, the run monitor and the command line all read and write
it; WAL mode lets readers go on while a run records its progress.

Whatever goes wrong with the store's file or folder (a full disk, a read-only
folder, a damaged file) is translated here, once, into ``InsufficientStorage``
(507) or ``Unavailable`` (503) naming the file and what to do.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL, Engine

from dashboard.errors import DashboardError, InsufficientStorage, Unavailable

metadata = MetaData()

backups = Table(
    "backups", metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("database", Text, nullable=False),  # masked URL
    Column("dialect", String(32), nullable=False),
    Column("revisions", Text, nullable=False, default="[]"),  # JSON list
    Column("action", String(200), nullable=False),  # what it precedes
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False, default=0),
    Column("sha256", String(64), nullable=False, default=""),
    Column("verified", Boolean, nullable=False, default=False),
    Column("verification", Text, nullable=False, default=""),
    Column("verify_seconds", Float),
    Column("copy_seconds", Float),
)

runs = Table(
    "runs", metadata,
    Column("id", String(64), primary_key=True),
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("from_revs", Text, nullable=False, default="[]"),
    Column("to_revs", Text, nullable=False, default="[]"),
    Column("backup_id", String(64)),
    Column("restore_backup_id", String(64)),  # for restores: the backup being restored
    Column("error", Text),
    Column("failed_step", String(64)),
    Column("user", String(200), nullable=False, default=""),
    Column("pid", Integer),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("backup_seconds", Float),
    Column("discarded_writes", Text),  # JSON list, or NULL when unknown
    # A run over several databases: [{"database": masked URL, "backup_id"}], one each.
    Column("backups", Text),
    # The schema before and after the run (services/schema.py, JSON), or NULL with
    # schema_note saying why it could not be read.
    Column("schema_before", Text),
    Column("schema_after", Text),
    Column("schema_note", Text),
    # A run carried out elsewhere (a Celery worker, "w1@host"), copied here from what
    # it reported: this store only mirrors it, and never settles it as its own.
    Column("executed_by", Text),
)

run_steps = Table(
    "run_steps", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("revision", String(200), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # planned, running, succeeded, failed
    Column("started_at", Float),
    Column("finished_at", Float),
)

# A rehearsal: the pending upgrade (and, for a round trip, down and up again) run on a
# scratch copy made from a fresh backup; the real database is never touched.
rehearsals = Table(
    "rehearsals", metadata,
    Column("id", String(64), primary_key=True),
    Column("destination", Text, nullable=False),
    Column("roundtrip", Boolean, nullable=False, default=False),
    Column("status", String(32), nullable=False),  # running, passed, failed
    Column("user", String(200), nullable=False, default=""),
    Column("from_revs", Text, nullable=False, default="[]"),
    Column("to_revs", Text, nullable=False, default="[]"),
    Column("backup_id", String(64)),
    Column("copy", Text),  # the scratch copy, masked (a file, or a scratch database)
    Column("copy_removed", Boolean, nullable=False, default=False),
    Column("error", Text),
    Column("failed_step", String(200)),
    Column("runner_pid", Integer),
    Column("pid", Integer),  # the worker's, while a phase runs
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    # The copy's schema (services/schema.py, JSON) before, after the upgrade, after the
    # downgrade and after the upgrade again.
    Column("schema_before", Text),
    Column("schema_up", Text),
    Column("schema_down", Text),
    Column("schema_again", Text),
)

rehearsal_steps = Table(
    "rehearsal_steps", metadata,
    Column("rehearsal_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("phase", String(32), nullable=False),  # upgrade, downgrade, upgrade again
    Column("revision", String(200), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # planned, running, succeeded, failed
    Column("started_at", Float),
    Column("finished_at", Float),
)

# The log lines of a run, or of a rehearsal (run_id is then the rehearsal's id).
run_logs = Table(
    "run_logs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("ts", Float, nullable=False),
    Column("level", String(16), nullable=False),
    Column("message", Text, nullable=False),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("event", String(64), nullable=False),
    Column("user", String(200), nullable=False),
    Column("database", Text, nullable=False),  # masked URL
    Column("action", String(32)),
    Column("target", Text),
    Column("from_revs", Text, nullable=False, default="[]"),
    Column("to_revs", Text, nullable=False, default="[]"),
    Column("backup_id", String(64)),
    Column("run_id", String(64)),
    Column("duration", Float),
    Column("outcome", String(32), nullable=False),
    Column("error", Text),
)


# A rollout: one action over many targets (services/rollouts.py). Kept in the root
# instance folder's store, never a target's: it spans them. The conductor copies each
# target's run status into its row, so a page reads a rollout in two queries.
rollouts = Table(
    "rollouts", metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(32), nullable=False),  # running, succeeded, halted, ...
    Column("action", String(32), nullable=False),
    Column("destination", Text, nullable=False),
    Column("label", String(64)),  # the label that selected the targets, if one did
    Column("canary", Integer, nullable=False),
    Column("parallel", Integer, nullable=False),
    Column("on_error", String(16), nullable=False),
    Column("executor", String(32), nullable=False),
    Column("user", String(200), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("error", Text),
    Column("conductor_pid", Integer),
)

rollout_targets = Table(
    "rollout_targets", metadata,
    Column("rollout_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("name", String(64), nullable=False),
    Column("canary", Boolean, nullable=False, default=False),
    Column("status", String(32), nullable=False),
    Column("run_id", String(64)),
    Column("handle", Text),  # the executor's, to poll the run by
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("from_revs", Text, nullable=False, default="[]"),
    Column("to_revs", Text, nullable=False, default="[]"),
    Column("error", Text),
)

# The audit log is append-only, enforced where it is stored.
_APPEND_ONLY = (
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
)


def _add_missing_columns(engine: Engine) -> None:
    """A store made by an older version gains the columns added since."""
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            present = {row[1] for row in conn.execute(text(f'PRAGMA table_info("{table.name}")'))}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(engine.dialect)
                    conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN '
                                      f'"{column.name}" {kind}'))


def dumps(value) -> str:
    return json.dumps(list(value) if isinstance(value, (tuple, set, frozenset)) else value)


def loads(value: str | None):
    return json.loads(value) if value else []


STORE_FILE = "dashboard.db"
AUDIT_JOURNAL = "audit.jsonl"

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def store_engine(instance_dir: str) -> Engine:
    """One engine per store file per process; creates the schema once.

    Every error of the store's file (full or read-only folder, damaged file) comes
    out of it as ``InsufficientStorage`` or ``Unavailable``, naming the file."""
    path = os.path.abspath(os.path.join(instance_dir, STORE_FILE))
    with _engines_lock:
        engine = _engines.get(path)
        if engine is None:
            engine = _open_store(path)
            _engines[path] = engine
        return engine


def _open_store(path: str) -> Engine:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, os.path.dirname(path)) from exc
    # URL.create percent-encodes the path: a '#' or '?' in it is part of the name.
    engine = create_engine(URL.create("sqlite", database=path), connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "handle_error")
    def _translate(context):
        return storage_error(context.original_exception, path)

    try:
        metadata.create_all(engine)
        _add_missing_columns(engine)
        with engine.begin() as conn:
            for statement in _APPEND_ONLY:
                conn.execute(text(statement))
            if conn.execute(select(audit.c.id).limit(1)).first() is None:
                _import_audit_journal(conn, os.path.dirname(path))
    except BaseException:
        engine.dispose()
        raise
    return engine


def close_all() -> None:
    """Close every store file this process holds open (a process about to stop)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


# ------------------------------------------------------------------ the audit journal
# Every audit entry is also appended, as one JSON line, to a file beside the store,
# so a store that is lost or moved aside does not take the audit log with it: a new
# store reads the entries back from it.


def append_audit_journal(instance_dir: str, row: dict) -> None:
    """Append one audit row (as stored, with its id) and make it durable."""
    path = os.path.join(instance_dir, AUDIT_JOURNAL)
    line = json.dumps({**row, "from_revs": loads(row.get("from_revs")),
                       "to_revs": loads(row.get("to_revs"))}, sort_keys=True) + "\n"
    try:
        new = not os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_folder(instance_dir)
    except OSError as exc:
        raise storage_error(exc, path) from exc


def _import_audit_journal(conn, instance_dir: str) -> None:
    path = os.path.join(instance_dir, AUDIT_JOURNAL)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(exc, path) from exc
    names = {column.name for column in audit.columns}
    rows = []
    for line in lines:
        try:
            entry = json.loads(line)
            row = {key: value for key, value in entry.items() if key in names}
            row["from_revs"], row["to_revs"] = dumps(row["from_revs"]), dumps(row["to_revs"])
            rows.append(row)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash: the others still count
    if rows:
        conn.execute(insert(audit).prefix_with("OR IGNORE"), rows)


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ errors


def storage_error(exc: BaseException, where: str) -> DashboardError | None:
    """A full, read-only or damaged instance folder or store, said plainly:
    ``InsufficientStorage`` (507) or ``Unavailable`` (503), naming ``where`` and
    what to do. Any OSError is one; a SQLite error that is not (a constraint, a
    busy database) gives None."""
    folder = where if os.path.isdir(where) else os.path.dirname(where)
    kind = _kind_of(exc, folder)
    reason = getattr(exc, "strerror", None) or str(exc)
    if kind == "full":
        return InsufficientStorage(
            f"The disk holding {folder} is full ({reason}): the dashboard cannot record what "
            "it does there, so it does nothing. Free some space and try again.", detail=reason)
    if kind == "read-only":
        why = ("its file system is read-only" if _read_only_fs(folder)
               else "it is not writable by the dashboard's user")
        return Unavailable(
            f"The dashboard cannot write {where}: {why} ({reason}). It records every action "
            f"there, so it does nothing until it can: make {folder} writable and try again.",
            detail=reason)
    if kind == "damaged":
        return Unavailable(
            f"The dashboard's store {where} is damaged ({reason}). Move it aside (rename it, "
            f"for example to {os.path.basename(where)}.damaged) and reload: a new store is "
            "made, the backups are listed again from their manifests and the audit log is "
            f"read back from {AUDIT_JOURNAL} beside it.", detail=reason)
    if kind == "unusable":
        return Unavailable(f"The dashboard cannot use {where} ({reason}). Check the folder "
                           "and its disk, then try again.", detail=reason)
    return None


def _kind_of(exc: BaseException, folder: str) -> str | None:
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return "full"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "read-only"
        return "unusable"
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF  # the primary code
    if code == sqlite3.SQLITE_FULL:
        return "full"
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return "read-only"
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return "damaged"
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR):
        # SQLite does not say why it could not open or write the file: the folder does.
        if _free_bytes(folder) == 0:
            return "full"
        if _read_only_fs(folder) or not os.access(folder, os.W_OK):
            return "read-only"
        return "unusable"
    return None


def _read_only_fs(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _free_bytes(folder: str) -> int | None:
    try:
        info = os.statvfs(folder)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


# ------------------------------------------------------------------ listings


@dataclass(frozen=True)
class Page:
    """One page of a listing (newest first) and how many rows match in all."""

    items: list
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def paged(instance_dir: str, table: Table, order_by: tuple, where: dict, page: int,
          per_page: int, convert) -> Page:
    """Rows of ``table`` whose columns equal ``where``'s values, one page of them."""
    conditions = [table.c[name] == value for name, value in where.items()]
    engine = store_engine(instance_dir)
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(table).where(*conditions)).scalar()
        rows = conn.execute(select(table).where(*conditions).order_by(*order_by)
                            .offset((page - 1) * per_page).limit(per_page)).all()
    return Page([convert(row) for row in rows], int(total or 0), page, per_page)
