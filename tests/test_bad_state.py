"""The dashboard in bad conditions: a full or read-only instance folder, hostile
request bodies and origins, a damaged or deleted store, odd file names, long
histories. Each answers a clear error (never a 500) and loses nothing.

Driven through the JSON API and pages of ``create_app`` and through real
dashboard server processes, on real file systems (tmpfs mounts), real files and
real subprocesses.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from dashboard import create_app
from tests.conftest import CHATS, UNIFIED_REASONING, db_revisions, migrate
from tests.history_factory import linear, make_project, stamp_database
from tests.sqlite_helpers import mounted_tmpfs
from tests.test_guard_sqlite import (
    FINISHED,
    STEP_ONE,
    add_user,
    dashboard_server,
    wait_for_run,
    write_revision,
)

# ---------------------------------------------------------------- helpers


@pytest.fixture
def at_head(sample_ini, db_url, db_path):
    """The sample database at its head, with two users."""
    migrate(sample_ini, db_url, "heads")
    add_user(db_path, "ada@example.com")
    add_user(db_path, "linus@example.com")
    return db_path


@pytest.fixture
def pending(at_head, sample_ini):
    """One revision to apply (it creates table step_one)."""
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, table="step_one")
    return at_head


def server_wait_for_run(server, run_id, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        _, run = server.request("GET", f"/api/runs/{run_id}")
        if run["status"] in FINISHED or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def fill(folder: Path) -> Path:
    """Fill the file system holding ``folder`` to the last block; returns the filler."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    handle.write(block)
                except OSError:
                    break
    return filler


@contextmanager
def read_only_view(folder: Path):
    """Make ``folder`` read-only for every new open, as a remount would, while files
    already open stay usable (a read-only bind mount over it); undone on exit."""
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def clear_error_problems(status, body, expected: int, words: tuple[str, ...]) -> list[str]:
    """What is wrong with an answer that should be a clear JSON error ``expected``."""
    if status != expected:
        return [f"expected a clear {expected}, got {status}: {str(body)[:300]}"]
    if not isinstance(body, dict) or "error" not in body:
        return [f"not a JSON error: {str(body)[:300]}"]
    if not any(word in body["error"]["message"].lower() for word in words):
        return [f"the message does not say why ({' / '.join(words)}): {body}"]
    return []


# ---------------------------------------------------------------- 6. full / read-only folder


def test_a_full_instance_folder_is_a_507_and_the_lock_is_released(
        sample_ini, db_url, pending, instance_dir, tmp_path):
    with mounted_tmpfs(instance_dir, "32m"):
        with dashboard_server(sample_ini, db_url, instance_dir, tmp_path / "server.log") \
                as server:
            status, backup = server.request("POST", "/api/backups", {})
            assert status == 201, backup
            filler = fill(instance_dir)
            refused = server.request("POST", "/api/runs", {"action": "upgrade", "target": "heads"})
            assert db_revisions(pending) == [UNIFIED_REASONING]
            filler.unlink()
            again = server.request("POST", "/api/runs", {"action": "upgrade", "target": "heads"})
            run = server_wait_for_run(server, again[1]["id"]) if again[0] == 202 else None
    problems = clear_error_problems(*refused, 507, ("full", "space"))
    if again[0] != 202:
        problems.append(f"with space again, the next action is refused: {again}")
    assert not problems, "\n".join(problems)
    assert run["status"] == "succeeded", run
    assert db_revisions(pending) == [STEP_ONE]


def test_an_instance_folder_turned_read_only_is_a_503_and_the_lock_is_released(
        sample_ini, db_url, pending, instance_dir, tmp_path):
    with mounted_tmpfs(instance_dir, "64m"):
        with dashboard_server(sample_ini, db_url, instance_dir, tmp_path / "server.log") \
                as server:
            status, backup = server.request("POST", "/api/backups", {})
            assert status == 201, backup
            with read_only_view(instance_dir):
                refused = server.request("POST", "/api/runs",
                                         {"action": "upgrade", "target": "heads"})
            assert db_revisions(pending) == [UNIFIED_REASONING]
            again = server.request("POST", "/api/runs", {"action": "upgrade", "target": "heads"})
            run = server_wait_for_run(server, again[1]["id"]) if again[0] == 202 else None
    problems = clear_error_problems(*refused, 503, ("read-only", "read only", "writ"))
    if again[0] != 202:
        problems.append(f"writable again, the next action is refused: {again}")
    assert not problems, "\n".join(problems)
    assert run["status"] == "succeeded", run
    assert db_revisions(pending) == [STEP_ONE]


