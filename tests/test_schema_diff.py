"""The schema before and after each run, kept with the run and shown as a diff."""

from __future__ import annotations

import sqlite3
import time

from dashboard.services import schema
from tests.conftest import USERS, migrate
from tests.sqlite_helpers import project_for
from tests.test_runs import wait_for_run


def test_differences_name_what_changed_in_words(tmp_path):
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(200) NOT NULL)")
        conn.execute("CREATE TABLE old (id INTEGER PRIMARY KEY)")
    project = project_for(f"sqlite:///{path}")
    before = schema.snapshot(project)
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN x VARCHAR(40)")
        conn.execute("CREATE UNIQUE INDEX ix_users_email ON users (email)")
        conn.execute("DROP TABLE old")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, "
                     "user_id INTEGER NOT NULL REFERENCES users (id), body TEXT DEFAULT 'x')")
    after = schema.snapshot(project)
    assert before.reason is None and after.reason is None
    said = schema.differences(before.tables, after.tables)
    assert "added column users.x VARCHAR(40)" in said
    assert "added index ix_users_email on users unique (email)" in said
    assert "dropped table old" in said
    assert any(line.startswith("added table notes (id INTEGER, user_id INTEGER NOT NULL") and
               "body TEXT DEFAULT 'x'" in line for line in said), said
    assert schema.differences(after.tables, after.tables) == []


def test_a_snapshot_that_cannot_be_read_gives_a_reason_not_an_error(tmp_path):
    taken = schema.snapshot(project_for(f"sqlite:///{tmp_path / 'missing.db'}"))
    assert taken.tables is None
    assert "does not exist" in taken.reason


def wait_for_diff(client, run_id, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = client.get(f"/api/runs/{run_id}").get_json()
        if body["status"] in ("succeeded", "failed", "restored") and \
                (body["schema_note"] is not None or body["schema_diff"] is not None):
            return body
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} gave no schema diff: {body}")


def test_the_run_page_and_api_show_what_an_upgrade_changed(app, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    client = app.test_client()
    response = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]
    body = wait_for_run(client, run_id)  # finished: what it changed is there already
    assert body["status"] == "succeeded"
    diff = body["schema_diff"]
    assert any(line.startswith("added table chat_sessions (") for line in diff), diff
    settings = next(line for line in diff if line.startswith("added table user_settings ("))
    assert "use_unified_reasoning" in settings
    assert not any(line.startswith(("dropped", "added table users")) for line in diff), diff
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert 'id="schema-diff"' in page
    assert "added table chat_sessions" in page


def test_a_stamp_changes_no_schema_and_says_so(app, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    client = app.test_client()
    response = client.post("/api/runs", json={"action": "stamp", "target": "heads"})
    assert response.status_code == 202, response.get_json()
    body = wait_for_diff(client, response.get_json()["id"])
    assert body["schema_diff"] == []
    page = client.get(f"/runs/{body['id']}").get_data(as_text=True)
    assert "No change to the schema." in page


def test_an_upgrade_that_creates_the_database_lists_every_table_it_added(app, db_path):
    assert not db_path.exists()
    client = app.test_client()
    response = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert response.status_code == 202, response.get_json()
    body = wait_for_diff(client, response.get_json()["id"])
    assert body["status"] == "succeeded"
    assert any(line.startswith("added table users (") for line in body["schema_diff"])
