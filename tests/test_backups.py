"""Backups on real SQLite files and real file systems: taken, verified, kept, restored."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from dashboard.engines import sqlite as sqlite_engine
from dashboard.errors import BackupError, BadRequest, NotFound
from dashboard.services import backups
from dashboard.services.backups import (
    BackupRecord,
    apply_retention,
    delete_backup,
    download_name,
    get_backup,
    iter_backup_file,
    list_backups,
    restore_backup_file,
    take_backup,
    verify_backup,
)
from tests.sqlite_helpers import (
    flip_bytes,
    integrity,
    make_database,
    mounted_tmpfs,
    project_for,
    snapshot,
)

FILE_NAME = re.compile(r"app__aaa111__\d{8}T\d{6}Z__[0-9a-f]{8}\.sqlite3")


@pytest.fixture
def source(tmp_path) -> Path:
    return make_database(tmp_path / "app.db", rows=200)


@pytest.fixture
def project(source):
    return project_for(f"sqlite:///{source}")


@pytest.fixture
def instance(tmp_path) -> str:
    return str(tmp_path / "instance")


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


def backup(project, instance, folder, action="upgrade heads", **kwargs) -> BackupRecord:
    return take_backup(project, instance, str(folder), action, **kwargs)


# ---------------------------------------------------------------- taking a backup


def test_a_partial_copy_left_by_a_killed_backup_is_removed_by_the_next(
        tmp_path, project, instance):
    """A backup killed mid-copy leaves its .partial file (a physical MariaDB copy:
    0.6 GiB per 0.5 GiB database): the next backup in that folder removes it, but
    never one whose writer still lives."""
    folder = tmp_path / "backups"
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    first = backup(project, instance, folder)
    dead_name = f".{first.file_name}.{killed.pid}.partial"
    (folder / dead_name).write_bytes(b"x" * 4096)
    living = f".{first.file_name}.{os.getpid()}.partial"
    (folder / living).write_bytes(b"y" * 4096)
    killed.kill()
    killed.wait()

    second = backup(project, instance, folder)

    assert dead_name not in files_in(folder)
    assert living in files_in(folder)
    assert {first.file_name, second.file_name} <= set(files_in(folder))


def test_backup_is_a_verified_copy_of_the_source(tmp_path, source, project, instance):
    folder = tmp_path / "backups" / "nested"  # created on demand
    record = backup(project, instance, folder)

    assert snapshot(record.path) == snapshot(source)  # schema, every row, alembic_version
    assert integrity(record.path) == ["ok"]
    assert record.revisions == ("aaa111",)
    assert record.verified is True
    assert "integrity_check ok" in record.verification
    assert record.action == "upgrade heads"
    assert record.dialect == "sqlite"
    assert FILE_NAME.fullmatch(record.file_name)
    assert record.path == str(folder / record.file_name)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", record.id)
    assert record.file_name.endswith(f"__{record.id.split('-')[1]}.sqlite3")
    # Only the file and its manifest: no temporary file, no -wal/-shm/-journal.
    assert files_in(folder) == sorted([record.file_name, record.file_name + ".json"])


def test_manifest_store_and_checksum_agree(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")

    content = Path(record.path).read_bytes()
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert record.size == len(content)
    manifest = json.loads(Path(record.path + ".json").read_text())
    assert manifest == {**record.as_json(), "version_table": "alembic_version"}
    assert set(manifest) >= {
        "id", "created_at", "created_at_iso", "database", "dialect", "revisions", "action",
        "path", "file_name", "size", "sha256", "verified", "verification",
        "copy_seconds", "verify_seconds",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created_at_iso"])
    assert get_backup(instance, record.id) == record
    assert list_backups(instance) == [record]


def test_a_hash_and_a_question_mark_in_the_instance_folder_keep_the_store_inside(tmp_path,
                                                                               project):
    instance = tmp_path / "in#st?ance"
    record = backup(project, str(instance), tmp_path / "backups")
    assert list_backups(str(instance)) == [record]
    assert "dashboard.db" in files_in(instance)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "backups", "in#st?ance"]


def test_no_credentials_in_names_manifest_or_store(tmp_path, source, instance):
    project = project_for(f"sqlite://alice:s3cret@/{source}")
    assert project.masked_url == f"sqlite://alice:***@/{source}"

    record = backup(project, instance, tmp_path / "backups")

    assert record.database == project.masked_url
    assert get_backup(instance, record.id).database == project.masked_url
    assert "s3cret" not in record.file_name and "alice" not in record.file_name
    assert "s3cret" not in Path(record.path + ".json").read_text()
    assert b"s3cret" not in Path(instance, "dashboard.db").read_bytes()
    assert snapshot(record.path) == snapshot(source)


def test_plain_url_is_stored_as_its_masked_form(tmp_path, source, instance):
    project = project_for(f"sqlite:///{source}")
    record = backup(project, instance, tmp_path / "backups")
    assert record.database == project.masked_url == f"sqlite:///{source}"


def test_no_version_table_means_base(tmp_path, instance):
    source = tmp_path / "fresh.db"
    with closing(sqlite3.connect(source)) as conn:
        conn.execute("CREATE TABLE t (x)")
    record = backup(project_for(f"sqlite:///{source}"), instance, tmp_path / "backups")
    assert record.revisions == ()
    assert record.file_name.startswith("fresh__base__")


def test_several_heads_are_named_with_a_count(tmp_path, instance):
    source = make_database(tmp_path / "app.db", revisions=("bbb", "aaa"))
    record = backup(project_for(f"sqlite:///{source}"), instance, tmp_path / "backups")
    assert record.revisions == ("aaa", "bbb")
    assert record.file_name.startswith("app__aaa+1__")


@pytest.mark.parametrize("journal_mode, fast_copy", [
    ("delete", True), ("delete", False), ("wal", True),
])
def test_backup_while_the_application_writes(tmp_path, instance, monkeypatch, journal_mode,
                                             fast_copy):
    # Small steps, so the writer's commits land between them and SQLite restarts the copy;
    # or the whole file copied under a read lock (rollback-journal mode).
    monkeypatch.setattr(sqlite_engine, "COPY_STEP_BYTES", 64 * 1024)
    monkeypatch.setattr(sqlite_engine, "FAST_COPY", fast_copy)
    source = make_database(tmp_path / "app.db", rows=3000, payload=1000,
                           journal_mode=journal_mode)
    stop, errors, commits = threading.Event(), [], []

    def application():
        try:
            with closing(sqlite3.connect(source, timeout=30)) as conn:
                while not stop.is_set():
                    with conn:  # a user and their note, always together
                        user = conn.execute(
                            "INSERT INTO users (name, bio) VALUES ('w', randomblob(1000))"
                        ).lastrowid
                        conn.execute("INSERT INTO notes (user_id, body) VALUES (?, 'w')", (user,))
                    commits.append(user)
                    stop.wait(0.001)  # an application does a little else between commits
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    writer = threading.Thread(target=application)
    writer.start()
    try:
        while len(commits) < 20 and not errors:
            stop.wait(0.01)
        record = backup(project_for(f"sqlite:///{source}"), instance, tmp_path / "backups")
        during = len(commits)
    finally:
        stop.set()
        writer.join()

    assert errors == []
    assert during > 20, "the application kept writing during the backup"
    assert integrity(record.path) == ["ok"]
    with closing(sqlite3.connect(record.path)) as copy:
        users = copy.execute("SELECT count(*) FROM users WHERE name = 'w'").fetchone()[0]
        notes = copy.execute("SELECT count(*) FROM notes WHERE body = 'w'").fetchone()[0]
        orphans = copy.execute(
            "SELECT count(*) FROM notes WHERE user_id NOT IN (SELECT id FROM users)"
        ).fetchone()[0]
    assert users == notes >= 20  # a transaction is in the copy whole or not at all
    assert orphans == 0
    assert users <= len(commits)


# ---------------------------------------------------------------- refusing


def test_folder_under_a_regular_file_is_refused(tmp_path, project, instance):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")

    with pytest.raises(BackupError, match="cannot be created.*Nothing was run"):
        backup(project, instance, blocker / "backups")

    assert blocker.read_text() == "a file where a folder should be"
    assert list_backups(instance) == []


def test_read_only_folder_is_refused(tmp_path, project, instance):
    # Root ignores permission bits, so a read-only mount stands in for chmod 0o500.
    with mounted_tmpfs(tmp_path / "readonly", "1m", read_only=True) as folder:
        with pytest.raises(BackupError, match="not writable.*Nothing was run"):
            backup(project, instance, folder)
        assert files_in(folder) == []
    assert list_backups(instance) == []


def test_too_little_free_space_is_refused_before_copying(tmp_path, instance):
    source = make_database(tmp_path / "app.db", rows=1500, payload=1000)  # about 1.7 MiB
    project = project_for(f"sqlite:///{source}")
    with mounted_tmpfs(tmp_path / "small", "1m") as folder:
        with pytest.raises(BackupError, match="Not enough free space.*Nothing was run"):
            backup(project, instance, folder)
        assert files_in(folder) == []
    assert list_backups(instance) == []


@pytest.mark.parametrize(("short_by", "stage"), [
    (0, "saving the backup"),  # the copy fits exactly, its manifest does not
    (8192, "copying the database"),  # SQLite itself meets the full disk
])
def test_disk_filling_up_during_the_backup(
    tmp_path, project, source, instance, monkeypatch, short_by, stage
):
    # The free-space check is loosened so that it passes, then the real disk runs out
    # while the backup is written: the error says so and nothing is left behind.
    monkeypatch.setattr(backups, "FREE_SPACE_MARGIN_BYTES", -short_by)
    monkeypatch.setattr(backups, "FREE_SPACE_MARGIN_RATIO", 0)
    with closing(sqlite3.connect(source)) as conn:
        size = conn.execute("PRAGMA page_count").fetchone()[0] * 4096
    with mounted_tmpfs(tmp_path / "small", "1m") as folder:
        filler = folder / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(folder).free - size + short_by))
        assert shutil.disk_usage(folder).free == size - short_by

        with pytest.raises(BackupError, match=f"{stage} failed: the disk .* is full"):
            backup(project, instance, folder)

        assert files_in(folder) == ["filler"]
    assert list_backups(instance) == []


def test_missing_database_is_refused_and_not_created(tmp_path, instance):
    missing = tmp_path / "missing.db"
    with pytest.raises(BackupError, match="does not exist.*Nothing was run"):
        backup(project_for(f"sqlite:///{missing}"), instance, tmp_path / "backups")
    assert not missing.exists()
    assert files_in(tmp_path / "backups") == []


def test_corrupt_database_is_refused(tmp_path, instance):
    source = make_database(tmp_path / "app.db", rows=500)
    flip_bytes(source, 2 * 4096)  # the header of page 3, a b-tree page
    with pytest.raises(BackupError, match="Nothing was run"):
        backup(project_for(f"sqlite:///{source}"), instance, tmp_path / "backups")
    assert files_in(tmp_path / "backups") == []
    assert list_backups(instance) == []


def test_revisions_other_than_expected_are_refused(tmp_path, project, instance):
    with pytest.raises(BackupError, match="aaa111.*expected at bbb222.*Nothing was run"):
        backup(project, instance, tmp_path / "backups", expected_revisions=["bbb222"])
    assert files_in(tmp_path / "backups") == []
    assert list_backups(instance) == []


def test_expected_revisions_that_match_are_accepted(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups", expected_revisions=("aaa111",))
    assert record.revisions == ("aaa111",)


def test_other_dialects_are_not_supported_yet(tmp_path, instance):
    project = project_for("mssql+pyodbc://scott:tiger@localhost/app")
    with pytest.raises(BackupError) as caught:
        backup(project, instance, tmp_path / "backups")
    assert caught.value.message == "Backups of mssql databases are not supported yet"
    assert files_in(tmp_path / "backups") == []


# ---------------------------------------------------------------- checking, keeping


def test_verify_backup_confirms_an_intact_file(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")
    checked = verify_backup(instance, record.id)
    assert checked.verified is True
    assert "sha256 matches the manifest" in checked.verification
    assert get_backup(instance, record.id).verification == checked.verification


def test_verify_backup_detects_flipped_bytes(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")
    flip_bytes(record.path, record.size // 2, 16)

    checked = verify_backup(instance, record.id)

    assert checked.verified is False
    assert "does not match the manifest" in checked.verification
    stored = get_backup(instance, record.id)
    assert (stored.verified, stored.verification) == (False, checked.verification)


def test_verify_backup_reports_a_missing_file(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")
    os.remove(record.path)
    checked = verify_backup(instance, record.id)
    assert checked.verified is False
    assert "missing" in checked.verification


def test_retention_keeps_the_newest(tmp_path, project, instance):
    taken = [backup(project, instance, tmp_path / "backups", action=f"run {i}")
             for i in range(4)]

    deleted = apply_retention(instance, keep=2)

    assert [r.id for r in deleted] == [taken[1].id, taken[0].id]
    assert [r.id for r in list_backups(instance)] == [taken[3].id, taken[2].id]
    for record in taken[:2]:
        assert not os.path.exists(record.path)
        assert not os.path.exists(record.path + ".json")
    assert apply_retention(instance, keep=2) == []


def test_delete_backup_removes_file_manifest_and_record(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")
    delete_backup(instance, record.id)
    assert files_in(tmp_path / "backups") == []
    with pytest.raises(NotFound):
        get_backup(instance, record.id)


def test_unknown_id_is_not_found(instance):
    with pytest.raises(NotFound):
        get_backup(instance, "20240101T000000Z-0123abcd")


@pytest.mark.parametrize("backup_id", [
    "", "latest", "../../etc/passwd", "20240101T000000Z-0123ABCD",
    "20240101T000000Z-0123abcd/../x", "20240101T000000Z-0123abc",
])
def test_malformed_id_is_a_bad_request(instance, backup_id):
    with pytest.raises(BadRequest):
        get_backup(instance, backup_id)
    with pytest.raises(BadRequest):
        delete_backup(instance, backup_id)


def test_download_streams_the_file(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")
    assert b"".join(iter_backup_file(record, chunk=4096)) == Path(record.path).read_bytes()
    assert download_name(record) == record.file_name
    os.remove(record.path)
    with pytest.raises(NotFound):
        iter_backup_file(record)


# ---------------------------------------------------------------- restoring


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_restore_brings_back_schema_rows_and_version(tmp_path, instance, journal_mode):
    live = make_database(tmp_path / "app.db", rows=100, journal_mode=journal_mode)
    project = project_for(f"sqlite:///{live}")
    before, inode = snapshot(live), os.stat(live).st_ino
    record = backup(project, instance, tmp_path / "backups")

    with closing(sqlite3.connect(live)) as application:  # stays open across the restore
        with application:
            application.execute("CREATE TABLE added_later (x INTEGER)")
            application.execute("DELETE FROM notes WHERE id % 2 = 0")
            application.execute("DROP INDEX ix_users_name")
            application.execute("UPDATE alembic_version SET version_num = 'bbb222'")
        assert snapshot(live) != before

        restore_backup_file(project, record)

        assert snapshot(live) == before
        assert os.stat(live).st_ino == inode  # in place, not a new file
        assert application.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("aaa111",)]
        assert application.execute("SELECT count(*) FROM notes").fetchone() == (200,)
    assert integrity(live) == ["ok"]


def test_restore_refuses_a_changed_backup_file(tmp_path, project, source, instance):
    record = backup(project, instance, tmp_path / "backups")
    flip_bytes(record.path, record.size // 2, 16)
    with closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("DELETE FROM users")
    before = snapshot(source)

    with pytest.raises(BackupError, match="changed since it was taken.*not changed"):
        restore_backup_file(project, record)

    assert snapshot(source) == before


def test_restore_checks_the_result_against_the_record(tmp_path, project, instance):
    record = backup(project, instance, tmp_path / "backups")
    with pytest.raises(BackupError, match="is at aaa111, not at zzz999"):
        restore_backup_file(project, replace(record, revisions=("zzz999",)))
