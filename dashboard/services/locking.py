"""One action at a time per target database, across processes.

An ``flock`` on a file in the instance folder: the kernel releases it when
the last process holding it dies, so a lock left by a dead server or worker
is released by construction, never by guessing from a PID. The worker
subprocess inherits the descriptor, so the lock stays held while a
migration runs even if the process that started it is gone. Who holds it is
written into the file for the "already running" message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass

from dashboard.errors import Conflict


@dataclass(frozen=True)
class LockHolder:
    pid: int
    action: str
    run_id: str
    user: str
    started_at: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return (f"A migration is already running (started at {when}, action {self.action}, "
                f"by {self.user}, run {self.run_id}).")


class LockHeld(Conflict):
    """Another action holds the lock of this database."""


class ActionLock:
    """A held lock; ``release()`` (or process exit) frees it."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path
        self.engine_lock: EngineLock | None = None

    def release(self) -> None:
        if self.engine_lock is not None:
            self.engine_lock.release()
            self.engine_lock = None
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_path(instance_dir: str, target_key: str) -> str:
    digest = hashlib.sha256(target_key.encode()).hexdigest()[:16]
    folder = os.path.join(instance_dir, "locks")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"target-{digest}.lock")


def acquire(instance_dir: str, target_key: str, holder: LockHolder,
            wait: float = 1.0) -> ActionLock:
    """Take the lock, waiting at most ``wait`` seconds (a run that has just
    recorded its result is still letting go), or raise ``Conflict`` naming
    who holds it."""
    path = lock_path(instance_dir, target_key)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            os.close(fd)
            current = read_holder(instance_dir, target_key)
            message = current.describe() if current else "A migration is already running."
            raise LockHeld(message) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder.__dict__).encode(), 0)
    return ActionLock(fd, path)


def read_holder(instance_dir: str, target_key: str) -> LockHolder | None:
    """Who holds the lock, or None when nobody does."""
    path = lock_path(instance_dir, target_key)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: read who by
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        raw = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    try:
        return LockHolder(**json.loads(raw.decode()))
    except (ValueError, TypeError):
        return LockHolder(pid=0, action="unknown", run_id="?", user="?", started_at=time.time())


# ------------------------------------------------------------ engine locks
# A file lock serialises the processes of one machine. Two dashboards on two
# machines (or a dashboard and an application auto-migrating) meet only at the
# database, so for server databases the lock is also taken there, on a
# dedicated connection held for the whole action: a PostgreSQL advisory lock,
# or MariaDB's GET_LOCK. Both are released by the server when the connection
# ends, so a dead holder never leaves them behind.

ENGINE_LOCK_NAME = "migration-dashboard"
# pg_advisory_lock takes a bigint: a fixed key derived from the name.
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(ENGINE_LOCK_NAME.encode()).digest()[:8], "big",
                             signed=True)


class EngineLock:
    def __init__(self, engine, connection, dialect: str):
        self.engine = engine
        self.connection = connection
        self.dialect = dialect

    def release(self) -> None:
        from sqlalchemy import text

        if self.connection is None:
            return
        try:
            if self.dialect == "postgresql":
                self.connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
            else:
                self.connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": ENGINE_LOCK_NAME})
        except Exception:
            pass  # closing the connection releases it anyway
        finally:
            self.connection.close()
            self.engine.dispose()
            self.connection = None


def _holder_label(holder: LockHolder) -> str:
    # Visible to other sessions (pg_stat_activity.application_name is 63 bytes).
    return f"mdash {holder.action} {holder.user}"[:63]


def acquire_engine_lock(open_connection, dialect: str, holder: LockHolder) -> EngineLock | None:
    """Take the database's own lock, or raise ``Conflict`` saying who holds it.

    ``open_connection`` returns (engine, connection) on the target database."""
    from sqlalchemy import text

    if dialect not in ("postgresql", "mysql", "mariadb"):
        return None
    engine, connection = open_connection()
    try:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        if dialect == "postgresql":
            connection.execute(text("SELECT set_config('application_name', :a, false)"),
                               {"a": _holder_label(holder)})
            got = connection.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                     {"k": PG_LOCK_KEY}).scalar()
        else:
            got = connection.execute(text("SELECT GET_LOCK(:n, 0)"),
                                     {"n": ENGINE_LOCK_NAME}).scalar()
        if not got:
            who = describe_engine_holder(connection, dialect)
            raise LockHeld(f"A migration is already running on this database ({who}).")
    except Exception:
        connection.close()
        engine.dispose()
        raise
    return EngineLock(engine, connection, dialect)


def describe_engine_holder(connection, dialect: str) -> str:
    """Who holds the database lock, and since when, as the server reports it."""
    from sqlalchemy import text

    try:
        if dialect == "postgresql":
            row = connection.execute(text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = ((:k >> 32) & 4294967295)::oid "
                "AND l.objid = (:k & 4294967295)::oid"), {"k": PG_LOCK_KEY}).first()
            if row is None:
                return "held by another session"
            since = f"{row.backend_start:%Y-%m-%d %H:%M:%S}"
            return (f"held by session {row.pid} '{row.application_name}' from "
                    f"{row.client_addr or 'local socket'} since {since}")
        row = connection.execute(text(
            "SELECT p.ID, p.USER, p.HOST, p.TIME FROM information_schema.PROCESSLIST p "
            "WHERE p.ID = IS_USED_LOCK(:n)"), {"n": ENGINE_LOCK_NAME}).first()
        if row is None:
            return "held by another session"
        return f"held by connection {row[0]} of {row[1]}@{row[2]} for {row[3]} s"
    except Exception as exc:  # the answer is informative only
        return f"held by another session ({type(exc).__name__})"


def engine_lock_holder(connection, dialect: str) -> str | None:
    """Who holds the database lock now, without taking it; None when free."""
    from sqlalchemy import text

    if dialect == "postgresql":
        held = connection.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = ((:k >> 32) & 4294967295)::oid AND objid = (:k & 4294967295)::oid"),
            {"k": PG_LOCK_KEY}).scalar()
    elif dialect in ("mysql", "mariadb"):
        held = connection.execute(text("SELECT IS_USED_LOCK(:n)"),
                                  {"n": ENGINE_LOCK_NAME}).scalar()
    else:
        return None
    return describe_engine_holder(connection, dialect) if held else None
