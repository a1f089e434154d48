"""Fixtures over real things: a scratch copy of the sample project, real SQLite files."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from alembic.config import Config

from alembic import command
from dashboard import create_app

REPO = Path(__file__).resolve().parent.parent

# The sample history, by name (see alembic/versions).
USERS = "c6736c07319a"
SETTINGS = "65d34ee9c6d7"
CHATS = "d86069f3a9e2"
DOCUMENTS = "987a8e514080"
ATTACH_DOCUMENTS = "32eddb8b3fcb"
DOCUMENT_UPLOADER = "fd1ebc85cf60"
LOGIN_SESSIONS = "51b124a2d402"
LOGIN_REVOCATION = "47039f9eed57"
MERGE = "590e5fac8d96"
UNIFIED_REASONING = "c2756f59bd25"


def copy_sample_project(dest: Path) -> Path:
    """A scratch copy of the sample Alembic project; returns its alembic.ini."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "alembic.ini", dest / "alembic.ini")
    shutil.copytree(REPO / "alembic", dest / "alembic",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "app_models", dest / "app_models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest / "alembic.ini"


def alembic_config(ini: Path, url: str) -> Config:
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(ini: Path, url: str, revision: str, direction: str = "upgrade") -> None:
    getattr(command, direction)(alembic_config(ini, url), revision)


def db_revisions(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


def client_for(ini, url: str, instance, **settings):
    """A test client of a dashboard on ``ini`` and ``url``, state in ``instance``."""
    return create_app({
        "TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
        "DASHBOARD_ALEMBIC_INI": str(ini), "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": str(instance), "DASHBOARD_SEED_SAMPLE": False,
        **settings,
    }).test_client()


@pytest.fixture
def sample_ini(tmp_path) -> Path:
    return copy_sample_project(tmp_path / "project")


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "target.db"


@pytest.fixture
def db_url(db_path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def instance_dir(tmp_path) -> Path:
    return tmp_path / "instance"


@pytest.fixture
def app_config(sample_ini, db_url, instance_dir) -> dict:
    return {
        "TESTING": True,
        "DASHBOARD_ALEMBIC_INI": str(sample_ini),
        "DASHBOARD_DATABASE_URL": db_url,
        "DASHBOARD_INSTANCE_DIR": str(instance_dir),
        "DASHBOARD_SEED_SAMPLE": False,
        "DASHBOARD_SECRET_KEY": "test-secret",
        "WTF_CSRF_ENABLED": False,
    }


@pytest.fixture
def make_app(app_config):
    """A dashboard over the scratch project and database, with settings changed as
    the test says: ``make_app(DASHBOARD_BACKUP_RETENTION=2)``."""
    def make(**overrides):
        return create_app({**app_config, **overrides})
    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture(autouse=True)
def _stores_closed_after_each_test():
    """Each test's dashboard opens its own store (one SQLite engine per instance
    folder, kept for the process): closed after the test, or the session holds a
    few more descriptors per test, past what select()-based code can watch."""
    yield
    from dashboard.services import store

    store.close_all()


@pytest.fixture(autouse=True, scope="session")
def _no_runner_outlives_the_tests():
    """Runs are carried out by detached runner processes (and their workers), rollouts
    by detached conductors: any that a test left behind is stopped when the session
    ends."""
    yield
    import os
    import signal

    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == me and (b"dashboard.runner" in cmdline
                             or b"dashboard.conductor" in cmdline):
            try:
                os.killpg(int(entry), signal.SIGKILL)
            except OSError:
                pass
