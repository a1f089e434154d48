"""Projects whose env.py runs as its authors wrote it: made by the real tools
(`alembic init`), pointed at by the dashboard, run as their own `alembic` would.

The worst case first: an env.py that reads its own ``DATABASE_URL``, naming
another database than the dashboard's. The dashboard backs up one database;
it must never migrate another.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.pool import NullPool

from tests.conftest import client_for
from tests.servers import SERVERS, require, scratch_database
from tests.test_runs import run_to_end, snapshot, wait_for_run

BIN = Path(sys.executable).parent
WIDGETS = "aaa000000001"
GADGETS = "bbb000000002"
PASSWORD = "s3cret-Pw"  # PostgreSQL here trusts local logins: any password is accepted


def status_json(client, timeout: float = 30.0) -> dict:
    """/api/status once env.py has been asked which databases it migrates: given the
    database, the first request after a start does not wait for that answer."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/api/status").get_json()
        if body.get("env_py") is not None or "state" not in body or \
                time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def alembic_init(root: Path, template: str = "generic") -> Path:
    """A project made by the real ``alembic init -t TEMPLATE``; its alembic.ini."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "alembic"), "init", "-t", template, "migrations"], cwd=root,
                   check=True, capture_output=True)
    return root / "alembic.ini"


def set_ini_url(ini: Path, url: str) -> None:
    text = ini.read_text()
    ini.write_text(text.replace("sqlalchemy.url = driver://user:pass@localhost/dbname",
                                f"sqlalchemy.url = {url}"))


def env_reads_database_url(ini: Path) -> None:
    """The most common edit to a generated env.py: the URL from the environment."""
    env_py = ini.parent / "migrations" / "env.py"
    text = env_py.read_text()
    text = text.replace("config = context.config\n", "config = context.config\n"
                        "import os\n"
                        'config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n',
                        1)
    env_py.write_text(text)


def write_revision(ini: Path, revision: str, parent: str | None, table: str,
                   fail: bool = False) -> None:
    versions = (ini.parent if ini.parent.name == "migrations" else
                ini.parent / "migrations") / "versions"
    body = f'    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))\n'
    if fail:
        body += '    raise RuntimeError("this revision fails on purpose")\n'
    (versions / f"{revision}_{table}.py").write_text(
        f'"""add {table}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "{revision}"\ndown_revision = {parent!r}\n'
        'branch_labels = None\ndepends_on = None\n\n\n'
        f'def upgrade():\n{body}\n\n'
        f'def downgrade():\n    op.drop_table("{table}")\n')


