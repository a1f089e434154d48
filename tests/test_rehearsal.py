"""Rehearsal on a copy (SQLite): the pending upgrade, down and up again, on a scratch copy
made from a fresh verified backup; the real database's bytes never change.

Driven through the JSON API and the HTML forms of ``create_app``; the runner, the
worker, the project's env.py and every file are real.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from dashboard.services import guard, locking
from tests.conftest import UNIFIED_REASONING, USERS, migrate

BAD_DOWN = "bad0000000002"
LEAKY_DOWN = "bad0000000003"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def wait_for_rehearsal(client, url: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = client.get(url).get_json()
        if body["status"] != "running":
            return body
        time.sleep(0.1)
    raise AssertionError(f"the rehearsal did not finish within {timeout:g} s: {body}")


def rehearse(client, **body) -> dict:
    response = client.post("/api/rehearsals", json=body)
    assert response.status_code == 202, response.get_json()
    started = response.get_json()
    assert started["url"] == f"/api/rehearsals/{started['id']}"
    assert response.headers["Location"] == started["url"]
    return wait_for_rehearsal(client, started["url"])


def add_revision(ini: Path, revision: str, parent: str, upgrade: str, downgrade: str) -> None:
    path = ini.parent / "alembic" / "versions" / f"{revision}_rehearsal_test.py"
    path.write_text(textwrap.dedent(f'''\
        """rehearsal test revision {revision}"""
        import sqlalchemy as sa
        from alembic import op

        revision = "{revision}"
        down_revision = "{parent}"
        branch_labels = None
        depends_on = None


        def upgrade():
            {upgrade}


        def downgrade():
            {downgrade}
        '''))


def copies_left(instance_dir: Path) -> list[str]:
    folder = instance_dir / "rehearsals"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


@pytest.fixture
def client(app):
    return app.test_client()


def test_a_roundtrip_rehearsal_of_the_sample_passes_and_leaves_the_database_as_it_was(
        client, sample_ini, db_url, db_path, instance_dir):
    migrate(sample_ini, db_url, USERS)
    before = sha256(db_path)
    body = rehearse(client, target="heads", roundtrip=True)
    assert body["status"] == "passed", body
    assert body["error"] is None
    phases = [s["phase"] for s in body["steps"]]
    ups = phases.count("upgrade")
    assert ups >= 8 and phases == ["upgrade"] * ups + ["downgrade"] * ups + \
        ["upgrade again"] * ups
    assert {s["direction"] for s in body["steps"] if s["phase"] == "downgrade"} == {"down"}
    assert all(s["status"] == "succeeded" and s["duration_s"] >= 0 for s in body["steps"])
    assert body["steps"][0]["revision"] != USERS
    assert any(line.startswith("added table chat_sessions (")
               for line in body["schema_diff"]["upgrade"])
    assert body["schema_diff"]["after_downgrade"] == []
    assert body["schema_diff"]["roundtrip"] == []
    assert body["from"] == [USERS] and body["to"] == [UNIFIED_REASONING]
    # The real database: not one byte changed, still at its revision.
    assert sha256(db_path) == before
    assert body["copy_removed"] is True and copies_left(instance_dir) == []
    # The backup it was made from is recorded and audited; so is the rehearsal.
    backup = client.get(f"/api/backups/{body['backup_id']}").get_json()
    assert backup["verified"] is True and backup["revisions"] == [USERS]
    events = [e["event"] for e in client.get("/api/audit").get_json()["entries"]]
    assert events[:3] == ["rehearsal_passed", "backup_taken", "rehearsal_started"]
    page = client.get(f"/rehearsals/{body['id']}").get_data(as_text=True)
    assert "Passed" in page and 'id="rehearsal-roundtrip-diff"' in page
    assert "The same schema." in page


def test_a_failing_downgrade_fails_the_rehearsal_naming_its_step(
        client, sample_ini, db_url, db_path, instance_dir):
    add_revision(sample_ini, BAD_DOWN, UNIFIED_REASONING,
                 'op.create_table("bad_down", sa.Column("id", sa.Integer, primary_key=True))',
                 'raise RuntimeError("this downgrade fails on purpose")')
    migrate(sample_ini, db_url, UNIFIED_REASONING)
    before = sha256(db_path)
    body = rehearse(client, target="heads", roundtrip=True)
    assert body["status"] == "failed"
    assert f"step {BAD_DOWN} (downgrade)" in body["error"]
    assert "this downgrade fails on purpose" in body["error"]
    assert body["failed_step"] == BAD_DOWN
    assert [(s["phase"], s["revision"], s["direction"], s["status"]) for s in body["steps"]] == [
        ("upgrade", BAD_DOWN, "up", "succeeded"), ("downgrade", BAD_DOWN, "down", "failed")]
    assert body["schema_diff"]["upgrade"] == ["added table bad_down (id INTEGER NOT NULL)"]
    assert sha256(db_path) == before
    assert copies_left(instance_dir) == []
    page = client.get(f"/rehearsals/{body['id']}").get_data(as_text=True)
    assert "this downgrade fails on purpose" in page
    assert client.get("/api/audit").get_json()["entries"][0]["event"] == "rehearsal_failed"


def test_a_downgrade_that_does_not_undo_its_upgrade_fails_the_round_trip(
        client, sample_ini, db_url, db_path):
    add_revision(sample_ini, LEAKY_DOWN, UNIFIED_REASONING,
                 'op.execute("CREATE TABLE IF NOT EXISTS leaky (id INTEGER PRIMARY KEY)")',
                 'op.add_column("leaky", sa.Column("extra", sa.String(40)))')
    migrate(sample_ini, db_url, UNIFIED_REASONING)
    before = sha256(db_path)
    body = rehearse(client, roundtrip=True)
    assert body["status"] == "failed"
    assert body["schema_diff"]["roundtrip"] == ["added column leaky.extra VARCHAR(40)"]
    assert "added column leaky.extra VARCHAR(40)" in body["error"]
    assert sha256(db_path) == before
    # Without the round trip the same upgrade passes.
    assert rehearse(client, roundtrip=False)["status"] == "passed"


def test_an_env_py_that_picks_its_own_database_is_refused_not_run_on_the_real_one(
        client, sample_ini, db_url, db_path, instance_dir):
    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        'config.get_section(config.config_ini_section, {})',
        f'{{"sqlalchemy.url": {db_url!r}}}'))
    migrate(sample_ini, db_url, USERS)
    before = sha256(db_path)
    body = rehearse(client, roundtrip=True)
    assert body["status"] == "failed"
    assert "not the copy" in body["error"] and "nothing ran on either database" in body["error"]
    assert body["steps"] == []
    assert sha256(db_path) == before
    assert copies_left(instance_dir) == []


def test_an_env_py_reading_its_url_from_the_environment_rehearses_on_the_copy(
        sample_ini, db_url, db_path, instance_dir, monkeypatch):
    """The most common env.py edit (and every Flask-Migrate app configured from the
    environment): the URL comes from a variable. The variable that names the real
    database names the copy for the rehearsal's worker."""
    from dashboard import create_app

    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "config = context.config\n", "config = context.config\nimport os\n"
        'config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n', 1))
    monkeypatch.setenv("DATABASE_URL", db_url)
    migrate(sample_ini, db_url, USERS)
    monkeypatch.delenv("DASHBOARD_DATABASE_URL", raising=False)
    client = create_app({"TESTING": True, "DASHBOARD_ALEMBIC_INI": str(sample_ini),
                         "DASHBOARD_INSTANCE_DIR": str(instance_dir)}).test_client()
    before = sha256(db_path)
    body = rehearse(client, roundtrip=True)
    assert body["status"] == "passed", body["error"]
    assert body["from"] == [USERS] and body["to"] == [UNIFIED_REASONING]
    assert sha256(db_path) == before
    assert copies_left(instance_dir) == []


