"""The parsed revision headers kept on disk in the instance folder.

A restart is a new app on the same instance folder: it must answer as the
first one did, read the headers from the cache file rather than the revision
files, and still see a file that changed (in place, same size, even with its
modification time put back), a damaged cache file, or a missing one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dashboard.services.revisions import RACY_NS
from tests import history_factory as hf
from tests.conftest import client_for

CACHE = "history-cache.json"


def _settle(folder: Path) -> None:
    """Date every file well in the past, as in a project not being edited:
    a file changed within the last moments is read again rather than cached."""
    past = time.time() - 3600
    for path in [*folder.rglob("*.py"), *(p for p in folder.rglob("*") if p.is_dir())]:
        os.utime(path, (past, past))


@pytest.fixture
def project(tmp_path):
    spec = hf.linear(40)
    ini = hf.make_project(tmp_path / "project", spec)
    _settle(ini.parent)
    url = hf.stamp_database(tmp_path / "db.sqlite", [spec.revisions[19].revision])
    return ini, url, spec


def _cache_entries(instance: Path) -> dict[str, list]:
    body = json.loads((instance / CACHE).read_text(encoding="utf-8"))
    return {Path(entry[0]).name: entry for entry in body["files"]}


def test_a_restart_answers_the_same_from_the_cache_file(project, tmp_path):
    ini, url, spec = project
    instance = tmp_path / "instance"
    first = client_for(ini, url, instance).get("/api/status")
    assert first.status_code == 200
    entries = _cache_entries(instance)
    assert len(entries) == len(spec.revisions)
    assert not [p for p in os.listdir(instance) if p.startswith(".history-cache-")]

    again = client_for(ini, url, instance).get("/api/status")
    assert again.status_code == 200
    assert again.get_json() == first.get_json()
    assert len(again.get_json()["pending"]) == 20


def test_a_restart_reads_headers_from_the_cache_not_the_files(project, tmp_path):
    """What the cache file says for an unchanged file is what the restarted app
    shows: proof that it stats the file instead of parsing it again."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    head = spec.revisions[-1]
    body = json.loads((instance / CACHE).read_text(encoding="utf-8"))
    for entry in body["files"]:
        if entry[4] == head.revision:
            entry[8] = "told by the cache file"
    (instance / CACHE).write_text(json.dumps(body), encoding="utf-8")

    pending = client_for(ini, url, instance).get("/api/status").get_json()["pending"]
    assert pending[-1] == {"revision": head.revision, "message": "told by the cache file"}


@pytest.mark.parametrize("mtime", ["put back", "changed"])
def test_a_file_edited_in_place_to_the_same_size_is_read_again(project, tmp_path, mtime):
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    head = spec.revisions[-1]
    path = hf.revision_path(ini, spec, head.revision)
    before = path.stat()
    text = path.read_text(encoding="utf-8")
    edited = text.replace(head.message, head.message.upper(), 1)
    assert edited != text and len(edited) == len(text)
    path.write_text(edited, encoding="utf-8")
    if mtime == "put back":  # as `touch -r` or a careless tool would
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5_000_000_000))
    assert path.stat().st_size == before.st_size

    pending = client_for(ini, url, instance).get("/api/status").get_json()["pending"]
    assert pending[-1]["message"] == head.message.upper()
    entry = _cache_entries(instance)[path.name]
    assert entry[8].startswith(head.message.upper())  # the cache file was brought up to date


@pytest.mark.parametrize("damage", [
    b"", b"{not json", b"[]", b'{"format": 1, "files": [[1, 2]]}',
    b'{"format": 1, "files": [["x.py", "soon", 3, 4, "r", [], [], [], "d"]]}',
    b'{"format": 999, "files": []}', b"\xff\xfe\x00garbage", b"[" * 100_000,
])
def test_a_damaged_cache_file_is_ignored_and_rebuilt(project, tmp_path, damage):
    ini, url, spec = project
    instance = tmp_path / "instance"
    expected = client_for(ini, url, instance).get("/api/status").get_json()
    (instance / CACHE).write_bytes(damage)

    response = client_for(ini, url, instance).get("/api/status")
    assert response.status_code == 200
    assert response.get_json() == expected
    assert len(_cache_entries(instance)) == len(spec.revisions)


