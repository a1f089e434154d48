"""The PostgreSQL engine on a real server, one method at a time.

What the guard asks of ``PostgresEngine`` (restores that keep owners, grants and
large objects, bounded lock waits, a lock scoped to its database, ending a
run's sessions, counting other sessions' writes, how deeply a backup is
checked), each on a small scratch database of the server in tests/servers.py,
so these stay fast. The same behaviour through the app is in
tests/test_guard_postgres.py.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from dashboard.engines import ENGINES
from dashboard.engines import postgresql as pg_engine
from dashboard.errors import BackupError
from dashboard.services.backups import restore_backup_file, take_backup
from dashboard.services.locking import LockHolder
from tests.servers import SERVERS, PostgresRoles, Server, postgres_roles, require, scratch_database
from tests.sqlite_helpers import project_for

ENGINE = ENGINES["postgresql"]
REVISION = "c2756f59bd25"

SCHEMA = f"""\
CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY);
INSERT INTO alembic_version VALUES ('{REVISION}');
CREATE TABLE users (id SERIAL PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 5) g;
CREATE TABLE notes (id SERIAL PRIMARY KEY, body TEXT);
INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 20) g;
CREATE VIEW user_names AS SELECT name FROM users;
"""
STATEMENTS = [part.strip().rstrip(";") for part in SCHEMA.split(";\n") if part.strip()]


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
    # After roles in teardown order: the database goes first, then the roles.
    with scratch_database(pg, prefix="md_eng") as name:
        pg.execute(*STATEMENTS, database=name)
        yield name


@pytest.fixture
def project(pg, database):
    return project_for(pg.url(database))


def _rows(pg: Server, database: str, sql: str, **params) -> list:
    engine = pg.admin_engine(database)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def _owners_and_grants(pg: Server, database: str) -> list:
    """Owner and ACL of every relation, schema and large object, as the catalog has them."""
    return _rows(pg, database, """
        SELECT 'rel', n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner),
               coalesce(c.relacl::text, '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
        UNION ALL
        SELECT 'schema', nspname, pg_get_userbyid(nspowner), coalesce(nspacl::text, '')
        FROM pg_namespace
        WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
        UNION ALL
        SELECT 'lo', oid::text, pg_get_userbyid(lomowner), coalesce(lomacl::text, '')
        FROM pg_largeobject_metadata
        ORDER BY 1, 2""")


def _dump(project, tmp_path: Path, name: str = "backup") -> str:
    path = str(tmp_path / f"{name}.dump")
    ENGINE.copy(project, path)
    return path


def _holder(action: str = "upgrade heads") -> LockHolder:
    return LockHolder(pid=1, action=action, run_id="r1", user="tester", started_at=time.time())


# ---------------------------------------------------------------- owners and grants


def test_a_restore_gives_every_object_back_to_its_owner_with_its_grants(
        pg, database, roles, project, tmp_path):
    owner, reader = roles.create("owner", "NOLOGIN"), roles.create("reader", "NOLOGIN")
    pg.execute(f"ALTER TABLE users OWNER TO {owner}", f"ALTER VIEW user_names OWNER TO {owner}",
               f"GRANT SELECT ON users TO {reader}", f"GRANT SELECT ON user_names TO {reader}",
               f"CREATE SCHEMA app AUTHORIZATION {owner}",
               "CREATE TABLE app.settings (k TEXT PRIMARY KEY)",
               f"ALTER TABLE app.settings OWNER TO {owner}",
               f"GRANT USAGE ON SCHEMA app TO {reader}",
               f"GRANT INSERT ON app.settings TO {reader}", database=database)
    blob = _rows(pg, database, "SELECT lo_from_bytea(0, 'owned')::bigint")[0][0]
    pg.execute(f"ALTER LARGE OBJECT {blob} OWNER TO {owner}",
               f"GRANT SELECT ON LARGE OBJECT {blob} TO {reader}", database=database)
    before = _owners_and_grants(pg, database)
    assert {row[2] for row in before} >= {owner, pg.admin_user}
    backup = _dump(project, tmp_path)
    pg.execute(f"REVOKE SELECT ON users FROM {reader}", "DROP SCHEMA app CASCADE",
               f"ALTER TABLE notes OWNER TO {owner}", database=database)

    ENGINE.restore(project, backup)

    assert _owners_and_grants(pg, database) == before


def test_a_restore_that_could_not_give_objects_back_is_refused_before_anything_is_dropped(
        pg, database, roles, tmp_path):
    dashboard = roles.create("dash")  # owns the database, may not act as ``other``
    other = roles.create("other", "NOLOGIN")
    pg.execute(f'ALTER DATABASE "{database}" OWNER TO {dashboard}',
               f'ALTER SCHEMA public OWNER TO {dashboard}', database=database)
    pg.execute(f"ALTER TABLE alembic_version OWNER TO {dashboard}",
               f"ALTER TABLE users OWNER TO {dashboard}", f"ALTER TABLE notes OWNER TO {other}",
               f"ALTER VIEW user_names OWNER TO {dashboard}",
               f"ALTER SEQUENCE users_id_seq OWNER TO {dashboard}", database=database)
    backup = _dump(project_for(pg.url(database)), tmp_path)  # as the superuser
    pg.execute("CREATE TABLE made_later (id INTEGER)", database=database)
    pg.execute(f"ALTER TABLE made_later OWNER TO {dashboard}", database=database)
    as_dashboard = project_for(pg.url(database, user=dashboard))
    before = _owners_and_grants(pg, database)

    with pytest.raises(BackupError) as caught:
        ENGINE.restore(as_dashboard, backup)

    message = caught.value.message
    assert other in message and dashboard in message, message
    assert f"GRANT {other} TO {dashboard}" in message, message
    assert "was not changed" in message, message
    assert _owners_and_grants(pg, database) == before  # made_later is still there

    # As a superuser made it: a non-superuser gives a table only to a role that may
    # create in its schema.
    pg.execute(f"GRANT {other} TO {dashboard}")
    pg.execute(f"GRANT CREATE ON SCHEMA public TO {other}", database=database)
    ENGINE.restore(as_dashboard, backup)
    after = _owners_and_grants(pg, database)
    assert ("rel", "public.notes", other, "") in after
    assert not any(row[1] == "public.made_later" for row in after)


# ---------------------------------------------------------------- large objects


def test_a_restore_brings_back_the_large_objects_of_the_backup_and_only_those(
        pg, database, project, tmp_path):
    content = bytes(range(256)) * 5
    kept = _rows(pg, database, "SELECT lo_from_bytea(0, :b)::bigint", b=content)[0][0]
    changed = _rows(pg, database, "SELECT lo_from_bytea(0, 'as backed up')::bigint")[0][0]
    backup = _dump(project, tmp_path)
    made_later = _rows(pg, database, "SELECT lo_from_bytea(0, 'made later')::bigint")[0][0]
    pg.execute(f"SELECT lo_put({changed}, 0, 'AS')", f"SELECT lo_unlink({kept})",
               database=database)

    ENGINE.restore(project, backup)

    assert _rows(pg, database, "SELECT oid::bigint FROM pg_largeobject_metadata ORDER BY 1") \
        == [(kept,), (changed,)], f"made later: {made_later}"
    assert _rows(pg, database, "SELECT lo_get(:o)", o=kept) == [(content,)]
    assert _rows(pg, database, "SELECT lo_get(:o)", o=changed) == [(b"as backed up",)]


# ---------------------------------------------------------------- bounded lock waits


class Blocker:
    """Another session holding a lock in an open transaction until ``release()``."""

    def __init__(self, url: str, *statements: str):
        self.engine = create_engine(url, poolclass=NullPool)
        self.connection = self.engine.connect()
        for statement in statements:
            self.connection.execute(text(statement))

    def release(self) -> None:
        try:
            self.connection.close()
        except OperationalError:
            pass  # ended by the server
        self.engine.dispose()


@pytest.mark.parametrize("held", ["table", "publication"])
def test_a_restore_blocked_by_another_session_gives_up_after_the_lock_timeout(
        pg, database, project, tmp_path, held):
    if held == "publication":  # only the archive's own DROP PUBLICATION meets this lock
        pg.execute("CREATE PUBLICATION md_pub FOR TABLE notes", database=database)
    backup = _dump(project, tmp_path)
    pg.execute("DELETE FROM notes WHERE id > 10", database=database)
    quick = dataclasses.replace(project, lock_timeout=1)
    lock = {"table": "LOCK TABLE users IN ACCESS SHARE MODE",
            "publication": "COMMENT ON PUBLICATION md_pub IS 'held'"}[held]
    blocker = Blocker(pg.url(database), lock)
    try:
        started = time.monotonic()
        with pytest.raises(BackupError) as caught:
            ENGINE.restore(quick, backup)
        took = time.monotonic() - started
    finally:
        blocker.release()

    message = caught.value.message
    assert took < 10, f"the restore gave up after {took:.1f} s, with a 1 s lock timeout"
    assert re.search(r"another session held a lock .* for 1 s", message), message
    assert "left as it was" in message, message
    assert _rows(pg, database, "SELECT count(*) FROM notes") == [(10,)]


def test_a_restore_that_timed_out_is_not_reported_as_restored(
        pg, database, project, tmp_path, monkeypatch):
    instance, folder = str(tmp_path / "instance"), str(tmp_path / "backups")
    record = take_backup(project, instance, folder, "manual")
    pg.execute("DELETE FROM notes", database=database)
    checked = []
    monkeypatch.setattr(type(ENGINE), "check_live",
                        lambda self, project: checked.append(project) or pytest.fail("checked"))
    blocker = Blocker(pg.url(database), "LOCK TABLE notes IN ACCESS SHARE MODE")
    try:
        with pytest.raises(BackupError, match="lock"):
            restore_backup_file(dataclasses.replace(project, lock_timeout=1), record)
    finally:
        blocker.release()
    assert checked == []
    assert _rows(pg, database, "SELECT count(*) FROM notes") == [(0,)]


def test_the_lock_timeout_replaces_the_one_in_the_archive_script():
    script = (b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n"
              b"SET lock_timeout = 0;\nSET client_encoding = 'UTF8';\n")
    amended = pg_engine.bounded_lock_waits(2.5)(script)
    assert b"SET lock_timeout = 0;" not in amended
    assert b"SET lock_timeout = '2500ms';" in amended
    assert amended.replace(b"'2500ms'", b"0") == script


# ---------------------------------------------------------------- the lock of one database


def test_the_lock_of_one_database_is_not_shown_as_held_on_another(pg, database, project):
    with scratch_database(pg, prefix="md_eng_b") as other:
        on_other = project_for(pg.url(other))
        lock = ENGINE.acquire_lock(project, _holder())
        try:
            assert ENGINE.lock_holder(on_other) is None
            assert "mdash upgrade heads tester" in (ENGINE.lock_holder(project) or "")
            other_lock = ENGINE.acquire_lock(on_other, _holder("downgrade -1"))
            try:
                said = ENGINE.lock_holder(project) or ""
                assert "mdash upgrade heads tester" in said, said
                assert "downgrade" not in said, said
            finally:
                other_lock.release()
        finally:
            lock.release()
        assert ENGINE.lock_holder(project) is None


# ---------------------------------------------------------------- ending a run's sessions


class Sleeper(threading.Thread):
    """A session running ``pg_sleep`` inside a transaction, as a hanging migration does."""

    def __init__(self, url: str, seconds: int = 60):
        super().__init__(daemon=True)
        self.engine = create_engine(url, poolclass=NullPool)
        self.connection = self.engine.connect()
        self.pid = str(self.connection.execute(text(ENGINE.session_id_sql())).scalar_one())
        self.connection.execute(text("LOCK TABLE notes IN SHARE MODE"))
        self.seconds = seconds
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        try:
            self.connection.execute(text(f"SELECT pg_sleep({self.seconds})"))
        except OperationalError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def sleeping(self, pg: Server) -> bool:
        return bool(pg.scalars("SELECT count(*) FROM pg_stat_activity WHERE pid = :p "
                               "AND query LIKE '%pg_sleep%' AND state = 'active'",
                               p=int(self.pid))[0])

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:
            pass  # ended by the server
        self.engine.dispose()


def _start_sleeping(pg: Server, url: str) -> Sleeper:
    sleeper = Sleeper(url)
    sleeper.start()
    deadline = time.monotonic() + 10
    while not sleeper.sleeping(pg):
        assert time.monotonic() < deadline, "the sleeper never started"
        time.sleep(0.05)
    return sleeper


def test_end_sessions_stops_a_running_statement_and_frees_its_locks(pg, database, project):
    assert ENGINE.session_id_sql() == "SELECT pg_backend_pid()"
    sleeper = _start_sleeping(pg, pg.url(database))
    try:
        started = time.monotonic()
        ended = ENGINE.end_sessions(project, [sleeper.pid, "999999", "not a pid"])
        took = time.monotonic() - started
        sleeper.join(10)
    finally:
        sleeper.close()
    assert ended == [sleeper.pid]
    assert took < 7, f"end_sessions took {took:.1f} s"
    assert sleeper.error is not None and "cancel" in str(sleeper.error).lower()
    _exclusive_lock_is_granted(pg, database)


def _exclusive_lock_is_granted(pg: Server, database: str) -> None:
    """No session holds a lock on notes any more (or this raises a lock timeout)."""
    engine = create_engine(pg.url(database), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '1s'"))
            conn.execute(text("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE"))
    finally:
        engine.dispose()


def test_end_sessions_terminates_a_session_left_in_its_transaction(pg, database, project):
    blocker = Blocker(pg.url(database), "LOCK TABLE notes IN SHARE MODE")
    pid = str(blocker.connection.execute(text(ENGINE.session_id_sql())).scalar_one())
    try:
        started = time.monotonic()
        ended = ENGINE.end_sessions(project, [pid], grace=1)
        assert ended == [pid]
        assert time.monotonic() - started < 4
        assert pg.scalars("SELECT count(*) FROM pg_stat_activity WHERE pid = :p",
                          p=int(pid)) == [0]
        _exclusive_lock_is_granted(pg, database)
    finally:
        blocker.release()


def test_end_sessions_leaves_sessions_of_other_databases_alone(pg, database, project):
    with scratch_database(pg, prefix="md_eng_b") as other:
        pg.execute(*STATEMENTS, database=other)
        sleeper = _start_sleeping(pg, pg.url(other))
        try:
            assert ENGINE.end_sessions(project, [sleeper.pid]) == []
            assert sleeper.sleeping(pg)
        finally:
            pg.execute(f"SELECT pg_terminate_backend({sleeper.pid})")
            sleeper.join(10)
            sleeper.close()


# ---------------------------------------------------------------- other sessions' writes


def _write(url: str, *statements: str) -> None:
    """Another session's committed writes, from a thread of its own."""
    def run():
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                for statement in statements:
                    conn.execute(text(statement))
        finally:
            engine.dispose()
    writer = threading.Thread(target=run)
    writer.start()
    writer.join(30)


def test_no_writes_since_the_marks_is_an_empty_list(pg, database, project):
    marks = ENGINE.write_marks(project)
    assert marks is not None
    assert ENGINE.discarded_writes(project, marks, set()) == []


def test_discarded_writes_counts_other_sessions_rows_in_tables_the_run_did_not_touch(
        pg, database, project):
    pg.execute("CREATE SCHEMA app", "CREATE TABLE app.events (id INTEGER)",
               "CREATE TABLE quiet (id INTEGER)", "INSERT INTO quiet VALUES (1)",
               database=database)
    url = pg.url(database)
    # A transaction running when the marks are taken, committed after them.
    running = Blocker(url, "INSERT INTO app.events SELECT generate_series(1, 4)")
    try:
        marks = ENGINE.write_marks(project)
        running.connection.commit()
    finally:
        running.release()
    _write(url, "INSERT INTO notes (body) SELECT 'later' FROM generate_series(1, 7)",
           "UPDATE users SET name = name || '!' WHERE id <= 2",
           "DELETE FROM notes WHERE id <= 3",  # of the rows the backup has
           "CREATE TABLE made_later (id INTEGER)", "INSERT INTO made_later VALUES (1), (2)")
    uncommitted = Blocker(url, "INSERT INTO quiet VALUES (2)")  # not written (yet)
    try:
        found = ENGINE.discarded_writes(project, marks, {"notes"})
    finally:
        uncommitted.release()
    assert found == [{"table": "app.events", "rows": 4}, {"table": "made_later", "rows": 2},
                     {"table": "users", "rows": 2}], found

    found = ENGINE.discarded_writes(project, marks, set())
    assert {"table": "notes", "rows": 7} in found, found  # 7 in, 3 out: at least 7 rows


def test_a_row_committed_while_the_restore_waits_for_its_locks_is_counted(
        pg, database, project, tmp_path):
    """The window between a count taken before the restore and the restore's own
    locks: a transaction that commits there writes a row the restore discards."""
    backup = _dump(project, tmp_path)
    marks = ENGINE.write_marks(project)
    url = pg.url(database)
    late = Blocker(url, "INSERT INTO notes (body) VALUES ('late')")  # not committed yet
    outcome = {}

    def restore():
        try:
            outcome["counted"] = ENGINE.restore(project, backup, marks, frozenset({"users"}))
        except Exception as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=restore)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while not pg.scalars(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                "AND wait_event_type = 'Lock'", d=database)[0]:
            assert time.monotonic() < deadline, "the restore never waited for the writer"
            time.sleep(0.05)
        late.connection.commit()
    finally:
        late.release()
        worker.join(60)
    assert "error" not in outcome, outcome
    assert pg.scalars("SELECT count(*) FROM notes WHERE body = 'late'",
                      database=database) == [0], "the scenario: the restore discarded the row"
    counted = outcome["counted"]
    assert counted is not None and counted.writes == [{"table": "notes", "rows": 1}], counted


