"""The MariaDB engine on its own, against the real server on this machine.

What the guard asks of the engine (the lock, the restore, the sessions of a
cancelled run, the writes a restore would discard) is checked here at the
engine's level; tests/test_guard_mariadb.py drives the same through the API.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import ENGINES
from dashboard.engines.mariadb import lock_name
from dashboard.errors import BackupError
from dashboard.services.backups import take_backup, verify_backup
from dashboard.services.locking import LockHeld, LockHolder
from tests.servers import SERVERS, require, require_physical, scratch_database
from tests.sqlite_helpers import project_for

ENGINE = ENGINES["mysql"]


@pytest.fixture
def mariadb():
    return require(SERVERS["mariadb"])


@pytest.fixture
def database(mariadb):
    with scratch_database(mariadb, prefix="md_eng") as name:
        yield name


@pytest.fixture
def project(mariadb, database):
    return project_for(mariadb.url(database))


def _holder(action="upgrade"):
    return LockHolder(pid=os.getpid(), action=action, run_id="r1", user="tester",
                      started_at=time.time())


# ---------------------------------------------------------------- the lock


def test_the_lock_is_per_database(mariadb, database):
    with scratch_database(mariadb, prefix="md_eng_other") as other:
        here, there = project_for(mariadb.url(database)), project_for(mariadb.url(other))
        held = ENGINE.acquire_lock(here, _holder())
        try:
            assert ENGINE.lock_holder(there) is None
            elsewhere = ENGINE.acquire_lock(there, _holder())  # not refused
            elsewhere.release()
            with pytest.raises(LockHeld, match="already running on this database"):
                ENGINE.acquire_lock(here, _holder())
            assert "already running on this database" in ENGINE.lock_holder(here)
        finally:
            held.release()
        assert ENGINE.lock_holder(here) is None


def test_lock_names_fit_the_servers_limit():
    assert lock_name("app") == "migration-dashboard:app"
    long = lock_name("é" * 64)
    assert len(long) <= 64 and long.startswith("migration-dashboard:")
    assert long != lock_name("é" * 63)


# ---------------------------------------------------------------- a cancelled run's session


class Sleeper(threading.Thread):
    """A session on ``database`` that runs ``SELECT SLEEP(60)`` inside an open transaction
    holding a row lock, as a migration stuck in a statement would; once the statement
    ends it keeps its connection until ``probe`` is set, then tries to use it."""

    def __init__(self, server, database):
        super().__init__(daemon=True)
        self.engine = server.admin_engine(database)
        self.session_id = None
        self.started, self.probe = threading.Event(), threading.Event()
        self.statement = self.connection = None

    def run(self):
        try:
            with self.engine.connect() as conn:
                self.session_id = str(conn.execute(text(ENGINE.session_id_sql())).scalar())
                conn.execute(text("CREATE TABLE IF NOT EXISTS held (id INTEGER PRIMARY KEY)"))
                conn.execute(text("START TRANSACTION"))
                conn.execute(text("INSERT INTO held VALUES (1)"))
                self.started.set()
                try:
                    conn.execute(text("SELECT SLEEP(60)"))
                    self.statement = "returned"
                except SQLAlchemyError as exc:
                    self.statement = f"interrupted: {exc.orig or exc}"
                self.probe.wait(30)
                try:
                    conn.execute(text("SELECT 1"))
                    self.connection = "still open"
                except SQLAlchemyError as exc:
                    self.connection = f"ended: {type(exc.orig or exc).__name__}"
        except Exception as exc:  # never an unhandled exception in a thread
            self.statement = self.statement or f"failed: {type(exc).__name__}: {exc}"
        finally:
            self.started.set()
            self.engine.dispose()


def _session_ids(server, database):
    return {str(i) for i in server.scalars(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db", db=database)}


def test_end_sessions_stops_the_statement_and_ends_the_session(mariadb, database, project):
    sleeper = Sleeper(mariadb, database)
    sleeper.start()
    try:
        assert sleeper.started.wait(10) and sleeper.session_id, sleeper.statement
        deadline = time.monotonic() + 10
        while "SLEEP" not in " ".join(mariadb.scalars(
                "SELECT COALESCE(INFO, '') FROM information_schema.PROCESSLIST WHERE ID = :id",
                id=sleeper.session_id)) and time.monotonic() < deadline:
            time.sleep(0.02)

        started = time.monotonic()
        ended = ENGINE.end_sessions(project, [sleeper.session_id, "999999999"])
        took = time.monotonic() - started

        assert ended == [sleeper.session_id]
        assert took < 7, took
        assert sleeper.statement and sleeper.statement != "returned", sleeper.statement
        assert sleeper.session_id not in _session_ids(mariadb, database)
        # Its transaction was rolled back and its lock released, though its client
        # still holds the connection: the row is free to write.
        mariadb.execute("SET SESSION innodb_lock_wait_timeout = 1",
                        "INSERT INTO held VALUES (1)", database=database)
        sleeper.probe.set()
        sleeper.join(10)
        assert sleeper.connection.startswith("ended"), sleeper.connection
    finally:
        sleeper.probe.set()
        if sleeper.session_id in _session_ids(mariadb, database):  # so the database drops
            mariadb.execute(f"KILL {int(sleeper.session_id)}")


def test_end_sessions_leaves_sessions_on_other_databases_alone(mariadb, database, project):
    with scratch_database(mariadb, prefix="md_eng_other") as other:
        engine = mariadb.admin_engine(other)
        try:
            with engine.connect() as conn:
                elsewhere = str(conn.execute(text(ENGINE.session_id_sql())).scalar())
                assert ENGINE.end_sessions(project, [elsewhere]) == []
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            engine.dispose()
    assert ENGINE.end_sessions(project, []) == []


# ---------------------------------------------------------------- restores


def _rows(server, database, sql):
    engine = server.admin_engine(database)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def _objects(server, database):
    """Every kind of object MariaDB keeps in a schema, by name."""
    def names(sql):
        return sorted(server.scalars(sql, db=database))
    return {
        "tables": names("SELECT CONCAT(table_name, ' ', table_type) FROM "
                        "information_schema.tables WHERE table_schema = :db"),
        "triggers": names("SELECT CONCAT(trigger_name, ' on ', event_object_table) FROM "
                          "information_schema.triggers WHERE trigger_schema = :db"),
        "routines": names("SELECT CONCAT(routine_type, ' ', routine_name) FROM "
                          "information_schema.routines WHERE routine_schema = :db"),
        "events": names("SELECT event_name FROM information_schema.events "
                        "WHERE event_schema = :db"),
        "foreign keys": names("SELECT CONCAT(constraint_name, ' ', table_name, ' -> ', "
                              "referenced_table_name) FROM information_schema."
                              "referential_constraints WHERE constraint_schema = :db"),
    }


SCHEMA = [
    "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
    "INSERT INTO alembic_version VALUES ('aaa')",
    "CREATE TABLE parent (id INTEGER AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20))",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER, "
    "CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES parent (id))",
    "CREATE TABLE audit_log (msg VARCHAR(50))",
    "CREATE TRIGGER parent_added AFTER INSERT ON parent FOR EACH ROW "
    "INSERT INTO audit_log VALUES (CONCAT('added ', NEW.name))",
    "INSERT INTO parent (name) VALUES ('a'), ('b'), ('c')",
    "DELETE FROM parent WHERE name = 'c'",  # AUTO_INCREMENT stays at 4
    "INSERT INTO child VALUES (1, 1)",
    "CREATE TRIGGER child_checked BEFORE INSERT ON child FOR EACH ROW "
    "SET NEW.parent_id = COALESCE(NEW.parent_id, 1)",
    "CREATE VIEW parent_names AS SELECT name FROM parent WHERE name NOT LIKE '%:%'",
    "CREATE VIEW parent_names_upper AS SELECT UPPER(name) AS name FROM parent_names",
    "CREATE SEQUENCE ticket_seq",
    "CREATE TABLE prices (id INTEGER PRIMARY KEY, price INTEGER) WITH SYSTEM VERSIONING",
    "INSERT INTO prices VALUES (1, 10)",
    "UPDATE prices SET price = 11",
    "CREATE FUNCTION twice(x INTEGER) RETURNS INTEGER DETERMINISTIC RETURN 2 * x",
    "CREATE PROCEDURE add_parent(n VARCHAR(20)) INSERT INTO parent (name) VALUES (n)",
    "CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit_log",
]

LATER = [
    "INSERT INTO parent (name) VALUES ('later')",
    "UPDATE prices SET price = 99",
    "DROP TRIGGER parent_added",
    "CREATE TRIGGER parent_renamed AFTER UPDATE ON parent FOR EACH ROW "
    "INSERT INTO audit_log VALUES ('renamed')",
    "DROP VIEW parent_names_upper",
    "CREATE OR REPLACE VIEW parent_names AS SELECT id FROM parent",
    "CREATE VIEW later_view AS SELECT 1 AS one",
    "DROP FUNCTION twice",
    "CREATE PROCEDURE later_proc() SELECT 1",
    "DROP EVENT nightly",
    "CREATE TABLE later_table (id INTEGER PRIMARY KEY, parent_id INTEGER, "
    "FOREIGN KEY (parent_id) REFERENCES parent (id))",
    "DELETE FROM child",
    "RENAME TABLE audit_log TO audit_log_old",  # a view now has the name of a table
    "CREATE VIEW audit_log AS SELECT msg FROM audit_log_old",
    "UPDATE alembic_version SET version_num = 'bbb'",
]


@pytest.mark.parametrize("method", ["dump", "physical"])
def test_a_restore_brings_back_every_kind_of_object(mariadb, database, project, tmp_path,
                                                    method):
    if method == "physical":
        require_physical(mariadb)
    project = replace(project, backup_method=method)
    mariadb.execute(*SCHEMA, database=database)
    _rows(mariadb, database, "SELECT NEXTVAL(ticket_seq) FROM seq_1_to_3")
    history = _rows(mariadb, database, "SELECT id, price FROM prices FOR SYSTEM_TIME ALL "
                                       "ORDER BY price")
    objects = _objects(mariadb, database)
    dump = str(tmp_path / f"backup{ENGINE.extension_for(project)}")
    ENGINE.copy(project, dump)
    mariadb.execute(*LATER, database=database)
    # Past the sequence's cache of 1000, so that its stored state moved on too.
    _rows(mariadb, database, "SELECT NEXTVAL(ticket_seq) FROM seq_1_to_2000")

    ENGINE.restore(project, dump)

    assert _objects(mariadb, database) == objects
    assert _rows(mariadb, database, "SELECT id, name FROM parent ORDER BY id") == [
        (1, "a"), (2, "b")]
    assert ENGINE.live_revisions(project) == ("aaa",)
    assert _rows(mariadb, database, "SELECT id, price FROM prices FOR SYSTEM_TIME ALL "
                                    "ORDER BY price") == history
    assert _rows(mariadb, database, "SELECT * FROM parent_names_upper ORDER BY name") == [
        ("A",), ("B",)]
    assert _rows(mariadb, database, "SELECT twice(21)") == [(42,)]
    # Triggers fire, AUTO_INCREMENT goes on from where it was, the key is enforced.
    mariadb.execute("CALL add_parent('d')", database=database)
    assert _rows(mariadb, database, "SELECT id FROM parent WHERE name = 'd'") == [(4,)]
    assert ("added d",) in _rows(mariadb, database, "SELECT msg FROM audit_log")
    with pytest.raises(SQLAlchemyError, match="foreign key constraint fails"):
        mariadb.execute("INSERT INTO child VALUES (2, 99)", database=database)
    # The sequence goes on past what it handed out before the backup.
    assert _rows(mariadb, database, "SELECT NEXTVAL(ticket_seq)")[0][0] > 3
    assert mariadb.databases_like(f"{database}_") == []  # no scratch schema left


@pytest.mark.parametrize("blocked", ["child", "alembic_version"])  # with triggers, without
def test_a_restore_blocked_by_a_lock_fails_in_time_and_changes_nothing(
        mariadb, database, project, tmp_path, blocked):
    mariadb.execute(*SCHEMA, database=database)
    dump = str(tmp_path / "backup.sql")
    ENGINE.copy(project, dump)
    mariadb.execute("INSERT INTO parent (name) VALUES ('later')", database=database)
    objects = _objects(mariadb, database)
    blocker_engine = mariadb.admin_engine(database)
    try:
        with blocker_engine.connect() as blocker:
            blocker.exec_driver_sql("START TRANSACTION")
            blocker.exec_driver_sql(f"SELECT * FROM {blocked}").fetchall()  # its metadata lock
            started = time.monotonic()
            with pytest.raises(BackupError) as caught:
                ENGINE.restore(replace(project, lock_timeout=1), dump)
            took = time.monotonic() - started
            blocker.exec_driver_sql("ROLLBACK")
    finally:
        blocker_engine.dispose()

    assert took < 10, took
    message = caught.value.message
    assert "lock" in message and "1 s" in message and "left as it was" in message, message
    assert _objects(mariadb, database) == objects
    assert _rows(mariadb, database, "SELECT name FROM parent ORDER BY id") == [
        ("a",), ("b",), ("later",)]
    assert mariadb.databases_like(f"{database}_") == []


# ---------------------------------------------------------------- writes a restore discards


WRITTEN = [
    "CREATE TABLE items (id INTEGER AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))",
    "CREATE TABLE prices (id INTEGER PRIMARY KEY, price INTEGER)",
    "CREATE TABLE quiet (id INTEGER PRIMARY KEY)",
    "CREATE TABLE migrated (id INTEGER PRIMARY KEY)",
    "INSERT INTO items (v) VALUES ('a'), ('b')",
    "INSERT INTO prices VALUES (1, 10), (2, 20)",
    "INSERT INTO quiet VALUES (1)",
]


class Writer(threading.Thread):
    """Another application: inserts into ``items`` on its own connection until stopped."""

    def __init__(self, server, database):
        super().__init__(daemon=True)
        self.engine = server.admin_engine(database)
        self.stop = threading.Event()
        self.committed = 0
        self.errors: list[str] = []

    def run(self):
        try:
            with self.engine.connect() as conn:
                while not self.stop.is_set():
                    conn.execute(text("INSERT INTO items (v) VALUES ('w')"))
                    self.committed += 1
                    time.sleep(0.02)
        except Exception as exc:  # never an unhandled exception in a thread
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.engine.dispose()


def test_writes_of_other_sessions_since_the_marks_are_counted(mariadb, database, project):
    mariadb.execute(*WRITTEN, "UPDATE prices SET price = 11 WHERE id = 1", database=database)
    marks = ENGINE.write_marks(project)
    # Right away, most likely within the second that prices was last written in:
    # its UPDATE_TIME cannot tell these updates from the one before the marks.
    mariadb.execute("UPDATE prices SET price = 12 WHERE id = 1", database=database)
    writer = Writer(mariadb, database)
    writer.start()
    time.sleep(0.5)
    mariadb.execute("INSERT INTO migrated VALUES (1), (2)",  # the run's own, not reported
                    "CREATE TABLE made_by_others (id INTEGER PRIMARY KEY)",
                    "INSERT INTO made_by_others VALUES (1), (2), (3)", database=database)
    writer.stop.set()
    writer.join(10)
    assert writer.committed > 5 and not writer.errors, (writer.committed, writer.errors)

    discarded = ENGINE.discarded_writes(project, marks, {"migrated"})

    assert discarded == [{"table": "items", "rows": writer.committed},
                         {"table": "made_by_others", "rows": 3},
                         {"table": "prices", "rows": 1}]


def test_no_writes_since_the_marks_is_an_empty_list(mariadb, database, project):
    mariadb.execute(*WRITTEN, database=database)
    time.sleep(1.1)  # UPDATE_TIME has one-second steps
    marks = ENGINE.write_marks(project)
    mariadb.execute("INSERT INTO migrated VALUES (1)", database=database)
    assert ENGINE.discarded_writes(project, marks, {"migrated"}) == []
    assert ENGINE.discarded_writes(project, None, set()) is None


def test_an_update_long_after_the_marks_is_seen_without_a_checksum(mariadb, database, project):
    mariadb.execute(*WRITTEN, database=database)
    time.sleep(1.1)
    marks = ENGINE.write_marks(project)
    assert all(mark["checksum"] is None for mark in marks["tables"].values()), marks
    time.sleep(1.1)
    mariadb.execute("UPDATE quiet SET id = 2", database=database)
    assert ENGINE.discarded_writes(project, marks, set()) == [{"table": "quiet", "rows": 1}]


# ---------------------------------------------------------------- verification depth


def test_quick_verification_reads_the_file_alone(mariadb, database, project, tmp_path):
    mariadb.execute(*SCHEMA, database=database)
    dump = str(tmp_path / "backup.sql")
    ENGINE.copy(project, dump)
    # A server that cannot be reached: the quick check never asks it anything.
    unreachable = make_url(project.database_url).set(port=1)
    quick_project = replace(project, backup_verify="quick",
                            database_url=unreachable.render_as_string(hide_password=False))

    quick = ENGINE.check(dump, "alembic_version", quick_project)
    full = ENGINE.check(dump, "alembic_version", project)

    assert quick.ok and quick.revisions == ("aaa",), quick
    assert "not loaded" in quick.detail and "quick" in quick.detail, quick.detail
    assert full.ok and full.revisions == ("aaa",) and "scratch database" in full.detail
    cut = tmp_path / "cut.sql"
    cut.write_bytes(Path(dump).read_bytes()[:-200])
    assert not ENGINE.check(str(cut), "alembic_version", quick_project).ok


def test_counting_the_discarded_writes_waits_no_longer_than_the_lock_timeout(
        mariadb, database, project):
    mariadb.execute(*WRITTEN, database=database)
    marks = ENGINE.write_marks(project)
    mariadb.execute("INSERT INTO items (v) VALUES ('later')", database=database)
    blocker_engine = mariadb.admin_engine(database)
    try:
        with blocker_engine.connect() as blocker:
            blocker.exec_driver_sql("LOCK TABLES items WRITE")  # as a stuck ALTER would
            started = time.monotonic()
            answer = ENGINE.discarded_writes(replace(project, lock_timeout=1), marks, set())
            took = time.monotonic() - started
            blocker.exec_driver_sql("UNLOCK TABLES")
    finally:
        blocker_engine.dispose()
    assert answer is None and took < 5, (answer, took)


# ---------------------------------------------------------------- physical copies


def _scratch_servers_left() -> list[str]:
    """Command lines of scratch servers still running on a physical copy."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                line = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ".physical-" in line and "--datadir" in line:
            found.append(line)
    return found


