"""The MariaDB engine on its own, against the real server on this machine.

What the guard asks of the engine (the lock, the restore, the sessions of a
cancelled run, the writes a restore would discard) is checked here at the
engine's level; tests/test_guard_mariadb.py drives the same through the API.
"""

from __future__ import annotations

import os
import time

import pytest

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
