"""The guard on real PostgreSQL and MariaDB servers: actions, failures, locks, passwords."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import CHATS, REPO, UNIFIED_REASONING, USERS, migrate
from tests.conftest import client_for as _client
from tests.servers import SERVERS, require, scratch_database, snapshot
from tests.test_runs import add_failing_revision, add_hanging_revision

PASSWORD = "pw-s3cret-do-not-show"


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request):
    return require(SERVERS[request.param])


@pytest.fixture
def server_db(server):
    with scratch_database(server, prefix="md_run") as name:
        yield server, name




def _run(client, action, target):
    response = client.post("/api/runs", json={"action": action, "target": target})
    assert response.status_code == 202, response.get_json()
    for _ in range(600):
        body = client.get(response.get_json()["url"]).get_json()
        if body["status"] in ("succeeded", "failed", "restored", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(body)


def _revisions(url):
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version"))
            return sorted(r[0] for r in rows)
    finally:
        engine.dispose()


def test_upgrade_downgrade_stamp_behind_verified_backups(server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    migrate(sample_ini, url, CHATS)
    client = _client(sample_ini, url, tmp_path / "inst")
    assert client.get("/api/status").get_json()["database"]["dialect"] == server.name.replace(
        "mariadb", "mysql")
    for action, target, expected in (("upgrade", "heads", [UNIFIED_REASONING]),
                                     ("downgrade", CHATS, [CHATS]),
                                     ("stamp", USERS, [USERS])):
        before = _revisions(url)
        run = _run(client, action, target)
        assert run["status"] == "succeeded", (run["error"], run["logs"][-3:])
        assert _revisions(url) == expected
        manifest = client.get(f"/api/backups/{run['backup_id']}").get_json()
        assert manifest["verified"] is True, manifest
        assert manifest["revisions"] == before


def test_the_sample_history_goes_down_to_base_and_up_again(server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    client = _client(sample_ini, url, tmp_path / "inst")
    for action, target, expected in (("upgrade", "heads", [UNIFIED_REASONING]),
                                     ("downgrade", "base", []),
                                     ("upgrade", "heads", [UNIFIED_REASONING])):
        run = _run(client, action, target)
        assert run["status"] == "succeeded", (run["error"], run["logs"][-3:])
        assert _revisions(url) == expected


def test_failing_revision_leaves_schema_rows_and_version_as_before(
        server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    migrate(sample_ini, url, "heads")
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO users (email, display_name, password_hash, is_active, created_at) "
            "VALUES ('ada@example.com', 'Ada', 'x', true, '2025-01-01 00:00:00')"))
    engine.dispose()
    add_failing_revision(sample_ini, UNIFIED_REASONING)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")
    run = _run(client, "upgrade", "heads")
    assert run["status"] == "restored", run
    assert "fails half-way on purpose" in run["error"]
    if server.postgres:
        assert "transaction was rolled back" in run["error"]
    else:
        assert "restored from the pre-action backup" in run["error"]
    assert snapshot(url) == before
    assert _revisions(url) == [UNIFIED_REASONING]


def test_two_processes_serialise_on_the_database_lock(server_db, sample_ini, tmp_path):
    """Two CLIs with separate instance folders (as on two machines) meet only at the database."""
    server, name = server_db
    url = server.url(name)
    migrate(sample_ini, url, "heads")
    slow = sample_ini.parent / "alembic" / "versions" / "5100000000cc_slow.py"
    slow.write_text(textwrap.dedent(f'''\
        """sleeps"""
        import time
        revision = "5100000000cc"
        down_revision = "{UNIFIED_REASONING}"
        def upgrade():
            time.sleep(4)
        def downgrade():
            pass
    '''))

    def cli(instance: Path):
        env = dict(os.environ, DASHBOARD_ALEMBIC_INI=str(sample_ini), DASHBOARD_DATABASE_URL=url,
                   DASHBOARD_INSTANCE_DIR=str(instance), DASHBOARD_SEED_SAMPLE="false")
        return subprocess.Popen([sys.executable, str(REPO / "migrate_db.py")], env=env,
                                cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    first = cli(tmp_path / "machine-a")
    time.sleep(2.0)
    second = cli(tmp_path / "machine-b")
    out_second, _ = second.communicate(timeout=120)
    out_first, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out_first
    assert second.returncode == 3, out_second
    assert "already running on this database" in out_second
    assert _revisions(url) == ["5100000000cc"]


def test_password_never_shown_stored_or_on_a_command_line(server_db, sample_ini, tmp_path):
    server, name = server_db
    user = f"mdu_{name[-8:]}"
    server.create_user(user, PASSWORD, name)
    try:
        url = server.url(name, user=user, password=PASSWORD)
        migrate(sample_ini, url, CHATS)
        instance = tmp_path / "inst"
        client = _client(sample_ini, url, instance)
        seen: list[str] = []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                for pid in os.listdir("/proc"):
                    if pid.isdigit():
                        try:
                            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                        except OSError:
                            continue
                        if PASSWORD.encode() in cmdline:
                            seen.append(cmdline.decode(errors="replace"))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            run = _run(client, "upgrade", "heads")
            down = _run(client, "downgrade", "-1")
        finally:
            stop.set()
            watcher.join()
        assert run["status"] == "succeeded" and down["status"] == "succeeded"
        assert not seen, f"password on a command line: {seen}"
        texts = [client.get(u).get_data(as_text=True) for u in (
            "/", "/history", "/backups", "/audit", "/runs", f"/runs/{run['id']}",
            "/api/status", "/api/backups", "/api/audit", f"/api/runs/{run['id']}")]
        assert all(PASSWORD not in t for t in texts)
        for path in instance.rglob("*"):
            assert PASSWORD not in path.name
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path
    finally:
        server.drop_user(user, name)


def test_the_page_shows_who_holds_the_database_lock(server_db, sample_ini, tmp_path):
    from dashboard.services import locking

    server, name = server_db
    url = server.url(name)
    migrate(sample_ini, url, CHATS)
    client = _client(sample_ini, url, tmp_path / "inst")
    project = client.application.extensions["dashboard"].project()
    holder = locking.LockHolder(0, "upgrade heads", "elsewhere", "colleague", time.time())
    lock = project.engine.acquire_lock(project, holder)
    try:
        page = client.get("/").get_data(as_text=True)
        assert 'id="lock-holder"' in page and "already running on this database" in page
        refused = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
        assert refused.status_code == 409
    finally:
        lock.release()
    assert 'id="lock-holder"' not in client.get("/").get_data(as_text=True)


def test_offline_sql_is_in_the_targets_own_dialect(server_db, sample_ini, tmp_path):
    server, name = server_db
    client = _client(sample_ini, server.url(name), tmp_path / "inst")
    body = client.get(f"/api/revisions/{USERS}").get_json()
    assert body["upgrade_sql_error"] is None, body["upgrade_sql_error"]
    assert "CREATE TABLE users" in body["upgrade_sql"]
    assert "DROP TABLE users" in body["downgrade_sql"]
    if server.postgres:
        assert body["dialect"] == "postgresql" and "SERIAL" in body["upgrade_sql"]
    else:
        assert body["dialect"] == "mysql" and "AUTO_INCREMENT" in body["upgrade_sql"]


def test_cancelling_a_hanging_migration_puts_the_database_back(server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    migrate(sample_ini, url, CHATS)
    add_hanging_revision(sample_ini, "4a9900000002", CHATS)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")
    started = client.post("/api/runs", json={"action": "upgrade",
                                             "target": "4a9900000002"}).get_json()
    for _ in range(300):
        run = client.get(started["url"]).get_json()
        if any(step["status"] == "running" for step in run["steps"]):
            break
        time.sleep(0.05)
    time.sleep(0.5)  # let the table be created
    assert client.post(f"/api/runs/{started['id']}/cancel", json={}).status_code == 202
    for _ in range(300):
        run = client.get(started["url"]).get_json()
        if run["status"] in ("succeeded", "failed", "restored", "cancelled"):
            break
        time.sleep(0.1)
    assert run["status"] == "cancelled", run
    assert snapshot(url) == before
    assert _revisions(url) == [CHATS]
