"""Running migrations behind the verified-backup guard, as a user sees and keeps it."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from dashboard.services import backups, guard, locking
from tests.conftest import (
    CHATS,
    DOCUMENTS,
    REPO,
    UNIFIED_REASONING,
    USERS,
    db_revisions,
    migrate,
)

FAILING_REV = "bad0000000001"


def wait_for_run(client, run_id, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/api/runs/{run_id}").get_json()
        if body["status"] in ("succeeded", "failed", "restored", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {body}")


def post_run(client, action, target):
    return client.post("/api/runs", json={"action": action, "target": target})


def run_to_end(client, action, target):
    response = post_run(client, action, target)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["url"] == f"/api/runs/{response.get_json()['id']}"
    return wait_for_run(client, response.get_json()["id"])


def snapshot(db_path):
    """Schema, every row of every table, and the version table."""
    with sqlite3.connect(db_path) as conn:
        schema = sorted(conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
        rows = {name: sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"')))
                for (kind, name, _) in schema if kind == "table"}
    return schema, rows


def add_failing_revision(ini, parent):
    path = ini.parent / "alembic" / "versions" / f"{FAILING_REV}_explodes.py"
    path.write_text(textwrap.dedent(f'''\
        """creates a table, then fails

        Revision ID: {FAILING_REV}
        Revises: {parent}
        """
        from alembic import op
        import sqlalchemy as sa

        revision = "{FAILING_REV}"
        down_revision = "{parent}"
        branch_labels = None
        depends_on = None


        def upgrade():
            op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
            op.execute("DELETE FROM users")
            raise RuntimeError("this migration fails half-way on purpose")


        def downgrade():
            op.drop_table("half_done")
    '''))
    return path


def add_hanging_revision(ini, revision, parent):
    """A revision that creates a table, then hangs for two minutes."""
    path = ini.parent / "alembic" / "versions" / f"{revision}_hangs.py"
    path.write_text(textwrap.dedent(f'''\
        """creates a table, then hangs"""
        import time
        from alembic import op
        import sqlalchemy as sa
        revision = "{revision}"
        down_revision = "{parent}"
        def upgrade():
            op.create_table("left_behind", sa.Column("id", sa.Integer, primary_key=True))
            time.sleep(120)
        def downgrade():
            op.drop_table("left_behind")
    '''))
    return path


@pytest.fixture
def seeded(sample_ini, db_url, db_path):
    """The sample database at the chats revision with rows in it."""
    migrate(sample_ini, db_url, CHATS)
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO users (email, display_name, password_hash, is_active, created_at) "
            "VALUES (?, ?, 'x', 1, '2025-01-01 00:00:00')",
            [("ada@example.com", "Ada"), ("linus@example.com", "Linus")],
        )
    return db_path


def test_upgrade_takes_a_verified_backup_first_and_reaches_heads(client, seeded, instance_dir):
    before = snapshot(seeded)
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "succeeded", run
    assert run["from"] == [CHATS] and run["to"] == [UNIFIED_REASONING]
    assert all(step["status"] == "succeeded" for step in run["steps"])
    assert len(run["steps"]) == 7
    assert db_revisions(seeded) == [UNIFIED_REASONING]
    manifest = client.get(f"/api/backups/{run['backup_id']}").get_json()
    assert manifest["verified"] is True
    assert manifest["revisions"] == [CHATS]
    assert manifest["action"] == "upgrade heads"
    assert snapshot(manifest["path"]) == before, "the backup is the database as it was"
    assert client.get("/api/status").get_json()["state"] == "up_to_date"


@pytest.mark.parametrize("action,target,expected", [
    ("downgrade", "-1", ["65d34ee9c6d7"]),
    ("downgrade", "base", []),
    ("stamp", DOCUMENTS, [DOCUMENTS]),
    ("upgrade", DOCUMENTS, [DOCUMENTS]),
    ("downgrade", "-2", [USERS]),
])
def test_every_action_is_preceded_by_its_own_backup(client, seeded, action, target, expected):
    run = run_to_end(client, action, target)
    assert run["status"] == "succeeded", run
    if expected is not None:
        assert db_revisions(seeded) == expected
    manifest = client.get(f"/api/backups/{run['backup_id']}").get_json()
    assert manifest["verified"] and manifest["revisions"] == [CHATS]
    assert manifest["action"] == f"{action} {target}"


def test_failing_revision_leaves_schema_rows_and_version_as_before(
        client, seeded, sample_ini):
    migrate(sample_ini, f"sqlite:///{seeded}", UNIFIED_REASONING)
    add_failing_revision(sample_ini, UNIFIED_REASONING)
    before = snapshot(seeded)
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "restored", run
    assert run["failed_step"] == FAILING_REV
    assert "this migration fails half-way on purpose" in run["error"]
    # SQLite: the whole action was one transaction holding the write lock.
    assert "transaction was rolled back" in run["error"] and "(checked)" in run["error"]
    assert snapshot(seeded) == before
    assert db_revisions(seeded) == [UNIFIED_REASONING]
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert "Failed, database restored" in page and FAILING_REV in page
    entries = client.get("/api/audit").get_json()["entries"]
    assert entries[0]["outcome"] == "restored" and entries[0]["run_id"] == run["id"]


def test_nothing_runs_when_the_backup_cannot_be_taken(client, seeded, instance_dir):
    instance_dir.mkdir(exist_ok=True)
    (instance_dir / "backups").write_text("a file where the backup folder should be")
    before = snapshot(seeded)
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "failed"
    assert "nothing was run" in run["error"]
    assert run["backup_id"] is None
    assert all(step["status"] == "planned" for step in run["steps"])
    assert snapshot(seeded) == before
    assert client.get("/api/audit").get_json()["entries"][0]["event"] == "action_refused"


def test_a_second_action_while_one_runs_gets_409(app, client, seeded, sample_ini):
    slow = sample_ini.parent / "alembic" / "versions" / "5107000000aa_slow.py"
    slow.write_text(textwrap.dedent(f'''\
        """sleeps"""
        import time
        revision = "5107000000aa"
        down_revision = "{UNIFIED_REASONING}"
        def upgrade():
            time.sleep(8)  # long enough for three refused requests on a busy machine
        def downgrade():
            pass
    '''))
    first = post_run(client, "upgrade", "heads")
    second = post_run(client, "downgrade", "-1")
    assert first.status_code == 202
    assert second.status_code == 409
    assert "already running" in second.get_json()["error"]["message"]
    assert first.get_json()["id"] in second.get_json()["error"]["message"]
    page = client.post("/actions", data={"action": "upgrade", "target": "heads"})
    assert page.status_code == 409 and b"already running" in page.data
    assert wait_for_run(client, first.get_json()["id"])["status"] == "succeeded"
    assert db_revisions(seeded) == ["5107000000aa"]


def test_lock_held_by_another_process_refuses_and_a_dead_holder_frees_it(
        app, client, seeded, instance_dir):
    project = app.extensions["dashboard"].project()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO)!r})
            from dashboard.services import locking
            lock = locking.acquire({str(instance_dir)!r}, {guard.lock_key(project)!r},
                locking.LockHolder(0, "upgrade heads", "other-run", "someone", time.time()),
                beside={guard.lock_file(project)!r})
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = post_run(client, "upgrade", "heads")
        assert refused.status_code == 409
        assert "someone" in refused.get_json()["error"]["message"]
        banner = client.get("/").get_data(as_text=True)
        assert 'id="lock-holder"' in banner and "someone" in banner
        assert locking.read_holder(str(instance_dir), guard.lock_key(project),
                                   guard.lock_file(project)) is not None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert locking.read_holder(str(instance_dir), guard.lock_key(project),
                               guard.lock_file(project)) is None
    assert run_to_end(client, "upgrade", "heads")["status"] == "succeeded"


def test_the_lock_file_goes_with_its_holder_and_one_waiting_locks_the_next(tmp_path):
    import threading

    holder = locking.LockHolder(os.getpid(), "upgrade heads", "run-1", "someone", time.time())
    folder = str(tmp_path)
    first = locking.acquire(folder, "sqlite:the-db", holder)
    waiter: dict = {}
    thread = threading.Thread(target=lambda: waiter.setdefault(
        "lock", locking.acquire(folder, "sqlite:the-db", holder, wait=10)))
    thread.start()
    time.sleep(0.3)
    assert "lock" not in waiter, "the lock is held"
    first.release()
    thread.join(10)
    second = waiter["lock"]
    try:
        assert os.path.exists(second.path)
        assert os.fstat(second.fd).st_ino == os.stat(second.path).st_ino
        with pytest.raises(locking.LockHeld):
            locking.acquire(folder, "sqlite:the-db", holder, wait=0.2)
    finally:
        second.release()
    assert not os.path.exists(second.path), "nothing is left behind"
    assert locking.read_holder(folder, "sqlite:the-db") is None


def test_restore_is_backed_up_first_and_the_audit_log_survives(client, seeded):
    upgraded = run_to_end(client, "upgrade", "heads")
    before_upgrade = upgraded["backup_id"]
    response = client.post(f"/api/backups/{before_upgrade}/restore", json={})
    assert response.status_code == 202
    restore = wait_for_run(client, response.get_json()["id"])
    assert restore["status"] == "succeeded", restore
    assert db_revisions(seeded) == [CHATS]
    safety = client.get(f"/api/backups/{restore['backup_id']}").get_json()
    assert safety["revisions"] == [UNIFIED_REASONING], "the state before the restore is kept"
    assert safety["verified"]
    events = [e["event"] for e in client.get("/api/audit").get_json()["entries"]]
    assert events[:2] == ["restore_succeeded", "action_succeeded"]
    assert b"restore succeeded" in client.get("/audit").data


def test_downloaded_backup_is_the_database_as_it_was(client, seeded, tmp_path):
    before = snapshot(seeded)
    run = run_to_end(client, "upgrade", "heads")
    response = client.get(f"/backups/{run['backup_id']}/download")
    assert response.status_code == 200
    data = response.get_data()
    response.close()
    assert hashlib.sha256(data).hexdigest() == response.headers["X-Backup-SHA256"]
    disposition = response.headers["Content-Disposition"]
    assert CHATS in disposition and "target" in disposition
    copy = tmp_path / "downloaded.sqlite3"
    copy.write_bytes(data)
    assert snapshot(copy) == before
    assert db_revisions(copy) == [CHATS]


def test_backup_now_retention_verify_and_delete(app_config, seeded):
    from dashboard import create_app

    app_config["DASHBOARD_BACKUP_RETENTION"] = 2
    client = create_app(app_config).test_client()
    ids = []
    for _ in range(3):
        response = client.post("/api/backups", json={})
        assert response.status_code == 201
        ids.append(response.get_json()["id"])
    listed = [b["id"] for b in client.get("/api/backups").get_json()["backups"]]
    assert listed == ids[:0:-1], "newest first, only the last two kept"
    verified = client.post(f"/api/backups/{ids[-1]}/verify", json={}).get_json()
    assert verified["verified"] is True
    assert client.delete(f"/api/backups/{ids[-1]}").status_code == 204
    assert client.get(f"/api/backups/{ids[-1]}").status_code == 404
    events = [e["event"] for e in client.get("/api/audit").get_json()["entries"]]
    assert events.count("backup_taken") == 3 and "backup_deleted" in events


def test_bad_requests_are_clear_4xx(client, seeded):
    bad_target = post_run(client, "upgrade", "nonexistent-rev")
    assert bad_target.status_code == 400
    assert "nonexistent-rev" in bad_target.get_json()["error"]["message"]
    assert post_run(client, "explode", "heads").status_code == 400
    assert client.post("/api/runs", json=["upgrade"]).status_code == 400
    assert client.post("/api/runs", data="action=upgrade&target=heads").status_code == 415
    foreign = client.post("/api/runs", json={"action": "upgrade", "target": "heads"},
                          headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/backups/nope").status_code in (400, 404)
    unknown = client.post("/api/backups/20990101T000000Z-deadbeef/restore", json={})
    assert unknown.status_code == 404
    nothing = post_run(client, "downgrade", "base")
    assert wait_for_run(client, nothing.get_json()["id"])["status"] == "succeeded"
    again = post_run(client, "downgrade", "base")
    assert again.status_code == 400
    assert "Nothing to downgrade" in again.get_json()["error"]["message"]
    assert db_revisions(seeded) == []
    assert run_to_end(client, "upgrade", "+1")["to"] == [USERS]
    migrate_to_branch_point = run_to_end(client, "upgrade", CHATS)
    assert migrate_to_branch_point["status"] == "succeeded"
    ambiguous = post_run(client, "upgrade", "+1")
    assert ambiguous.status_code == 400
    assert "Ambiguous walk" in ambiguous.get_json()["error"]["message"]


def test_html_forms_need_the_csrf_token(app_config, seeded):
    from dashboard import create_app

    app_config["WTF_CSRF_ENABLED"] = True
    client = create_app(app_config).test_client()
    refused = client.post("/actions", data={"action": "upgrade", "target": "heads"})
    assert refused.status_code == 400 and b"security token" in refused.data
    page = client.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    accepted = client.post("/actions", data={"action": "upgrade", "target": "heads",
                                             "csrf_token": token})
    assert accepted.status_code == 303
    run_id = accepted.headers["Location"].rsplit("/", 1)[1]
    assert wait_for_run(client, run_id)["status"] == "succeeded"


def test_progress_fragment_and_page(client, seeded):
    run = run_to_end(client, "upgrade", "heads")
    fragment = client.get(f"/runs/{run['id']}", headers={"HX-Request": "true"})
    assert fragment.headers["Vary"] == "HX-Request"
    html = fragment.get_data(as_text=True)
    assert "<html" not in html and 'data-status="succeeded"' in html
    assert "hx-trigger" not in html, "a finished run stops polling"
    full = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert "<html" in full and "Succeeded" in full
    assert run["id"] in client.get("/runs").get_data(as_text=True)


def test_downgrade_preview_names_what_it_drops(client, seeded):
    page = client.get("/actions/preview?action=downgrade&target=" + USERS + "&sql=now")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "table chat_messages" in html and "table chat_sessions" in html
    assert "table user_settings" in html
    assert 'name="target" value="' + USERS in html
    assert client.get("/actions/preview?action=downgrade&target=zzzz").status_code == 400


def test_a_downgrade_preview_keeps_each_revisions_sql_until_its_file_changes(
        app_config, seeded, tmp_path):
    from dashboard import create_app

    calls = tmp_path / "python-calls"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    client = create_app({**app_config, "DASHBOARD_PYTHON": str(wrapper)}).test_client()
    url = "/actions/preview?action=downgrade&target=" + USERS + "&sql=now"

    def started(page) -> list[str]:
        assert page.status_code == 200 and "table chat_sessions" in page.get_data(as_text=True)
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return lines

    first = started(client.get(url))
    assert len(first) == 1 and first[0].count("--revision") == 2, first
    assert started(client.get(url)) == [], "the same preview again starts no Python"
    chats = next((tmp_path / "project" / "alembic" / "versions").glob(f"{CHATS}_*.py"))
    os.utime(chats, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = started(client.get(url))
    assert len(again) == 1 and again[0].count("--revision") == 1 and CHATS in again[0], again


def test_interrupted_run_is_reported_not_left_running(app, client, seeded, instance_dir):
    from dashboard.services import runs

    runs.create_run(str(instance_dir), run_id="20200101T000000Z-00000000", action="upgrade",
                    target="heads", user="ghost", from_revs=(CHATS,))
    runs.update_run(str(instance_dir), "20200101T000000Z-00000000", status="running")
    assert run_to_end(client, "upgrade", "heads")["status"] == "succeeded"
    ghost = client.get("/api/runs/20200101T000000Z-00000000").get_json()
    assert ghost["status"] == "failed" and "died before it finished" in ghost["error"]


def test_password_never_reaches_backup_names_or_audit(app, seeded):
    project = app.extensions["dashboard"].project()
    assert backups is not None and "@" not in project.masked_url


def test_revision_and_history_pages_offer_the_actions(client, seeded):
    page = client.get(f"/revisions/{UNIFIED_REASONING}").get_data(as_text=True)
    assert "upgrade to this revision" in page
    form = page[page.index('id="revision-actions"'):]
    assert f'name="target" value="{UNIFIED_REASONING}"' in form
    response = client.post("/actions", data={"action": "upgrade", "target": UNIFIED_REASONING})
    assert response.status_code == 303
    run = wait_for_run(client, response.headers["Location"].rsplit("/", 1)[1])
    assert run["status"] == "succeeded" and db_revisions(seeded) == [UNIFIED_REASONING]
    applied = client.get(f"/revisions/{CHATS}").get_data(as_text=True)
    assert "Preview downgrade to this revision" in applied
    assert 'id="upgrade-button"' not in client.get("/history").get_data(as_text=True)
    assert "Preview downgrade" in client.get("/history").get_data(as_text=True)


def test_a_hanging_migration_can_be_cancelled_and_the_database_is_put_back(
        client, seeded, sample_ini):
    add_hanging_revision(sample_ini, "4a9900000001", CHATS)
    before = snapshot(seeded)
    started = post_run(client, "upgrade", "4a9900000001").get_json()
    for _ in range(200):
        run = client.get(f"/api/runs/{started['id']}").get_json()
        if any(step["status"] == "running" for step in run["steps"]):
            break
        time.sleep(0.05)
    assert client.post(f"/api/runs/{started['id']}/cancel", json={}).status_code == 202
    began = time.time()
    run = wait_for_run(client, started["id"])
    assert time.time() - began < 20
    assert run["status"] == "cancelled", run
    assert run["failed_step"] == "4a9900000001"
    assert "cancelled" in run["error"]
    assert snapshot(seeded) == before
    again = client.post(f"/api/runs/{started['id']}/cancel", json={})
    assert again.status_code == 409


@pytest.mark.parametrize("action, target, ends_at", [
    ("downgrade", "-1", "65d34ee9c6d7"),
    ("downgrade", "base", "base"),
    ("stamp", "auth", "51b124a2d402"),
])
def test_preview_names_where_the_database_will_end(client, seeded, action, target, ends_at):
    html = client.get(f"/actions/preview?action={action}&target={target}").get_data(as_text=True)
    ends = html[html.index('id="ends-at"'):]
    assert ends[:ends.index("</strong>")].count(ends_at) == 1


def test_a_missing_sqlite_database_is_created_by_an_upgrade(client, db_path, sample_ini):
    status = client.get("/api/status").get_json()
    assert status["state"] == "unreachable" and status["creatable"] is True
    assert "Upgrading creates it" in status["explanation"]
    assert len(status["pending"]) == 10
    assert b"Create the database and upgrade" in client.get("/").data
    assert not db_path.exists()
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "succeeded", run
    assert run["backup_id"] is None
    assert db_revisions(db_path) == [UNIFIED_REASONING]
    assert client.get("/api/audit").get_json()["entries"][0]["event"] == "database_created"


def test_a_failed_creation_removes_the_new_file(client, db_path, sample_ini):
    add_failing_revision(sample_ini, UNIFIED_REASONING)
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "restored", run
    assert "does not exist, as before" in run["error"]
    assert not db_path.exists()
    # Only the dashboard's lock file is left beside it (empty: nobody holds it).
    assert [p.name for p in db_path.parent.glob("target.db*")] in ([], ["target.db-mdlock"])


def test_a_downgrade_preview_comes_at_once_and_what_it_drops_in_a_fragment(client, seeded):
    """The plan without waiting for env.py; what each step drops, with the button
    that confirms, comes in a fragment (or with the page under ?sql=now)."""
    url = "/actions/preview?action=downgrade&target=" + USERS
    first = client.get(url).get_data(as_text=True)
    assert "table chat_sessions" not in first and 'id="confirm-button"' not in first
    assert "Reading what each step drops" in first
    now = f"/actions/preview?action=downgrade&amp;target={USERS}&amp;sql=now"
    assert f'hx-get="{now}"' in first and f'href="{now}"' in first
    fragment = client.get(url + "&sql=now", headers={"HX-Request": "true"})
    html = fragment.get_data(as_text=True)
    assert "table chat_sessions" in html and 'id="confirm-button"' in html
    assert "<html" not in html
    again = client.get(url).get_data(as_text=True)  # generated: with the page now
    assert "table chat_sessions" in again and 'id="confirm-button"' in again
    assert client.get(url + "&sql=soon").status_code == 400
