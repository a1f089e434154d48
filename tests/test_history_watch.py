"""A warm request trusts the kernel's word (inotify) that no revision file
changed, instead of a stat of each file: every way a file or its folder can
change must still show on the very next request.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from dashboard.services.folder_watch import FolderWatch
from tests import history_factory as hf
from tests.conftest import client_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="inotify is Linux's; elsewhere every request stats")


def _settle(folder: Path) -> None:
    """Date every file an hour back: files changed a moment ago are read again
    until they settle, which would hide the watch."""
    past = time.time() - 3600
    for path in [*folder.rglob("*.py"), *(p for p in folder.rglob("*") if p.is_dir())]:
        os.utime(path, (past, past), follow_symlinks=False)


@pytest.fixture
def watched(tmp_path):
    """A running dashboard on a settled 12-revision chain whose history the
    kernel vouches for (the second request took the watch's word)."""
    spec = hf.linear(12)
    ini = hf.make_project(tmp_path / "project", spec)
    _settle(ini.parent)
    url = hf.stamp_database(tmp_path / "db.sqlite", [spec.revisions[5].revision])
    client = client_for(ini, url, tmp_path / "instance")
    first = client.get("/api/status").get_json()
    assert client.get("/api/status").get_json() == first
    assert client.application.extensions["dashboard"]._history_cache.watching
    return client, ini, spec


def _edit_message(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(old) == len(new) and old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_file_edited_in_place_with_its_times_put_back_shows_at_once(watched):
    client, ini, spec = watched
    head = spec.revisions[-1]
    path = hf.revision_path(ini, spec, head.revision)
    before = path.stat()
    _edit_message(path, head.message, head.message.upper())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size

    pending = client.get("/api/status").get_json()["pending"]
    assert pending[-1]["message"] == head.message.upper()


def test_a_file_added_then_removed_shows_at_once(watched):
    client, ini, spec = watched
    head = spec.revisions[-1]
    new = hf.RevisionSpec("feedfacecafe", (head.revision,), message="added while running")
    folder = hf.revision_path(ini, spec, head.revision).parent
    (folder / hf.revision_filename(new)).write_text(hf.revision_source(new), encoding="utf-8")
    assert client.get("/api/status").get_json()["heads"] == [new.revision]
    (folder / hf.revision_filename(new)).unlink()
    assert client.get("/api/status").get_json()["heads"] == [head.revision]


def test_a_versions_folder_swapped_for_another_shows_at_once(watched):
    """A deploy that renames a new folder into place: the watched one is gone."""
    client, ini, spec = watched
    head = spec.revisions[-1]
    versions = hf.revision_path(ini, spec, head.revision).parent
    shutil.copytree(versions, versions.with_name("versions-new"))
    _edit_message(versions.with_name("versions-new") / hf.revision_filename(head),
                  head.message, head.message.upper())
    _settle(ini.parent)
    versions.rename(versions.with_name("versions-old"))
    versions.with_name("versions-new").rename(versions)

    pending = client.get("/api/status").get_json()["pending"]
    assert pending[-1]["message"] == head.message.upper()


def test_a_versions_folder_reached_through_a_repointed_symlink_shows_at_once(tmp_path):
    """``versions`` is a symlink a deploy points at another release: nothing
    happens in the folder watched, yet the path now names another one."""
    spec = hf.linear(6)
    ini = hf.make_project(tmp_path / "project", spec)
    head = spec.revisions[-1]
    versions = hf.revision_path(ini, spec, head.revision).parent
    release_a, release_b = tmp_path / "release-a", tmp_path / "release-b"
    versions.rename(release_a)
    shutil.copytree(release_a, release_b)
    _edit_message(release_b / hf.revision_filename(head), head.message, head.message.upper())
    versions.symlink_to(release_a, target_is_directory=True)
    for folder in (ini.parent, release_a, release_b):
        _settle(folder)
    url = hf.stamp_database(tmp_path / "db.sqlite", [spec.revisions[2].revision])
    client = client_for(ini, url, tmp_path / "instance")
    client.get("/api/status")
    assert client.get("/api/status").get_json()["pending"][-1]["message"] == head.message
    assert client.application.extensions["dashboard"]._history_cache.watching

    link = versions.with_name("versions-next")
    link.symlink_to(release_b, target_is_directory=True)
    os.replace(link, versions)

    assert client.get("/api/status").get_json()["pending"][-1]["message"] == \
        head.message.upper()


def test_a_symlinked_revision_file_is_stat_ed_every_time(tmp_path):
    """Edits to a file a symlink points at happen outside the watched folder:
    such a history is not left to the watch."""
    spec = hf.linear(4)
    ini = hf.make_project(tmp_path / "project", spec)
    head = spec.revisions[-1]
    path = hf.revision_path(ini, spec, head.revision)
    elsewhere = tmp_path / "elsewhere.py"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    _settle(ini.parent)
    _settle(tmp_path)
    url = hf.stamp_database(tmp_path / "db.sqlite", [spec.revisions[0].revision])
    client = client_for(ini, url, tmp_path / "instance")
    client.get("/api/status")
    client.get("/api/status")
    assert not client.application.extensions["dashboard"]._history_cache.watching

    _edit_message(elsewhere, head.message, head.message.upper())
    assert client.get("/api/status").get_json()["pending"][-1]["message"] == \
        head.message.upper()


@pytest.mark.parametrize("mtime", ["changed", "put back"])
def test_an_ini_naming_another_version_folder_shows_at_once(watched, monkeypatch, mtime):
    """The project's ini is read again only when it changed: an edit shows on the
    next request, even one that put its modification time back."""
    client, ini, spec = watched
    # Files changed within the last two seconds are read again anyway; here that
    # would hide the kept project (utime() just now gave every file a new ctime).
    monkeypatch.setattr("dashboard.core.RACY_NS", 0)
    target = client.application.extensions["dashboard"]
    client.get("/api/status")
    assert target._project_read is not None
    head = spec.revisions[-1]
    extra = ini.parent / "extra"
    extra.mkdir()
    new = hf.RevisionSpec("feedfacecafe", (head.revision,), message="in another folder")
    (extra / hf.revision_filename(new)).write_text(hf.revision_source(new), encoding="utf-8")
    _settle(ini.parent)
    before = ini.stat()
    text = ini.read_text(encoding="utf-8")
    assert "version_locations" not in text
    ini.write_text(text.replace("[alembic]\n", "[alembic]\nversion_locations = "
                                "%(here)s/migrations/versions:%(here)s/extra\n", 1),
                   encoding="utf-8")
    if mtime == "put back":
        os.utime(ini, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert client.get("/api/status").get_json()["heads"] == [new.revision]


# ---------------------------------------------------------------- the watch itself


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "versions"
    folder.mkdir()
    (folder / "a.py").write_text("x = 1\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("change", [
    "write", "times", "create", "remove", "rename in", "rename out", "subfolder", "chmod",
])
def test_each_kind_of_change_ends_the_watch(folder, tmp_path, change):
    watch = FolderWatch.start([str(folder)], [str(folder)])
    assert watch is not None and watch.unchanged()
    path = folder / "a.py"
    if change == "write":
        with open(path, "r+", encoding="utf-8") as handle:
            handle.write("y")
    elif change == "times":
        os.utime(path, (0, 0))
    elif change == "create":
        (folder / "b.py").write_text("", encoding="utf-8")
    elif change == "remove":
        path.unlink()
    elif change == "rename in":
        (tmp_path / "c.py").write_text("", encoding="utf-8")
        (tmp_path / "c.py").rename(folder / "c.py")
    elif change == "rename out":
        path.rename(tmp_path / "a.py")
    elif change == "subfolder":
        (folder / "sub").mkdir()
    elif change == "chmod":
        path.chmod(0o600)
    assert not watch.unchanged()
    assert not watch.unchanged()  # stays told


def test_reading_and_stat_ing_the_files_is_no_change(folder):
    watch = FolderWatch.start([str(folder)], [str(folder)])
    (folder / "a.py").read_text(encoding="utf-8")
    (folder / "a.py").stat()
    os.listdir(folder)
    assert watch.unchanged()


def test_a_forked_process_does_not_take_its_parents_watch(folder):
    """Both would read one queue: each would miss what the other read."""
    watch = FolderWatch.start([str(folder)], [str(folder)])
    pid = os.fork()
    if pid == 0:  # the child
        os._exit(0 if not watch.unchanged() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert watch.unchanged()


def test_a_missing_root_or_a_file_is_not_watched(folder, tmp_path):
    assert FolderWatch.start([str(tmp_path / "nothing")], [str(folder)]) is None
    assert FolderWatch.start([str(folder)], [str(folder / "a.py")]) is None


def test_a_closed_watch_vouches_for_nothing(folder):
    watch = FolderWatch.start([str(folder)], [str(folder)])
    watch.close()
    assert not watch.unchanged()
