"""The dashboard's own store and instance folder when they go wrong: every error of
the folder or the store file is one clear 503/507; the audit log is kept twice
(the store and a JSON-lines journal beside it) and the backups are listed again
from their manifests when the store is lost."""

from __future__ import annotations

import errno
import json
import sqlite3
from pathlib import Path

import pytest

from dashboard import create_app
from dashboard.errors import InsufficientStorage, Unavailable
from dashboard.services import backups, store
from tests.conftest import UNIFIED_REASONING, migrate
from tests.sqlite_helpers import mounted_tmpfs


@pytest.fixture
def at_head(sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, "heads")
    return db_path


def sqlite_error(code: int, message: str) -> sqlite3.Error:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    return exc


def test_full_read_only_and_damaged_say_so_and_anything_else_is_left_alone(tmp_path):
    where = str(tmp_path / "dashboard.db")
    full = store.storage_error(OSError(errno.ENOSPC, "No space left on device"), where)
    assert isinstance(full, InsufficientStorage) and "full" in full.message
    assert isinstance(store.storage_error(sqlite_error(13, "database or disk is full"), where),
                      InsufficientStorage)
    for exc in (OSError(errno.EROFS, "Read-only file system"),
                sqlite_error(8, "attempt to write a readonly database"),
                sqlite_error(8 | (1 << 8), "readonly: cannot lock")):  # an extended code
        answer = store.storage_error(exc, where)
        assert isinstance(answer, Unavailable) and "writ" in answer.message, exc
    damaged = store.storage_error(sqlite_error(26, "file is not a database"), where)
    assert isinstance(damaged, Unavailable)
    assert where in damaged.message and "Move it aside" in damaged.message
    assert store.storage_error(sqlite_error(5, "database is locked"), where) is None
    assert store.storage_error(sqlite_error(19, "UNIQUE constraint failed"), where) is None
    assert store.storage_error(ValueError("not a storage problem"), where) is None


def test_the_audit_journal_holds_every_entry_and_never_a_password(
        app_config, sample_ini, db_path, instance_dir):
    migrate(sample_ini, f"sqlite:///{db_path}", "heads")
    app_config["DASHBOARD_DATABASE_URL"] = f"sqlite://alice:s3cret@/{db_path}"
    client = create_app(app_config).test_client()
    assert client.post("/api/backups", json={}).status_code == 201
    db_path.unlink()  # the next backup fails, and its error is recorded
    assert client.post("/api/backups", json={}).status_code >= 400
    entries = client.get("/api/audit").get_json()["entries"]
    assert [e["event"] for e in entries] == ["backup_failed", "backup_taken"]

    journal = instance_dir / "audit.jsonl"
    text = journal.read_text()
    assert "s3cret" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(line["id"], line["event"]) for line in reversed(lines)] == \
        [(e["id"], e["event"]) for e in entries]
    assert lines[0]["database"] == f"sqlite://alice:***@/{db_path}"
    assert lines[0]["to_revs"] == [UNIFIED_REASONING]


def test_a_new_store_reads_the_journal_back_and_lists_the_backups_again(
        app_config, at_head, instance_dir):
    client = create_app(app_config).test_client()
    taken = [client.post("/api/backups", json={}).get_json() for _ in range(2)]
    before = client.get("/api/audit").get_json()["entries"]
    # A backup of another database, in the same folder: not this target's.
    manifest = json.loads(Path(taken[0]["path"] + ".json").read_text())
    orphan = Path(taken[0]["path"]).with_name("elsewhere__base__x.sqlite3")
    orphan.write_bytes(b"")
    Path(str(orphan) + ".json").write_text(json.dumps({
        **manifest, "id": "20200101T000000Z-0000abcd", "database": "sqlite:////elsewhere.db"}))
    with open(instance_dir / "audit.jsonl", "a") as journal:
        journal.write('{"torn": ')  # a crash in the middle of a line
    store.close_all()
    (instance_dir / "dashboard.db").rename(instance_dir / "dashboard.db.damaged")
    for suffix in ("-wal", "-shm"):
        (instance_dir / f"dashboard.db{suffix}").unlink(missing_ok=True)

    client = create_app(app_config).test_client()
    listed = client.get("/api/backups").get_json()["backups"]
    assert [b["id"] for b in listed] == [b["id"] for b in reversed(taken)]
    assert listed[0] == {**taken[1], "verification": listed[0]["verification"]}
    assert client.get("/api/audit").get_json()["entries"] == before
    assert client.post("/api/backups", json={}).status_code == 201
    after = client.get("/api/audit").get_json()["entries"]
    assert after[0]["id"] == before[0]["id"] + 1 and after[1:] == before


def test_the_dashboard_starts_with_a_read_only_instance_folder(app_config, at_head,
                                                               instance_dir):
    del app_config["DASHBOARD_SECRET_KEY"]  # it would be kept in the instance folder
    with mounted_tmpfs(instance_dir, "8m", read_only=True):
        client = create_app(app_config).test_client()
        answer = client.get("/api/runs")
        assert answer.status_code == 503
        assert "read-only" in answer.get_json()["error"]["message"]
        assert client.get("/api/status").get_json()["state"] == "up_to_date"
        page = client.get("/backups")
        assert page.status_code == 503 and b"read-only" in page.data
    store.close_all()


def test_backups_are_listed_again_only_with_their_file(app_config, at_head, instance_dir):
    client = create_app(app_config).test_client()
    kept, lost = (client.post("/api/backups", json={}).get_json() for _ in range(2))
    Path(lost["path"]).unlink()
    store.close_all()
    (instance_dir / "dashboard.db").unlink()
    added = backups.import_manifests(str(instance_dir), str(instance_dir / "backups"),
                                     kept["database"])
    assert [record.id for record in added] == [kept["id"]]
    assert backups.import_manifests(str(instance_dir), str(instance_dir / "backups"),
                                    kept["database"]) == []
