"""One server database spelled two ways is one database: a URL naming
``localhost`` and one naming ``127.0.0.1:5432`` reach the same PostgreSQL
database, so a run is not refused as "another database" for it, and both
spellings take one lock."""

from __future__ import annotations

import pytest

from dashboard.engines import engine_for
from tests.conftest import client_for
from tests.real_projects import make
from tests.servers import SERVERS, require, scratch_database
from tests.test_runs import wait_for_run


@pytest.mark.parametrize("one, other", [
    ("postgresql://u@localhost/app", "postgresql+psycopg://u:pw@127.0.0.1:5432/app"),
    ("postgresql://u@[::1]:5432/app", "postgresql+asyncpg://v@localhost/app"),
    ("mysql+pymysql://root@localhost/app", "mariadb+pymysql://root@127.0.0.1:3306/app"),
])
def test_the_same_server_database_has_one_identity(one, other):
    assert engine_for(one).identity(one) == engine_for(other).identity(other)
    assert "pw" not in engine_for(other).identity(other)


@pytest.mark.parametrize("one, other", [
    ("postgresql://u@localhost/app", "postgresql://u@localhost/other"),
    ("postgresql://u@localhost/app", "postgresql://u@localhost:5433/app"),
    ("postgresql://u@db1.internal/app", "postgresql://u@db2.internal/app"),
])
def test_other_databases_keep_other_identities(one, other):
    assert engine_for(one).identity(one) != engine_for(other).identity(other)


def test_env_py_spelling_the_dashboards_database_otherwise_runs(tmp_path, monkeypatch):
    server = require(SERVERS["postgresql"])
    project = make("env_url", tmp_path / "project")
    with scratch_database(server, "md_ident") as name:
        told = server.url(name)
        assert "127.0.0.1" in told or "localhost" in told
        spelled = (told.replace("127.0.0.1", "localhost") if "127.0.0.1" in told
                   else told.replace("localhost", "127.0.0.1"))
        monkeypatch.setenv("DATABASE_URL", spelled)
        client = client_for(project.dashboard_path, told, tmp_path / "instance")
        response = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
        assert response.status_code == 202, response.get_json()
        run = wait_for_run(client, response.get_json()["id"])
        assert run["status"] == "succeeded", run
        assert project.current(spelled) == [project.revisions[-1]]