def test_a_physical_copy_is_opened_and_checked_and_its_damage_found(
        mariadb, database, project, tmp_path):
    require_physical(mariadb)
    project = replace(project, backup_method="physical")
    mariadb.execute(*SCHEMA, database=database)
    folder = tmp_path / "backups"
    # What a process killed during a check left: its pid is in the name.
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = folder / f".physical-{dead.pid}-x1"
    (left / "physbench").mkdir(parents=True)

    record = take_backup(project, str(tmp_path / "inst"), str(folder), "test")

    assert not left.exists(), "a dead process's unpacked copy was not removed"
    assert record.file_name.endswith(".xbstream") and record.revisions == ("aaa",)
    assert "physical copy" in record.verification, record.verification
    # Every table of the schema went through CHECK TABLE on the scratch server.
    tables = len(mariadb.scalars("SELECT table_name FROM information_schema.tables WHERE "
                                 "table_schema = :db AND table_type <> 'VIEW'", db=database))
    assert f"CHECK TABLE passed on its {tables} tables" in record.verification
    assert sorted(p.name for p in folder.iterdir()) == [record.file_name,
                                                        record.file_name + ".json"]
    assert _scratch_servers_left() == []
    # Checked again later, from the file alone: the scratch server needs no live one.
    assert verify_backup(str(tmp_path / "inst"), record.id).verified
    # A rehearsal's copy of the database, made from it on the live server.
    with ENGINE.scratch_copy(project, record.path, str(tmp_path)) as copy_url:
        assert ENGINE.live_revisions(replace(project, database_url=copy_url)) == ("aaa",)
        assert make_url(copy_url).database != database

    data = Path(record.path).read_bytes()
    middle = len(data) // 2
    damaged = tmp_path / "damaged.xbstream"
    damaged.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64])
                        + data[middle + 64:])
    cut = tmp_path / "cut.xbstream"
    cut.write_bytes(data[:middle])
    for bad in (damaged, cut):
        check = ENGINE.check(str(bad), "alembic_version", project)
        assert not check.ok, (bad.name, check)
    # The check opens the copy unpacked while the file was written, and passes it
    # only if the file still holds those bytes.
    again = tmp_path / "again.xbstream"
    ENGINE.copy(project, str(again))
    written = again.read_bytes()
    again.write_bytes(written[:middle] + bytes(b ^ 0xFF for b in written[middle:middle + 64])
                      + written[middle + 64:])
    check = ENGINE.check(str(again), "alembic_version", project)
    assert not check.ok and "differs" in check.detail, check
    assert _scratch_servers_left() == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".physical-")]


