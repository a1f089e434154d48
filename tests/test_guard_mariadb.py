"""The guard on a real MariaDB server, where it cannot hold writers off nor roll DDL back.

Each test drives the product as a user does (the JSON API and the pages of a
dashboard pointed at a scratch database of the server on this machine) and
checks what the user sees or keeps: writes a restore discarded are reported,
a restore blocked by another session fails in time without emptying anything,
locks are per database, and what mariadb-dump leaves out by default (history
of system-versioned tables, sequence positions) survives a restore.
"""

from __future__ import annotations

import html
import re
import textwrap
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from tests.conftest import CHATS, UNIFIED_REASONING, copy_sample_project, migrate
from tests.conftest import client_for as _client
from tests.servers import (
    SERVERS,
    load_sample,
    require,
    require_physical,
    scratch_database,
    snapshot,
)

FINISHED = ("succeeded", "failed", "restored")
SLOW_FAILURE = "9a1100000001"  # sleeps, then raises
HANGS = "9a1100000002"  # sleeps half a minute (cancelled by the test)
LOCK_TIMEOUT = 2  # DASHBOARD_LOCK_TIMEOUT for the blocked-restore test, in seconds
SLACK = 8  # the restore's own backup, its check and the load, on top of the lock wait


@pytest.fixture
def mariadb():
    return require(SERVERS["mariadb"])


@pytest.fixture
def database(mariadb):
    with scratch_database(mariadb, prefix="md_guard") as name:
        yield name


@pytest.fixture
def sample_ini(tmp_path):
    return copy_sample_project(tmp_path / "project")




def _refused_by_a_foreign_lock(response):
    """Today the database lock is server-wide (GET_LOCK('migration-dashboard')), so a
    migration anybody runs on another database of this server refuses ours with a 409.
    That is what the per-schema test checks; everywhere else it is waited out."""
    return response.status_code == 409 and "already running on this database" in \
        response.get_json()["error"]["message"]


def _post(client, url, expected, **body):
    deadline = time.monotonic() + 60
    response = client.post(url, json=body)
    while _refused_by_a_foreign_lock(response) and time.monotonic() < deadline:
        time.sleep(0.5)
        response = client.post(url, json=body)
    assert response.status_code == expected, response.get_json()
    return response.get_json()


def _start(client, action, target):
    return _post(client, "/api/runs", 202, action=action, target=target)


def _wait(client, run_url, seconds=90.0):
    """The run once finished, or as it is when ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        body = client.get(run_url).get_json()
        if body["status"] in FINISHED or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def _finished(client, run_url, seconds=90.0):
    body = _wait(client, run_url, seconds)
    assert body["status"] in FINISHED, f"the run did not finish in {seconds} s: {body}"
    return body


def _backup(client):
    return _post(client, "/api/backups", 201)


def _restore(client, backup_id):
    return _post(client, f"/api/backups/{backup_id}/restore", 202)


def _add_revision(ini, revision, parent, body, doc):
    path = ini.parent / "alembic" / "versions" / f"{revision}_guard_test.py"
    path.write_text("\n".join([
        f'"""{doc}"""', "import time", "", "from alembic import op  # noqa: F401", "",
        f'revision = "{revision}"', f'down_revision = "{parent}"',
        "branch_labels = None", "depends_on = None", "", "",
        "def upgrade():", textwrap.indent(textwrap.dedent(body).strip(), "    "), "", "",
        "def downgrade():", "    pass", ""]))


def _add_slow_failure(ini, seconds):
    _add_revision(ini, SLOW_FAILURE, CHATS, f'''\
        if not op.get_context().as_sql:  # written out offline (risk findings): at once
            time.sleep({seconds})
        raise RuntimeError("this revision fails after {seconds} s on purpose")
    ''', "sleeps, then fails")


def _revisions(server, database):
    return sorted(server.scalars("SELECT version_num FROM alembic_version", database=database))


def _page_text(page: str) -> str:
    """What a reader sees of a page: its text, without tags, in one line."""
    page = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _sentences(page: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?:])\s+", _page_text(page)) if s]


def _tables(server, database) -> list[str]:
    """The database's tables by name, read without opening (and so waiting on) any."""
    return server.scalars("SELECT table_name FROM information_schema.tables "
                          "WHERE table_schema = :db ORDER BY table_name", db=database)


