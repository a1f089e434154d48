"""When the run's own supervisor dies, and when the database moved under a run.

The runner process owns a run to its end; if it is killed too (a machine
crash, an OOM kill), the next start settles the run from what its worker
wrote and what the database holds: SQLite and PostgreSQL undo the open
transaction themselves, MariaDB's half-done DDL is put back from the run's
backup. And a restore never runs over changes the run did not make.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import CHATS, UNIFIED_REASONING, migrate
from tests.conftest import client_for as make_client
from tests.servers import SERVERS, require, scratch_database, snapshot
from tests.test_guard_sqlite import (
    FINISHED,
    post_run,
    rows,
    tables,
    wait_for_run,
    wait_for_step,
    write_revision,
)

STEP_ONE = "7e1d00000001"
STEP_TWO = "7e1d00000002"




def kill_runner_of(run: dict) -> None:
    """kill -9 of the run's runner and its worker (one process group): what a machine
    crash does to them, leaving the database as they had it."""
    with open(f"/proc/{run_worker_pid(run)}/stat", encoding="utf-8") as handle:
        group = int(handle.read().rsplit(")", 1)[1].split()[3])
    os.killpg(group, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def run_worker_pid(run: dict) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"alembic_worker.py" in cmdline and run["target"].encode() in cmdline:
            return int(entry)
    raise AssertionError(f"no worker process for run {run['id']}")


def settle_after_restart(ini: Path, url: str, instance: Path, run_id: str) -> dict:
    """A new dashboard on the same instance folder, as after a reboot: the run ends."""
    client = make_client(ini, url, instance)
    return wait_for_run(client, run_id, timeout=60)


def test_a_sqlite_run_whose_runner_dies_is_undone_by_sqlite_and_settled_at_restart(
        sample_ini, db_url, db_path, tmp_path):
    migrate(sample_ini, db_url, UNIFIED_REASONING)
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, table="step_one")
    write_revision(sample_ini, STEP_TWO, STEP_ONE, table="step_two", sleep=30)
    before = rows(db_path)
    client = make_client(sample_ini, db_url, tmp_path / "inst")
    started = post_run(client, "upgrade", STEP_TWO)
    assert started.status_code == 202, started.get_json()
    run = wait_for_step(client, started.get_json()["id"], 2)

    kill_runner_of(run)

    # The half-done transaction is in SQLite's journal; the next start rolls it back.
    settled = settle_after_restart(sample_ini, db_url, tmp_path / "inst", run["id"])
    assert settled["status"] == "failed", settled
    assert "rolled back by the database" in settled["error"], settled["error"]
    assert rows(db_path) == before
    assert not {"step_one", "step_two"} & tables(db_path)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def mariadb_db():
    server = require(SERVERS["mariadb"])
    with scratch_database(server, prefix="md_recover") as name:
        yield server, name


def test_a_mariadb_run_whose_runner_dies_half_way_is_restored_from_its_backup_at_restart(
        mariadb_db, sample_ini, tmp_path):
    server, name = mariadb_db
    url = server.url(name)
    migrate(sample_ini, url, UNIFIED_REASONING)
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, table="step_one")
    write_revision(sample_ini, STEP_TWO, STEP_ONE, table="step_two", sleep=30)
    before = snapshot(url)
    client = make_client(sample_ini, url, tmp_path / "inst")
    started = post_run(client, "upgrade", STEP_TWO)
    assert started.status_code == 202, started.get_json()
    run = wait_for_step(client, started.get_json()["id"], 2)

    kill_runner_of(run)
    # MariaDB committed step one's DDL: the database is between revisions now.
    assert "step_one" in server.scalars(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = :d", d=name)

    settled = settle_after_restart(sample_ini, url, tmp_path / "inst", run["id"])
    assert settled["status"] == "restored", settled
    assert "restored from the pre-action backup" in settled["error"], settled["error"]
    assert snapshot(url) == before


def test_a_restore_never_runs_over_changes_the_run_did_not_make(mariadb_db, sample_ini,
                                                                 tmp_path):
    """A failing revision that (like another process would) sets the version table to a
    revision this run could not reach: the backup is not restored over it."""
    server, name = mariadb_db
    url = server.url(name)
    migrate(sample_ini, url, CHATS)
    path = sample_ini.parent / "alembic" / "versions" / f"{STEP_ONE}_elsewhere.py"
    path.write_text("\n".join([
        '"""moves the version table elsewhere, then fails"""',
        "import sqlalchemy as sa",
        "from alembic import op",
        f'revision = "{STEP_ONE}"',
        f'down_revision = "{UNIFIED_REASONING}"',
        "def upgrade():",
        "    op.execute(\"UPDATE alembic_version SET version_num = 'ffffeeee0000'\")",
        '    op.create_table("moved", sa.Column("id", sa.Integer, primary_key=True))',
        '    raise RuntimeError("fails after someone else moved the database")',
        "def downgrade():",
        "    pass",
    ]))
    migrate(sample_ini, url, UNIFIED_REASONING)
    client = make_client(sample_ini, url, tmp_path / "inst")
    started = post_run(client, "upgrade", "heads")
    assert started.status_code == 202, started.get_json()
    run = wait_for_run(client, started.get_json()["id"])
    assert run["status"] in FINISHED
    assert run["status"] == "failed", run
    assert "was NOT restored" in run["error"] and "ffffeeee0000" in run["error"], run["error"]
    # The database keeps what it holds now; its backup is named for a person to decide.
    assert server.scalars("SELECT version_num FROM alembic_version", database=name) == \
        ["ffffeeee0000"]
    assert run["backup_id"] in run["error"] or "backup" in run["error"]