def test_deleted_and_updated_rows_are_counted(pg, database, project):
    marks = ENGINE.write_marks(project)
    _write(pg.url(database), "DELETE FROM notes WHERE id > 15", "UPDATE users SET name = 'x'",
           "DELETE FROM users WHERE id = 5")
    assert ENGINE.discarded_writes(project, marks, set()) == [
        {"table": "notes", "rows": 5}, {"table": "users", "rows": 5}]


def test_a_dropped_table_counts_its_rows_and_unknown_marks_say_so(pg, database, project):
    marks = ENGINE.write_marks(project)
    _write(pg.url(database), "DROP VIEW user_names", "DROP TABLE users")
    assert ENGINE.discarded_writes(project, marks, set()) == [{"table": "users", "rows": 5}]
    assert ENGINE.discarded_writes(project, None, set()) is None
    assert ENGINE.discarded_writes(project, {"something": "else"}, set()) is None


def test_write_marks_and_their_check_read_a_big_table_once_each(pg, database, project):
    """No hashing, no per-row work in Python: one count per table, in the server."""
    pg.execute("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v "
               "FROM generate_series(1, 200000) g", database=database)
    started = time.monotonic()
    marks = ENGINE.write_marks(project)
    _write(pg.url(database), "UPDATE big SET v = 'x' WHERE id % 1000 = 0")
    found = ENGINE.discarded_writes(project, marks, set())
    took = time.monotonic() - started
    assert found == [{"table": "big", "rows": 200}]
    assert len(str(marks)) < 2000  # a count per table and a snapshot, not the rows
    assert took < 5, took


