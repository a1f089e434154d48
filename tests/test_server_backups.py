"""Backups of real PostgreSQL and MariaDB databases with their own dump tools.

Every test runs against the servers on this machine (see tests/servers.py),
in a database of its own holding the sample app's schema and rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

from dashboard.engines import ENGINES, servers
from dashboard.errors import BackupError
from dashboard.services.backups import (
    get_backup,
    list_backups,
    restore_backup_file,
    take_backup,
    verify_backup,
)
from tests.conftest import MERGE, UNIFIED_REASONING, copy_sample_project
from tests.servers import SERVERS, Server, load_sample, require, scratch_database, snapshot
from tests.sqlite_helpers import project_for

PASSWORD_USER = "md_pw_user"
PASSWORD = "s3cret-pw"
EXTENSION = {"postgresql": ".dump", "mariadb": ".sql"}
DUMP_TOOL = {"postgresql": "pg_dump", "mariadb": "mariadb-dump"}


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request) -> Server:
    return require(SERVERS[request.param])


@pytest.fixture
def database(server):
    with scratch_database(server) as name:
        yield name


@pytest.fixture
def sample_ini(tmp_path) -> Path:
    return copy_sample_project(tmp_path / "project")


@pytest.fixture
def source(server, database, sample_ini) -> str:
    url = server.url(database)
    load_sample(sample_ini, url)
    return url


@pytest.fixture
def project(source):
    return project_for(source)


@pytest.fixture
def instance(tmp_path) -> str:
    return str(tmp_path / "instance")


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "backups"


def backup(project, instance, folder, **kwargs):
    return take_backup(project, instance, str(folder), "upgrade heads", **kwargs)


def files_in(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.exists() else []


def leftovers(server: Server, database: str) -> list[str]:
    """Scratch databases the backup made beside ``database`` and did not drop."""
    return server.databases_like(f"{database}_")


# ---------------------------------------------------------------- taking a backup


def test_backup_is_verified_by_a_restore_into_a_scratch_database(
        server, database, source, project, instance, folder):
    record = backup(project, instance, folder)

    assert record.verified is True
    assert record.revisions == (UNIFIED_REASONING,)
    assert record.dialect == project.dialect
    assert re.fullmatch(rf"{database}__{UNIFIED_REASONING}__\d{{8}}T\d{{6}}Z__[0-9a-f]{{8}}"
                        rf"{re.escape(EXTENSION[server.name])}", record.file_name)
    assert files_in(folder) == sorted([record.file_name, record.file_name + ".json"])
    content = Path(record.path).read_bytes()
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert json.loads(Path(record.path + ".json").read_text())["sha256"] == record.sha256
    if server.postgres:
        assert content.startswith(b"PGDMP")  # pg_dump's custom format
        assert "pg_restore --list reads" in record.verification
        assert "restored into a scratch database" in record.verification
    else:
        assert b"\n-- Dump completed" in content[-200:]
        assert "loaded into a scratch database" in record.verification
    assert f"alembic_version at {UNIFIED_REASONING} as expected" in record.verification
    assert leftovers(server, database) == []  # the scratch database was dropped
    assert get_backup(instance, record.id) == record


def test_backup_restores_into_a_fresh_database_equal_to_the_source(
        server, source, project, instance, folder):
    record = backup(project, instance, folder)

    with scratch_database(server, "md_fresh") as fresh:
        restore_backup_file(project_for(server.url(fresh)), record)
        assert snapshot(server.url(fresh)) == snapshot(source)
    assert snapshot(source)["rows"]["chat_messages"]  # rows were compared, not just tables


def test_restore_brings_back_exactly_the_backed_up_state(
        server, database, source, project, instance, folder):
    record = backup(project, instance, folder)
    before = snapshot(source)

    later = ["CREATE TABLE added_later (id INTEGER PRIMARY KEY, note VARCHAR(20))",
             "INSERT INTO added_later VALUES (1, 'after the backup')",
             "CREATE VIEW later_view AS SELECT id FROM added_later",
             "DELETE FROM chat_messages WHERE id > 2",
             "UPDATE users SET display_name = 'changed' WHERE id = 1",
             f"UPDATE alembic_version SET version_num = '{MERGE}'"]
    if server.postgres:
        later += ["CREATE SCHEMA later_schema",
                  "CREATE TABLE later_schema.orphan (x INTEGER)",
                  "CREATE SEQUENCE public.later_seq"]
    else:
        later += ["CREATE PROCEDURE later_proc() SELECT 1"]
    server.execute(*later, database=database)
    assert snapshot(source) != before

    restore_backup_file(project, record)

    after = snapshot(source)
    assert after == before
    assert "added_later" not in after["schema"] and after["views"] == []
    assert project.engine.live_revisions(project) == (UNIFIED_REASONING,)
    if server.postgres:
        assert server.scalars("SELECT nspname FROM pg_namespace WHERE nspname = 'later_schema' "
                              "OR nspname = 'public'", database=database) == ["public"]
        assert server.scalars("SELECT relname FROM pg_class WHERE relname = 'later_seq'",
                              database=database) == []
        # The public schema came back usable by everyone, as PostgreSQL 15 makes it.
        assert server.scalars("SELECT has_schema_privilege('public', 'public', 'USAGE')",
                              database=database) == [True]
    else:
        assert server.scalars("SELECT routine_name FROM information_schema.routines "
                              "WHERE routine_schema = :db", db=database) == []
    # Restoring twice in a row is as good as once.
    restore_backup_file(project, record)
    assert snapshot(source) == before


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_failed_postgres_restore_leaves_the_database_as_it_was(
        server, database, source, project, instance, folder):
    role = f"md_gone_{database[-8:]}"
    server.execute(f"CREATE ROLE {role}")
    try:
        # The dump grants to a role that is gone by the time it is restored: the
        # GRANT near the end of the script fails, after every table was dropped and made.
        server.execute(f"GRANT SELECT ON users TO {role}", database=database)
        record = backup(project, instance, folder)
        server.execute(f"REVOKE SELECT ON users FROM {role}", database=database)
    finally:
        server.execute(f"DROP ROLE {role}")
    server.execute("CREATE TABLE added_later (id INTEGER)", "DELETE FROM chat_messages",
                   database=database)
    changed = snapshot(source)

    with pytest.raises(BackupError) as caught:
        restore_backup_file(project, record)

    assert f'role "{role}" does not exist' in caught.value.message
    assert "left as it was" in caught.value.message
    assert snapshot(source) == changed  # one transaction: nothing of it stayed


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_backup_of_another_database_cannot_be_restored_over_a_sqlite_one(
        server, project, instance, folder, tmp_path):
    record = backup(project, instance, folder)
    with pytest.raises(BackupError, match="is of a postgresql database, not sqlite"):
        restore_backup_file(project_for(f"sqlite:///{tmp_path / 'x.db'}"), record)


def test_changed_revisions_are_refused_and_leave_nothing(
        server, database, project, instance, folder):
    with pytest.raises(BackupError, match="changed while the backup was taken"):
        backup(project, instance, folder, expected_revisions=(MERGE,))
    assert files_in(folder) == []
    assert list_backups(instance) == []
    assert leftovers(server, database) == []


# ---------------------------------------------------------------- checking again


def test_verify_backup_reads_the_file_alone_or_restores_it_on_the_server(
        server, database, project, instance, folder):
    record = backup(project, instance, folder)

    alone = verify_backup(instance, record.id)
    assert alone.verified is True
    assert "no server given" in alone.verification
    assert f"revisions {UNIFIED_REASONING} match the manifest" in alone.verification

    on_server = verify_backup(instance, record.id, project=project)
    assert on_server.verified is True
    assert "scratch database" in on_server.verification
    assert leftovers(server, database) == []

    Path(record.path).write_bytes(Path(record.path).read_bytes()[:-300])  # cut short
    damaged = verify_backup(instance, record.id, project=project)
    assert damaged.verified is False
    assert "does not match the manifest" in damaged.verification


def test_a_damaged_dump_fails_its_check_and_its_scratch_database_is_dropped(
        server, database, project, instance, folder, tmp_path):
    record = backup(project, instance, folder)
    content = Path(record.path).read_bytes()
    damaged = tmp_path / ("damaged" + EXTENSION[server.name])
    damaged.write_bytes(content[: len(content) * 2 // 3])

    check = project.engine.check(str(damaged), "alembic_version", project)

    assert check.ok is False
    assert check.detail
    assert leftovers(server, database) == []
    with pytest.raises(BackupError):
        project.engine.restore(project, str(damaged))
    assert project.engine.live_revisions(project) == (UNIFIED_REASONING,)


# ---------------------------------------------------------------- refusals


def test_missing_tool_is_refused_before_anything_is_written(
        server, database, source, project, instance, folder, tmp_path, monkeypatch):
    record = backup(project, instance, folder / "earlier")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    with pytest.raises(BackupError) as caught:
        backup(project, instance, folder)

    message = caught.value.message
    assert DUMP_TOOL[server.name] in message and "not found on the PATH" in message
    assert "Install the" in message and "Nothing was run" in message
    assert not folder.exists() or files_in(folder) == ["earlier"]
    assert [r.id for r in list_backups(instance)] == [record.id]

    server.execute("DELETE FROM chat_messages", database=database)
    changed = snapshot(source)
    with pytest.raises(BackupError, match="not found on the PATH"):
        restore_backup_file(project, record)
    assert snapshot(source) == changed


FAKE_VERSIONS = {
    "postgresql": ("pg_dump", "pg_dump (PostgreSQL) 9.6.0"),
    "mariadb": ("mariadb-dump", "mariadb-dump  Ver 9.11 Distrib 5.5.68-MariaDB, for Linux"),
}


def test_a_client_older_than_the_server_is_refused(
        server, database, project, instance, folder, tmp_path, monkeypatch):
    tool, version = FAKE_VERSIONS[server.name]
    fake = tmp_path / "old-bin"
    fake.mkdir()
    script = fake / tool
    # A real, if old-looking, program: it only ever answers --version.
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "{version}" && exit 0\n'
                      f'echo "{tool}: this fake must never dump" >&2\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")

    with pytest.raises(BackupError) as caught:
        backup(project, instance, folder)

    message = caught.value.message
    if server.postgres:
        server_version = server.scalars("SHOW server_version")[0].split()[0]
        assert "pg_dump is version 9.6.0" in message
        assert f"the PostgreSQL server is version {server_version}" in message
        assert f"Install the PostgreSQL {server_version.split('.')[0]} (or later)" in message
    else:
        assert "mariadb-dump is version 5.5.68" in message and "server is version" in message
    assert "must never dump" not in message
    assert files_in(folder) == [] and list_backups(instance) == []


def test_an_unreachable_server_is_refused(server, database, instance, folder):
    closed = make_url(server.url(database)).set(port=1)
    project = project_for(closed.render_as_string(hide_password=False))

    with pytest.raises(BackupError) as caught:
        backup(project, instance, folder)

    assert caught.value.message.startswith(f"Cannot connect to the database {database} on")
    assert "Nothing was run" in caught.value.message
    assert files_in(folder) == []


def test_url_parameters_the_tools_cannot_honour_are_refused(server, database, instance, folder):
    project = project_for(server.url(database) + "?application_nam=typo")
    with pytest.raises(BackupError) as caught:
        backup(project, instance, folder)
    assert "?application_nam=" in caught.value.message and "Supported:" in caught.value.message
    assert files_in(folder) == []


SOCKETS = {"postgresql": ("host", "/var/run/postgresql"),
           "mariadb": ("unix_socket", "/run/mysqld/mysqld.sock")}


def test_a_unix_socket_from_the_url_is_used(server, database, source, instance, folder):
    key, path = SOCKETS[server.name]
    if not os.path.exists(path):
        pytest.skip(f"no server socket at {path}")
    parsed = make_url(source)
    url = URL.create(parsed.drivername, username=parsed.username, database=parsed.database,
                     query={key: path})
    project = project_for(url.render_as_string(hide_password=False))

    record = backup(project, instance, folder)

    assert record.verified is True and record.revisions == (UNIFIED_REASONING,)


def test_unsupported_dialects_are_refused(tmp_path, instance, folder):
    project = project_for("mssql+pyodbc://scott:tiger@localhost/app")
    with pytest.raises(BackupError) as caught:
        backup(project, instance, folder)
    assert caught.value.message == "Backups of mssql databases are not supported yet"
    assert files_in(folder) == []


# ---------------------------------------------------------------- the password


@pytest.fixture
def password_user(server, database):
    server.create_user(PASSWORD_USER, PASSWORD, database)
    yield server.url(database, user=PASSWORD_USER, password=PASSWORD)
    server.drop_user(PASSWORD_USER, database)


class ProcessWatch:
    """Reads every process's command line (and environment) every few ms."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self.exposed: list[str] = []
        self.tools_seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        data = Path("/proc", pid, part).read_bytes()
                    except OSError:
                        continue  # gone already
                    if self.secret in data:
                        self.exposed.append(f"{pid}/{part}: {data[:200]!r}")
                    if part == "cmdline" and data:
                        self.tools_seen.add(os.path.basename(data.split(b"\0")[0]).decode())
            self._stop.wait(0.002)


