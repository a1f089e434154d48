"""Issue 8, done when: real projects made by the real tools work as they run themselves.

Each kind our users have (Flask-Migrate's ``flask db init`` + ``flask db
migrate``; ``alembic init -t async``, ``-t pyproject``, ``-t multidb``; a
generic env.py that reads ``DATABASE_URL``) on SQLite and on PostgreSQL:
the status and heads are what the project's own ``alembic``/``flask db``
print, a revision's SQL is shown, upgrade and downgrade leave the database
where its own tool says they should, a failing revision is restored, and a
database other than the one backed up is refused with no step run.

The dashboard is configured as a user of each kind would: pointed at the
project, with the database named where the project names it (the Flask app,
env.py's DATABASE_URL, the ini), and no DASHBOARD_DATABASE_URL unless a test
says so.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import client_for
from tests.real_projects import (
    FAILING_MESSAGE,
    FAILING_TABLE,
    KINDS,
    RealProject,
    async_url,
    make,
    tables_of,
)
from tests.servers import SERVERS, require, scratch_database
from tests.test_runs import wait_for_run

BACKENDS = ("sqlite", "postgresql")
FINISHED = ("succeeded", "failed", "restored", "cancelled")


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """Each kind made once by its real tool, on first use; tests work on copies."""
    projects: dict[str, RealProject] = {}

    def get(kind: str) -> RealProject:
        if kind not in projects:
            projects[kind] = make(kind, tmp_path_factory.mktemp("made") / kind)
        return projects[kind]

    return get


@pytest.fixture
def new_database(request, tmp_path):
    """new_database(name): the URL of an empty database of this test's backend."""
    backend = request.node.callspec.params["backend"]
    with ExitStack() as stack:
        server = require(SERVERS["postgresql"]) if backend == "postgresql" else None

        def new(name: str) -> str:
            if server is None:
                return f"sqlite:///{tmp_path / (name + '.db')}"
            return server.url(stack.enter_context(scratch_database(server, "md_real")))

        yield new


@dataclass
class Case:
    """One project copy pointed at its database(s), and a dashboard on it."""

    project: RealProject
    urls: tuple[str, ...]  # every database the project migrates (two for multidb)
    instance: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def url(self) -> str:
        return self.urls[0]

    def tool_url(self) -> str | None:
        """DATABASE_URL for the project's own tool, where the project reads it."""
        return self.url if self.project.reads_database_url else None

    def heads(self) -> list[str]:
        return self.project.heads(self.tool_url())

    def current(self) -> list[str]:
        return self.project.current(self.tool_url())

    def upgrade(self, revision: str) -> None:
        self.project.upgrade(revision, self.tool_url())

    def client(self, **settings):
        if self.project.flask_app:
            settings.setdefault("DASHBOARD_FLASK_APP", self.project.flask_app)
        return client_for(self.project.dashboard_path, settings.pop("url", None),
                          self.instance, **settings)


@pytest.fixture
def case(made, new_database, kind, backend, tmp_path, monkeypatch) -> Case:
    project = made(kind).copy(tmp_path / "project")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name in list(os.environ):
        if name.startswith("DASHBOARD_"):
            monkeypatch.delenv(name)
    if kind == "multidb":
        urls = (new_database("engine1"), new_database("engine2"))
        project.point_at(engine1=urls[0], engine2=urls[1])
    else:
        url = new_database("app")
        urls = (async_url(url),) if kind == "async" else (url,)
        if project.reads_database_url:
            # The app (or env.py) reads it from the environment the dashboard runs in.
            monkeypatch.setenv("DATABASE_URL", urls[0])
        else:
            project.point_at(urls[0])
    return Case(project, urls, tmp_path / "instance", monkeypatch)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("kind", getattr(metafunc.function, "kinds", KINDS))
        metafunc.parametrize("backend", BACKENDS)


def run_to_end(client, action: str, destination: str) -> dict:
    response = client.post("/api/runs", json={"action": action, "target": destination})
    assert response.status_code == 202, response.get_json()
    return wait_for_run(client, response.get_json()["id"])


def project_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


# ---------------------------------------------------------------- status and heads


def test_status_and_heads_are_what_the_projects_own_tool_prints(case):
    first = case.project.revisions[0]
    case.upgrade(first)
    client = case.client()
    status = client.get("/api/status")
    assert status.status_code == 200, status.get_json()
    body = status.get_json()
    assert body["heads"] == case.heads() == [case.project.revisions[-1]]
    assert body["current"] == case.current() == [first]
    assert body["state"] == "pending", body
    assert [p["revision"] for p in body["pending"]] == list(case.project.revisions[1:])
    page = client.get("/")
    assert page.status_code == 200 and first in page.get_data(as_text=True)