def test_a_read_only_instance_folder_is_a_503_until_it_is_writable(
        sample_ini, db_url, pending, instance_dir, tmp_path):
    with mounted_tmpfs(instance_dir, "64m", read_only=True):
        with dashboard_server(sample_ini, db_url, instance_dir, tmp_path / "server.log") \
                as server:
            refused = server.request("POST", "/api/runs", {"action": "upgrade", "target": "heads"})
            assert db_revisions(pending) == [UNIFIED_REASONING]
            subprocess.run(["mount", "-o", "remount,rw", str(instance_dir)], check=True)
            again = server.request("POST", "/api/runs", {"action": "upgrade", "target": "heads"})
            run = server_wait_for_run(server, again[1]["id"]) if again[0] == 202 else None
    problems = clear_error_problems(*refused, 503, ("read-only", "read only", "writ"))
    if again[0] != 202:
        problems.append(f"writable again, the next action is refused: {again}")
    assert not problems, "\n".join(problems)
    assert run["status"] == "succeeded", run


# ---------------------------------------------------------------- 7. hostile JSON


@pytest.mark.parametrize("body", [
    "[" * 1000 + "]" * 1000,
    '{"a":' * 1000 + "1" + "}" * 1000,
    '{"action": "upgrade", "target": ' + "[" * 1000 + "]" * 1000 + "}",
], ids=["lists", "objects", "inside-an-object"])
def test_a_deeply_nested_json_body_is_a_400(app_config, at_head, body):
    app_config["PROPAGATE_EXCEPTIONS"] = False  # an unhandled error is a 500, as users get it
    client = create_app(app_config).test_client()
    response = client.post("/api/runs", data=body, content_type="application/json")
    assert response.status_code == 400, (
        f"a JSON body nested 1000 deep answered {response.status_code}: "
        f"{response.get_data(as_text=True)[:300]}")
    assert "error" in response.get_json()
    assert client.get("/api/runs").get_json()["runs"] == []


# ---------------------------------------------------------------- 8. damaged / deleted store


def test_a_damaged_store_is_a_clear_503_naming_the_file(app_config, at_head, instance_dir):
    instance_dir.mkdir()
    store = instance_dir / "dashboard.db"
    store.write_bytes(b"this is not a SQLite database, it was overwritten\n" * 200)
    app_config["PROPAGATE_EXCEPTIONS"] = False
    try:
        app = create_app(app_config)
    except Exception as exc:
        pytest.fail(f"create_app crashed on a damaged {store}: {type(exc).__name__}: {exc}")
    client = app.test_client()
    for url in ("/api/runs", "/api/backups", "/api/audit"):
        response = client.get(url)
        assert response.status_code == 503, (url, response.status_code)
        assert str(store) in response.get_json()["error"]["message"], response.get_json()
    started = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert started.status_code == 503, started.status_code
    for url in ("/", "/runs", "/backups", "/audit"):
        page = client.get(url)
        assert page.status_code == 503, (url, page.status_code)
        assert str(store) in page.get_data(as_text=True), url
    assert store.read_bytes().startswith(b"this is not a SQLite database"), "kept as found"