def test_the_password_never_appears_anywhere(
        server, database, password_user, sample_ini, instance, folder, tmp_path,
        monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    load_sample(sample_ini, password_user)
    project = project_for(password_user)
    assert make_url(project.database_url).password == PASSWORD
    messages = []

    launched: list[tuple[list[str], dict | None]] = []

    class RecordedPopen(subprocess.Popen):  # runs the real tool; notes how it was started
        def __init__(self, args, *rest, **kwargs):
            launched.append((list(args), kwargs.get("env")))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordedPopen)

    with ProcessWatch(PASSWORD.encode()) as watch:
        record = backup(project, instance, folder)
        restore_backup_file(project, record)
        verify_backup(instance, record.id, project=project)
        # A tool failure, as the password's user.
        if server.postgres:
            server.execute("CREATE TABLE admin_only (x INTEGER)", database=database)
        else:
            pattern = database.replace("_", "\\_")  # as the grant names it
            server.execute(f"REVOKE EVENT ON `{pattern}`.* FROM '{PASSWORD_USER}'@'%'")
        with pytest.raises(BackupError) as tool_failed:
            backup(project, instance, folder)
        messages.append(tool_failed.value)
        # A connection failure, as the password's user.
        gone = project_for(make_url(password_user).set(database="md_no_such_db")
                           .render_as_string(hide_password=False))
        with pytest.raises(BackupError) as unreachable:
            backup(gone, instance, folder)
        messages.append(unreachable.value)

    expected_tools = {"pg_dump", "pg_restore", "psql"} if server.postgres else \
        {"mariadb-dump", "mariadb"}
    started = {os.path.basename(argv[0]) for argv, _ in launched}
    assert expected_tools <= started
    for argv, env in launched:
        assert PASSWORD not in " ".join(argv)
        assert PASSWORD not in " ".join((env or {}).values())  # a file holds it, not PGPASSWORD
    # Seen from outside too: every process's command line and environment, as ps shows them.
    assert watch.tools_seen & expected_tools, "the watch must have seen a tool run"
    assert watch.exposed == []
    assert "permission denied" in messages[0].message or "Access denied" in messages[0].message
    assert "Cannot connect" in messages[1].message
    for error in messages:
        assert PASSWORD not in f"{error.message} {error.detail} {error!r}"
    assert PASSWORD not in record.file_name and PASSWORD not in record.path
    assert PASSWORD not in Path(record.path + ".json").read_text()
    for name in os.listdir(instance):  # the store, with its -wal file if any
        assert PASSWORD.encode() not in Path(instance, name).read_bytes()
    assert PASSWORD not in caplog.text
    assert record.database == project.masked_url and "***" in record.database
    assert os.listdir(private_tmp) == []  # no credential file left behind
    assert leftovers(server, database) == []


