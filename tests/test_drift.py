"""Issue 10, item 4: drift, the live schema against the project's models.

Real projects made by the real tools (``flask db init`` + ``flask db migrate``,
``alembic init -t generic`` and ``-t multidb``) and the sample app, on real
SQLite files and the real PostgreSQL server: in sync at head, the difference
named after a model changes, "unavailable" with its reason where env.py has no
``target_metadata`` or the database cannot be reached, and the database as it
was after every check.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

import tests.test_real_projects as real
from tests.conftest import USERS, client_for, migrate
from tests.servers import SERVERS, load_sample, require, scratch_database, snapshot

BACKENDS = ("sqlite", "postgresql")

# The real-project fixtures of test_real_projects (each kind made once per session).
made, new_database, case = real.made, real.new_database, real.case


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("kind", metafunc.function.kinds)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS)


@pytest.fixture
def database_url(backend, tmp_path):
    """An empty database of this test's backend (a SQLite file not made yet)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'target.db'}"
        return
    server = require(SERVERS["postgresql"])
    with scratch_database(server, "md_drift") as name:
        yield server.url(name)


def drift_of(client) -> dict:
    response = client.get("/api/drift")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sqlite_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".db" in p.name)


# ---------------------------------------------------------------- the sample app


def test_the_sample_app_is_in_sync_at_its_heads(sample_ini, database_url, tmp_path):
    load_sample(sample_ini, database_url)
    before = snapshot(database_url)
    sqlite_file = tmp_path / "target.db"
    file_before = digest(sqlite_file) if sqlite_file.exists() else None
    client = client_for(sample_ini, database_url, tmp_path / "instance")

    body = drift_of(client)

    assert body["state"] == "in_sync", body
    assert body["differences"] == [] and body["reason"] is None and body["note"] is None
    assert [d["state"] for d in body["databases"]] == ["in_sync"]
    assert snapshot(database_url) == before
    if file_before is not None:
        assert digest(sqlite_file) == file_before


def test_behind_its_heads_the_differences_are_named_with_a_note(sample_ini, db_path, db_url,
                                                                tmp_path):
    migrate(sample_ini, db_url, USERS)
    before = digest(db_path)
    client = client_for(sample_ini, db_url, tmp_path / "instance")

    body = drift_of(client)

    assert body["state"] == "drift", body
    added = {d["table"] for d in body["differences"] if d["kind"] == "add_table"}
    assert {"user_settings", "chat_sessions", "documents"} <= added, body
    assert "users" not in added
    assert "to apply" in body["note"], body
    sentence = next(d["sentence"] for d in body["differences"] if d["table"] == "documents")
    assert sentence.startswith("Table documents is in the models but not in the database"), \
        sentence
    # Read, never written: the same bytes, and no journal left beside it.
    assert digest(db_path) == before
    assert sqlite_files(db_path.parent) == ["target.db"]


def test_a_column_added_by_hand_is_drift_naming_table_and_column(sample_ini, database_url,
                                                                 tmp_path):
    migrate(sample_ini, database_url, "heads")
    _execute(database_url, "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)")
    client = client_for(sample_ini, database_url, tmp_path / "instance")

    body = drift_of(client)

    assert body["state"] == "drift", body
    [difference] = body["differences"]
    assert difference["kind"] == "remove_column"
    assert (difference["table"], difference["column"]) == ("users", "nickname")
    assert "VARCHAR(40)" in difference["detail"]
    assert difference["sentence"] == ("Column users.nickname (VARCHAR(40)) is in the "
                                      "database but not in the models."), difference


