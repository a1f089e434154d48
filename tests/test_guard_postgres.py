"""The guard on a real PostgreSQL server, as a user sees and keeps it.

Owners and grants, autocommit blocks, cancelling, blocked restores, locks of
other databases, URL-special passwords and large objects. Everything goes
through the JSON API of a real app on scratch databases of the server in
tests/servers.py; roles are made per test and dropped afterwards.
"""

from __future__ import annotations

import html
import json
import re
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import CHATS, UNIFIED_REASONING, copy_sample_project, migrate
from tests.conftest import client_for as _client
from tests.servers import (
    SERVERS,
    PostgresRoles,
    Server,
    load_sample,
    postgres_roles,
    require,
    scratch_database,
    snapshot,
)

FINAL = ("succeeded", "failed", "restored", "cancelled")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def pg() -> Server:
    return require(SERVERS["postgresql"])


@pytest.fixture
def roles(pg) -> Iterator[PostgresRoles]:
    with postgres_roles(pg) as made:
        yield made


@pytest.fixture
def database(pg, roles) -> Iterator[str]:
    # Depends on roles so that the database (objects, ownership) is gone before they are.
    with scratch_database(pg, prefix="md_guard") as name:
        yield name




def _wait(client, run_url: str, timeout: float = 120) -> dict:
    """The run once it is final, or as it is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(run_url).get_json()
        if body["status"] in FINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _started(response) -> dict:
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _run(client, action: str, target: str) -> dict:
    started = _started(client.post("/api/runs", json={"action": action, "target": target}))
    run = _wait(client, started["url"])
    assert run["status"] in FINAL, f"run did not finish: {run}"
    return run


def _backup(client) -> dict:
    response = client.post("/api/backups", json={})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _restore(client, backup_id: str) -> dict:
    started = _started(client.post(f"/api/backups/{backup_id}/restore", json={}))
    run = _wait(client, started["url"])
    assert run["status"] in FINAL, f"restore did not finish: {run}"
    return run


def _revisions(url: str) -> list[str]:
    return sorted(_scalars(url, "SELECT version_num FROM alembic_version"))


def _scalars(url: str, sql: str, **params) -> list:
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).scalars())
    finally:
        engine.dispose()


def _write_revision(ini: Path, revision: str, parent: str, body: str) -> None:
    (ini.parent / "alembic" / "versions" / f"{revision}_guard.py").write_text(
        f'"""guard test revision {revision}"""\n'
        "import logging\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "{revision}"\ndown_revision = "{parent}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") +
        "\n\n\ndef downgrade():\n    pass\n")


# An env.py as many projects have it: its own engine from sqlalchemy.url (it never
# looks at config.attributes["connection"]) and a commit after every revision.
OWN_ENGINE_ENV = '''\
"""env.py with its own engine and one transaction per revision."""
import sys
from pathlib import Path

from sqlalchemy import engine_from_config, pool

from alembic import context

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import app_models  # noqa: E402

config = context.config
target_metadata = app_models.Base.metadata

if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
'''

LATER_CHANGE, LATER_FAILS = "9a0000000001", "9a0000000002"


def _add_change_then_failure(ini: Path, change_body: str) -> None:
    """Two revisions after the heads: one that changes things, then one that fails."""
    _write_revision(ini, LATER_CHANGE, UNIFIED_REASONING, change_body)
    _write_revision(ini, LATER_FAILS, LATER_CHANGE,
                    'raise RuntimeError("a later revision fails on purpose")')


COMMITTED_CHANGE = """\
op.create_table("made_then_undone", sa.Column("id", sa.Integer, primary_key=True))
op.execute("DELETE FROM chat_messages")
"""


def _assert_restored_from_backup(run: dict) -> None:
    assert run["status"] == "restored", (run["status"], run["error"], run["logs"][-3:])
    assert "a later revision fails on purpose" in run["error"], run["error"]
    assert re.search(r"restored from the (pre-action )?backup", run["error"]), run["error"]
    # Something was committed outside the action's transaction: "rolled back" would be false.
    assert "rolled back" not in run["error"].lower(), run["error"]


def _owners(url: str) -> dict[str, str]:
    """Owner of every table, sequence, view and index of the public schema."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v', 'm', 'i', 'p')"))
            return {f"{name} ({kind})": owner for name, kind, owner in rows}
    finally:
        engine.dispose()


def _reader_sees_users(pg: Server, database: str, reader: str) -> list[int]:
    return sorted(_scalars(pg.url(database, user=reader), "SELECT id FROM users"))