class Writer(threading.Thread):
    """An application writing into ``users`` on its own autocommit connection,
    from when ``go`` is set until ``stop`` is; counts the rows it committed."""

    def __init__(self, server, database):
        super().__init__(daemon=True)
        self.engine = server.admin_engine(database)
        self.go, self.stop = threading.Event(), threading.Event()
        self.committed = 0
        self.errors: list[str] = []

    def run(self):
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SET SESSION lock_wait_timeout = 2, "
                                  "innodb_lock_wait_timeout = 2"))
                while not self.go.wait(0.02):
                    if self.stop.is_set():
                        return
                while not self.stop.is_set():
                    n = self.committed + len(self.errors)
                    try:
                        conn.execute(text(
                            "INSERT INTO users (email, display_name, password_hash, is_active,"
                            " created_at) VALUES (:email, 'Writer', 'x', 1, NOW())"),
                            {"email": f"writer-{n}@example.com"})
                        self.committed += 1
                    except SQLAlchemyError as exc:
                        self.errors.append(str(exc.orig or exc)[:200])
                    time.sleep(0.03)
        except Exception as exc:  # never an unhandled exception in a thread
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.engine.dispose()

    def finish(self):
        self.go.set()
        self.stop.set()
        self.join(30)


# ---------------------------------------------------------------- 1. discarded writes


@pytest.mark.parametrize("method", ["dump", "physical"])
def test_rows_written_during_a_run_that_is_restored_are_reported_as_discarded(
        mariadb, database, sample_ini, tmp_path, method):
    if method == "physical":
        require_physical(mariadb)
    url = mariadb.url(database)
    migrate(sample_ini, url, CHATS)
    _add_slow_failure(sample_ini, 2.0)
    client = _client(sample_ini, url, tmp_path / "inst", DASHBOARD_BACKUP_METHOD=method)
    writer = Writer(mariadb, database)
    writer.start()
    try:
        started = _start(client, "upgrade", SLOW_FAILURE)
        # Write only once the pre-run backup is taken and while the step runs:
        # every one of those rows is newer than the backup the failure restores.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            run = client.get(started["url"]).get_json()
            if run["status"] == "running":
                writer.go.set()
            elif run["status"] not in ("queued", "backing_up"):
                writer.stop.set()
            if run["status"] in FINISHED:
                break
            time.sleep(0.05)
    finally:
        writer.finish()
    kept = mariadb.scalars("SELECT COUNT(*) FROM users WHERE email LIKE 'writer-%'",
                           database=database)[0]
    lost = writer.committed - kept
    # The scenario itself: the writer committed rows and the restore lost them.
    assert lost >= 1, (writer.committed, kept, writer.errors[:3])
    assert run["status"] == "restored", run

    assert "discarded_writes" in run, (
        f"the restore discarded {lost} row(s) written to users after the backup, and the "
        f"run does not say so: no 'discarded_writes' in {sorted(run)}")
    reported = {entry["table"]: entry["rows"] for entry in run["discarded_writes"]}
    assert set(reported) == {"users"}, run["discarded_writes"]
    assert reported["users"] >= lost, (reported, f"{lost} rows were lost")
    said = [s for s in _sentences(client.get(f"/runs/{run['id']}").get_data(as_text=True))
            if "discard" in s.lower() and "users" in s]
    assert said, "the run page does not say that writes to users were discarded"