# ---------------------------------------------------------------- how deeply a backup is checked

# A function that reads a table through the search path, used by an index (built
# after the data) or a check constraint (checked as the data is loaded): pg_dump
# writes it, and the restore fails (pg_restore empties the search path). A
# real-world dump that only a restore shows to be unusable.
UNRESTORABLE = {
    "index": "CREATE INDEX ix_users_plus_lookup ON users (plus_lookup(id))",
    "check": "ALTER TABLE users ADD CONSTRAINT ck_users_lookup CHECK (plus_lookup(id) > 0)",
}
LOOKUP = (
    "CREATE TABLE lookup (n INTEGER)", "INSERT INTO lookup VALUES (1)",
    "CREATE FUNCTION plus_lookup(x INTEGER) RETURNS INTEGER LANGUAGE sql IMMUTABLE "
    "AS 'SELECT x + (SELECT max(n) FROM lookup)'",
)


def _leftovers(pg: Server, database: str) -> list[str]:
    return pg.databases_like(f"{database}_")


def test_a_full_check_restores_the_dump_as_it_is_written(pg, database, project, tmp_path):
    record = take_backup(project, str(tmp_path / "i"), str(tmp_path / "b"), "manual")
    assert record.verified and record.revisions == (REVISION,)
    assert "restored into a scratch database as it was written" in record.verification
    assert "pg_restore --list reads" in record.verification
    assert _leftovers(pg, database) == []