def test_a_revisions_sql_is_shown_and_nothing_is_written_into_the_project(case):
    case.upgrade(case.project.revisions[0])
    before = project_files(case.project.root)
    client = case.client()
    second, table = case.project.revisions[1], case.project.tables[1]
    page = client.get(f"/revisions/{second}?sql=now")
    assert page.status_code == 200
    assert f"CREATE TABLE {table}" in page.get_data(as_text=True)
    api = client.get(f"/api/revisions/{second}").get_json()
    assert f"CREATE TABLE {table}" in (api["upgrade_sql"] or ""), api
    assert f"DROP TABLE {table}" in (api["downgrade_sql"] or ""), api
    assert project_files(case.project.root) == before


# ---------------------------------------------------------------- runs


def _backed_up_each_database(case, run: dict) -> None:
    """Each database the project migrates has its own verified backup in the run."""
    assert run["backup_id"], run
    if len(case.urls) == 1:
        assert run["backups"] == [], run  # one database: backup_id alone, as before
        return
    names = [url.rsplit("/", 1)[1] for url in case.urls]
    listed = [b["database"] for b in run["backups"]]
    assert len(listed) == len(case.urls), run
    for name, database in zip(names, listed, strict=True):
        assert database.endswith("/" + name), (database, name)
    assert run["backup_id"] == run["backups"][0]["backup_id"]


def test_upgrade_and_downgrade_leave_the_database_where_its_own_tool_says(case):
    first, *_, head = case.project.revisions
    case.upgrade(first)
    client = case.client()
    up = run_to_end(client, "upgrade", "heads")
    assert up["status"] == "succeeded", up
    _backed_up_each_database(case, up)
    assert case.current() == [head]
    for url in case.urls:
        assert set(case.project.tables) <= set(tables_of(url))
    # The run keeps what it changed in the schema: every new table, of each database.
    added = [line for line in up["schema_diff"] if line.startswith("added table ")]
    for table in case.project.tables[1:]:
        named = [line for line in added if f" {table} (" in line]
        assert len(named) == len(case.urls), (table, up["schema_diff"], up["schema_note"])
    assert client.get("/api/status").get_json()["state"] == "up_to_date"
    down = run_to_end(client, "downgrade", first)
    assert down["status"] == "succeeded", down
    assert case.current() == [first]
    for url in case.urls:
        tables = set(tables_of(url))
        assert case.project.tables[0] in tables
        assert not tables & set(case.project.tables[1:])


def test_a_failing_revision_ends_restored_with_the_tables_as_before(case):
    head = case.project.revisions[-1]
    case.upgrade(head)
    doomed = case.project.add_failing_revision()
    before = [tables_of(url) for url in case.urls]
    client = case.client()
    status = client.get("/api/status")
    assert status.status_code == 200, status.get_json()
    assert status.get_json()["heads"] == case.heads() == [doomed]
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "restored", run
    assert run["backup_id"]
    _backed_up_each_database(case, run)
    assert [tables_of(url) for url in case.urls] == before
    assert all(FAILING_TABLE not in t for t in before)
    assert case.current() == [head]


def _commit_each_database_as_soon_as_it_is_migrated(project: RealProject) -> None:
    """A common edit of the multidb env.py: each database's migrations are committed
    before the next database is migrated (no two-phase commit)."""
    text = project.env_py.read_text()
    run_line = "            context.run_migrations(engine_name=name)\n"
    at = text.index(run_line, text.index("def run_migrations_online")) + len(run_line)
    project.env_py.write_text(text[:at] + (
        '            rec["transaction"].commit()\n'
        '            rec["transaction"] = rec["connection"].begin()\n') + text[at:])


def _fails_in_engine2_only(project: RealProject, rev_id: str) -> None:
    """The revision's engine1 part succeeds; engine2's creates its table, then fails."""
    path = project.revision_file(rev_id)
    text = path.read_text()
    at = text.index("def upgrade_engine2")
    end = text.index("sa.String(50)))\n", at) + len("sa.String(50)))\n")
    path.write_text(text[:end] + f'    raise RuntimeError("{FAILING_MESSAGE}")\n' + text[end:])


def test_multidb_a_failure_after_engine1_committed_is_restored_from_its_backup(case):
    """engine1's step is committed (PostgreSQL) or held (SQLite's held file) when
    engine2's fails: every database that differs from its start is restored from its
    own backup and checked; the run says restored, naming each database."""
    head = case.project.revisions[-1]
    case.upgrade(head)
    _commit_each_database_as_soon_as_it_is_migrated(case.project)
    doomed = case.project.add_revision("ff98halfway", "halfway", FAILING_TABLE)
    _fails_in_engine2_only(case.project, doomed)
    before = [tables_of(url) for url in case.urls]
    client = case.client()
    assert client.get("/api/status").get_json()["heads"] == [doomed]

    run = run_to_end(client, "upgrade", "heads")

    assert run["status"] == "restored", run
    _backed_up_each_database(case, run)
    assert [tables_of(url) for url in case.urls] == before
    assert case.current() == [head]
    error = run["error"]
    assert FAILING_MESSAGE in error, error
    said = {url: _sentence_about(error, url.rsplit("/", 1)[1]) for url in case.urls}
    if case.project.kind == "multidb" and case.urls[0].startswith("postgresql"):
        # engine1 committed: only its backup could put it back.
        assert "restored from its backup" in said[case.urls[0]], error
        assert run["backups"][0]["backup_id"] in said[case.urls[0]], error
    assert any("restored from its backup" in text for text in said.values()), error
    assert all("(checked)" in text for text in said.values()), error


