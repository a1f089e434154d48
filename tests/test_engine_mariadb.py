"""The MariaDB engine on its own, against the real server on this machine.

What the guard asks of the engine (the lock, the restore, the sessions of a
cancelled run, the writes a restore would discard) is checked here at the
engine's level; tests/test_guard_mariadb.py drives the same through the API.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import ENGINES
from dashboard.engines.mariadb import lock_name
from dashboard.services.locking import LockHeld, LockHolder
from tests.servers import SERVERS, require, scratch_database
from tests.sqlite_helpers import project_for

ENGINE = ENGINES["mysql"]


@pytest.fixture
def mariadb():
    return require(SERVERS["mariadb"])


@pytest.fixture
def database(mariadb):
    with scratch_database(mariadb, prefix="md_eng") as name:
        yield name


@pytest.fixture
def project(mariadb, database):
    return project_for(mariadb.url(database))


def _holder(action="upgrade"):
    return LockHolder(pid=os.getpid(), action=action, run_id="r1", user="tester",
                      started_at=time.time())


# ---------------------------------------------------------------- the lock


def test_the_lock_is_per_database(mariadb, database):
    with scratch_database(mariadb, prefix="md_eng_other") as other:
        here, there = project_for(mariadb.url(database)), project_for(mariadb.url(other))
        held = ENGINE.acquire_lock(here, _holder())
        try:
            assert ENGINE.lock_holder(there) is None
            elsewhere = ENGINE.acquire_lock(there, _holder())  # not refused
            elsewhere.release()
            with pytest.raises(LockHeld, match="already running on this database"):
                ENGINE.acquire_lock(here, _holder())
            assert "already running on this database" in ENGINE.lock_holder(here)
        finally:
            held.release()
        assert ENGINE.lock_holder(here) is None


def test_lock_names_fit_the_servers_limit():
    assert lock_name("app") == "migration-dashboard:app"
    long = lock_name("é" * 64)
    assert len(long) <= 64 and long.startswith("migration-dashboard:")
    assert long != lock_name("é" * 63)


# ---------------------------------------------------------------- a cancelled run's session


class Sleeper(threading.Thread):
    """A session on ``database`` that runs ``SELECT SLEEP(60)`` inside an open transaction
    holding a row lock, as a migration stuck in a statement would; once the statement
    ends it keeps its connection until ``probe`` is set, then tries to use it."""

    def __init__(self, server, database):
        super().__init__(daemon=True)
        self.engine = server.admin_engine(database)
        self.session_id = None
        self.started, self.probe = threading.Event(), threading.Event()
        self.statement = self.connection = None

    def run(self):
        try:
            with self.engine.connect() as conn:
                self.session_id = str(conn.execute(text(ENGINE.session_id_sql())).scalar())
                conn.execute(text("CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY)"))
                conn.execute(text("START TRANSACTION"))
                conn.execute(text("INSERT INTO held VALUES (1)"))
                self.started.set()
                try:
                    conn.execute(text("SELECT SLEEP(60)"))
                    self.statement = "returned"
                except SQLAlchemyError as exc:
                    self.statement = f"interrupted: {exc.orig or exc}"
                self.probe.wait(30)
                try:
                    conn.execute(text("SELECT 1"))
                    self.connection = "still open"
                except SQLAlchemyError as exc:
                    self.connection = f"ended: {type(exc.orig or exc).__name__}"
        except Exception as exc:  # never an unhandled exception in a thread
            self.statement = self.statement or f"failed: {type(exc).__name__}: {exc}"
        finally:
            self.started.set()
            self.engine.dispose()


def _session_ids(server, database):
    return {str(i) for i in server.scalars(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db", db=database)}


def test_end_sessions_stops_the_statement_and_ends_the_session(mariadb, database, project):
    sleeper = Sleeper(mariadb, database)
    sleeper.start()
    try:
        assert sleeper.started.wait(10) and sleeper.session_id, sleeper.statement
        deadline = time.monotonic() + 10
        while "SLEEP" not in " ".join(mariadb.scalars(
                "SELECT COALESCE(INFO, '') FROM information_schema.PROCESSLIST WHERE ID = :id",
                id=sleeper.session_id)) and time.monotonic() < deadline:
            time.sleep(0.02)

        started = time.monotonic()
        ended = ENGINE.end_sessions(project, [sleeper.session_id, "999999999"])
        took = time.monotonic() - started

        assert ended == [sleeper.session_id]
        assert took < 7, took
        assert sleeper.statement and sleeper.statement != "returned", sleeper.statement
        assert sleeper.session_id not in _session_ids(mariadb, database)
        # Its transaction was rolled back and its lock released, though its client
        # still holds the connection: the row is free to write.
        mariadb.execute("SET SESSION innodb_lock_wait_timeout = 1",
                        "INSERT INTO held VALUES (1)", database=database)
        sleeper.probe.set()
        sleeper.join(10)
        assert sleeper.connection.startswith("ended"), sleeper.connection
    finally:
        sleeper.probe.set()
        if sleeper.session_id in _session_ids(mariadb, database):  # so the database drops
            mariadb.execute(f"KILL {int(sleeper.session_id)}")


def test_end_sessions_leaves_sessions_on_other_databases_alone(mariadb, database, project):
    with scratch_database(mariadb, prefix="md_eng_other") as other:
        engine = mariadb.admin_engine(other)
        try:
            with engine.connect() as conn:
                elsewhere = str(conn.execute(text(ENGINE.session_id_sql())).scalar())
                assert ENGINE.end_sessions(project, [elsewhere]) == []
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()
    assert ENGINE.end_sessions(project, []) == []