def test_a_row_committed_while_the_restore_waits_to_swap_is_reported_as_discarded(
        mariadb, database, sample_ini, tmp_path):
    """The window CI once hit by chance: an application transaction that commits after
    the guard counted other sessions' writes but before the restore's swap. The swap
    waits for that transaction, so the row lands in the live table and is moved aside
    with it: lost, and it must be counted."""
    url = mariadb.url(database)
    migrate(sample_ini, url, CHATS)
    _add_slow_failure(sample_ini, 1.0)
    client = _client(sample_ini, url, tmp_path / "inst")
    engine = mariadb.admin_engine(database)
    try:
        with engine.connect() as app:
            started = _start(client, "upgrade", SLOW_FAILURE)
            run = _wait(client, started["url"], 0)
            deadline = time.monotonic() + 60
            while run["status"] in ("queued", "backing_up") and time.monotonic() < deadline:
                time.sleep(0.05)
                run = client.get(started["url"]).get_json()
            assert run["status"] == "running", run
            app.execute(text("BEGIN"))
            app.execute(text("INSERT INTO users (email, display_name, password_hash, "
                             "is_active, created_at) VALUES ('late@example.com', 'Late', "
                             "'x', 1, NOW())"))
            # Commit only once the restore's RENAME waits for this transaction.
            waiting = []
            while not waiting and time.monotonic() < deadline:
                waiting = mariadb.scalars(
                    "SELECT id FROM information_schema.processlist WHERE info LIKE "
                    "'RENAME TABLE%' AND state LIKE '%metadata lock%'")
                time.sleep(0.05)
            assert waiting, "the restore never waited for the open transaction"
            app.execute(text("COMMIT"))
        run = _finished(client, started["url"])
    finally:
        engine.dispose()
    assert run["status"] == "restored", run
    kept = mariadb.scalars("SELECT COUNT(*) FROM users WHERE email = 'late@example.com'",
                           database=database)[0]
    assert kept == 0, "the scenario: the late row was moved aside with the live table"
    reported = {entry["table"]: entry["rows"] for entry in run["discarded_writes"] or []}
    assert reported.get("users", 0) >= 1, (
        f"the restore discarded the row committed while it waited, and the run reports "
        f"{run['discarded_writes']}")


def test_a_restored_run_nobody_wrote_during_reports_no_discarded_writes(
        mariadb, database, sample_ini, tmp_path):
    url = mariadb.url(database)
    migrate(sample_ini, url, CHATS)
    _add_slow_failure(sample_ini, 0)
    client = _client(sample_ini, url, tmp_path / "inst")
    run = _finished(client, _start(client, "upgrade", SLOW_FAILURE)["url"])
    assert run["status"] == "restored", run
    assert "discarded_writes" in run, f"no 'discarded_writes' in the run: {sorted(run)}"
    assert run["discarded_writes"] == [], run["discarded_writes"]


def test_the_pages_before_a_run_warn_that_writes_during_it_are_at_risk(
        mariadb, database, sample_ini, tmp_path):
    url = mariadb.url(database)
    migrate(sample_ini, url, CHATS)
    client = _client(sample_ini, url, tmp_path / "inst")
    warnings = []
    for page in ("/", "/actions/preview?action=downgrade&target=-1"):
        response = client.get(page)
        assert response.status_code == 200, (page, response.status_code)
        warnings += [s for s in _sentences(response.get_data(as_text=True))
                     if "writes" in s.lower()
                     and re.search(r"lost|discard|risk|overwrit|undone", s, re.I)]
    assert warnings, ("neither the overview nor the downgrade preview of a MariaDB target "
                      "warns that writes made during a run may be lost")


# ---------------------------------------------------------------- 2. a blocked restore


def test_a_restore_blocked_by_an_open_transaction_fails_in_time_and_empties_nothing(
        mariadb, database, sample_ini, tmp_path):
    url = mariadb.url(database)
    load_sample(sample_ini, url)
    client = _client(sample_ini, url, tmp_path / "inst", DASHBOARD_LOCK_TIMEOUT=LOCK_TIMEOUT)
    backup = _backup(client)
    mariadb.execute("INSERT INTO users (id, email, display_name, password_hash, is_active, "
                    "created_at) VALUES (10, 'later@example.com', 'Later', 'x', 1, NOW())",
                    database=database)
    before, tables_before = snapshot(url), _tables(mariadb, database)

    blocker_engine = mariadb.admin_engine(database)
    blocker = blocker_engine.connect()
    run_url, run, tables_at_deadline, took = None, None, None, 0.0
    try:
        blocker.exec_driver_sql("START TRANSACTION")
        blocker.exec_driver_sql("SELECT * FROM users").fetchall()  # holds users' metadata lock
        started_at = time.monotonic()
        run_url = _restore(client, backup["id"])["url"]
        run = _wait(client, run_url, LOCK_TIMEOUT + SLACK)
        took = time.monotonic() - started_at
        if run["status"] not in FINISHED:
            tables_at_deadline = _tables(mariadb, database)
    finally:
        blocker.exec_driver_sql("ROLLBACK")
        blocker.close()
        blocker_engine.dispose()
        if run_url is not None:
            _wait(client, run_url, 120)  # let it end before the database is dropped

    assert run["status"] in FINISHED, (
        f"the restore was still {run['status']} after {took:.0f} s (lock wait "
        f"{LOCK_TIMEOUT} s); tables already dropped: "
        f"{sorted(set(tables_before) - set(tables_at_deadline))}")
    assert run["status"] == "failed", run
    assert re.search(r"lock", run["error"] or "", re.I), run["error"]
    assert snapshot(url) == before