def test_a_cache_file_of_another_project_is_not_used(project, tmp_path):
    """Entries are keyed by path, size and times: another project's files at
    the same instance folder do not match, and the cache is rewritten."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    other_spec = hf.linear(5, seed=9)
    other = hf.make_project(tmp_path / "other", other_spec)
    _settle(other.parent)
    body = client_for(other, url, instance).get("/api/status").get_json()
    assert body["state"] == "unknown_revision"
    assert body["heads"] == [other_spec.revisions[-1].revision]
    assert len(_cache_entries(instance)) == 5


def test_a_file_still_being_written_is_not_kept_on_disk(tmp_path):
    """A file changed a moment ago may change again within the same timestamp
    tick: it is read, but kept on disk only once it has settled."""
    spec = hf.linear(3)
    ini = hf.make_project(tmp_path / "project", spec)
    url = hf.stamp_database(tmp_path / "db.sqlite", [spec.revisions[0].revision])
    instance = tmp_path / "instance"
    client = client_for(ini, url, instance)
    assert len(client.get("/api/status").get_json()["pending"]) == 2
    if time.time_ns() - min(p.stat().st_mtime_ns for p in ini.parent.rglob("*_*.py")) < RACY_NS:
        assert not (instance / CACHE).exists() or _cache_entries(instance) == {}
    _settle(ini.parent)
    assert len(client.get("/api/status").get_json()["pending"]) == 2
    assert len(_cache_entries(instance)) == 3


def test_a_file_added_or_removed_while_stopped_is_seen(project, tmp_path):
    """The cache file also keeps each folder's listing, used only while the
    folder's own times are unchanged: a file added or removed changes them."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    assert json.loads((instance / CACHE).read_text(encoding="utf-8"))["folders"]
    head = spec.revisions[-1]
    new = hf.RevisionSpec("feedfacecafe", (head.revision,), message="added while stopped")
    folder = hf.revision_path(ini, spec, head.revision).parent
    (folder / hf.revision_filename(new)).write_text(hf.revision_source(new), encoding="utf-8")
    _settle(ini.parent)

    body = client_for(ini, url, instance).get("/api/status").get_json()
    assert body["heads"] == [new.revision]

    (folder / hf.revision_filename(new)).unlink()
    body = client_for(ini, url, instance).get("/api/status").get_json()
    assert body["heads"] == [head.revision]


# ---------------------------------------------------------------- what the map answered

def _facts_files(instance: Path) -> list[Path]:
    return sorted((instance / "history-facts").glob("*.json"))


def _tell_through_facts(instance: Path, revision: str, message: str) -> None:
    """Change what the facts files say a pending revision's message is: a
    restart that shows it answered from a file, without building the map."""
    assert _facts_files(instance)
    for path in _facts_files(instance):
        body = json.loads(path.read_text(encoding="utf-8"))
        for kind, _current, value in body["answers"]:
            if kind == "pending messages":
                for pair in value:
                    if pair[0] == revision:
                        pair[1] = message
        path.write_text(json.dumps(body), encoding="utf-8")


def test_a_restart_on_the_same_headers_answers_from_the_facts_file(project, tmp_path):
    ini, url, spec = project
    instance = tmp_path / "instance"
    expected = client_for(ini, url, instance).get("/api/status").get_json()
    head = spec.revisions[-1]
    _tell_through_facts(instance, head.revision, "told by the facts file")

    client = client_for(ini, url, instance)
    body = client.get("/api/status").get_json()
    assert body["pending"][-1] == {"revision": head.revision, "message": "told by the facts file"}
    assert {k: v for k, v in body.items() if k != "pending"} == \
        {k: v for k, v in expected.items() if k != "pending"}
    assert client.application.extensions["dashboard"].history()._graph is None  # never built


def test_a_file_saved_again_unchanged_while_stopped_keeps_the_facts(project, tmp_path):
    """Only its times changed: its headers read again are the same, so are the answers."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    head = spec.revisions[-1]
    _tell_through_facts(instance, head.revision, "told by the facts file")
    path = hf.revision_path(ini, spec, head.revision)
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    os.utime(path, (time.time() - 60, time.time() - 60))

    pending = client_for(ini, url, instance).get("/api/status").get_json()["pending"]
    assert pending[-1]["message"] == "told by the facts file"


@pytest.mark.parametrize("change", ["message", "parent"])
def test_facts_of_other_headers_are_not_used(project, tmp_path, change):
    """A revision file edited while the dashboard was stopped: the restart
    answers as a dashboard starting on an empty instance folder does."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    head = spec.revisions[-1]
    _tell_through_facts(instance, head.revision, "told by the facts file")
    path = hf.revision_path(ini, spec, head.revision)
    text = path.read_text(encoding="utf-8")
    if change == "message":
        path.write_text(text.replace(head.message, "edited while stopped", 1), encoding="utf-8")
    else:  # the head now follows the current revision: a second head
        path.write_text(text.replace(head.down_revision[0], spec.revisions[19].revision),
                        encoding="utf-8")
    _settle(ini.parent)

    body = client_for(ini, url, instance).get("/api/status").get_json()
    assert body == client_for(ini, url, tmp_path / "fresh").get("/api/status").get_json()
    assert "told by the facts file" not in json.dumps(body)
    assert len(body["heads"]) == (2 if change == "parent" else 1)


