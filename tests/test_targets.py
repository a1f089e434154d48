"""Several named targets from a TOML file: the overview table, per-target pages and API."""

from __future__ import annotations

import textwrap

import pytest

from dashboard import create_app
from dashboard.errors import ConfigurationError
from tests.conftest import CHATS, UNIFIED_REASONING, USERS, db_revisions, migrate


@pytest.fixture
def targets(tmp_path, sample_ini, monkeypatch):
    """dev (default) and staging on two SQLite files, prod read-only, and one
    whose URL variable is missing."""
    dev, staging = tmp_path / "dev.db", tmp_path / "staging.db"
    migrate(sample_ini, f"sqlite:///{dev}", USERS)
    migrate(sample_ini, f"sqlite:///{staging}", "heads")
    monkeypatch.setenv("STAGING_URL", f"sqlite:///{staging}")
    monkeypatch.delenv("NOT_SET_URL", raising=False)
    config = tmp_path / "targets.toml"
    config.write_text(textwrap.dedent(f"""\
        default = "dev"

        [targets.dev]
        alembic_ini = "{sample_ini}"
        database_url = "sqlite:///dev.db"

        [targets.staging]
        alembic_ini = "{sample_ini}"
        database_url_env = "STAGING_URL"
        backup_dir = "staging-backups"

        [targets.prod]
        alembic_ini = "{sample_ini}"
        database_url_env = "STAGING_URL"
        read_only = true

        [targets.broken]
        alembic_ini = "{sample_ini}"
        database_url_env = "NOT_SET_URL"
    """))
    return config, dev, staging


@pytest.fixture
def multi_client(targets, tmp_path):
    config, _, _ = targets
    app = create_app({
        "TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
        "DASHBOARD_TARGETS_FILE": str(config), "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst"),
        "DASHBOARD_SEED_SAMPLE": False,
    })
    return app.test_client()


def test_overview_is_a_table_of_all_targets(multi_client):
    page = multi_client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for name, state in (("dev", "pending"), ("staging", "up_to_date"), ("prod", "up_to_date"),
                        ("broken", "error")):
        assert f'data-target="{name}" data-state="{state}"' in html
    assert 'href="/targets/staging/"' in html
    assert "NOT_SET_URL" in html and "read-only" in html


def test_api_lists_targets_and_each_has_its_own_status(multi_client, targets):
    body = multi_client.get("/api/targets").get_json()
    assert body["default"] == "dev"
    rows = {t["name"]: t for t in body["targets"]}
    assert rows["dev"]["pending_count"] == 9 and rows["dev"]["current"] == [USERS]
    assert rows["staging"]["state"] == "up_to_date"
    assert rows["prod"]["read_only"] is True
    assert rows["broken"]["state"] == "error" and "NOT_SET_URL" in rows["broken"]["error"]
    assert rows["staging"]["url"] == "/api/targets/staging/status"
    staging = multi_client.get("/api/targets/staging/status").get_json()
    assert staging["current"] == [UNIFIED_REASONING]
    assert multi_client.get("/api/status").get_json()["current"] == [USERS], "default target"
    missing = multi_client.get("/api/targets/broken/status")
    assert missing.status_code == 503 and "NOT_SET_URL" in missing.get_json()["error"]["message"]
    assert multi_client.get("/api/targets/nope/status").status_code == 404


def test_pages_of_a_target_link_within_that_target(multi_client):
    html = multi_client.get("/targets/staging/").get_data(as_text=True)
    assert 'href="/targets/staging/history"' in html
    assert 'href="/targets/staging/revisions/' in html
    assert 'action="/targets/staging/actions/preview"' in html
    history = multi_client.get("/targets/staging/history").get_data(as_text=True)
    assert 'href="/targets/staging/revisions/' in history
    assert multi_client.get("/targets/nope/").status_code == 404