# ---------------------------------------------------------------- 3. locks per schema


def test_a_run_hanging_on_one_database_does_not_lock_another_of_the_same_server(
        mariadb, tmp_path):
    with scratch_database(mariadb, prefix="md_guard_a") as name_a, \
            scratch_database(mariadb, prefix="md_guard_b") as name_b:
        ini_a = copy_sample_project(tmp_path / "project-a")
        ini_b = copy_sample_project(tmp_path / "project-b")
        url_a, url_b = mariadb.url(name_a), mariadb.url(name_b)
        migrate(ini_a, url_a, CHATS)
        migrate(ini_b, url_b, CHATS)
        _add_revision(ini_a, HANGS, CHATS, "if not op.get_context().as_sql:\n"
                      "    time.sleep(30)\n", "hangs")
        client_a = _client(ini_a, url_a, tmp_path / "inst-a")
        client_b = _client(ini_b, url_b, tmp_path / "inst-b")

        hanging = _start(client_a, "upgrade", HANGS)
        run_b = None
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run_a = client_a.get(hanging["url"]).get_json()
                if any(step["status"] == "running" for step in run_a["steps"]):
                    break
                assert run_a["status"] not in FINISHED, run_a
                time.sleep(0.05)
            status_b = client_b.get("/api/status").get_data(as_text=True)
            page_b = client_b.get("/").get_data(as_text=True)
            response = client_b.post("/api/runs", json={"action": "upgrade",
                                                        "target": "heads"})
            if response.status_code == 202:
                run_b = _finished(client_b, response.get_json()["url"])
        finally:
            if client_a.post(f"/api/runs/{hanging['id']}/cancel", json={}).status_code == 202:
                _wait(client_a, hanging["url"], 60)

        assert response.status_code == 202, (
            f"an action on {name_b} was refused while {name_a} runs: "
            f"{response.status_code} {response.get_json()}")
        assert run_b["status"] == "succeeded", run_b
        assert _revisions(mariadb, name_b) == [UNIFIED_REASONING]
        assert "already running" not in status_b
        claims = [s for s in _sentences(page_b) if "already running" in s]
        assert not claims and 'id="lock-holder"' not in page_b, claims


# ---------------------------------------------------------------- 4, 5. what the dump keeps


def _history(server, database):
    return sorted(tuple(row) for row in _rows(
        server, database, "SELECT id, price FROM prices FOR SYSTEM_TIME ALL"))


def _rows(server, database, sql):
    engine = server.admin_engine(database)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("method", ["dump", "physical"])