def test_facts_are_not_used_with_a_cache_file_that_holds_other_headers(project, tmp_path):
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    head = spec.revisions[-1]
    _tell_through_facts(instance, head.revision, "told by the facts file")
    body = json.loads((instance / CACHE).read_text(encoding="utf-8"))
    for entry in body["files"]:
        if entry[4] == head.revision:
            entry[8] = "told by the cache file"
    (instance / CACHE).write_text(json.dumps(body), encoding="utf-8")

    pending = client_for(ini, url, instance).get("/api/status").get_json()["pending"]
    assert pending[-1] == {"revision": head.revision, "message": "told by the cache file"}


def test_a_database_moved_while_stopped_is_answered_anew(project, tmp_path):
    """The facts hold answers for the revisions the database was at: another
    current revision is worked out from the map."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client_for(ini, url, instance).get("/api/status")
    moved = hf.stamp_database(tmp_path / "db.sqlite", [spec.revisions[29].revision])

    body = client_for(ini, moved, instance).get("/api/status").get_json()
    assert body["current"] == [spec.revisions[29].revision]
    assert [p["revision"] for p in body["pending"]] == [r.revision for r in spec.revisions[30:]]


@pytest.mark.parametrize("damage", [
    b"", b"{not json", b"[]", b'{"format": 1}', b'{"format": 999, "answers": []}',
    b'{"format": 1, "digest": "x", "heads": [], "unreadable": [], "problems": [], '
    b'"missing": [], "answers": [["pending messages", [], [["a", "b", "c"]]]]}',
    b'{"format": 1, "digest": "x", "heads": [1], "unreadable": [], "problems": [], '
    b'"missing": [], "answers": []}',
    b"\xff\xfe\x00garbage", b"[" * 100_000,
])
def test_a_damaged_facts_file_is_ignored(project, tmp_path, damage):
    ini, url, spec = project
    instance = tmp_path / "instance"
    expected = client_for(ini, url, instance).get("/api/status").get_json()
    for path in _facts_files(instance):
        path.write_bytes(damage)

    response = client_for(ini, url, instance).get("/api/status")
    assert response.status_code == 200
    assert response.get_json() == expected


def test_a_file_edited_then_put_back_finds_the_facts_of_before(project, tmp_path):
    """The latest few sets of facts are kept, one per set of headers: a revision
    edited and reverted (or a branch checked out and back) answers from disk."""
    ini, url, spec = project
    instance = tmp_path / "instance"
    client = client_for(ini, url, instance)
    client.get("/api/status")
    head = spec.revisions[-1]
    path = hf.revision_path(ini, spec, head.revision)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace(head.message, "edited for a while", 1), encoding="utf-8")
    _settle(ini.parent)
    assert client.get("/api/status").get_json()["pending"][-1]["message"] == "edited for a while"
    assert len(_facts_files(instance)) == 2
    _tell_through_facts(instance, head.revision, "told by the facts file")
    path.write_text(text, encoding="utf-8")
    os.utime(path, (time.time() - 60, time.time() - 60))

    pending = client_for(ini, url, instance).get("/api/status").get_json()["pending"]
    assert pending[-1]["message"] == "told by the facts file"


def test_only_the_latest_facts_are_kept(project, tmp_path):
    ini, url, spec = project
    instance = tmp_path / "instance"
    client = client_for(ini, url, instance)
    head = spec.revisions[-1]
    path = hf.revision_path(ini, spec, head.revision)
    text = path.read_text(encoding="utf-8")
    for number in range(7):
        path.write_text(text.replace(head.message, f"edition {number}", 1), encoding="utf-8")
        _settle(ini.parent)
        assert client.get("/api/status").get_json()["pending"][-1]["message"] == \
            f"edition {number}"
    assert len(_facts_files(instance)) == 4