@pytest.mark.parametrize("password", ['qu"ote\\back:slash #hash', "sp ace'n;semi=eq"])
def test_passwords_with_special_characters_work(server, database, sample_ini, instance,
                                                folder, password):
    escaped = password.replace("'", "''") if server.postgres else \
        password.replace("\\", "\\\\").replace("'", "\\'")
    server.create_user(PASSWORD_USER, escaped, database)
    try:
        url = server.url(database, user=PASSWORD_USER, password=password)
        load_sample(sample_ini, url)
        record = backup(project_for(url), instance, folder)
        restore_backup_file(project_for(url), record)
    finally:
        server.drop_user(PASSWORD_USER, database)
    assert record.verified is True


def test_credential_files_are_private_and_removed():
    address = servers.ServerAddress("mysql", "app", "db.example", 3306, "u", 'p"w\\x')
    with servers.mariadb_option_file(address) as path:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        content = Path(path).read_text()
        assert 'password="p\\"w\\\\x"' in content and "protocol=TCP" in content
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))

    postgres = servers.ServerAddress("postgresql", "app", "db.example", 5432, "u", "a:b\\c")
    os.environ["PGPASSWORD"] = "inherited"
    try:
        with servers.postgres_environment(postgres) as env:
            passfile = env["PGPASSFILE"]
            assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
            assert Path(passfile).read_text() == "*:*:*:*:a\\:b\\\\c\n"
            assert "PGPASSWORD" not in env  # it would take precedence over the file
            assert env["PGHOST"] == "db.example" and env["PGUSER"] == "u"
    finally:
        del os.environ["PGPASSWORD"]
    assert not os.path.exists(passfile)


def test_tool_versions_are_read_as_the_tools_print_them():
    assert servers.parse_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == \
        (15, 20)
    assert servers.parse_version("pg_dump (PostgreSQL) 9.6.0") == (9, 6, 0)
    assert servers.postgres_major((9, 6, 0)) == (9, 6) < servers.postgres_major((15, 2))
    assert servers.parse_version(
        "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, for debian-linux-gnu") == (10, 11, 19)
    assert servers.parse_version("mysqldump  Ver 8.0.36 for Linux on x86_64") == (8, 0, 36)


def test_scratch_names_fit_the_servers_limits():
    long_name = "é" * 40  # 80 bytes in UTF-8
    postgres = ENGINES["postgresql"].scratch_name(long_name)
    assert len(postgres.encode()) <= 63 and re.search(r"_mdverify_[0-9a-f]{8}$", postgres)
    assert len(ENGINES["mysql"].scratch_name("x" * 64)) <= 64
