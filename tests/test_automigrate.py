"""AUTO_MIGRATE: the start-up upgrade behind the guard, and the sample app that uses it."""

from __future__ import annotations

import logging
import os
import time

import pytest

from app_models.seed import SAMPLE_START_REVISION, create_sample_database
from dashboard.automigrate import (
    AutoMigrateFailed,
    auto_migrate,
    auto_migrate_enabled,
)
from dashboard.engines.sqlite import absolute_sqlite_url
from dashboard.errors import ConfigurationError
from dashboard.services import audit, backups, guard, locking, runs
from dashboard.services.project import load_project
from tests.conftest import CHATS, REPO, UNIFIED_REASONING, db_revisions, migrate
from tests.test_cli import add_failing_revision, table_names


@pytest.fixture
def environ(sample_ini, db_url, instance_dir) -> dict[str, str]:
    return {
        "DASHBOARD_ALEMBIC_INI": str(sample_ini),
        "DASHBOARD_DATABASE_URL": db_url,
        "DASHBOARD_INSTANCE_DIR": str(instance_dir),
        "DASHBOARD_SEED_SAMPLE": "false",
    }


@pytest.fixture
def db_at_chats(sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, CHATS)
    return db_path


@pytest.fixture
def db_at_head(sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, "heads")
    return db_path


@pytest.mark.parametrize("value", ["false", "0", "no", "off", " OFF "])
def test_off_changes_nothing(environ, db_at_chats, instance_dir, value):
    assert auto_migrate(environ=dict(environ, AUTO_MIGRATE=value)) is None

    assert db_revisions(db_at_chats) == [CHATS]
    assert not (instance_dir / "backups").exists() or backups.list_backups(str(instance_dir)) == []


@pytest.mark.parametrize("value", [None, "", "true", "1", "yes", "on", "True"])
def test_on_when_unset_or_true(value):
    environ = {} if value is None else {"AUTO_MIGRATE": value}
    assert auto_migrate_enabled(environ) is True


def test_an_unclear_switch_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="AUTO_MIGRATE='sometimes'"):
        auto_migrate_enabled({"AUTO_MIGRATE": "sometimes"})


def test_on_upgrades_behind_a_backup(environ, db_at_chats, instance_dir, caplog):
    caplog.set_level(logging.INFO, logger="dashboard.automigrate")

    run = auto_migrate(environ=environ)

    assert run is not None and run.status == runs.SUCCEEDED
    assert db_revisions(db_at_chats) == [UNIFIED_REASONING]
    [backup] = backups.list_backups(str(instance_dir))
    assert run.backup_id == backup.id and backup.revisions == (CHATS,)
    assert [e.event for e in audit.list_entries(str(instance_dir))] == ["action_succeeded"]
    messages = [r.getMessage() for r in caplog.records if r.name == "dashboard.automigrate"]
    assert messages[0].startswith("Running database migrations...")
    assert messages[-1].startswith("Database migrations completed successfully")


def test_arguments_override_the_environment(sample_ini, db_url, db_at_chats, instance_dir):
    run = auto_migrate(alembic_ini=str(sample_ini), database_url=db_url,
                       instance_dir=str(instance_dir),
                       environ={"DASHBOARD_DATABASE_URL": "sqlite:////nowhere/else.db"})

    assert run is not None and run.status == runs.SUCCEEDED
    assert db_revisions(db_at_chats) == [UNIFIED_REASONING]