def test_a_deleted_store_keeps_the_backups_and_the_audit_log(
        sample_ini, db_url, at_head, instance_dir, tmp_path):
    log = tmp_path / "server.log"
    with dashboard_server(sample_ini, db_url, instance_dir, log) as server:
        taken = []
        for email in ("grace@example.com", "barbara@example.com"):
            status, backup = server.request("POST", "/api/backups", {})
            assert status == 201, backup
            taken.append(backup)
            add_user(at_head, email)
        _, listed_before = server.request("GET", "/api/backups")
        _, audit_before = server.request("GET", "/api/audit")
    assert len(audit_before["entries"]) >= 2
    for name in ("dashboard.db", "dashboard.db-wal", "dashboard.db-shm"):
        (instance_dir / name).unlink(missing_ok=True)

    with dashboard_server(sample_ini, db_url, instance_dir, log) as server:
        status, listed = server.request("GET", "/api/backups")
        _, audit = server.request("GET", "/api/audit")
    assert status == 200, listed

    def summary(backups):
        return [(b["id"], b["sha256"], b["revisions"], b["path"]) for b in backups["backups"]]

    problems = []
    if summary(listed) != summary(listed_before):
        problems.append(f"after dashboard.db was deleted the backups are not listed from their "
                        f"manifests: {summary(listed)}, expected {summary(listed_before)}")
    kept = [(e["event"], e["backup_id"]) for e in audit["entries"]]
    lost = [(e["event"], e["backup_id"]) for e in audit_before["entries"]
            if (e["event"], e["backup_id"]) not in kept]
    if lost:
        problems.append(f"the audit entries {lost} are lost with dashboard.db; "
                        f"the audit log now holds {kept}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- 9. origins


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:5000.evil.com",
    "http://127.0.0.1:9999",
    "https://127.0.0.1:5000",
])
def test_an_origin_is_compared_by_scheme_host_and_port(client, at_head, origin):
    base = "http://127.0.0.1:5000"
    refused = client.post("/api/backups", json={}, base_url=base, headers={"Origin": origin})
    assert refused.status_code == 403, (
        f"a POST from origin {origin} to {base} was accepted: {refused.status_code}")
    refused = client.post("/api/runs", json={"action": "upgrade", "target": "heads"},
                          base_url=base, headers={"Origin": origin})
    assert refused.status_code == 403
    assert client.get("/api/backups").get_json()["backups"] == []
    assert client.get("/api/runs").get_json()["runs"] == []


def test_the_same_origin_as_the_host_is_accepted(client, at_head):
    base = "http://127.0.0.1:5000"
    accepted = client.post("/api/backups", json={}, base_url=base, headers={"Origin": base})
    assert accepted.status_code == 201, accepted.get_json()


# ---------------------------------------------------------------- 10. odd file names


def test_a_hash_and_a_question_mark_in_the_sqlite_path_work(app_config, sample_ini, tmp_path):
    folder = tmp_path / "a#b?c"
    folder.mkdir()
    database = folder / "target.db"
    url = URL.create("sqlite", database=str(database)).render_as_string()
    migrate(sample_ini, url, CHATS)
    assert database.is_file(), "the test's own URL names the file"
    app_config["DASHBOARD_DATABASE_URL"] = url
    client = create_app(app_config).test_client()

    status = client.get("/api/status").get_json()
    assert status["state"] == "pending" and status["current"] == [CHATS], status
    backup = client.post("/api/backups", json={})
    assert backup.status_code == 201, backup.get_json()
    assert Path(backup.get_json()["path"]).is_file()
    started = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert started.status_code == 202, started.get_json()
    run = wait_for_run(client, started.get_json()["id"])
    assert run["status"] == "succeeded", run
    assert db_revisions(database) == [UNIFIED_REASONING]
    assert client.get("/api/status").get_json()["state"] == "up_to_date"
    assert sorted(p.name for p in folder.iterdir()) == ["target.db"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a#b?c", "instance", "project"], \
        "a file was created beside the database's folder"


# ---------------------------------------------------------------- 11. long downgrade preview


def test_a_downgrade_preview_to_base_generates_its_sql_in_one_subprocess(tmp_path):
    spec = linear(20)
    ini = make_project(tmp_path / "project", spec)
    url = stamp_database(tmp_path / "long.db", [spec.revisions[-1].revision])
    calls = tmp_path / "python-calls"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    client = create_app({
        "TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
        "DASHBOARD_ALEMBIC_INI": str(ini), "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": str(tmp_path / "instance"), "DASHBOARD_SEED_SAMPLE": False,
        "DASHBOARD_PYTHON": str(wrapper),
    }).test_client()
    from tests.test_env_py import status_json

    # Once env.py has answered which database it migrates (asked in the background
    # when the database is given), so only the preview's own Pythons are counted.
    assert status_json(client)["state"] == "up_to_date"
    calls.unlink(missing_ok=True)

    started = time.monotonic()
    page = client.get("/actions/preview?action=downgrade&target=base&sql=now")
    elapsed = time.monotonic() - started
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    html = page.get_data(as_text=True)
    missing = [r.revision for r in spec.revisions if f"table t_{r.revision}" not in html]
    assert not missing, f"the preview does not name what {len(missing)} steps drop: {missing}"
    started_pythons = calls.read_text().splitlines() if calls.exists() else []
    assert len(started_pythons) == 1, (
        f"the preview of {len(spec.revisions)} downgrade steps started "
        f"{len(started_pythons)} Python processes in {elapsed:.1f} s, e.g. {started_pythons[:2]}")