def _owned_sample(pg: Server, database: str, ini: Path, roles: PostgresRoles) -> tuple[str, str]:
    """The sample at its heads, migrated by (and so owned by) its own role, with a
    second role allowed to read the users table. The dashboard is the superuser."""
    owner, reader = roles.create("owner"), roles.create("reader")
    # PostgreSQL 15: the public schema belongs to the database owner, who may create in it.
    pg.execute(f'ALTER DATABASE "{database}" OWNER TO {owner}')
    load_sample(ini, pg.url(database, user=owner))
    pg.execute(f"GRANT SELECT ON users TO {reader}", database=database)
    owners = _owners(pg.url(database))
    assert owners and set(owners.values()) == {owner}, owners
    assert _reader_sees_users(pg, database, reader) == [1, 2, 3]
    return owner, reader


def _activity(pg: Server, database: str, like: str = "%") -> list[str]:
    """Other sessions on ``database`` whose query matches ``like``."""
    return pg.scalars(
        "SELECT format('pid %s %s (%s): %s', pid, state, application_name, query) "
        "FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid() "
        "AND query LIKE :like", db=database, like=like)


def _locks(pg: Server, database: str) -> list[str]:
    """Locks held on ``database`` by any other session (advisory ones included)."""
    return pg.scalars(
        "SELECT format('pid %s %s %s %s on %s (%s)', l.pid, l.locktype, l.mode, "
        "CASE WHEN l.granted THEN 'granted' ELSE 'waiting' END, "
        "coalesce(l.relation::regclass::text, l.objid::text, ''), a.query) "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE a.datname = :db AND l.pid <> pg_backend_pid()", db=database)


def _eventually(read, timeout: float = 5.0):
    """``read()`` once it returns nothing, or its last answer after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = read()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


SLEEP_REV = "5e1ee9000001"


def _add_sleeping_revision(ini: Path, parent: str) -> None:
    """A revision that changes a table, makes one, then sleeps in the server for 2 minutes."""
    _write_revision(ini, SLEEP_REV, parent, """\
        op.execute("UPDATE users SET display_name = display_name || ' (sleeping)'")
        op.create_table("made_before_sleeping", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("SELECT pg_sleep(120)")
    """)


@contextmanager
def _sleeping_run(client, pg: Server, database: str) -> Iterator[dict]:
    """An upgrade hanging in pg_sleep on ``database``; on the way out the sleeper is
    stopped and the run left to finish, so no thread outlives the test."""
    started = _started(client.post("/api/runs", json={"action": "upgrade",
                                                      "target": SLEEP_REV}))
    try:
        deadline = time.monotonic() + 60
        while not _activity(pg, database, "%pg_sleep%"):
            run = client.get(started["url"]).get_json()
            assert run["status"] not in FINAL, f"the run ended before it slept: {run}"
            assert time.monotonic() < deadline, f"no pg_sleep session on {database}: {run}"
            time.sleep(0.1)
        yield started
    finally:
        run = client.get(started["url"]).get_json()
        if run["status"] == "running":
            client.post(f"/api/runs/{started['id']}/cancel", json={})
        pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = '{database}' AND query LIKE '%pg_sleep%' "
                   "AND pid <> pg_backend_pid()")
        _wait(client, started["url"], timeout=60)


# ---------------------------------------------------------------- 1. owners and grants


@pytest.mark.parametrize("how", ["explicit_restore", "recovery_of_a_failed_run"])
def test_a_restore_keeps_table_owners_and_grants(pg, database, roles, sample_ini, tmp_path,
                                                 how):
    owner, reader = _owned_sample(pg, database, sample_ini, roles)
    url = pg.url(database)  # the dashboard connects as the superuser
    owners = _owners(url)
    if how == "explicit_restore":
        client = _client(sample_ini, url, tmp_path / "inst")
        backup = _backup(client)
        before = snapshot(url)
        pg.execute("DELETE FROM chat_messages", database=database)
        run = _restore(client, backup["id"])
        assert run["status"] == "succeeded", (run["error"], run["logs"][-3:])
    else:
        (sample_ini.parent / "alembic" / "env.py").write_text(OWN_ENGINE_ENV)
        _add_change_then_failure(sample_ini, COMMITTED_CHANGE)
        before = snapshot(url)
        client = _client(sample_ini, url, tmp_path / "inst")
        _assert_restored_from_backup(_run(client, "upgrade", "heads"))
    assert snapshot(url) == before
    assert _reader_sees_users(pg, database, reader) == [1, 2, 3]
    after = _owners(url)
    assert after == owners, (f"every relation was {owner}'s before the restore; after it, "
                             f"{sum(o != owner for o in after.values())} of {len(after)} are "
                             f"{sorted(set(after.values()) - {owner})}'s")


# ---------------------------------------------------------------- 2. autocommit blocks


AUTOCOMMIT_CHANGES = {
    "create_index_concurrently": (
        "ix_users_email_concurrently",
        'op.execute("DELETE FROM chat_messages")\n'
        "with op.get_context().autocommit_block():\n"
        '    op.execute("CREATE INDEX CONCURRENTLY ix_users_email_concurrently '
        'ON users (email)")\n'),
    "alter_type_add_value": (
        "md_mood",
        'op.execute("DELETE FROM chat_messages")\n'
        "with op.get_context().autocommit_block():\n"
        """    op.execute("ALTER TYPE md_mood ADD VALUE 'ecstatic'")\n"""),
}


@pytest.mark.parametrize("change", sorted(AUTOCOMMIT_CHANGES))
def test_an_autocommit_block_runs_and_a_later_failure_restores_the_backup(
        pg, database, sample_ini, tmp_path, change):
    url = pg.url(database)
    load_sample(sample_ini, url)
    pg.execute("CREATE TYPE md_mood AS ENUM ('calm')", database=database)
    made, body = AUTOCOMMIT_CHANGES[change]
    _add_change_then_failure(sample_ini, body)  # under the sample's own env.py
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")

    run = _run(client, "upgrade", "heads")

    steps = {step["revision"]: step["status"] for step in run["steps"]}
    assert steps.get(LATER_CHANGE) == "succeeded", (steps, run["error"])
    assert steps.get(LATER_FAILS) == "failed", (steps, run["error"])
    _assert_restored_from_backup(run)
    assert _revisions(url) == [UNIFIED_REASONING]
    assert snapshot(url) == before
    assert pg.scalars("SELECT indexname FROM pg_indexes WHERE indexname = :n",
                      database=database, n=made) == []
    assert pg.scalars("SELECT enum_range(NULL::md_mood)::text", database=database) == ["{calm}"]


def test_an_env_py_committing_per_revision_is_restored_from_the_backup(
        pg, database, sample_ini, tmp_path):
    url = pg.url(database)
    load_sample(sample_ini, url)
    (sample_ini.parent / "alembic" / "env.py").write_text(OWN_ENGINE_ENV)
    _add_change_then_failure(sample_ini, COMMITTED_CHANGE)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")

    run = _run(client, "upgrade", "heads")

    _assert_restored_from_backup(run)
    assert _revisions(url) == [UNIFIED_REASONING]
    assert snapshot(url) == before


def test_writes_an_application_commits_during_a_restored_run_are_all_reported(
        pg, database, sample_ini, tmp_path):
    """An application keeps inserting into users (a table the run does not touch)
    through the whole run, its failure and the restore: every row the restore
    discarded is in the run's ``discarded_writes``."""
    import threading

    url = pg.url(database)
    load_sample(sample_ini, url)
    (sample_ini.parent / "alembic" / "env.py").write_text(OWN_ENGINE_ENV)
    _add_change_then_failure(sample_ini, "import time\ntime.sleep(1.5)\n" + COMMITTED_CHANGE)
    client = _client(sample_ini, url, tmp_path / "inst")
    stop, committed, errors = threading.Event(), [], []

    def write():
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SET lock_timeout = '1s'"))
                conn.commit()
                while not stop.is_set():
                    n = len(committed) + len(errors)
                    try:
                        conn.execute(text(
                            "INSERT INTO users (email, display_name, password_hash, "
                            "is_active, created_at) VALUES (:e, 'W', 'x', true, now())"),
                            {"e": f"writer-{n}@example.com"})
                        conn.commit()
                        committed.append(n)
                    except Exception as exc:  # the restore replaced the table
                        conn.rollback()
                        errors.append(str(exc)[:120])
                    time.sleep(0.02)
        finally:
            engine.dispose()

    started = _started(client.post("/api/runs", json={"action": "upgrade",
                                                      "target": "heads"}))
    writer = threading.Thread(target=write)
    run = client.get(started["url"]).get_json()
    while run["status"] in ("queued", "backing_up"):
        time.sleep(0.05)
        run = client.get(started["url"]).get_json()
    writer.start()
    try:
        run = _wait(client, started["url"])
    finally:
        stop.set()
        writer.join(30)
    kept = _scalars(url, "SELECT count(*) FROM users WHERE email LIKE 'writer-%'")[0]
    lost = len(committed) - kept
    assert lost >= 1, (len(committed), kept, errors[:3])
    _assert_restored_from_backup(run)
    reported = {entry["table"]: entry["rows"] for entry in run["discarded_writes"] or []}
    assert reported.get("users", 0) >= lost, (reported, f"{lost} rows were lost")


# ---------------------------------------------------------------- 3. cancelling


def test_cancel_stops_the_server_session_and_releases_its_locks(
        pg, database, sample_ini, tmp_path):
    url = pg.url(database)
    load_sample(sample_ini, url)
    _add_sleeping_revision(sample_ini, UNIFIED_REASONING)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")

    with _sleeping_run(client, pg, database) as started:
        cancelled = time.monotonic()
        assert client.post(f"/api/runs/{started['id']}/cancel", json={}).status_code == 202
        run = _wait(client, started["url"], timeout=60)
        assert run["status"] in FINAL, f"not final 60 s after the cancel: {run}"
        took = time.monotonic() - cancelled
        sleeping = _eventually(lambda: _activity(pg, database, "%pg_sleep%"))
        assert sleeping == [], (f"the run ended {run['status']!r} {took:.1f} s after the "
                                "cancel, but 5 s later the server still runs its session: "
                                f"{sleeping}")
        held = _eventually(lambda: _locks(pg, database))
        assert held == [], f"locks still held after the run was {run['status']}: {held}"
    assert run["status"] == "cancelled", (run["status"], run["error"])
    assert _revisions(url) == [UNIFIED_REASONING]
    assert snapshot(url) == before


# ---------------------------------------------------------------- 4. a blocked restore

LOCK_TIMEOUT = 3
SLACK = 20  # the guard's own backup of the current state comes first


def test_a_restore_blocked_by_another_session_fails_within_the_lock_timeout(
        pg, database, sample_ini, tmp_path):
    url = pg.url(database)
    load_sample(sample_ini, url)
    client = _client(sample_ini, url, tmp_path / "inst", DASHBOARD_LOCK_TIMEOUT=LOCK_TIMEOUT)
    backup = _backup(client)
    pg.execute("DELETE FROM chat_messages", database=database)
    before = snapshot(url)

    blocker_engine = create_engine(url, poolclass=NullPool)
    blocker = blocker_engine.connect()
    started = None
    try:
        blocker.execute(text("LOCK TABLE users IN ACCESS SHARE MODE"))  # an open transaction
        began = time.monotonic()
        started = _started(client.post(f"/api/backups/{backup['id']}/restore", json={}))
        run = _wait(client, started["url"], timeout=LOCK_TIMEOUT + SLACK)
        took = time.monotonic() - began
    finally:
        blocker.close()
        blocker_engine.dispose()
        if started is not None:
            _wait(client, started["url"])  # let the run finish before the database goes

    assert run["status"] in FINAL, (
        f"the restore is still {run['status']!r} {took:.0f} s after it was asked for, with "
        f"DASHBOARD_LOCK_TIMEOUT={LOCK_TIMEOUT}")
    assert run["status"] == "failed", (run["status"], run["error"])
    assert re.search(r"lock|time ?out", run["error"] or "", re.IGNORECASE), run["error"]
    assert snapshot(url) == before


# ---------------------------------------------------------------- 5. locks of other databases


@pytest.fixture
def two_databases(pg, database, tmp_path):
    """A (``database``) at the heads with a sleeping revision pending, and B at the
    chats revision, each with a project copy and a dashboard of its own."""
    with scratch_database(pg, prefix="md_guard_b") as other:
        ini_a = copy_sample_project(tmp_path / "project-a")
        ini_b = copy_sample_project(tmp_path / "project-b")
        migrate(ini_a, pg.url(database), UNIFIED_REASONING)
        _add_sleeping_revision(ini_a, UNIFIED_REASONING)
        migrate(ini_b, pg.url(other), CHATS)
        yield (_client(ini_a, pg.url(database), tmp_path / "inst-a"),
               _client(ini_b, pg.url(other), tmp_path / "inst-b"), other)


def test_a_run_hanging_on_one_database_does_not_refuse_actions_on_another(
        pg, database, two_databases):
    client_a, client_b, other = two_databases
    with _sleeping_run(client_a, pg, database):
        run = _run(client_b, "upgrade", "heads")
        assert run["status"] == "succeeded", (run["error"], run["logs"][-3:])
        assert _revisions(pg.url(other)) == [UNIFIED_REASONING]


def test_a_run_hanging_on_one_database_is_not_shown_as_running_on_another(
        pg, database, two_databases):
    client_a, client_b, other = two_databases
    with _sleeping_run(client_a, pg, database):
        page = client_b.get("/")
        assert page.status_code == 200
        shown = page.get_data(as_text=True)
        holder = re.search(r'id="lock-holder"[^>]*>([^<]*)', shown)
        assert holder is None, f"B's overview says: {html.unescape(holder.group(1))}"
        assert "already running" not in shown
        status = client_b.get("/api/status")
        assert status.status_code == 200
        assert status.get_json()["state"] == "pending"
        assert "already running" not in status.get_data(as_text=True)
        claims = {key: value for key, value in status.get_json().items()
                  if ("lock" in key or "running" in key) and value}
        assert claims == {}, f"B's /api/status says: {claims}"


# ---------------------------------------------------------------- 6. a URL-special password


PASSWORD = "p@ss:w/rd%?#&+ é"


def _password_forms(password: str, url: str) -> set[str]:
    """Every spelling of the password a leak could take."""
    rendered = url.split("//", 1)[1].rsplit("@", 1)[0].split(":", 1)[1]  # SQLAlchemy's
    encoded = {password, rendered, quote(password), quote(password, safe=""),
               quote_plus(password), quote(password, safe="@:/+ ")}
    forms = set(encoded)
    for form in encoded:
        forms.add(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), form))
        forms.add(json.dumps(form)[1:-1])  # as JSON with ensure_ascii writes it
    forms |= {password.encode().hex(), password.encode().hex().upper()}
    return forms


