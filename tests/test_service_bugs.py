"""Service bugs found while building migrate_db.py / automigrate (run with -W error)."""

from __future__ import annotations

import os

import pytest

from dashboard.core import Target
from dashboard.services import guard, runs
from dashboard.settings import settings_from_environ
from tests.conftest import CHATS, UNIFIED_REASONING, db_revisions, migrate


def _dashboard(ini, url, instance_dir):
    return Target(settings_from_environ({
        "DASHBOARD_ALEMBIC_INI": str(ini), "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": str(instance_dir), "DASHBOARD_SEED_SAMPLE": "false",
    }))


def test_start_action_closes_the_worker_pipe(sample_ini, db_url, db_path, instance_dir):
    """_run_worker never closes proc.stdout: ResourceWarning -> fails under -W error."""
    migrate(sample_ini, db_url, CHATS)
    dashboard = _dashboard(sample_ini, db_url, instance_dir)
    project, history, status = dashboard.read_state()

    run = guard.start_action(dashboard.pinned(project), history, status.state,
                                  "upgrade", "heads", "tester", background=False)

    assert run.status == runs.SUCCEEDED
    assert db_revisions(db_path) == [UNIFIED_REASONING]


def test_a_relative_sqlite_url_names_the_same_file_for_status_backup_and_worker(
        sample_ini, tmp_path, instance_dir, monkeypatch):
    """Status and backup resolve sqlite:///rel.db against the process's cwd; the worker
    runs with cwd=dirname(alembic.ini) and migrates (creates!) another file."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    migrate(sample_ini, f"sqlite:///{workdir / 'rel.db'}", CHATS)
    dashboard = _dashboard(sample_ini, "sqlite:///rel.db", instance_dir)
    project, history, status = dashboard.read_state()
    assert status.current == [CHATS]

    run = guard.start_action(dashboard.pinned(project), history, status.state,
                                  "upgrade", "heads", "tester", background=False)

    assert not (sample_ini.parent / "rel.db").exists()
    assert db_revisions(workdir / "rel.db") == [UNIFIED_REASONING]
    assert run.status == runs.SUCCEEDED
    assert os.path.exists(workdir / "rel.db")


def test_a_server_holding_more_than_1024_files_still_starts_runs(client, sample_ini, db_url):
    """select() cannot watch a descriptor numbered 1024 or more: a long-lived server
    with many connections and files open got a 500 on every action."""
    import resource

    from tests.conftest import USERS, migrate
    from tests.test_runs import wait_for_run

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"the open-files limit ({soft}) is too low to open 1100 files")
    migrate(sample_ini, db_url, USERS)
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        response = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
        assert response.status_code == 202, response.get_data(as_text=True)[:300]
    finally:
        for fd in held:
            os.close(fd)
    assert wait_for_run(client, response.get_json()["id"])["status"] == "succeeded"