def test_actions_run_on_their_own_target_and_store(multi_client, targets, tmp_path):
    _, dev, staging = targets
    response = multi_client.post("/api/targets/dev/runs", json={"action": "upgrade",
                                                                "target": CHATS})
    assert response.status_code == 202
    assert response.get_json()["url"] == f"/api/targets/dev/runs/{response.get_json()['id']}"
    run = response.get_json()
    deadline_run = _wait(multi_client, f"/api/targets/dev/runs/{run['id']}")
    assert deadline_run["status"] == "succeeded"
    assert db_revisions(dev) == [CHATS] and db_revisions(staging) == [UNIFIED_REASONING]
    assert multi_client.get(f"/api/targets/staging/runs/{run['id']}").status_code == 404
    down = multi_client.post("/api/targets/staging/runs", json={"action": "downgrade",
                                                                "target": "-1"})
    assert _wait(multi_client, down.get_json()["url"])["status"] == "succeeded"
    staging_backups = multi_client.get("/api/targets/staging/backups").get_json()["backups"]
    assert staging_backups[0]["path"].startswith(str(tmp_path / "staging-backups"))


def test_read_only_target_refuses_changes(multi_client, targets):
    _, _, staging = targets
    refused = multi_client.post("/api/targets/prod/runs", json={"action": "downgrade",
                                                                "target": "-1"})
    assert refused.status_code == 403 and "read-only" in refused.get_json()["error"]["message"]
    assert multi_client.post("/api/targets/prod/backups", json={}).status_code == 403
    assert db_revisions(staging) == [UNIFIED_REASONING]
    page = multi_client.get("/targets/prod/").get_data(as_text=True)
    assert 'id="read-only"' in page and 'id="upgrade-button"' not in page


def test_two_targets_on_one_database_share_the_lock(tmp_path, sample_ini):
    db = tmp_path / "same.db"
    migrate(sample_ini, f"sqlite:///{db}", USERS)
    config = tmp_path / "t.toml"
    config.write_text(
        f'[targets.a]\nalembic_ini = "{sample_ini}"\ndatabase_url = "sqlite:///{db}"\n'
        f'[targets.b]\nalembic_ini = "{sample_ini}"\ndatabase_url = "sqlite:///same.db"\n')
    slow = sample_ini.parent / "alembic" / "versions" / "51070000bbbb_slow.py"
    slow.write_text(f'"""slow"""\nimport time\nrevision = "51070000bbbb"\n'
                    f'down_revision = "{UNIFIED_REASONING}"\n'
                    "def upgrade():\n    time.sleep(2)\n\ndef downgrade():\n    pass\n")
    client = create_app({"TESTING": True, "DASHBOARD_SECRET_KEY": "t",
                         "DASHBOARD_TARGETS_FILE": str(config),
                         "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")}).test_client()
    first = client.post("/api/targets/a/runs", json={"action": "upgrade", "target": "heads"})
    second = client.post("/api/targets/b/runs", json={"action": "upgrade", "target": "heads"})
    assert first.status_code == 202 and second.status_code == 409
    assert _wait(client, first.get_json()["url"])["status"] == "succeeded"


@pytest.mark.parametrize("text, message", [
    ("not = [toml", "not valid TOML"),
    ("[targets.a]\ndatabase_url = 'sqlite:///x.db'\n", "alembic_ini is required"),
    ("[targets.a]\nalembic_ini = 'a.ini'\ncolour = 'red'\n", "unknown keys"),
    ("default = 'zzz'\n[targets.a]\nalembic_ini = 'a.ini'\n", "names no target"),
    ("[targets.a]\nalembic_ini = 'a.ini'\ndatabase_url = 'x'\ndatabase_url_env = 'Y'\n",
     "not both"),
])
def test_a_bad_targets_file_stops_start_up_with_a_clear_message(tmp_path, text, message):
    config = tmp_path / "t.toml"
    config.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        create_app({"DASHBOARD_TARGETS_FILE": str(config),
                    "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")})


def _wait(client, url):
    import time

    for _ in range(300):
        body = client.get(url).get_json()
        if body["status"] in ("succeeded", "failed", "restored"):
            return body
        time.sleep(0.1)
    raise AssertionError(body)