def test_a_url_special_password_appears_nowhere(pg, database, roles, sample_ini, tmp_path):
    user = roles.create("pw", password=PASSWORD, createdb=True)
    pg.execute(f'ALTER DATABASE "{database}" OWNER TO {user}')
    url = pg.url(database, user=user, password=PASSWORD)
    assert make_url(url).password == PASSWORD
    load_sample(sample_ini, url)
    _write_revision(sample_ini, "7a5500000001", UNIFIED_REASONING, """\
        shown = op.get_bind().engine.url.render_as_string(hide_password=False)
        print("connected to", shown)
        logging.getLogger("alembic.runtime.migration").warning("connected to %s", shown)
        raise RuntimeError(f"cannot migrate {shown}")
    """)
    instance = tmp_path / "inst"
    client = _client(sample_ini, url, instance)

    failed = _run(client, "upgrade", "heads")
    overview_after_failure = client.get("/").get_data(as_text=True)
    backup = _backup(client)
    restored = _restore(client, backup["id"])

    assert failed["status"] == "restored", (failed["status"], failed["error"])
    assert "cannot migrate" in failed["error"]
    assert restored["status"] == "succeeded", (restored["error"], restored["logs"][-3:])
    forms = _password_forms(PASSWORD, url)
    seen = {"/ (after the failed run)": "\n".join(
        [overview_after_failure, html.unescape(overview_after_failure)])}
    for path in ("/", f"/runs/{failed['id']}", "/audit", "/backups",
                 f"/api/runs/{failed['id']}", f"/api/runs/{restored['id']}", "/api/runs",
                 "/api/audit", "/api/backups", "/api/status"):
        response = client.get(path)
        assert response.status_code == 200, path
        raw = response.get_data(as_text=True)
        readings = [raw, html.unescape(raw)]
        if response.is_json:
            readings.append(json.dumps(response.get_json(), ensure_ascii=False))
        seen[path] = "\n".join(readings)
    files = [p for p in instance.rglob("*") if p.is_file()]
    assert any(p.name == "dashboard.db" for p in files), files
    for path in files:
        seen[str(path.relative_to(instance))] = path.read_bytes().decode("utf-8", "replace")
    leaks = {where: sorted(form for form in forms if form in content)
             for where, content in seen.items()}
    leaks = {where: found for where, found in leaks.items() if found}
    assert leaks == {}, (f"the password shows in {len(leaks)} places: {sorted(leaks)}, "
                         f"as {sorted(set().union(*leaks.values()))}")


# ---------------------------------------------------------------- 7. large objects


def test_a_restore_brings_large_objects_back_as_they_were(pg, database, sample_ini, tmp_path):
    url = pg.url(database)
    load_sample(sample_ini, url)
    content = bytes(range(256)) * 3
    made_before = pg.scalars("SELECT lo_from_bytea(0, :b)", database=database, b=content)[0]
    client = _client(sample_ini, url, tmp_path / "inst")
    backup = _backup(client)
    made_after = pg.scalars("SELECT lo_from_bytea(0, :b)", database=database,
                            b=b"made after the backup")[0]

    run = _restore(client, backup["id"])

    assert run["status"] == "succeeded", (run["error"], run["logs"][-3:])
    assert pg.scalars("SELECT oid::bigint FROM pg_largeobject_metadata ORDER BY oid",
                      database=database) == [made_before], f"made after: {made_after}"
    assert pg.scalars("SELECT lo_get(:o)", database=database, o=made_before) == [content]