def test_the_history_of_a_system_versioned_table_survives_a_restore(
        mariadb, database, sample_ini, tmp_path, method):
    if method == "physical":
        require_physical(mariadb)
    url = mariadb.url(database)
    migrate(sample_ini, url, CHATS)
    mariadb.execute(
        "CREATE TABLE prices (id INTEGER PRIMARY KEY, price INTEGER) WITH SYSTEM VERSIONING",
        "INSERT INTO prices VALUES (1, 10), (2, 20)",
        "UPDATE prices SET price = price + 1",
        "UPDATE prices SET price = price + 1 WHERE id = 1",
        "UPDATE prices SET price = price + 1",
        database=database)
    history = _history(mariadb, database)
    current = _rows(mariadb, database, "SELECT COUNT(*) FROM prices")[0][0]
    assert len(history) == 7 > current == 2, history
    client = _client(sample_ini, url, tmp_path / "inst", DASHBOARD_BACKUP_METHOD=method)

    backup = _backup(client)
    assert backup["file_name"].endswith(".xbstream" if method == "physical" else ".sql")
    mariadb.execute("UPDATE prices SET price = 0", database=database)
    run = _finished(client, _restore(client, backup["id"])["url"])

    assert run["status"] == "succeeded", run
    assert _rows(mariadb, database, "SELECT id, price FROM prices ORDER BY id") == [
        (1, 13), (2, 22)]
    after = _history(mariadb, database)
    assert after == history, (f"the restore lost the table's history: {len(history)} rows "
                              f"FOR SYSTEM_TIME ALL before, {len(after)} after: {after}")


def test_sequences_continue_after_a_restore(mariadb, database, sample_ini, tmp_path):
    url = mariadb.url(database)
    migrate(sample_ini, url, CHATS)
    mariadb.execute("CREATE SEQUENCE cached_seq", "CREATE SEQUENCE uncached_seq NOCACHE",
                    database=database)

    def nextval(name):
        return _rows(mariadb, database, f"SELECT NEXTVAL({name})")[0][0]

    handed_out = {name: [nextval(name) for _ in range(3)]
                  for name in ("cached_seq", "uncached_seq")}
    client = _client(sample_ini, url, tmp_path / "inst")
    backup = _backup(client)
    for name in handed_out:
        nextval(name), nextval(name)
    run = _finished(client, _restore(client, backup["id"])["url"])

    assert run["status"] == "succeeded", run
    for name, values in handed_out.items():
        after = nextval(name)
        assert after > max(values), f"{name} handed out {values}, then {after} after the restore"


# ---------------------------------------------------------------- 6. never empty


def test_the_live_database_never_misses_a_table_during_a_restore(
        mariadb, database, sample_ini, tmp_path):
    """An application using the tables finds every one of them all through the restore;
    information_schema, which reads the schema's files without any lock, may miss one
    name for the instant between its two renames, never more."""
    url = mariadb.url(database)
    load_sample(sample_ini, url)
    mariadb.execute(*(f"CREATE TABLE extra_{i:03} (id INTEGER PRIMARY KEY, v VARCHAR(20))"
                      for i in range(60)), database=database)
    expected = set(_tables(mariadb, database))
    client = _client(sample_ini, url, tmp_path / "inst")
    backup = _backup(client)

    polls, gaps, listed_fewest = 0, [], len(expected)
    stop = threading.Event()
    # One statement that opens every table, as an application's queries do.
    use_all = " UNION ALL ".join(f"SELECT 1 FROM `{name}` WHERE 0" for name in sorted(expected))

    def read():
        nonlocal polls, listed_fewest
        engine = mariadb.admin_engine(database)
        try:
            with engine.connect() as conn:
                conn.execute(text("SET SESSION max_statement_time = 5"))
                while not stop.is_set():
                    try:
                        conn.execute(text(use_all)).all()
                    except SQLAlchemyError as exc:
                        if len(gaps) < 5:
                            gaps.append(str(exc.orig or exc)[:200])
                    seen = set(conn.execute(text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = :db"), {"db": database}).scalars())
                    polls += 1
                    listed_fewest = min(listed_fewest, len(seen & expected))
        except Exception as exc:  # never an unhandled exception in a thread
            gaps.append(f"reader failed: {type(exc).__name__}: {exc}")
        finally:
            engine.dispose()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run = _finished(client, _restore(client, backup["id"])["url"])
    finally:
        stop.set()
        reader.join(30)

    assert run["status"] == "succeeded", run
    assert polls > 10, polls
    assert not gaps, f"during the restore a query using the tables failed: {gaps}"
    assert listed_fewest >= len(expected) - 1, (
        f"during the restore information_schema listed as few as {listed_fewest} of the "
        f"{len(expected)} tables")
    assert set(_tables(mariadb, database)) == expected