def test_a_physical_copy_a_restore_could_not_dump_back_is_refused(
        mariadb, database, project, tmp_path):
    """The copy holds the schema alone: a view of another database's table opens
    and checks, but the restore's dump of the copy would fail. Found at backup time."""
    require_physical(mariadb)
    with scratch_database(mariadb, prefix="md_other") as other:
        mariadb.execute("CREATE TABLE shared (id INTEGER)", database=other)
        mariadb.execute(*SCHEMA[:2], f"CREATE VIEW shared_ids AS SELECT id FROM `{other}`.shared",
                        database=database)
        folder = tmp_path / "backups"
        with pytest.raises(BackupError) as caught:
            take_backup(replace(project, backup_method="physical"), str(tmp_path / "inst"),
                        str(folder), "test")
        message = caught.value.message
        assert "shared_ids" in message and 'backup_method = "dump"' in message, message
        assert "Nothing was run" in message, message
        assert not folder.exists() or list(folder.iterdir()) == []
        # The dump method copies it, and its check loads it.
        assert take_backup(project, str(tmp_path / "inst"), str(folder), "test").verified


def test_a_physical_copy_without_its_tools_is_refused_before_anything_is_written(
        mariadb, database, project, tmp_path, monkeypatch):
    mariadb.execute(*SCHEMA, database=database)
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("mariadb-dump", "mariadb"):  # the dump method's tools only
        (tools / name).symlink_to(shutil.which(name))
    monkeypatch.setenv("PATH", str(tools))
    folder = tmp_path / "backups"

    with pytest.raises(BackupError) as caught:
        take_backup(replace(project, backup_method="physical"), str(tmp_path / "inst"),
                    str(folder), "test")

    message = caught.value.message
    assert "mariadb-backup" in message and "apt-get install mariadb-backup" in message
    assert 'backup_method = "dump"' in message and "Nothing was run" in message, message
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_physical_copy_by_a_user_with_a_password_never_shows_it(
        mariadb, database, project, tmp_path):
    require_physical(mariadb)
    user, password = "md_phys_user", "p@ss:w/rd%41?#"
    mariadb.create_user(user, password, database)
    try:
        mariadb.execute(*SCHEMA[:2], database=database)
        url = make_url(mariadb.url(database)).set(username=user, password=password) \
            .render_as_string(hide_password=False)
        escaped = url.split("://", 1)[1].split("@")[0].split(":", 1)[1]
        assert escaped != password  # the URL holds it percent-encoded
        physical = replace(project_for(url), backup_method="physical")
        # Without the rights mariadb-backup needs on the server, a clear refusal.
        with pytest.raises(BackupError) as caught:
            take_backup(physical, str(tmp_path / "inst"), str(tmp_path / "b1"), "test")
        refused = caught.value.message
        assert "mariadb-backup" in refused, refused
        mariadb.execute(f"GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* "
                        f"TO '{user}'@'%'")
        record = take_backup(physical, str(tmp_path / "inst"), str(tmp_path / "b2"), "test")
        assert record.revisions == ("aaa",), record
        said = [refused, record.verification, record.file_name,
                Path(record.path + ".json").read_text()]
        for form in (password, escaped):
            assert not any(form in text for text in said), (form, said)
    finally:
        mariadb.drop_user(user, database)
