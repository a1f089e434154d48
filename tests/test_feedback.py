"""What the pages say back: a message after every action, only the controls a
target can use, a header that keeps (and switches) the target, and "unknown"
where a target's state cannot be read (issue 9, items 4 and 6)."""

from __future__ import annotations

import re
import textwrap

import pytest

from dashboard import create_app
from tests.conftest import CHATS, USERS, migrate


@pytest.fixture
def multi(tmp_path, sample_ini, monkeypatch):
    """dev (default) and prod (read-only) on SQLite files, and broken: its URL
    variable is not set."""
    dev, prod = tmp_path / "dev.db", tmp_path / "prod.db"
    migrate(sample_ini, f"sqlite:///{dev}", USERS)
    migrate(sample_ini, f"sqlite:///{prod}", CHATS)
    monkeypatch.delenv("NOT_SET_URL", raising=False)
    config = tmp_path / "targets.toml"
    config.write_text(textwrap.dedent(f"""\
        default = "dev"

        [targets.dev]
        alembic_ini = "{sample_ini}"
        database_url = "sqlite:///dev.db"

        [targets.prod]
        alembic_ini = "{sample_ini}"
        database_url = "sqlite:///prod.db"
        read_only = true

        [targets.broken]
        alembic_ini = "{sample_ini}"
        database_url_env = "NOT_SET_URL"
    """))
    app = create_app({
        "TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
        "DASHBOARD_TARGETS_FILE": str(config), "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst"),
        "DASHBOARD_SEED_SAMPLE": False,
    })
    return app.test_client()


def _header(html: str) -> str:
    return html.split("<main", 1)[0]


def test_back_up_now_says_what_it_did(client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    page = client.post("/backups", follow_redirects=True).get_data(as_text=True)
    backup_id = client.get("/api/backups").get_json()["backups"][0]["id"]
    flash = re.search(r'<div class="flash[^"]*" role="status">(.*?)</div>', page, re.S)
    assert flash, "no message after Back up now"
    assert backup_id in flash.group(1) and "verified" in flash.group(1)
    # Shown once: the next page load has no message.
    assert 'class="flash' not in client.get("/backups").get_data(as_text=True)


def test_verify_says_the_outcome_and_is_audited(client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    client.post("/backups")
    backup_id = client.get("/api/backups").get_json()["backups"][0]["id"]
    page = client.post(f"/backups/{backup_id}/verify", follow_redirects=True)
    assert page.status_code == 200
    assert re.search(rf'class="flash[^"]*" role="status">[^<]*{backup_id}[^<]*passed',
                     page.get_data(as_text=True))
    again = client.post(f"/api/backups/{backup_id}/verify", json={})
    assert again.status_code == 200, again.get_json()
    entries = client.get("/api/audit").get_json()["entries"]
    verified = [e for e in entries if e["event"] == "backup_verified"]
    assert len(verified) == 2 and all(e["backup_id"] == backup_id for e in verified)


def test_a_failed_verify_is_audited_as_failed(client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    client.post("/backups")
    backup = client.get("/api/backups").get_json()["backups"][0]
    with open(backup["path"], "r+b") as handle:  # damage the copy on disk
        handle.seek(100)
        handle.write(b"\xff" * 64)
    page = client.post(f"/backups/{backup['id']}/verify", follow_redirects=True)
    assert re.search(r'class="flash flash-bad" role="status">[^<]*failed',
                     page.get_data(as_text=True))
    entries = client.get("/api/audit").get_json()["entries"]
    assert entries[0]["event"] == "backup_verification_failed"


def test_deleting_a_backup_says_so(client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    client.post("/backups")
    backup_id = client.get("/api/backups").get_json()["backups"][0]["id"]
    page = client.post(f"/backups/{backup_id}/delete", data={"confirm": "yes"},
                       follow_redirects=True).get_data(as_text=True)
    assert re.search(rf'class="flash[^"]*" role="status">[^<]*{backup_id}[^<]*deleted', page)


def test_a_read_only_target_offers_no_control_it_would_refuse(multi):
    multi.post("/targets/dev/backups")  # a backup listed on dev's page, for contrast
    dev = multi.get("/targets/dev/backups").get_data(as_text=True)
    assert 'id="backup-now"' in dev and ">Delete<" in dev and "Restore…" in dev
    prod = multi.get("/targets/prod/backups").get_data(as_text=True)
    assert 'id="backup-now"' not in prod and ">Delete<" not in prod and "Restore…" not in prod
    assert "read-only" in prod


def test_the_header_keeps_the_target_and_switches_it(multi):
    header = _header(multi.get("/targets/prod/history").get_data(as_text=True))
    nav = header.split("<nav", 1)[1].split("</nav>", 1)[0]
    assert 'href="/targets/prod/history"' in nav and 'href="/targets/prod/runs"' in nav
    switcher = header.split('class="switcher"', 1)[1].split("</details>", 1)[0]
    # The same page of another target, and the table of all of them.
    assert 'href="/targets/dev/history"' in switcher
    assert 'href="/targets/broken/history"' in switcher and 'href="/"' in switcher
    # On the table of all targets, the nav names no target's pages as if they were all.
    everything = _header(multi.get("/").get_data(as_text=True))
    assert 'href="/history"' not in everything and 'href="/runs"' not in everything
    assert 'class="switcher"' in everything


def test_a_target_in_error_shows_unknown_not_zero(multi):
    html = multi.get("/").get_data(as_text=True)
    row = html.split('data-target="broken"', 1)[1].split("</tr>", 1)[0]
    pending = row.split('data-label="Pending">', 1)[1].split("</td>", 1)[0]
    assert pending.strip() == "unknown"
    rows = {t["name"]: t for t in multi.get("/api/targets").get_json()["targets"]}
    assert rows["broken"]["pending_count"] is None
    assert rows["dev"]["pending_count"] > 0


def test_a_failed_run_says_what_was_undone_what_failed_and_what_next(client, sample_ini,
                                                                      db_url):
    """Steps a restore undid are not left green, the sentences of the error are apart,
    the page names the file to fix and offers to retry the same action."""
    from tests.conftest import UNIFIED_REASONING
    from tests.test_runs import add_failing_revision, run_to_end

    migrate(sample_ini, db_url, CHATS)
    add_failing_revision(sample_ini, UNIFIED_REASONING)
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "restored"
    succeeded = [s for s in run["steps"] if s["status"] == "succeeded"]
    assert succeeded and all(s["undone"] for s in succeeded)
    # Sentences apart: not "on purpose The run's one transaction..."
    assert re.search(r"[.)]\. The run's|purpose\. The run's", run["error"]), run["error"]
    assert "bad0000000001_explodes.py, line " in run["error"]  # the file and line to fix

    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    statuses = re.findall(r'class="step-status"[^>]*>([^<]*)<', page)
    assert "succeeded" not in statuses and statuses.count("undone by the restore") == len(
        succeeded)
    next_step = page.split('id="what-next"', 1)[1].split("</section>", 1)[0]
    assert "bad0000000001_explodes.py" in next_step and "then retry" in next_step
    assert 'name="action" value="upgrade"' in next_step
    assert 'name="target" value="heads"' in next_step

    retried = client.post("/actions", data={"action": "upgrade", "target": "heads"})
    assert retried.status_code == 303 and "/runs/" in retried.headers["Location"]