def test_changed_columns_comments_and_keys_are_said_with_both_sides(sample_ini, tmp_path):
    """Types, nullability and comments as autogenerate compares them by default, server
    defaults where env.py asks for them (``compare_server_default=True``)."""
    server = require(SERVERS["postgresql"])
    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "        target_metadata=target_metadata,\n        render_as_batch=connection",
        "        target_metadata=target_metadata,\n        compare_server_default=True,\n"
        "        render_as_batch=connection", 1))
    with scratch_database(server, "md_drift") as name:
        url = server.url(name)
        migrate(sample_ini, url, "heads")
        server.execute("ALTER TABLE users ALTER COLUMN display_name TYPE VARCHAR(200)",
                       "ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL",
                       "ALTER TABLE users ALTER COLUMN is_active SET DEFAULT false",
                       "COMMENT ON COLUMN users.email IS 'the login'",
                       "COMMENT ON TABLE users IS 'people'",
                       "ALTER TABLE user_settings DROP CONSTRAINT "
                       "fk_user_settings_user_id_users",
                       database=name)

        body = drift_of(client_for(sample_ini, url, tmp_path / "instance"))

    said = {(d["kind"], d["column"]): d["sentence"] for d in body["differences"]}
    assert said == {
        ("modify_type", "display_name"): "Column users.display_name is VARCHAR(200) in the "
                                         "database, VARCHAR(100) in the models.",
        ("modify_nullable", "password_hash"): "Column users.password_hash is nullable in the "
                                              "database, NOT NULL in the models.",
        ("modify_default", "is_active"): "Column users.is_active has server default false in "
                                         "the database, server default true in the models.",
        ("modify_comment", "email"): "Column users.email has comment “the login” in the "
                                     "database, no comment in the models.",
        ("remove_table_comment", None): "Table users has a comment in the database, none in "
                                        "the models.",
        ("add_fk", None): "Foreign key fk_user_settings_user_id_users on user_settings "
                          "(user_id) references users (id) is in the models but not in the "
                          "database.",
    }, body


def test_an_env_py_that_hangs_is_unavailable_after_the_timeout(sample_ini, db_url, tmp_path):
    migrate(sample_ini, db_url, "heads")
    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "def run_migrations_online() -> None:\n",
        "def run_migrations_online() -> None:\n    import time\n    time.sleep(60)\n", 1))
    client = client_for(sample_ini, db_url, tmp_path / "instance",
                        DASHBOARD_SUBPROCESS_TIMEOUT=3)

    body = drift_of(client)

    assert body["state"] == "unavailable", body
    assert "did not answer within 3 s" in body["reason"], body


def test_env_pys_own_include_object_is_honoured(sample_ini, db_url, tmp_path):
    """A table env.py's ``include_object`` leaves out is no drift, as for autogenerate."""
    migrate(sample_ini, db_url, "heads")
    _execute(db_url, "CREATE TABLE legacy_import (id INTEGER PRIMARY KEY)")
    client = client_for(sample_ini, db_url, tmp_path / "instance")
    body = drift_of(client)
    assert [(d["kind"], d["table"]) for d in body["differences"]] == \
        [("remove_table", "legacy_import")], body

    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "        target_metadata=target_metadata,\n        render_as_batch=connection",
        "        target_metadata=target_metadata,\n"
        "        include_object=lambda obj, name, kind, reflected, compare_to:\n"
        "            name != 'legacy_import',\n"
        "        render_as_batch=connection", 1))
    assert drift_of(client)["state"] == "in_sync"


def test_a_missing_sqlite_file_is_unavailable_and_not_created(sample_ini, db_path, db_url,
                                                             tmp_path):
    client = client_for(sample_ini, db_url, tmp_path / "instance")

    body = drift_of(client)

    assert body["state"] == "unavailable", body
    assert "does not exist" in body["reason"], body
    assert not db_path.exists()


def test_an_unreachable_server_is_unavailable_and_its_password_never_shown(sample_ini,
                                                                           tmp_path):
    url = "postgresql+psycopg://someone:Sup3r-s3cret@127.0.0.1:9/nowhere"
    client = client_for(sample_ini, url, tmp_path / "instance")

    response = client.get("/api/drift")

    assert response.status_code == 200
    body = response.get_json()
    assert body["state"] == "unavailable", body
    assert "cannot be read" in body["reason"], body
    page = client.get("/?drift=now").get_data(as_text=True)
    assert "Cannot compare" in page
    for text in (response.get_data(as_text=True), page):
        assert "Sup3r-s3cret" not in text