test_multidb_a_failure_after_engine1_committed_is_restored_from_its_backup.kinds = ("multidb",)


def _sentence_about(text: str, name: str) -> str:
    """The sentence of a run's message that names the database ``name``."""
    for sentence in text.split("Database "):
        if f"/{name}: " in sentence:
            return sentence
    raise AssertionError(f"{name} is not named in: {text}")


def test_another_database_than_the_one_backed_up_is_refused_with_no_step_run(
        case, new_database):
    """The dashboard is told database A and backs it up; env.py (or the app) opens B."""
    project, first = case.project, case.project.revisions[0]
    if project.kind == "multidb":
        # env.py migrates engine1 and engine2; the dashboard is told a third database.
        told = new_database("told")
        project.upgrade(first)
        migrated = list(case.urls)
    else:
        if not project.reads_database_url:
            project.make_env_py_read_database_url()  # the usual edit of an async env.py
        told, other = case.url, new_database("other")
        migrated = [async_url(other) if project.kind == "async" else other]
        project.upgrade(first, told)
        project.upgrade(first, migrated[0])
        case.monkeypatch.setenv("DATABASE_URL", migrated[0])
    before = {url: tables_of(url) for url in (told, *migrated)}
    client = case.client(url=told)
    # A dashboard that works on this project at all, so a refusal below is this one.
    assert client.get("/api/status").status_code == 200
    response = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    if response.status_code == 202:
        run = wait_for_run(client, response.get_json()["id"])
        assert run["status"] == "failed", run
        assert all(s["status"] == "planned" for s in run["steps"]), run
        message = run["error"] or ""
    else:
        assert 400 <= response.status_code < 500, response.get_data(as_text=True)
        message = response.get_json()["error"]["message"]
    assert {url: tables_of(url) for url in before} == before
    if project.kind == "multidb":
        assert project.current() == [first]
    else:
        assert project.current(migrated[0]) == [first]
        assert project.current(told) == [first]
    for url in (told, migrated[0]):  # naming both (masked)
        assert url.rsplit("/", 1)[1] in message, message


def test_the_dashboard_told_the_projects_own_database_runs_on_it(case):
    """DASHBOARD_DATABASE_URL stays optional but allowed: told the database the
    project names, the dashboard hands it to env.py and the run goes through.
    Not for multidb: one URL cannot name its two databases."""
    first, *_, head = case.project.revisions
    case.upgrade(first)
    client = case.client(url=case.url)
    status = client.get("/api/status")
    assert status.status_code == 200, status.get_json()
    assert status.get_json()["current"] == case.current() == [first]
    run = run_to_end(client, "upgrade", "heads")
    assert run["status"] == "succeeded", run
    assert case.current() == [head]


test_the_dashboard_told_the_projects_own_database_runs_on_it.kinds = tuple(
    kind for kind in KINDS if kind != "multidb")


# ---------------------------------------------------------------- rehearsal on a copy


def test_a_rehearsal_runs_on_a_copy_and_leaves_the_database_as_it_was(case):
    """Each kind as it runs itself, its database named where it names it (the Flask
    app's config and env.py reading DATABASE_URL included): the round trip runs on
    the copy, and the real database keeps its tables and revision."""
    first = case.project.revisions[0]
    case.upgrade(first)
    before = tables_of(case.url)
    client = case.client()
    response = client.post("/api/rehearsals", json={"roundtrip": True})
    assert response.status_code == 202, response.get_json()
    url = response.get_json()["url"]
    body = client.get(url).get_json()
    for _ in range(1200):
        if body["status"] != "running":
            break
        time.sleep(0.1)
        body = client.get(url).get_json()
    assert body["status"] == "passed", body["error"]
    assert [s["revision"] for s in body["steps"] if s["phase"] == "upgrade"] == \
        list(case.project.revisions[1:])
    assert tables_of(case.url) == before
    assert case.current() == [first]


test_a_rehearsal_runs_on_a_copy_and_leaves_the_database_as_it_was.kinds = tuple(
    kind for kind in KINDS if kind != "multidb")  # refused: README, Rehearsal
