"""The dashboard's own state: backups, runs and their steps, the audit log.

It lives in its own SQLite file in the instance folder, never in the target
database, so restoring the target cannot erase the record of having done
so. Web requests, the run monitor and the command line all read and write
it; WAL mode lets readers go on while a run records its progress.
"""

from __future__ import annotations

import json
import os
import threading

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
    text,
)
from sqlalchemy.engine import URL, Engine

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


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def store_engine(instance_dir: str) -> Engine:
    """One engine per store file per process; creates the schema once."""
    path = os.path.abspath(os.path.join(instance_dir, "dashboard.db"))
    with _engines_lock:
        engine = _engines.get(path)
        if engine is None:
            os.makedirs(instance_dir, exist_ok=True)
            # URL.create percent-encodes the path: a '#' or '?' in it is part of the name.
            engine = create_engine(URL.create("sqlite", database=path),
                                   connect_args={"timeout": 30})

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection, _record):
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

            metadata.create_all(engine)
            _add_missing_columns(engine)
            with engine.begin() as conn:
                for statement in _APPEND_ONLY:
                    conn.execute(text(statement))
            _engines[path] = engine
        return engine