@pytest.mark.parametrize("url, expected", [
    ("sqlite:///app.db", "sqlite:///{cwd}/app.db"),
    ("sqlite:////abs/app.db", "sqlite:////abs/app.db"),
    ("sqlite://", "sqlite://"),
    ("postgresql://u:p%40ss@db/app", "postgresql://u:p%40ss@db/app"),
])
def test_relative_sqlite_paths_are_made_absolute(url, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert absolute_sqlite_url(url, os.getcwd()) == expected.format(cwd=tmp_path)


def test_up_to_date_takes_no_backup(environ, db_at_head, instance_dir):
    assert auto_migrate(environ=environ) is None

    assert backups.list_backups(str(instance_dir)) == []


def test_a_failed_run_raises_and_the_database_is_unchanged(
        environ, sample_ini, db_at_head, instance_dir, caplog):
    add_failing_revision(sample_ini)
    tables_before = table_names(db_at_head)

    with pytest.raises(AutoMigrateFailed, match="this revision always fails") as failure:
        auto_migrate(environ=environ)

    assert failure.value.run.status == runs.RESTORED
    assert db_revisions(db_at_head) == [UNIFIED_REASONING]
    assert table_names(db_at_head) == tables_before
    assert any(r.levelno == logging.ERROR and r.name == "dashboard.automigrate"
               for r in caplog.records)


def test_a_held_lock_raises(environ, sample_ini, db_url, db_at_chats, instance_dir):
    project = load_project(str(sample_ini), db_url)
    holder = locking.LockHolder(os.getpid(), "upgrade heads", "run-x", "someone", time.time())
    with locking.acquire(str(instance_dir), guard.lock_key(project), holder,
                         beside=guard.lock_file(project)), \
            pytest.raises(AutoMigrateFailed, match="already running"):
        auto_migrate(environ=environ)

    assert db_revisions(db_at_chats) == [CHATS]


def test_an_unreachable_database_raises(environ, tmp_path):
    # In a folder that does not exist either: nothing can create it.
    environ["DASHBOARD_DATABASE_URL"] = f"sqlite:///{tmp_path / 'nowhere' / 'missing.db'}"

    with pytest.raises(AutoMigrateFailed, match="does not exist"):
        auto_migrate(environ=environ)


# ------------------------------------------------------------------ the sample app

@pytest.fixture
def sample_app_env(monkeypatch, tmp_path):
    for name in ("AUTO_MIGRATE", "DASHBOARD_ALEMBIC_INI", "DASHBOARD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DASHBOARD_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.setenv("DASHBOARD_SEED_SAMPLE", "false")


def _sample_app(url: str, monkeypatch):
    from app_models.app import create_app, db

    monkeypatch.setenv("DATABASE_URL", url)
    app = create_app()
    yield app
    with app.app_context():
        db.engine.dispose()


def test_sample_app_upgrades_a_database_at_an_early_revision(sample_app_env, monkeypatch,
                                                             tmp_path):
    path = tmp_path / "sample.db"
    url = f"sqlite:///{path}"
    create_sample_database(str(REPO / "alembic.ini"), url)
    assert db_revisions(path) == [SAMPLE_START_REVISION]

    for app in _sample_app(url, monkeypatch):
        client = app.test_client()
        users = client.get("/users").get_json()["users"]
        health = client.get("/health").get_json()

    assert db_revisions(path) == [UNIFIED_REASONING]
    assert [u["email"] for u in users] == [
        "ada@example.com", "grace@example.com", "alan@example.com"]
    assert all(u["settings"]["use_unified_reasoning"] is False for u in users)
    assert all(u["settings"]["selected_reasoning_mode"] == "auto" for u in users)
    assert health == {"status": "ok"}
    assert len(backups.list_backups(str(tmp_path / "instance"))) == 1


def test_sample_app_creates_a_missing_database(sample_app_env, monkeypatch, tmp_path):
    path = tmp_path / "fresh.db"

    for app in _sample_app(f"sqlite:///{path}", monkeypatch):
        users = app.test_client().get("/users").get_json()["users"]

    assert db_revisions(path) == [UNIFIED_REASONING]
    assert len(users) == 3


def test_sample_app_with_auto_migrate_off_leaves_the_database(sample_app_env, monkeypatch,
                                                              tmp_path):
    path = tmp_path / "sample.db"
    url = f"sqlite:///{path}"
    create_sample_database(str(REPO / "alembic.ini"), url)
    monkeypatch.setenv("AUTO_MIGRATE", "false")

    for _app in _sample_app(url, monkeypatch):
        pass

    assert db_revisions(path) == [SAMPLE_START_REVISION]


def test_first_start_without_a_database_file_creates_it(tmp_path, sample_ini):
    from dashboard.automigrate import auto_migrate
    from tests.conftest import UNIFIED_REASONING, db_revisions

    db = tmp_path / "fresh.db"
    run = auto_migrate(str(sample_ini), f"sqlite:///{db}", str(tmp_path / "inst"),
                       environ={"AUTO_MIGRATE": "true"})
    assert run is not None and run.status == "succeeded"
    assert db_revisions(db) == [UNIFIED_REASONING]
