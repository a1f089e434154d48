"""Filters and pages for runs, audit and backups, on the pages and in the API
(issue 9, item 10): a long-lived dashboard keeps hundreds of each."""

from __future__ import annotations

import re

import pytest

from tests.conftest import CHATS, USERS, migrate
from tests.test_runs import run_to_end


@pytest.fixture
def history_of_actions(client, sample_ini, db_url):
    """Three real runs (upgrade, downgrade, upgrade) and two manual backups."""
    migrate(sample_ini, db_url, USERS)
    assert run_to_end(client, "upgrade", CHATS)["status"] == "succeeded"
    assert run_to_end(client, "downgrade", "-1")["status"] == "succeeded"
    assert run_to_end(client, "upgrade", CHATS)["status"] == "succeeded"
    for _ in range(2):
        assert client.post("/api/backups", json={}).status_code == 201
    return client


def test_runs_filter_by_action_and_status(history_of_actions):
    client = history_of_actions
    body = client.get("/api/runs?action=downgrade").get_json()
    assert [r["action"] for r in body["runs"]] == ["downgrade"] and body["total"] == 1
    assert client.get("/api/runs?status=failed").get_json()["runs"] == []
    page = client.get("/runs?action=upgrade").get_data(as_text=True)
    assert page.count('data-label="Action">upgrade') == 2
    assert 'data-label="Action">downgrade' not in page
    # The form shows the filter in force.
    assert re.search(r'<option value="upgrade" selected>', page)


def test_runs_come_in_pages(history_of_actions):
    client = history_of_actions
    first = client.get("/api/runs?per_page=2").get_json()
    assert len(first["runs"]) == 2 and first["total"] == 3 and first["page"] == 1
    assert first["next"] == "/api/runs?per_page=2&page=2"
    second = client.get(first["next"]).get_json()
    assert len(second["runs"]) == 1 and second["next"] is None
    seen = [r["id"] for r in first["runs"] + second["runs"]]
    assert len(set(seen)) == 3
    html = client.get("/runs?per_page=2").get_data(as_text=True)
    assert "Page 1 of 2" in html and 'href="/runs?per_page=2&amp;page=2"' in html


def test_audit_filters_by_event_and_outcome(history_of_actions):
    client = history_of_actions
    taken = client.get("/api/audit?event=backup_taken").get_json()
    assert taken["total"] == 2 and {e["event"] for e in taken["entries"]} == {"backup_taken"}
    ok = client.get("/api/audit?outcome=succeeded&per_page=1").get_json()
    assert len(ok["entries"]) == 1 and ok["total"] >= 5
    page = client.get("/audit?event=backup_taken").get_data(as_text=True)
    assert page.count("<tr ") + page.count("<tr>") - 1 == 2  # two rows, and the header


def test_backups_filter_by_verification(history_of_actions):
    client = history_of_actions
    every = client.get("/api/backups").get_json()
    assert every["total"] == 5  # one per run, two manual
    assert client.get("/api/backups?verified=no").get_json()["backups"] == []
    assert client.get("/api/backups?verified=yes").get_json()["total"] == 5


@pytest.mark.parametrize("query", ["status=bogus", "page=0", "page=x", "per_page=100000",
                                   "page=²", "per_page=١٠",
                                   "verified=maybe", "event=<script>"])
def test_bad_filters_are_a_clear_400(client, sample_ini, db_url, query):
    migrate(sample_ini, db_url, USERS)
    base = "/api/backups" if "verified" in query else (
        "/api/audit" if "event" in query else "/api/runs")
    response = client.get(f"{base}?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert query.split("=")[0] in response.get_json()["error"]["message"]
    page = client.get(base.removeprefix("/api") + f"?{query}")
    assert page.status_code == 400 and "<h1>" in page.get_data(as_text=True)
    assert "<script>" not in page.get_data(as_text=True)


def test_the_whole_pending_range_downloads_as_one_sql_script(client, sample_ini, db_url,
                                                             tmp_path):
    """One script with every pending revision's upgrade, in apply order, that
    brings a copy of the database to the heads when run as it is."""
    import sqlite3

    migrate(sample_ini, db_url, USERS)
    pending = [p["revision"] for p in client.get("/api/status").get_json()["pending"]]
    response = client.get("/sql/pending")
    assert response.status_code == 200
    assert response.mimetype == "application/sql"
    assert "attachment" in response.headers["Content-Disposition"]
    script = response.get_data(as_text=True)
    positions = [script.index(f"-- Upgrade {rev}") for rev in pending]
    assert positions == sorted(positions), "revisions out of apply order"
    # Run on a copy of the database, it brings the copy to the heads.
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as source, \
            sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        conn.executescript(script)
        heads = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    assert heads == client.get("/api/status").get_json()["heads"]
    # The API gives the same script.
    assert client.get("/api/sql/pending").get_json()["sql"].splitlines()[2:] == \
        script.splitlines()[2:]
    # The overview offers it.
    assert 'href="/sql/pending"' in client.get("/").get_data(as_text=True)


def test_no_pending_sql_when_up_to_date_is_a_clear_409(client, sample_ini, db_url):
    migrate(sample_ini, db_url, "heads")
    response = client.get("/sql/pending")
    assert response.status_code == 409 and "Nothing is pending" in response.get_data(as_text=True)
