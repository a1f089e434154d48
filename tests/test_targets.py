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
    ("[targets.a]\nalembic_ini = 'a.ini'\nlabels = 'tenant'\n", "labels must be a list"),
    ("[targets.a]\nalembic_ini = 'a.ini'\nlabels = ['ok', 'no spaces']\n",
     "labels must be a list"),
    ("[targets.a]\nalembic_ini = 'a.ini'\nbackup_method = 'rsync'\n",
     "backup_method must be 'dump' or 'physical'"),
])
def test_a_bad_targets_file_stops_start_up_with_a_clear_message(tmp_path, text, message):
    config = tmp_path / "t.toml"
    config.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        create_app({"DASHBOARD_TARGETS_FILE": str(config),
                    "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")})


def test_labels_reach_their_targets(tmp_path, sample_ini):
    from dashboard.core import Registry

    config = tmp_path / "t.toml"
    config.write_text(f"[targets.a]\nalembic_ini = '{sample_ini}'\nlabels = ['tenant', 'eu', "
                      f"'tenant']\nbackup_method = 'physical'\n"
                      f"[targets.b]\nalembic_ini = '{sample_ini}'\n")
    from dashboard.settings import settings_from_environ

    registry = Registry({**settings_from_environ({}), "DASHBOARD_TARGETS_FILE": str(config),
                         "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")})
    assert registry.get("a").labels == ("tenant", "eu")
    assert registry.get("b").labels == ()
    # and so does a target's backup_method; the others keep the default
    assert registry.get("a").project().backup_method == "physical"
    assert registry.get("b").project().backup_method == "dump"


def _wait(client, url):
    import time

    for _ in range(300):
        body = client.get(url).get_json()
        if body["status"] in ("succeeded", "failed", "restored"):
            return body
        time.sleep(0.1)
    raise AssertionError(body)


# ---------------------------------------------------------------- a target's env table


@pytest.fixture(scope="module")
def env_url_project(tmp_path_factory):
    """`alembic init -t generic`, env.py changed to read DATABASE_URL, three revisions."""
    from tests.real_projects import make

    return make("env_url", tmp_path_factory.mktemp("made") / "env_url")


def test_one_env_py_reading_database_url_serves_staging_and_production(
        env_url_project, tmp_path, monkeypatch):
    project = env_url_project.copy(tmp_path / "project")
    staging, prod = tmp_path / "staging.db", tmp_path / "prod.db"
    first, *_, head = project.revisions
    for db in (staging, prod):
        project.upgrade(first, database_url=f"sqlite:///{db}")
    monkeypatch.setenv("PROD_DATABASE_URL", f"sqlite:///{prod}")
    config = tmp_path / "targets.toml"
    config.write_text(textwrap.dedent(f"""\
        [targets.staging]
        alembic_ini = "{project.dashboard_path}"
        database_url = "sqlite:///staging.db"
        [targets.staging.env]
        DATABASE_URL = "sqlite:///{staging}"

        [targets.prod]
        alembic_ini = "{project.dashboard_path}"
        database_url_env = "PROD_DATABASE_URL"
        [targets.prod.env]
        DATABASE_URL = "${{PROD_DATABASE_URL}}"
    """))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    client = create_app({"TESTING": True, "DASHBOARD_SECRET_KEY": "t",
                         "DASHBOARD_TARGETS_FILE": str(config),
                         "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")}).test_client()
    # The revision page's SQL comes from env.py too, which needs DATABASE_URL.
    page = client.get(f"/api/targets/prod/revisions/{head}").get_json()
    assert "CREATE TABLE invoices" in page["upgrade_sql"], page
    run = client.post("/api/targets/staging/runs", json={"action": "upgrade", "target": "heads"})
    assert run.status_code == 202, run.get_json()
    assert _wait(client, run.get_json()["url"])["status"] == "succeeded"
    assert project.current(f"sqlite:///{staging}") == [head]
    assert db_revisions(staging) == [head]
    assert project.current(f"sqlite:///{prod}") == [first]  # untouched
    assert client.get("/api/targets/prod/status").get_json()["current"] == [first]
    down = client.post("/api/targets/prod/runs", json={"action": "downgrade", "target": "base"})
    assert _wait(client, down.get_json()["url"])["status"] == "succeeded"
    assert project.current(f"sqlite:///{prod}") == [] and db_revisions(staging) == [head]


def test_a_missing_variable_of_a_targets_env_is_that_targets_error(
        tmp_path, sample_ini, monkeypatch):
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    config = tmp_path / "t.toml"
    config.write_text(
        f'[targets.ok]\nalembic_ini = "{sample_ini}"\ndatabase_url = "sqlite:///ok.db"\n'
        f'[targets.bad]\nalembic_ini = "{sample_ini}"\ndatabase_url = "sqlite:///bad.db"\n'
        '[targets.bad.env]\nAPI_TOKEN = "${NOT_SET_TOKEN}"\n')
    client = create_app({"TESTING": True, "DASHBOARD_SECRET_KEY": "t",
                         "DASHBOARD_TARGETS_FILE": str(config),
                         "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")}).test_client()
    rows = {t["name"]: t for t in client.get("/api/targets").get_json()["targets"]}
    assert rows["ok"]["state"] != "error"
    assert rows["bad"]["state"] == "error"
    assert "NOT_SET_TOKEN" in rows["bad"]["error"] and "API_TOKEN" in rows["bad"]["error"]
    refused = client.post("/api/targets/bad/runs", json={"action": "upgrade", "target": "heads"})
    assert refused.status_code == 503 and "NOT_SET_TOKEN" in refused.get_data(as_text=True)


