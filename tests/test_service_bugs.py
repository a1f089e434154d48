"""Service bugs found while building migrate_db.py / automigrate (run with -W error)."""

from __future__ import annotations

import os

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