@pytest.mark.parametrize("uses", sorted(UNRESTORABLE))
def test_a_dump_that_does_not_restore_fails_the_full_check_and_passes_the_quick_one(
        pg, database, project, tmp_path, uses):
    pg.execute(*LOOKUP, UNRESTORABLE[uses], database=database)
    folder = tmp_path / "b"

    with pytest.raises(BackupError) as caught:
        take_backup(project, str(tmp_path / "i"), str(folder), "manual")

    assert "failed verification" in caught.value.message
    assert 'relation "lookup" does not exist' in caught.value.message
    assert "Nothing was run" in caught.value.message
    assert list(folder.iterdir()) == []
    assert _leftovers(pg, database) == []

    quick = dataclasses.replace(project, backup_verify="quick")
    record = take_backup(quick, str(tmp_path / "i"), str(folder), "manual")
    assert record.verified and record.revisions == (REVISION,)
    assert "not restored" in record.verification


def test_a_quick_check_reads_the_archive_alone(pg, database, project, tmp_path, monkeypatch):
    def no_scratch(*args, **kwargs):
        raise AssertionError("a quick check must not make a scratch database")
    monkeypatch.setattr(type(ENGINE), "scratch_database", no_scratch)
    quick = dataclasses.replace(project, backup_verify="quick")

    record = take_backup(quick, str(tmp_path / "i"), str(tmp_path / "b"), "manual")

    assert record.verified and record.revisions == (REVISION,)
    assert re.search(r"pg_restore --list reads \d+ entries; revisions read from the archive",
                     record.verification), record.verification


def test_a_file_changed_after_it_was_restored_fails_its_check(pg, database, project, tmp_path):
    path = _dump(project, tmp_path)
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))

    check = ENGINE.check(path, "alembic_version", project)

    assert check.ok is False
    assert "differs from the dump restored" in check.detail, check.detail
    assert _leftovers(pg, database) == []