def test_an_env_py_that_writes_is_refused_by_the_read_only_session(sample_ini, tmp_path):
    """Whatever env.py runs while the database is compared is refused by the server
    itself: the check is unavailable, saying why, and the database is as it was."""
    server = require(SERVERS["postgresql"])
    env_py = sample_ini.parent / "alembic" / "env.py"
    with scratch_database(server, "md_drift") as name:
        url = server.url(name)
        load_sample(sample_ini, url)
        before = snapshot(url)
        env_py.write_text(env_py.read_text().replace(
            "def _run_migrations_on(connection) -> None:\n",
            "def _run_migrations_on(connection) -> None:\n"
            "    from sqlalchemy import text\n"
            "    connection.execute(text('CREATE TABLE sneaky (id integer)'))\n"
            "    connection.commit()\n", 1))
        client = client_for(sample_ini, url, tmp_path / "instance")

        body = drift_of(client)

        assert body["state"] == "unavailable", body
        assert "read-only transaction" in body["reason"], body
        assert "env.py" in body["reason"]
        assert snapshot(url) == before


# ---------------------------------------------------------------- the overview's panel


def test_the_overview_fetches_the_panel_and_shows_a_recent_answer_at_once(
        sample_ini, db_path, db_url, tmp_path):
    migrate(sample_ini, db_url, "heads")
    client = client_for(sample_ini, db_url, tmp_path / "instance")

    first = client.get("/").get_data(as_text=True)
    assert 'hx-get="/drift"' in first and 'hx-trigger="load"' in first
    assert 'href="/?drift=now"' in first  # without JavaScript
    assert 'data-state="in_sync"' not in first

    fragment = client.get("/drift")
    assert fragment.status_code == 200
    html = fragment.get_data(as_text=True)
    assert html.lstrip().startswith('<section class="card drift" id="drift"')
    assert 'data-state="in_sync"' in html and "The database matches the models" in html

    again = client.get("/").get_data(as_text=True)
    assert 'data-state="in_sync"' in again and 'hx-trigger="load"' not in again

    # A model file changed: the answer no longer holds, the page asks again.
    models = sample_ini.parent / "app_models" / "models.py"
    stat = models.stat()
    os.utime(models, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert 'hx-trigger="load"' in client.get("/").get_data(as_text=True)

    # The way without JavaScript: compared while the page is made.
    _execute(db_url, "ALTER TABLE users ADD COLUMN nickname VARCHAR(40)")
    page = client.get("/?drift=now").get_data(as_text=True)
    assert 'data-state="drift"' in page
    assert "Column users.nickname (VARCHAR(40)) is in the database but not in the models" \
        in page


@pytest.mark.parametrize("url", ["/?drift=later", "/drift?fresh=yes"])
def test_bad_panel_arguments_are_a_400(sample_ini, db_url, tmp_path, url):
    migrate(sample_ini, db_url, "heads")
    response = client_for(sample_ini, db_url, tmp_path / "instance").get(url)
    assert response.status_code == 400
    assert "must be" in response.get_data(as_text=True)


def test_each_named_target_has_its_own_drift(sample_ini, tmp_path):
    dev, staging = tmp_path / "dev.db", tmp_path / "staging.db"
    migrate(sample_ini, f"sqlite:///{dev}", USERS)
    migrate(sample_ini, f"sqlite:///{staging}", "heads")
    targets = tmp_path / "targets.toml"
    targets.write_text(f'default = "dev"\n\n'
                       f'[targets.dev]\nalembic_ini = "{sample_ini}"\n'
                       f'database_url = "sqlite:///{dev}"\n\n'
                       f'[targets.staging]\nalembic_ini = "{sample_ini}"\n'
                       f'database_url = "sqlite:///{staging}"\n')
    client = client_for(sample_ini, None, tmp_path / "instance",
                        DASHBOARD_TARGETS_FILE=str(targets))

    assert client.get("/api/targets/staging/drift").get_json()["state"] == "in_sync"
    assert client.get("/api/targets/dev/drift").get_json()["state"] == "drift"
    assert client.get("/api/drift").get_json()["state"] == "drift"  # the default: dev
    assert client.get("/api/targets/nope/drift").status_code == 404
    page = client.get("/targets/staging/").get_data(as_text=True)  # its answer, kept
    assert 'data-state="in_sync"' in page and 'hx-get="/targets/staging/drift?fresh=1"' in page


# ---------------------------------------------------------------- real projects


def test_flask_migrate_in_sync_then_drift_after_a_model_change(case):
    """``flask db migrate`` wrote the revisions from the models: at head they agree.
    A column added to a model is then named, with its table."""
    case.upgrade("heads")
    client = case.client()
    assert drift_of(client)["state"] == "in_sync"

    app_py = case.project.root / "app.py"
    app_py.write_text(app_py.read_text().replace(
        "    name = db.Column(db.String(50), nullable=False)\n",
        "    name = db.Column(db.String(50), nullable=False)\n"
        "    nickname = db.Column(db.String(40))\n", 1))

    body = drift_of(client)
    assert body["state"] == "drift", body
    [difference] = body["differences"]
    assert difference["kind"] == "add_column"
    assert (difference["table"], difference["column"]) == ("customers", "nickname")
    assert difference["sentence"] == ("Column customers.nickname (VARCHAR(40)) is in the "
                                      "models but not in the database."), difference


test_flask_migrate_in_sync_then_drift_after_a_model_change.kinds = ("flask",)


def test_an_env_py_without_target_metadata_is_unavailable_saying_so(case):
    """``alembic init -t generic`` and ``-t async`` leave ``target_metadata = None``
    (the async one reached through its own event loop and driver)."""
    case.upgrade("heads")
    before = real.tables_of(case.url)

    body = drift_of(case.client())

    assert body["state"] == "unavailable", body
    assert "no target_metadata" in body["reason"], body
    assert body["differences"] == []
    assert real.tables_of(case.url) == before


test_an_env_py_without_target_metadata_is_unavailable_saying_so.kinds = ("env_url", "async")


MULTIDB_MODELS = '''\
import sqlalchemy as sa

metadata = sa.MetaData()
for name in ("customers", "orders", "invoices"):
    sa.Table(name, metadata, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("name", sa.String(50)))
'''


def test_multidb_each_database_is_compared_with_its_own_metadata(case):
    case.upgrade("heads")
    client = case.client()
    body = drift_of(client)
    # The template's target_metadata = {}: neither database has models.
    assert body["state"] == "unavailable", body
    assert [d["state"] for d in body["databases"]] == ["unavailable", "unavailable"]
    for url in case.urls:
        assert url.rsplit("/", 1)[1] in body["reason"], body

    (case.project.root / "models.py").write_text(MULTIDB_MODELS)
    env_py = case.project.env_py
    env_py.write_text(env_py.read_text().replace(
        "target_metadata = {}\n",
        "import models\n"
        "target_metadata = {'engine1': models.metadata, 'engine2': models.metadata}\n", 1))
    body = drift_of(client)
    assert body["state"] == "in_sync", body
    assert [d["state"] for d in body["databases"]] == ["in_sync", "in_sync"]

    _execute(case.urls[1], "ALTER TABLE invoices ADD COLUMN extra INTEGER")
    body = drift_of(client)
    assert body["state"] == "drift", body
    assert [d["state"] for d in body["databases"]] == ["in_sync", "drift"]
    [difference] = body["differences"]
    assert (difference["table"], difference["column"]) == ("invoices", "extra")
    assert difference["database"].endswith("/" + case.urls[1].rsplit("/", 1)[1])


test_multidb_each_database_is_compared_with_its_own_metadata.kinds = ("multidb",)


def test_multidb_a_missing_second_sqlite_file_is_not_created(made, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("DASHBOARD_"):
            monkeypatch.delenv(name)
    project = made("multidb").copy(tmp_path / "project")
    first, second = tmp_path / "engine1.db", tmp_path / "engine2.db"
    project.point_at(engine1=f"sqlite:///{first}", engine2=f"sqlite:///{second}")
    project.upgrade("heads")
    second.unlink()
    before = digest(first)

    body = drift_of(client_for(project.dashboard_path, None, tmp_path / "instance"))

    assert [d["state"] for d in body["databases"]] == ["unavailable", "unavailable"], body
    assert f"The SQLite database file {second} does not exist" in \
        body["databases"][1]["reason"], body
    assert not second.exists()
    assert digest(first) == before


def _execute(url: str, statement: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as connection:
            connection.execute(statement)
        return
    server = require(SERVERS["postgresql"])
    server.execute(statement, database=url.rsplit("/", 1)[1])