def test_env_values_are_never_shown(env_url_project, tmp_path, monkeypatch):
    """env.py that prints its variables into an error: the page and the run keep none."""
    project = env_url_project.copy(tmp_path / "project")
    db = tmp_path / "app.db"
    token, password = "tok-5ec4e7-value", "pw-s3cret-value"
    env_py = project.env_py
    env_py.write_text(env_py.read_text().replace(
        'config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n',
        'config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n'
        'if os.environ.get("LEAK"):\n'
        '    raise RuntimeError("token=" + os.environ["API_TOKEN"] + " dsn="'
        ' + os.environ["OTHER_DSN"])\n'))
    monkeypatch.setenv("SECRET_TOKEN", token)
    config = tmp_path / "t.toml"
    config.write_text(textwrap.dedent(f"""\
        [targets.app]
        alembic_ini = "{project.dashboard_path}"
        database_url = "sqlite:///{db}"
        [targets.app.env]
        DATABASE_URL = "sqlite:///{db}"
        API_TOKEN = "${{SECRET_TOKEN}}"
        OTHER_DSN = "postgresql://app:{password}@db.example/app"
        LEAK = "yes"
    """))
    client = create_app({"TESTING": True, "DASHBOARD_SECRET_KEY": "t",
                         "DASHBOARD_TARGETS_FILE": str(config),
                         "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")}).test_client()
    shown = [client.get("/api/targets").get_data(as_text=True),
             client.get("/").get_data(as_text=True)]
    detail = client.get(f"/api/targets/app/revisions/{project.revisions[0]}")
    shown.append(detail.get_data(as_text=True))
    assert "token=***" in detail.get_json()["upgrade_sql_error"]
    run = client.post("/api/targets/app/runs", json={"action": "upgrade", "target": "heads"})
    assert run.status_code == 202, run.get_json()
    body = _wait(client, run.get_json()["url"])
    assert body["status"] != "succeeded" and "token=***" in str(body), body
    shown += [client.get(run.get_json()["url"]).get_data(as_text=True),
              client.get(f"/targets/app/runs/{body['id']}").get_data(as_text=True),
              client.get("/api/targets/app/audit").get_data(as_text=True)]
    shown += [p.read_text(errors="replace") for p in (tmp_path / "inst").rglob("*")
              if p.is_file() and p.suffix in (".jsonl", ".json", ".log")]
    for text in shown:
        assert token not in text and password not in text
    assert "db.example" in " ".join(shown)  # the URL is shown, masked


def test_flask_app_reaches_the_project_and_its_process(tmp_path, sample_ini):
    from dashboard.core import Registry
    from dashboard.services.alembic_process import worker_environment
    from dashboard.settings import settings_from_environ

    config = tmp_path / "t.toml"
    config.write_text(
        f'[targets.web]\nalembic_ini = "{sample_ini}"\ndatabase_url = "sqlite:///w.db"\n'
        'flask_app = "web:create_app()"\n'
        f'[targets.plain]\nalembic_ini = "{sample_ini}"\ndatabase_url = "sqlite:///p.db"\n')
    settings = {**settings_from_environ({}), "DASHBOARD_TARGETS_FILE": str(config),
                "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")}
    registry = Registry(settings, environ={})
    web, plain = registry.get("web").project(), registry.get("plain").project()
    assert web.flask_app == "web:create_app()" and plain.flask_app is None
    assert worker_environment(web)["DASHBOARD_FLASK_APP"] == "web:create_app()"
    assert "DASHBOARD_FLASK_APP" not in worker_environment(plain)
    single = Registry({**settings, "DASHBOARD_TARGETS_FILE": None,
                       "DASHBOARD_ALEMBIC_INI": str(sample_ini),
                       "DASHBOARD_DATABASE_URL": "sqlite:///x.db",
                       "DASHBOARD_FLASK_APP": "app"}, environ={})
    assert worker_environment(single.get().project())["DASHBOARD_FLASK_APP"] == "app"


@pytest.mark.parametrize("table, message", [
    ('env = "DATABASE_URL=x"', "env must be a table"),
    ("[targets.a.env]\nDATABASE_URL = 5", "env DATABASE_URL must be a string"),
    ('[targets.a.env]\n"NOT-A-NAME" = "x"', "not a variable name"),
    ('[targets.a.env]\nDASHBOARD_TARGET_URL = "x"', "dashboard's own"),
    ("flask_app = 3", "flask_app must be a string"),
])
def test_a_bad_env_table_is_a_clear_error(tmp_path, table, message):
    config = tmp_path / "t.toml"
    config.write_text(f"[targets.a]\nalembic_ini = 'a.ini'\n{table}\n")
    with pytest.raises(ConfigurationError, match=message) as raised:
        create_app({"DASHBOARD_TARGETS_FILE": str(config),
                    "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")})
    assert "=5" not in raised.value.message and '"x"' not in raised.value.message
