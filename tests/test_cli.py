"""migrate_db.py, run as a real process against scratch projects and SQLite files.

What a user or a CI job sees: exit codes and output. Behind them, the same
guard as the dashboard: a backup the dashboard lists, an audit entry, the
shared lock, a restore when a revision fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dashboard.services import audit, backups, guard, locking
from dashboard.services.project import load_project
from tests.conftest import (
    CHATS,
    LOGIN_REVOCATION,
    LOGIN_SESSIONS,
    MERGE,
    REPO,
    UNIFIED_REASONING,
    db_revisions,
    migrate,
)

FAILING_REVISION = "badbadbad001"
FAILING_REVISION_SOURCE = f'''"""create a table, then fail

Revision ID: {FAILING_REVISION}
Revises: {UNIFIED_REASONING}
Create Date: 2025-10-20 12:00:00.000000

"""
import sqlalchemy as sa

from alembic import op

revision = "{FAILING_REVISION}"
down_revision = "{UNIFIED_REASONING}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer(), primary_key=True))
    raise RuntimeError("this revision always fails")


def downgrade() -> None:
    op.drop_table("half_done")
'''


def add_failing_revision(ini: Path) -> None:
    """A new head whose upgrade creates a table and then raises."""
    path = ini.parent / "alembic" / "versions" / f"{FAILING_REVISION}_create_then_fail.py"
    path.write_text(FAILING_REVISION_SOURCE, encoding="utf-8")


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.fixture
def cli_env(sample_ini, db_url, instance_dir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DASHBOARD_") and k != "AUTO_MIGRATE"}
    env.update(
        DASHBOARD_ALEMBIC_INI=str(sample_ini),
        DASHBOARD_DATABASE_URL=db_url,
        DASHBOARD_INSTANCE_DIR=str(instance_dir),
        DASHBOARD_SEED_SAMPLE="false",
    )
    return env


@pytest.fixture
def run_cli(cli_env):
    """migrate_db.py's main() in this process: its exit code and what it printed.
    (Tests of the command as a process, its cwd or its interpreter, run it as one.)"""
    import migrate_db

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = migrate_db.main(list(args), environ=env or cli_env, out=out, err=err)
            except SystemExit as exc:  # argparse: --help, usage errors
                code = exc.code if isinstance(exc.code, int) else 2
        return subprocess.CompletedProcess(["migrate_db.py", *args], code, out.getvalue(),
                                           err.getvalue())
    return run


@pytest.fixture
def db_at_chats(sample_ini, db_url, db_path) -> Path:
    migrate(sample_ini, db_url, CHATS)
    return db_path


@pytest.fixture
def db_at_head(sample_ini, db_url, db_path) -> Path:
    migrate(sample_ini, db_url, "heads")
    return db_path


# ------------------------------------------------------------------ reports

def test_check_pending_lists_pending_in_apply_order_and_exits_1(run_cli, db_at_chats):
    result = run_cli("--check-pending")

    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "7 pending revision(s)" in out
    assert CHATS not in out
    assert out.index(LOGIN_SESSIONS) < out.index(LOGIN_REVOCATION) < out.index(MERGE)
    assert out.index(MERGE) < out.index(UNIFIED_REASONING)


def test_check_pending_exits_0_when_up_to_date(run_cli, db_at_head):
    result = run_cli("--check-pending")

    assert result.returncode == 0, result.stderr
    assert f"up to date at {UNIFIED_REASONING}" in result.stdout


def test_check_pending_exits_1_on_an_uninitialized_database(run_cli, db_path):
    sqlite3.connect(db_path).close()  # an empty database file, no alembic_version

    result = run_cli("--check-pending")

    assert result.returncode == 1, result.stderr
    assert "no migration has run" in result.stdout
    assert "10 pending revision(s)" in result.stdout


def test_check_shows_current_heads_and_state(run_cli, db_at_chats):
    result = run_cli("--check")

    assert result.returncode == 0, result.stderr
    assert f"Current:  {CHATS}" in result.stdout
    assert f"Heads:    {UNIFIED_REASONING}" in result.stdout
    assert "State:    pending" in result.stdout
    assert "7 revisions to apply." in result.stdout


def test_history_marks_current_heads_merges_and_branch_points(run_cli, db_at_chats):
    result = run_cli("--history")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    by_revision = {line.split(" -> ")[1].split()[0].rstrip(","): line for line in lines}
    assert lines[0] == by_revision[UNIFIED_REASONING]  # newest first
    assert "(head)" in by_revision[UNIFIED_REASONING]
    assert "(current)" in by_revision[CHATS]
    assert "(branch point)" in by_revision[CHATS]
    assert "(pending)" in by_revision[MERGE]
    assert "(merge of" in by_revision[MERGE]
    assert "(label auth)" in by_revision[LOGIN_SESSIONS]
    assert sum("(current)" in line for line in lines) == 1


def test_json_output_is_the_api_json(run_cli, db_at_chats, app):
    client = app.test_client()

    status = run_cli("--check", "--json")
    pending = run_cli("--check-pending", "--json")
    history = run_cli("--history", "--json")

    assert status.returncode == 0 and pending.returncode == 1 and history.returncode == 0
    assert json.loads(status.stdout) == client.get("/api/status").get_json()
    assert json.loads(pending.stdout) == client.get("/api/status").get_json()
    assert json.loads(history.stdout) == client.get("/api/revisions").get_json()


def test_help_documents_exit_codes_and_the_password_warning(run_cli):
    result = run_cli("--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "exit codes:" in text
    assert "3 another migration is already running" in text
    assert "visible in the process list" in text
    assert "DASHBOARD_DATABASE_URL" in text


# ------------------------------------------------------------------ upgrading

def test_plain_run_upgrades_behind_a_backup_and_audits(run_cli, db_at_chats, instance_dir, app):
    result = run_cli()

    assert result.returncode == 0, result.stdout + result.stderr
    assert db_revisions(db_at_chats) == [UNIFIED_REASONING]
    [backup] = backups.list_backups(str(instance_dir))
    assert Path(backup.path).is_file()
    assert Path(backup.path).parent == instance_dir / "backups"
    assert backup.revisions == (CHATS,)
    assert f"Backup {backup.id}" in result.stdout and backup.path in result.stdout
    assert "[7/7] up c2756f59bd25: succeeded" in result.stdout
    assert "completed successfully: now at c2756f59bd25" in result.stdout
    listed = app.test_client().get("/api/backups").get_json()["backups"]
    assert [b["id"] for b in listed] == [backup.id]
    [entry] = [e for e in audit.list_entries(str(instance_dir)) if e.event == "action_succeeded"]
    assert (entry.action, entry.target, entry.backup_id) == ("upgrade", "heads", backup.id)
    assert entry.to_revs == (UNIFIED_REASONING,)

    again = run_cli()

    assert again.returncode == 0, again.stderr
    assert f"Database is up to date at {UNIFIED_REASONING}" in again.stdout
    assert len(backups.list_backups(str(instance_dir))) == 1


def test_failing_revision_exits_1_and_the_database_is_restored(
        run_cli, sample_ini, db_at_head, instance_dir):
    add_failing_revision(sample_ini)
    tables_before = table_names(db_at_head)

    result = run_cli()

    assert result.returncode == 1, result.stdout + result.stderr
    assert "this revision always fails" in result.stderr
    assert "rolled back" in result.stderr and "as before the run" in result.stderr
    assert db_revisions(db_at_head) == [UNIFIED_REASONING]
    assert table_names(db_at_head) == tables_before
    assert "half_done" not in table_names(db_at_head)
    events = [e.event for e in audit.list_entries(str(instance_dir))]
    assert "action_rolled_back" in events


def test_a_held_lock_exits_3(run_cli, sample_ini, db_url, db_at_chats, instance_dir):
    project = load_project(str(sample_ini), db_url)
    holder = locking.LockHolder(os.getpid(), "upgrade heads", "run-elsewhere", "someone",
                                time.time())
    with locking.acquire(str(instance_dir), guard.lock_key(project), holder,
                         beside=guard.lock_file(project)):
        result = run_cli()

    assert result.returncode == 3, result.stdout + result.stderr
    assert "already running" in result.stderr
    assert "someone" in result.stderr
    assert db_revisions(db_at_chats) == [CHATS]
    assert backups.list_backups(str(instance_dir)) == []


# ------------------------------------------------------------------ errors

def test_a_missing_sqlite_file_exits_2_on_check_and_is_created_by_an_upgrade(run_cli, db_path):
    check = run_cli("--check")
    assert check.returncode == 2
    assert "does not exist" in check.stdout + check.stderr
    assert not db_path.exists()

    upgrade = run_cli()
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert db_revisions(db_path) == [UNIFIED_REASONING]


def test_a_sqlite_file_in_a_missing_folder_exits_2(run_cli, tmp_path):
    url = f"sqlite:///{tmp_path / 'nowhere' / 'app.db'}"
    upgrade = run_cli("--url", url)
    assert upgrade.returncode == 2
    assert "does not exist" in upgrade.stderr


def test_a_missing_ini_exits_2(run_cli, tmp_path):
    result = run_cli("--check-pending", "--ini", str(tmp_path / "nowhere.ini"))

    assert result.returncode == 2
    assert "alembic.ini not found" in result.stderr


def test_url_flag_overrides_the_environment(run_cli, db_at_chats, tmp_path, sample_ini):
    other = tmp_path / "other.db"
    migrate(sample_ini, f"sqlite:///{other}", "heads")

    result = run_cli("--check-pending", "--url", f"sqlite:///{other}")

    assert result.returncode == 0, result.stderr
    assert str(other) in " ".join(run_cli("--check", "--url", f"sqlite:///{other}").stdout.split())


def test_a_relative_sqlite_url_means_the_file_in_the_current_directory(
        cli_env, sample_ini, tmp_path, instance_dir):
    workdir = tmp_path / "work"
    workdir.mkdir()
    migrate(sample_ini, f"sqlite:///{workdir / 'app.db'}", CHATS)

    result = subprocess.run(
        [sys.executable, str(REPO / "migrate_db.py"), "--url", "sqlite:///app.db"],
        cwd=workdir, env=cli_env, capture_output=True, text=True, timeout=180,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert db_revisions(workdir / "app.db") == [UNIFIED_REASONING]
    assert not (sample_ini.parent / "app.db").exists()
    assert [b.revisions for b in backups.list_backups(str(instance_dir))] == [(CHATS,)]


def test_a_password_is_never_printed(run_cli, cli_env):
    env = dict(cli_env, DASHBOARD_DATABASE_URL="postgresql://app:s3cret-pw@127.0.0.1:9/app")

    results = [run_cli(*args, env=env) for args in (("--check",), ("--check", "--json"), ())]

    for result in results:
        assert result.returncode == 2
        assert "s3cret-pw" not in result.stdout + result.stderr
    assert "app:***@127.0.0.1" in results[0].stdout


def test_ctrl_c_cancels_the_run_and_the_database_is_put_back(cli_env, sample_ini, db_at_head):
    from tests.test_guard_sqlite import write_revision

    write_revision(sample_ini, "c7c700000001", UNIFIED_REASONING, table="half", sleep=60)
    tables_before = table_names(db_at_head)
    proc = subprocess.Popen([sys.executable, "migrate_db.py"], cwd=REPO, env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if "taken and verified" in line or time.monotonic() > deadline:
                break
        time.sleep(1.5)  # the backup is taken: the worker starts the step, which sleeps
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "cancelling the run" in err and "cancelled" in err, out + err
    assert db_revisions(db_at_head) == [UNIFIED_REASONING]
    assert table_names(db_at_head) == tables_before