def sqlite_notes(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('kept')")


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the wrong database


@pytest.fixture
def reads_database_url(tmp_path) -> Path:
    ini = alembic_init(tmp_path / "project")
    env_reads_database_url(ini)
    write_revision(ini, WIDGETS, None, "widgets")
    return ini


def test_env_py_naming_another_sqlite_file_is_refused_before_any_step(
        reads_database_url, tmp_path, monkeypatch):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    sqlite_notes(a)
    sqlite_notes(b)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{b}")
    client = client_for(reads_database_url, f"sqlite:///{a}", tmp_path / "inst")

    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "failed", run
    assert f"sqlite:///{b}" in run["error"] and f"sqlite:///{a}" in run["error"], run["error"]
    assert "refused before any step" in run["error"], run["error"]
    assert all(step["started_at"] is None for step in run["steps"]), run["steps"]
    assert tables(f"sqlite:///{b}") == {"notes"}  # the database nobody backed up: untouched
    assert tables(f"sqlite:///{a}") == {"notes"}


def test_env_py_naming_the_dashboards_sqlite_file_runs(reads_database_url, tmp_path,
                                                       monkeypatch):
    a = tmp_path / "a.db"
    sqlite_notes(a)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{a}")
    client = client_for(reads_database_url, f"sqlite:///{a}", tmp_path / "inst")

    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "succeeded", run
    assert run["backup_id"]
    assert run["to"] == [WIDGETS]
    assert tables(f"sqlite:///{a}") == {"notes", "widgets", "alembic_version"}


@pytest.fixture
def postgres():
    return require(SERVERS["postgresql"])


def test_env_py_naming_another_postgres_database_is_refused_before_any_step(
        reads_database_url, tmp_path, monkeypatch, postgres):
    with scratch_database(postgres) as a, scratch_database(postgres) as b:
        postgres.execute("CREATE TABLE notes (id int PRIMARY KEY)", database=a)
        postgres.execute("CREATE TABLE notes (id int PRIMARY KEY)", database=b)
        url_b = postgres.url(b, password=PASSWORD)
        monkeypatch.setenv("DATABASE_URL", url_b)
        client = client_for(reads_database_url, postgres.url(a), tmp_path / "inst")

        run = run_to_end(client, "upgrade", "heads")

        assert run["status"] == "failed", run
        assert f"/{a}" in run["error"] and f"/{b}" in run["error"], run["error"]
        assert "refused before any step" in run["error"], run["error"]
        assert tables(postgres.url(b)) == {"notes"}
        assert tables(postgres.url(a)) == {"notes"}
        everything = json.dumps(client.get("/api/runs").get_json()) + \
            json.dumps(client.get("/api/audit").get_json())
        assert PASSWORD not in everything


def test_env_py_naming_the_dashboards_postgres_database_runs(
        reads_database_url, tmp_path, monkeypatch, postgres):
    with scratch_database(postgres) as a:
        monkeypatch.setenv("DATABASE_URL", postgres.url(a))
        client = client_for(reads_database_url, postgres.url(a), tmp_path / "inst")

        run = run_to_end(client, "upgrade", "heads")

        assert run["status"] == "succeeded", run
        assert run["backup_id"]
        assert tables(postgres.url(a)) == {"widgets", "alembic_version"}


# ---------------------------------------------------------------- asking env.py


def test_without_a_dashboard_url_the_database_is_the_one_env_py_names(
        reads_database_url, tmp_path, monkeypatch):
    b = tmp_path / "b.db"
    sqlite_notes(b)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{b}")
    client = client_for(reads_database_url, None, tmp_path / "inst")

    status = status_json(client)
    assert status["database"]["url"] == f"sqlite:///{b}"
    assert status["state"] == "uninitialized", status
    assert status["env_py"]["databases"] == [
        {"url": f"sqlite:///{b}", "dialect": "sqlite", "version_table": "alembic_version"}]
    assert status["env_py"]["elsewhere"] == []
    page = client.get("/").get_data(as_text=True)
    assert f"sqlite:///{b}" in page and "env.py migrates" in page

    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "succeeded", run
    assert run["backup_id"]
    assert tables(f"sqlite:///{b}") == {"notes", "widgets", "alembic_version"}


def test_asking_env_py_never_creates_a_missing_sqlite_file(reads_database_url, tmp_path,
                                                          monkeypatch):
    missing = tmp_path / "not-yet.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    client = client_for(reads_database_url, None, tmp_path / "inst")

    status = status_json(client)
    assert status["database"]["url"] == f"sqlite:///{missing}"
    assert status["creatable"] is True, status
    assert client.get("/").status_code == 200
    assert not missing.exists()
    assert list(tmp_path.glob("not-yet.db*")) == []

    run = run_to_end(client, "upgrade", "heads")  # the run creates it
    assert run["status"] == "succeeded", run
    assert tables(f"sqlite:///{missing}") == {"widgets", "alembic_version"}
    status = status_json(client)
    assert status["state"] == "up_to_date" and status["env_py"]["elsewhere"] == [], status


def test_a_dashboard_url_other_than_env_py_s_is_shown_before_any_run(
        reads_database_url, tmp_path, monkeypatch):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    sqlite_notes(a)
    sqlite_notes(b)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{b}")
    client = client_for(reads_database_url, f"sqlite:///{a}", tmp_path / "inst")

    status = status_json(client)
    assert status["database"]["url"] == f"sqlite:///{a}"
    assert status["env_py"]["elsewhere"] == [f"sqlite:///{b}"]
    page = client.get("/").get_data(as_text=True)
    assert 'id="env-py-elsewhere"' in page and "refused before its first step" in page


@pytest.mark.parametrize("change", ["nothing", "environment", "env.py", "ini"])
def test_a_restart_shows_env_py_s_last_answer_at_once_unless_the_question_changed(
        reads_database_url, tmp_path, monkeypatch, change):
    """Given the database, pages only show env.py's answer: a restart shows the one
    a previous start got for the same ini, env.py and environment without asking
    again (kept masked, the environment only as a salted hash)."""
    a, b, c = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "c.db"
    for path in (a, b, c):
        sqlite_notes(path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{b}")
    monkeypatch.setenv("MD_TEST_SECRET_TOKEN", "hush-hush-6d1f")
    instance = tmp_path / "inst"
    assert status_json(client_for(reads_database_url, f"sqlite:///{a}", instance)
                       )["env_py"]["elsewhere"] == [f"sqlite:///{b}"]
    kept = (instance / "env-py-answer.json").read_text(encoding="utf-8")
    assert "hush-hush-6d1f" not in kept and str(reads_database_url) not in kept

    elsewhere = f"sqlite:///{b}"
    if change == "environment":
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{c}")
        elsewhere = f"sqlite:///{c}"
    elif change == "env.py":
        env_py = reads_database_url.parent / "migrations" / "env.py"
        env_py.write_text(env_py.read_text().replace(
            'os.environ["DATABASE_URL"]', f'"sqlite:///{c}"'))
        elsewhere = f"sqlite:///{c}"
    elif change == "ini":
        stat = reads_database_url.stat()
        os.utime(reads_database_url, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    client = client_for(reads_database_url, f"sqlite:///{a}", instance)
    first = client.get("/api/status").get_json()
    if change == "nothing":
        assert first["env_py"]["elsewhere"] == [elsewhere]
    else:
        assert first["env_py"] is None  # asked anew, in the background
        assert status_json(client)["env_py"]["elsewhere"] == [elsewhere]


def test_env_py_asked_in_the_background_runs_at_a_low_cpu_priority(
        reads_database_url, tmp_path, monkeypatch):
    """Given the database, nobody waits for env.py's answer: its process must not
    take the CPU from the requests being served. Asked for a run, it runs as usual."""
    import shutil

    if not shutil.which("nice"):
        pytest.skip("no nice(1) on this system: the question runs at the usual priority")
    niceness = tmp_path / "niceness"
    env_py = reads_database_url.parent / "migrations" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        "import os\n", f"import os\nopen({str(niceness)!r}, 'a').write(f'{{os.nice(0)}}\\n')\n",
        1))
    a = tmp_path / "a.db"
    sqlite_notes(a)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{a}")
    base = os.nice(0)
    status_json(client_for(reads_database_url, f"sqlite:///{a}", tmp_path / "given"))
    assert niceness.read_text().split() == [str(min(base + 10, 19))]

    niceness.unlink()
    status_json(client_for(reads_database_url, "", tmp_path / "named"))  # the project waits
    assert niceness.read_text().split()[0] == str(base)


def test_env_py_that_cannot_run_says_why_with_its_own_line(reads_database_url, tmp_path,
                                                          monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    ini = reads_database_url
    ini.write_text(ini.read_text().replace(
        "sqlalchemy.url = driver://user:pass@localhost/dbname", "sqlalchemy.url ="))
    client = client_for(ini, None, tmp_path / "inst")

    response = client.get("/api/status")
    assert response.status_code == 503
    body = response.get_data(as_text=True)
    assert "env.py failed before the first step" in body
    assert "KeyError" in body and "DATABASE_URL" in body
    assert "migrations/env.py" in body and "line " in body  # the user's own file and line


# ---------------------------------------------------------------- a whole life, any project


def lifecycle(client, url: str, extra_tables: frozenset[str] = frozenset(),
              first: str = WIDGETS, table: str = "widgets") -> None:
    """What a user does with a project: status, SQL, upgrade, a failing upgrade put
    back, downgrade; each checked in the database itself. The history: ``first``
    creates ``table``, then GADGETS fails half-way."""
    status = status_json(client)
    assert status["heads"] == [GADGETS], status
    assert status["state"] in ("uninitialized", "unreachable", "pending"), status
    assert status["current"] == [], status
    detail = client.get(f"/api/revisions/{first}").get_json()
    assert f"CREATE TABLE {table}" in (detail["upgrade_sql"] or ""), detail
    assert f"DROP TABLE {table}" in (detail["downgrade_sql"] or ""), detail

    run = run_to_end(client, "upgrade", first)
    assert run["status"] == "succeeded", run
    assert tables(url) == {table, "alembic_version"} | extra_tables
    assert status_json(client)["current"] == [first]

    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "restored", run
    assert run["failed_step"] == GADGETS
    assert "this revision fails on purpose" in run["error"]
    assert f"{GADGETS}_gadgets.py, line 13)" in run["error"], run["error"]  # the user's line
    assert tables(url) == {table, "alembic_version"} | extra_tables
    assert status_json(client)["current"] == [first]

    run = run_to_end(client, "downgrade", "base")
    assert run["status"] == "succeeded", run
    assert tables(url) == {"alembic_version"} | extra_tables
    assert status_json(client)["current"] == []


def two_revisions(ini: Path) -> None:
    """widgets, then gadgets, which fails half-way."""
    write_revision(ini, WIDGETS, None, "widgets")
    write_revision(ini, GADGETS, WIDGETS, "gadgets", fail=True)


# ---------------------------------------------------------------- async env.py


def test_an_async_project_on_aiosqlite_works_unmodified(tmp_path):
    ini = alembic_init(tmp_path / "project", "async")
    db = tmp_path / "app.db"
    set_ini_url(ini, f"sqlite+aiosqlite:///{db}")
    two_revisions(ini)
    client = client_for(ini, None, tmp_path / "inst")
    assert status_json(client)["database"]["url"] == \
        f"sqlite+aiosqlite:///{db}"
    assert not db.exists()
    sqlite_notes(db)
    lifecycle(client, f"sqlite:///{db}", frozenset({"notes"}))


def test_an_async_project_on_asyncpg_works_unmodified(tmp_path, postgres):
    ini = alembic_init(tmp_path / "project", "async")
    two_revisions(ini)
    with scratch_database(postgres) as name:
        url = postgres.url(name).replace("+psycopg", "+asyncpg")
        set_ini_url(ini, url)
        client = client_for(ini, None, tmp_path / "inst")
        status = status_json(client)
        assert status["state"] == "uninitialized", status  # read through a sync driver
        assert status["database"]["url"] == url
        lifecycle(client, postgres.url(name))


# ---------------------------------------------------------------- Flask-Migrate

FLASK_APP = """\
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()


class Widget(db.Model):
    id = db.Column(db.Integer, primary_key=True)


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["APP_DATABASE_URL"]
    db.init_app(app)
    migrate.init_app(app, db)
    return app
"""


def flask_db_project(root: Path, url: str) -> tuple[Path, str]:
    """`flask db init` and `flask db migrate` on a small Flask-SQLAlchemy app; its
    migrations/alembic.ini and the revision `flask db migrate` wrote."""
    root.mkdir(parents=True)
    (root / "app.py").write_text(FLASK_APP)
    env = {**os.environ, "APP_DATABASE_URL": url}
    for command in (["db", "init"], ["db", "migrate", "-m", "widgets"]):
        subprocess.run([str(BIN / "flask"), "--app", "app:create_app", *command], cwd=root,
                       env=env, check=True, capture_output=True)
    ini = root / "migrations" / "alembic.ini"
    (first,) = [p.name.split("_")[0] for p in (root / "migrations" / "versions").glob("*.py")]
    write_revision(ini, GADGETS, first, "gadgets", fail=True)
    return ini, first


def test_a_flask_migrate_project_works_with_no_edit_on_sqlite(tmp_path, monkeypatch):
    db = tmp_path / "app.db"
    ini, first = flask_db_project(tmp_path / "project", f"sqlite:///{db}")
    db.unlink(missing_ok=True)  # `flask db migrate` made an empty one
    monkeypatch.setenv("APP_DATABASE_URL", f"sqlite:///{db}")
    client = client_for(ini, None, tmp_path / "inst", DASHBOARD_FLASK_APP="app:create_app")

    status = status_json(client)
    assert status["database"]["url"] == f"sqlite:///{db}", status
    assert status["env_py"]["databases"][0]["url"] == f"sqlite:///{db}"
    assert not db.exists()
    page = client.get("/history")
    assert page.status_code == 200 and first in page.get_data(as_text=True)
    sqlite_notes(db)
    lifecycle(client, f"sqlite:///{db}", frozenset({"notes"}), first=first, table="widget")


def test_a_flask_migrate_project_works_with_no_edit_on_postgres(tmp_path, monkeypatch,
                                                                 postgres):
    with scratch_database(postgres) as name:
        url = postgres.url(name, password=PASSWORD)
        ini, first = flask_db_project(tmp_path / "project", url)
        monkeypatch.setenv("APP_DATABASE_URL", url)
        client = client_for(ini, None, tmp_path / "inst", DASHBOARD_FLASK_APP="app:create_app")
        status = status_json(client)
        assert status["database"]["url"] == \
            f"postgresql+psycopg://postgres:***@127.0.0.1:5432/{name}", status
        lifecycle(client, postgres.url(name), first=first, table="widget")
        page = client.get("/").get_data(as_text=True)
        assert PASSWORD not in page and PASSWORD not in json.dumps(
            client.get("/api/runs").get_json())


# ---------------------------------------------------------------- multidb


def multidb_project(root: Path, one: Path, two: Path) -> Path:
    """`alembic init -t multidb`, its two engines on two SQLite files, one revision
    that creates a table in each."""
    ini = alembic_init(root, "multidb")
    text = ini.read_text()
    text = text.replace("sqlalchemy.url = driver://user:pass@localhost/dbname2",
                        f"sqlalchemy.url = sqlite:///{two}")
    text = text.replace("sqlalchemy.url = driver://user:pass@localhost/dbname",
                        f"sqlalchemy.url = sqlite:///{one}")
    ini.write_text(text)
    (root / "migrations" / "versions" / f"{WIDGETS}_both.py").write_text(
        '"""a table in each database"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f'revision = "{WIDGETS}"\ndown_revision = None\nbranch_labels = None\n'
        'depends_on = None\n\n\n'
        'def upgrade(engine_name):\n    globals()[f"upgrade_{engine_name}"]()\n\n\n'
        'def downgrade(engine_name):\n    globals()[f"downgrade_{engine_name}"]()\n\n\n'
        'def upgrade_engine1():\n'
        '    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        'def downgrade_engine1():\n    op.drop_table("widgets")\n\n\n'
        'def upgrade_engine2():\n'
        '    op.create_table("gizmos", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        'def downgrade_engine2():\n    op.drop_table("gizmos")\n')
    return ini


def files_in(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if "__pycache__" not in p.parts}


def test_multidb_a_revision_page_writes_nothing_into_the_project(tmp_path):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    ini = multidb_project(tmp_path / "project", one, two)
    client = client_for(ini, None, tmp_path / "inst")
    before = files_in(ini.parent)

    detail = client.get(f"/api/revisions/{WIDGETS}").get_json()
    page = client.get(f"/revisions/{WIDGETS}")

    assert page.status_code == 200
    assert "CREATE TABLE widgets" in detail["upgrade_sql"], detail
    assert "CREATE TABLE gizmos" in detail["upgrade_sql"], detail
    assert files_in(ini.parent) == before  # no engine1.sql, no engine2.sql
    assert not one.exists() and not two.exists()


def test_multidb_a_run_guards_both_databases_as_one_run(tmp_path):
    """Both databases env.py migrates are locked and backed up (each verified) before
    any step; the run goes through on both; the run and the audit name both (masked)."""
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    sqlite_notes(one)
    sqlite_notes(two)
    ini = multidb_project(tmp_path / "project", one, two)
    client = client_for(ini, None, tmp_path / "inst")

    status = status_json(client)
    assert [d["url"] for d in status["env_py"]["databases"]] == [f"sqlite:///{one}",
                                                                 f"sqlite:///{two}"]
    assert status["env_py"]["guarded"] == [f"sqlite:///{one}", f"sqlite:///{two}"]
    assert status["env_py"]["elsewhere"] == []
    overview = client.get("/").get_data(as_text=True)
    assert "env.py migrates 2 databases" in overview and "refused" not in overview
    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "succeeded", run
    assert tables(f"sqlite:///{one}") == {"notes", "widgets", "alembic_version"}
    assert tables(f"sqlite:///{two}") == {"notes", "gizmos", "alembic_version"}
    assert [b["database"] for b in run["backups"]] == [f"sqlite:///{one}", f"sqlite:///{two}"]
    assert run["backup_id"] == run["backups"][0]["backup_id"]
    listed = {b["id"]: b for b in client.get("/api/backups").get_json()["backups"]}
    for entry in run["backups"]:
        backup = listed[entry["backup_id"]]
        assert backup["database"] == entry["database"] and backup["verified"], backup
        assert backup["revisions"] == []
    page = client.get(f"/runs/{run['id']}").get_data(as_text=True)
    for entry in run["backups"]:
        assert entry["backup_id"] in page and entry["database"] in page
    entry = next(e for e in client.get("/api/audit").get_json()["entries"]
                 if e["run_id"] == run["id"])
    assert entry["event"] == "action_succeeded"
    assert f"sqlite:///{one}" in entry["database"] and f"sqlite:///{two}" in entry["database"]


def test_multidb_a_backup_of_the_second_database_is_restored_into_that_database(tmp_path):
    """Restoring engine2's backup puts back engine2, never engine1."""
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    sqlite_notes(one)
    sqlite_notes(two)
    ini = multidb_project(tmp_path / "project", one, two)
    client = client_for(ini, None, tmp_path / "inst")
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "succeeded", run
    first = snapshot(one)
    second = run["backups"][1]
    assert second["database"] == f"sqlite:///{two}"

    response = client.post(f"/api/backups/{second['backup_id']}/restore", json={})
    assert response.status_code == 202, response.get_json()
    restore = wait_for_run(client, response.get_json()["id"])

    assert restore["status"] == "succeeded", restore
    assert tables(f"sqlite:///{two}") == {"notes"}
    assert snapshot(one) == first


def test_multidb_the_worker_check_accepts_exactly_the_locked_set(tmp_path):
    """What env.py opens in the run must be the databases locked and backed up: one
    more, or one fewer, refuses the run before any step, naming them."""
    from dataclasses import replace

    from dashboard.services.alembic_process import EnvDatabase
    from dashboard.services.project import load_project
    from dashboard.services.supervision import wrong_databases

    one, two, three = (tmp_path / f"{n}.db" for n in ("one", "two", "three"))
    for path in (one, two, three):
        sqlite_notes(path)
    ini = multidb_project(tmp_path / "project", one, two)
    project = load_project(str(ini), f"sqlite:///{one}")
    guarded = (project, replace(project, database_url=f"sqlite:///{two}"))

    def opened(*paths):
        return [EnvDatabase(f"sqlite:///{p}", f"sqlite:///{p}", "sqlite", "alembic_version")
                for p in paths]

    assert wrong_databases(project, opened(one, two), guarded) is None
    assert wrong_databases(project, opened(two, one), guarded) is None
    more = wrong_databases(project, opened(one, two, three), guarded)
    assert f"sqlite:///{three}" in more and "refused before any step" in more
    fewer = wrong_databases(project, opened(one), guarded)
    assert f"no longer migrates sqlite:///{two}" in fewer


def test_multidb_a_lock_held_on_the_second_database_refuses_the_run(tmp_path):
    """The lock of every database is taken before anything; one that cannot be had
    refuses the run (409) and the ones taken are let go."""
    from dashboard.services import locking

    one, two = tmp_path / "one.db", tmp_path / "two.db"
    sqlite_notes(one)
    sqlite_notes(two)
    ini = multidb_project(tmp_path / "project", one, two)
    client = client_for(ini, None, tmp_path / "inst")
    assert client.get("/api/status").status_code == 200
    from dashboard.engines import engine_for

    url = f"sqlite:///{two}"
    engine = engine_for(url)
    held = locking.acquire(str(tmp_path / "other-inst"), engine.identity(url),
                           locking.LockHolder(os.getpid(), "upgrade elsewhere", "x", "someone",
                                              0.0), beside=engine.lock_file(url))
    try:
        response = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
        assert response.status_code == 409, response.get_json()
        assert "someone" in response.get_json()["error"]["message"]
    finally:
        held.release()
    assert tables(f"sqlite:///{one}") == {"notes"} and tables(url) == {"notes"}
    # The first database's lock was let go: the run goes through now.
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "succeeded", run


def _multidb_failing_revision(ini: Path, engine2_body: str) -> None:
    (ini.parent / "migrations" / "versions" / "bbb000000002_doomed.py").write_text(
        '"""doomed"""\nimport glob\nimport os\n\nimport sqlalchemy as sa\n'
        'from alembic import op\n\n'
        f'revision = "bbb000000002"\ndown_revision = "{WIDGETS}"\nbranch_labels = None\n'
        'depends_on = None\n\n\n'
        'def upgrade(engine_name):\n    globals()[f"upgrade_{engine_name}"]()\n\n\n'
        'def downgrade(engine_name):\n    pass\n\n\n'
        'def upgrade_engine1():\n'
        '    op.create_table("doomed1", sa.Column("id", sa.Integer, primary_key=True))\n\n\n'
        'def upgrade_engine2():\n'
        '    op.create_table("doomed2", sa.Column("id", sa.Integer, primary_key=True))\n'
        + engine2_body +
        '    raise RuntimeError("engine2 is doomed")\n')


def test_multidb_a_failure_in_the_second_database_puts_both_back(tmp_path):
    """engine1's step ran (in the held transaction), engine2's DDL was written (SQLite
    outside a transaction) and then failed: each is back as it was, checked."""
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    sqlite_notes(one)
    sqlite_notes(two)
    ini = multidb_project(tmp_path / "project", one, two)
    client = client_for(ini, None, tmp_path / "inst")
    assert run_to_end(client, "upgrade", WIDGETS)["status"] == "succeeded"
    _multidb_failing_revision(ini, "")
    before = {p: snapshot(p) for p in (one, two)}

    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "restored", run
    assert {p: snapshot(p) for p in (one, two)} == before
    assert "engine2 is doomed" in run["error"]
    assert f"sqlite:///{one}" in run["error"] and f"sqlite:///{two}" in run["error"]
    assert "restored from its backup" in run["error"], run["error"]


def test_multidb_a_run_whose_runner_dies_puts_every_database_back_at_restart(tmp_path):
    """engine2's DDL is written (outside a transaction) when the runner and worker are
    killed: at the next start engine1 is found rolled back by SQLite and engine2 is
    restored from its own backup, never "nothing of the run remains"."""
    import time

    from tests.test_guard_recovery import kill_runner_of

    one, two = tmp_path / "one.db", tmp_path / "two.db"
    sqlite_notes(one)
    sqlite_notes(two)
    ini = multidb_project(tmp_path / "project", one, two)
    inst = tmp_path / "inst"
    client = client_for(ini, None, inst)
    assert run_to_end(client, "upgrade", WIDGETS)["status"] == "succeeded"
    _multidb_failing_revision(ini, "    import time\n    if not op.get_context().as_sql:\n"
                                   "        time.sleep(60)\n")
    before = {p: snapshot(p) for p in (one, two)}
    started = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert started.status_code == 202, started.get_json()
    run_id = started.get_json()["id"]
    deadline = time.monotonic() + 30
    while "doomed2" not in tables(f"sqlite:///{two}"):
        assert time.monotonic() < deadline, client.get(f"/api/runs/{run_id}").get_json()
        time.sleep(0.1)

    kill_runner_of(client.get(f"/api/runs/{run_id}").get_json())
    settled = wait_for_run(client_for(ini, None, inst), run_id)

    assert settled["status"] == "restored", settled
    assert {p: snapshot(p) for p in (one, two)} == before
    assert f"sqlite:///{two}: restored from its backup" in settled["error"], settled["error"]


def test_multidb_a_restore_of_the_second_database_that_fails_is_never_called_restored(
        tmp_path):
    """engine2's backup is damaged during the run: its restore fails, so the run is
    failed, naming which database is in which state, and the backup is not lost."""
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    sqlite_notes(one)
    sqlite_notes(two)
    ini = multidb_project(tmp_path / "project", one, two)
    inst = tmp_path / "inst"
    client = client_for(ini, None, inst)
    assert run_to_end(client, "upgrade", WIDGETS)["status"] == "succeeded"
    _multidb_failing_revision(ini, (
        '    if op.get_context().as_sql:  # only written out (risk findings): no damage\n'
        '        return\n'
        f'    for path in glob.glob(os.path.join({str(inst)!r}, "**", "two__*"),\n'
        '                          recursive=True):\n'
        '        with open(path, "ab") as handle:\n'
        '            handle.write(b"damage")\n'))
    first = snapshot(one)

    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "failed", run
    assert snapshot(one) == first  # the held transaction was rolled back
    assert "doomed2" in tables(f"sqlite:///{two}")  # left as the failure left it
    error = run["error"]
    assert f"sqlite:///{two}" in error and "ALSO failed" in error, error
    assert "restored" not in run["status"]
    second = next(b for b in run["backups"] if b["database"] == f"sqlite:///{two}")
    assert second["backup_id"] in error
    assert client.get("/api/backups").get_json()["backups"]


# ---------------------------------------------------------------- messages


def test_env_py_failing_before_the_first_step_says_so_with_its_own_line(
        reads_database_url, tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    a = tmp_path / "a.db"
    sqlite_notes(a)
    client = client_for(reads_database_url, f"sqlite:///{a}", tmp_path / "inst")

    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "failed", run
    assert "env.py failed before the first step" in run["error"], run["error"]
    assert "KeyError: 'DATABASE_URL'" in run["error"]
    assert "migrations/env.py, line " in run["error"]  # the user's own file and line
    assert "Step " not in run["error"]
    assert run["backup_id"] is None
    assert tables(f"sqlite:///{a}") == {"notes"}
    logs = "\n".join(log["message"] for log in run["logs"])
    assert "Traceback" in logs and 'os.environ["DATABASE_URL"]' in logs


def test_a_revision_whose_sql_cannot_be_made_names_its_own_line(reads_database_url, tmp_path,
                                                                monkeypatch):
    a = tmp_path / "a.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{a}")
    write_revision(reads_database_url, GADGETS, WIDGETS, "gadgets", fail=True)
    client = client_for(reads_database_url, None, tmp_path / "inst")

    detail = client.get(f"/api/revisions/{GADGETS}").get_json()

    assert "this revision fails on purpose" in detail["upgrade_sql_error"], detail
    assert f"{GADGETS}_gadgets.py, line 13)" in detail["upgrade_sql_error"]


def test_the_overview_says_why_env_py_could_not_be_asked(reads_database_url, tmp_path,
                                                        monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    a = tmp_path / "a.db"
    sqlite_notes(a)
    client = client_for(reads_database_url, f"sqlite:///{a}", tmp_path / "inst")

    status = status_json(client)  # once asked (in the background: the URL was given)
    page = client.get("/")

    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "It could not be asked" in text and "KeyError" in text, text
    assert "env.py failed before the first step" in status["env_py"]["error"]
    assert "migrations/env.py" in status["env_py"]["traceback"]