def test_bad_requests_are_refused_with_a_clear_4xx(client, sample_ini, db_url, app):
    migrate(sample_ini, db_url, USERS)
    missing = client.get("/api/rehearsals/nope")
    assert missing.status_code == 404
    assert "No rehearsal 'nope'" in missing.get_json()["error"]["message"]
    assert client.get("/rehearsals/nope").status_code == 404
    bad = client.post("/api/rehearsals", data="{", content_type="application/json")
    assert bad.status_code == 400
    assert client.post("/api/rehearsals", json={"roundtrip": "yes"}).status_code == 400
    assert client.post("/api/rehearsals", json={"target": 3}).status_code == 400
    unknown = client.post("/api/rehearsals", json={"target": "nosuchrev"})
    assert unknown.status_code == 400
    assert client.post("/rehearsals", data={}).status_code == 400


def test_nothing_pending_is_nothing_to_rehearse(client, sample_ini, db_url):
    migrate(sample_ini, db_url, "heads")
    response = client.post("/api/rehearsals", json={"target": "heads"})
    assert response.status_code == 400
    assert "Nothing to upgrade" in response.get_json()["error"]["message"]


def test_a_rehearsal_while_a_run_holds_the_lock_is_refused(app, client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    target = app.extensions["dashboard"]
    lock = guard.acquire_lock(target, locking.LockHolder(os.getpid(), "upgrade heads", "r1",
                                                          "someone", time.time()))
    try:
        response = client.post("/api/rehearsals", json={"target": "heads"})
        assert response.status_code == 409
        assert "A run holds this database's lock" in response.get_json()["error"]["message"]
    finally:
        lock.release()


def test_the_overview_form_starts_a_rehearsal_and_its_page_follows_it(
        client, sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, USERS)
    overview = client.get("/").get_data(as_text=True)
    assert 'id="rehearse-button"' in overview and 'formaction="/rehearsals"' in overview
    before = sha256(db_path)
    response = client.post("/rehearsals", data={"action": "upgrade", "target": "heads"})
    assert response.status_code == 303
    url = response.headers["Location"]
    rehearsal_id = url.rsplit("/", 1)[-1]
    page = client.get(url)
    assert page.status_code == 200 and 'id="rehearsal-panel"' in page.get_data(as_text=True)
    fragment = client.get(url, headers={"HX-Request": "true"})
    assert fragment.headers["Vary"] == "HX-Request"
    assert fragment.get_data(as_text=True).lstrip().startswith("{#") is False
    body = wait_for_rehearsal(client, f"/api/rehearsals/{rehearsal_id}")
    assert body["status"] == "passed" and body["roundtrip"] is False
    assert sha256(db_path) == before


# ---------------------------------------------------------------- the command line


@pytest.fixture
def run_cli(sample_ini, db_url, instance_dir):
    """migrate_db.py's main() in this process: its exit code, stdout and stderr."""
    import migrate_db

    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env.update(DASHBOARD_ALEMBIC_INI=str(sample_ini), DASHBOARD_DATABASE_URL=db_url,
               DASHBOARD_INSTANCE_DIR=str(instance_dir), DASHBOARD_SEED_SAMPLE="false")

    def run(*args: str):
        out, err = io.StringIO(), io.StringIO()
        try:
            code = migrate_db.main(list(args), environ=env, out=out, err=err)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        return code, out.getvalue(), err.getvalue()
    return run


def test_migrate_db_rehearse_exit_codes(run_cli, sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, USERS)
    before = sha256(db_path)
    code, out, err = run_cli("--rehearse", "--roundtrip")
    assert code == 0, err
    assert "upgrade again: up" in out and "Rehearsal passed" in out
    assert sha256(db_path) == before
    add_revision(sample_ini, BAD_DOWN, UNIFIED_REASONING, "pass",
                 'raise RuntimeError("this downgrade fails on purpose")')
    code, out, _ = run_cli("--rehearse", "--roundtrip", "--json")
    assert code == 1
    body = json.loads(out)
    assert body["status"] == "failed" and body["failed_step"] == BAD_DOWN
    assert run_cli("--rehearse")[0] == 0  # up alone passes
    assert sha256(db_path) == before
    assert run_cli("--roundtrip")[0] == 2  # only with --rehearse


def test_migrate_db_rehearse_with_nothing_pending_exits_0(run_cli, sample_ini, db_url):
    migrate(sample_ini, db_url, "heads")
    code, out, _ = run_cli("--rehearse")
    assert code == 0 and "Nothing to rehearse" in out


def test_a_rehearsal_whose_process_is_told_to_stop_still_removes_its_copy(
        client, sample_ini, db_url, db_path, instance_dir):
    from sqlalchemy import select

    from dashboard.services import store

    add_revision(sample_ini, LEAKY_DOWN, UNIFIED_REASONING,
                 'op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True)); '
                 '__import__("time").sleep(60)', "pass")
    migrate(sample_ini, db_url, UNIFIED_REASONING)
    before = sha256(db_path)
    response = client.post("/api/rehearsals", json={"target": "heads"})
    assert response.status_code == 202
    url = response.get_json()["url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get(url).get_json()
        if body["steps"] and body["steps"][0]["status"] == "running":
            break
        time.sleep(0.1)
    assert copies_left(instance_dir) != []  # the copy exists while it runs
    table = store.rehearsals
    with store.store_engine(str(instance_dir)).connect() as conn:
        runner = conn.execute(select(table.c.runner_pid)).scalar_one()
    os.kill(runner, signal.SIGTERM)
    body = wait_for_rehearsal(client, url, timeout=30)
    assert body["status"] == "failed" and "stopped" in body["error"]
    assert body["copy_removed"] is True and copies_left(instance_dir) == []
    assert sha256(db_path) == before


def test_two_rehearsals_at_once_each_get_their_own_copy(
        client, sample_ini, db_url, db_path, instance_dir):
    migrate(sample_ini, db_url, USERS)
    before = sha256(db_path)
    started = [client.post("/api/rehearsals", json={"roundtrip": True}) for _ in range(2)]
    assert [r.status_code for r in started] == [202, 202]
    bodies = [wait_for_rehearsal(client, r.get_json()["url"]) for r in started]
    assert [b["status"] for b in bodies] == ["passed", "passed"], [b["error"] for b in bodies]
    assert bodies[0]["copy"] != bodies[1]["copy"]
    assert bodies[0]["backup_id"] != bodies[1]["backup_id"]
    assert sha256(db_path) == before and copies_left(instance_dir) == []


def test_a_copy_left_by_a_killed_rehearsal_is_named_then_removed_by_the_next(
        client, sample_ini, db_url, db_path, instance_dir):
    from sqlalchemy import select

    from dashboard.services import store

    add_revision(sample_ini, LEAKY_DOWN, UNIFIED_REASONING,
                 '__import__("time").sleep(60)', "pass")
    migrate(sample_ini, db_url, UNIFIED_REASONING)
    url = client.post("/api/rehearsals", json={"target": "heads"}).get_json()["url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not client.get(url).get_json()["steps"]:
        time.sleep(0.1)
    with store.store_engine(str(instance_dir)).connect() as conn:
        runner, worker = conn.execute(select(store.rehearsals.c.runner_pid,
                                             store.rehearsals.c.pid)).one()
    os.kill(runner, signal.SIGKILL)
    os.kill(worker, signal.SIGKILL)
    time.sleep(0.5)
    body = wait_for_rehearsal(client, url, timeout=30)
    left = copies_left(instance_dir)
    assert body["status"] == "failed" and len(left) == 1 and left[0] in body["error"]
    old = time.time() - 3600
    os.utime(instance_dir / "rehearsals" / left[0], (old, old))
    (sample_ini.parent / "alembic" / "versions" / f"{LEAKY_DOWN}_rehearsal_test.py").unlink()
    migrate(sample_ini, db_url, USERS, "downgrade")
    assert rehearse(client)["status"] == "passed"
    assert copies_left(instance_dir) == []
