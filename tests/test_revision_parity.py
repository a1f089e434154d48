"""Our header parser reads every history exactly as Alembic's ScriptDirectory does.

Alembic's side imports every revision file (``ScriptDirectory.from_config`` +
``walk_revisions``); ours reads them as text. Both sides run on the same files,
written by ``tests/history_factory.py`` or copied from the sample project.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import util
from dashboard import create_app
from dashboard.errors import BadRequest, DashboardError, NotFound
from dashboard.services import alembic_process
from dashboard.services.project import load_project
from dashboard.services.revisions import (
    HistoryCache,
    pending_revisions,
    resolve_revision,
)
from tests import history_factory as hf
from tests.conftest import copy_sample_project

# ---------------------------------------------------------------- helpers


@contextmanager
def alembic_script(ini: Path, stub_missing_module: bool = False):
    """Alembic's own ScriptDirectory over ``ini``, with every revision loaded.

    ``from_config`` prepends the ini's prepend_sys_path to sys.path for good, and
    revision files may import the missing application module: both are undone
    on exit, so the dashboard side never sees them."""
    saved_path = list(sys.path)
    saved_module = sys.modules.pop(hf.MISSING_MODULE, None)
    try:
        if stub_missing_module:
            stub = Path(ini).parent / "_stub_modules"
            stub.mkdir(exist_ok=True)
            (stub / f"{hf.MISSING_MODULE}.py").write_text("", encoding="utf-8")
            sys.path.insert(0, str(stub))
        script = ScriptDirectory.from_config(Config(str(ini)))
        list(script.walk_revisions())
        yield script
    finally:
        sys.path[:] = saved_path
        sys.modules.pop(hf.MISSING_MODULE, None)
        if saved_module is not None:
            sys.modules[hf.MISSING_MODULE] = saved_module


def project_of(ini: Path, url: str | None = None):
    return load_project(str(ini), url, python=sys.executable)


class RecordingImport:
    """The real header import (a subprocess), remembering which files it was asked for."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, project, paths):
        self.asked.extend(paths)
        return alembic_process.import_headers(project, paths, timeout=120)


def our_history(ini: Path):
    project = project_of(ini)
    return HistoryCache(RecordingImport()).load(project)


def node_facts(rev, root: str) -> dict:
    """What the pages show about a revision, read off Alembic's Revision API;
    its path relative to the project's folder ``root``."""
    return {
        "down_revisions": util.to_tuple(rev.down_revision, default=()),
        "dependencies": tuple(rev._resolved_dependencies),
        "declared_dependencies": util.to_tuple(rev.dependencies, default=()),
        "branch_labels": frozenset(rev.branch_labels),
        "is_head": rev.is_head,
        "is_base": rev.is_base,
        "is_merge_point": rev.is_merge_point,
        "is_branch_point": rev.is_branch_point,
        "children": frozenset(rev.nextrev),
        "children_and_dependents": frozenset(rev._all_nextrev),
        "doc": rev.doc,
        "path": os.path.relpath(os.path.realpath(rev.path), os.path.realpath(root)),
    }


def assert_same_graph(history, script, our_root: Path) -> None:
    theirs = {s.revision: s for s in script.walk_revisions()}
    their_root = str(Path(script.dir).parent)
    assert history.error is None
    assert set(history.revisions) == set(theirs)
    mismatched = {
        rev: (node_facts(ours, our_root), node_facts(theirs[rev], their_root))
        for rev, ours in history.revisions.items()
        if node_facts(ours, our_root) != node_facts(theirs[rev], their_root)
    }
    assert mismatched == {}
    # The dashboard's own accessors, which the pages and the API use.
    for rev, ours in history.revisions.items():
        assert ours.down_revisions == util.to_tuple(theirs[rev].down_revision, default=())
        assert ours.depends_on == tuple(theirs[rev]._resolved_dependencies)
        assert ours.header.docstring == theirs[rev].longdoc
    assert set(history.heads) == set(script.get_heads())
    assert set(history.revision_map.bases) == set(script.get_bases())


def alembic_upgrade_plan(script, current: tuple[str, ...]) -> list[str]:
    """What ``alembic upgrade heads`` applies from ``current``, in order."""
    return [step.revision.revision for step in script._upgrade_revs("heads", current)]


# ---------------------------------------------------------------- projects


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> dict[str, tuple[Path, hf.ProjectSpec | None]]:
    root = tmp_path_factory.mktemp("histories")
    return {
        "sample": (copy_sample_project(root / "sample"), None),
        "linear": (hf.make_project(root / "linear", hf.linear(300)), hf.linear(300)),
        "branchy": (hf.make_project(root / "branchy", hf.branchy(seed=11)), hf.branchy(seed=11)),
        "zoo": (hf.make_project(root / "zoo", hf.zoo()), hf.zoo()),
    }


@pytest.fixture(scope="module")
def zoo_ini(projects) -> Path:
    return projects["zoo"][0]


@pytest.fixture(scope="module")
def zoo_history(zoo_ini):
    return our_history(zoo_ini)


@pytest.fixture(scope="module")
def zoo_script(tmp_path_factory):
    """Alembic over the zoo without its deliberately unreadable file."""
    ini = hf.make_project(tmp_path_factory.mktemp("zoo_readable"), hf.zoo().without(hf.BROKEN))
    with alembic_script(ini, stub_missing_module=True) as script:
        yield script


def test_factory_specs_have_the_promised_shapes():
    branchy = hf.branchy(n_revisions=1000, merges=50, labelled_branches=4, seed=3)
    assert len(branchy.revisions) == 1000
    assert sum(r.is_merge for r in branchy.revisions) == 50
    assert len({label for r in branchy.revisions for label in r.branch_labels}) == 4
    zoo = hf.zoo()
    widths = {len(r.down_revision) for r in zoo.revisions}
    assert {3, 4} <= widths
    assert sum(1 for r in zoo.revisions if not r.down_revision) >= 4
    assert {r.style for r in zoo.revisions} == {hf.PLAIN, hf.ANNOTATED, hf.LISTS, hf.COMPUTED}
    assert any(r.location == 1 for r in zoo.revisions)
    assert any("/" in r.folder for r in zoo.revisions)


@pytest.mark.parametrize("name", ["sample", "linear", "branchy"])
def test_graph_equals_alembic(projects, name):
    ini, _ = projects[name]
    history = our_history(ini)
    assert history.unreadable == ()
    with alembic_script(ini) as script:
        assert_same_graph(history, script, ini.parent)


def test_zoo_graph_equals_alembic(zoo_history, zoo_script, zoo_ini):
    assert_same_graph(zoo_history, zoo_script, zoo_ini.parent)
    assert len(zoo_history.revisions) == len(hf.zoo().revisions) - 1


def test_zoo_reads_literal_headers_without_importing(zoo_ini):
    project = project_of(zoo_ini)
    recorder = RecordingImport()
    history = HistoryCache(recorder).load(project)
    spec = hf.zoo()
    asked = {Path(p).name for p in recorder.asked}
    # Only the two computed files go to the subprocess; the file that imports a
    # missing module has literal headers and is read as text.
    assert asked == {
        hf.revision_filename(spec.by_id(hf.REPORTS_COMPUTED)),
        hf.revision_filename(spec.by_id(hf.BROKEN)),
    }
    assert history.revisions[hf.AUTH_2].down_revisions == (hf.AUTH_1,)
    assert history.revisions[hf.REPORTS_COMPUTED].down_revisions == (hf.REPORTS_1,)
    assert history.revisions[hf.MERGE_4].down_revisions == (
        hf.MERGE_3, hf.BILLING_2, hf.REPORTS_COMPUTED, hf.CORE_SIDE,
    )


def test_zoo_unreadable_file_is_reported_with_the_missing_module(zoo_history, zoo_ini):
    assert hf.BROKEN not in zoo_history.revisions
    (unreadable,) = zoo_history.unreadable
    assert unreadable.path == str(hf.revision_path(zoo_ini, hf.zoo(), hf.BROKEN).resolve())
    assert hf.MISSING_MODULE in unreadable.reason


def test_zoo_has_what_it_promises(zoo_history):
    revs = zoo_history.revisions
    assert len(zoo_history.revision_map.bases) == 5
    assert set(zoo_history.heads) == {hf.RELEASE_HEAD, hf.HOTFIX_HEAD, hf.EXPERIMENT_HEAD}
    assert revs[hf.RELEASE_HEAD].branch_labels >= {"release", "core", "auth"}
    assert revs[hf.EXPERIMENT_HEAD].branch_labels == {"experiment"}
    assert revs[hf.REPORTS_1].depends_on == (hf.CORE_BASE,)  # "core" is a label
    assert revs[hf.BILLING_1].depends_on == (hf.AUTH_1, hf.CORE_2)


# ---------------------------------------------------------------- resolving

ZOO_IDENTIFIERS = [
    hf.MERGE_4, hf.CORE_SIDE, "a1f1", "c0de", "3333aa", "b2b1b2", "core", "auth", "billing",
    "release", "experiment", "experiment@head", "release@head", "core@base",
    "1a2b3c",  # three revisions start with it
    "1a2",  # too short for a partial id
    "ffff0000", "nosuchlabel", "head", "heads", "base",
]


@pytest.mark.parametrize("identifier", ZOO_IDENTIFIERS)
def test_resolve_revision_like_get_revision(zoo_history, zoo_script, identifier):
    try:
        expected = zoo_script.get_revision(identifier)
    except util.CommandError:
        expected = None
    if expected is None:
        with pytest.raises(DashboardError):
            resolve_revision(zoo_history, identifier)
    else:
        assert resolve_revision(zoo_history, identifier).revision == expected.revision


def test_ambiguous_prefix_is_bad_request_and_unknown_is_not_found(zoo_history):
    with pytest.raises(BadRequest, match="1a2b3c"):
        resolve_revision(zoo_history, "1a2b3c")
    with pytest.raises(NotFound):
        resolve_revision(zoo_history, "ffff0000")
    with pytest.raises(NotFound):
        resolve_revision(zoo_history, "nosuchlabel")
    assert resolve_revision(zoo_history, "1a2b3c4d5e02").revision == hf.CORE_1


def test_partial_ids_resolve_like_alembic_in_a_large_history(projects):
    ini, spec = projects["branchy"]
    history = our_history(ini)
    rng = random.Random(5)
    prefixes = {r.revision[: rng.randint(4, 7)] for r in rng.sample(spec.revisions, 150)}
    prefixes |= {f"{n:04x}" for n in rng.sample(range(16**4), 50)}
    shared = Counter(r.revision[:4] for r in spec.revisions)
    prefixes |= {prefix for prefix, count in shared.items() if count > 1}
    outcomes = {"found": 0, "ambiguous": 0, "unknown": 0}
    with alembic_script(ini) as script:
        for prefix in sorted(prefixes):
            try:
                expected = script.get_revision(prefix).revision
            except util.CommandError as exc:
                ambiguous = "Multiple revisions" in str(exc.__cause__)
                kind = BadRequest if ambiguous else NotFound
                with pytest.raises(kind):
                    resolve_revision(history, prefix)
                outcomes["ambiguous" if kind is BadRequest else "unknown"] += 1
            else:
                assert resolve_revision(history, prefix).revision == expected
                outcomes["found"] += 1
    assert all(outcomes.values()), outcomes  # the sample exercised every outcome


# ---------------------------------------------------------------- pending

ZOO_CURRENT = [
    (),
    (hf.CORE_1,),
    (hf.AUTH_2, hf.BILLING_2),
    (hf.MERGE_3, hf.EXPERIMENT_BASE),
    (hf.MERGE_4,),
    (hf.RELEASE_HEAD,),
    (hf.RELEASE_HEAD, hf.EXPERIMENT_HEAD),
    (hf.RELEASE_HEAD, hf.HOTFIX_HEAD, hf.EXPERIMENT_HEAD),
]


@pytest.mark.parametrize("current", ZOO_CURRENT, ids=lambda c: "+".join(c) or "empty")
def test_pending_matches_alembic_upgrade_plan(zoo_history, zoo_script, current):
    ours = [r.revision for r in pending_revisions(zoo_history, current)]
    assert ours == alembic_upgrade_plan(zoo_script, current)
    assert ours == [
        r.revision for r in reversed(list(
            zoo_script.iterate_revisions("heads", current, implicit_base=True)
        ))
    ]
    if current == (hf.RELEASE_HEAD, hf.HOTFIX_HEAD, hf.EXPERIMENT_HEAD):
        assert ours == []


def test_pending_matches_alembic_in_a_large_history(projects):
    ini, spec = projects["branchy"]
    history = our_history(ini)
    rng = random.Random(9)
    heads = sorted(history.heads)
    currents = [(), tuple(heads), tuple(heads[:2]), tuple(heads[1:])]
    currents += [(r.revision,) for r in rng.sample(spec.revisions, 4)]
    with alembic_script(ini) as script:
        for current in currents:
            ours = [r.revision for r in pending_revisions(history, current)]
            assert ours == alembic_upgrade_plan(script, current), current
    assert pending_revisions(history, tuple(heads)) == []


# ---------------------------------------------------------------- reloading


def _bump_mtime(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


def test_edits_and_new_files_are_noticed_on_next_load(tmp_path):
    spec = hf.linear(6)
    ini = hf.make_project(tmp_path, spec)
    ids = [r.revision for r in spec.revisions]
    project = project_of(ini)
    cache = HistoryCache(RecordingImport())
    first = cache.load(project)
    assert cache.load(project) is first  # unchanged tree: the cached answer
    assert first.heads == (ids[5],)

    # Same size: only the modification time tells the file changed.
    path = hf.revision_path(ini, spec, ids[3])
    text = path.read_text(encoding="utf-8")
    edited = re.sub(rf"^(down_revision.*){ids[2]}", rf"\g<1>{ids[1]}", text, flags=re.M)
    assert edited != text and len(edited) == len(text)
    path.write_text(edited, encoding="utf-8")
    _bump_mtime(path)
    second = cache.load(project)
    assert second.revisions[ids[3]].down_revisions == (ids[1],)
    assert set(second.heads) == {ids[2], ids[5]}
    assert second.revisions[ids[1]].is_branch_point

    path.write_text(edited.replace("step 3 of the chain", "step three, renamed"), encoding="utf-8")
    _bump_mtime(path)
    third = cache.load(project)
    assert third.revisions[ids[3]].doc == "step three, renamed"

    new = hf.RevisionSpec("0123456789ab", (ids[5],), message="a new head")
    (path.parent / hf.revision_filename(new)).write_text(hf.revision_source(new), "utf-8")
    fourth = cache.load(project)
    assert set(fourth.heads) == {ids[2], "0123456789ab"}
    with alembic_script(ini) as script:
        assert_same_graph(fourth, script, ini.parent)


# ---------------------------------------------------------------- the web app


def _app(ini: Path, tmp_path: Path, url: str):
    return create_app({
        "TESTING": True,
        "DASHBOARD_ALEMBIC_INI": str(ini),
        "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": str(tmp_path / "instance"),
        "DASHBOARD_PYTHON": sys.executable,
        "DASHBOARD_SEED_SAMPLE": False,
        "DASHBOARD_SECRET_KEY": "test-secret",
    })


@pytest.fixture
def zoo_client(zoo_ini, tmp_path):
    url = hf.stamp_database(tmp_path / "zoo.db", [hf.MERGE_3, hf.EXPERIMENT_BASE])
    return _app(zoo_ini, tmp_path, url).test_client()


def test_api_lists_what_alembic_lists_for_the_zoo(zoo_client, zoo_script):
    body = zoo_client.get("/api/revisions").get_json()
    listed = [r["revision"] for r in body["revisions"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {s.revision for s in zoo_script.walk_revisions()}


def test_api_status_of_the_zoo_matches_alembic(zoo_client, zoo_script, zoo_ini):
    body = zoo_client.get("/api/status").get_json()
    assert body["state"] == "pending"
    assert body["heads"] == sorted(zoo_script.get_heads())
    current = (hf.MERGE_3, hf.EXPERIMENT_BASE)
    assert [p["revision"] for p in body["pending"]] == alembic_upgrade_plan(zoo_script, current)
    (unreadable,) = body["unreadable"]
    assert unreadable["path"] == str(hf.revision_path(zoo_ini, hf.zoo(), hf.BROKEN).resolve())
    assert hf.MISSING_MODULE in unreadable["reason"]


def test_api_ambiguous_and_unknown_revisions(zoo_client):
    assert zoo_client.get("/api/revisions/1a2b3c").status_code == 400
    assert zoo_client.get("/api/revisions/ffff0000").status_code == 404


def test_api_lists_what_alembic_lists_for_the_sample(tmp_path):
    ini = copy_sample_project(tmp_path / "project")
    client = _app(ini, tmp_path, f"sqlite:///{tmp_path / 'missing.db'}").test_client()
    listed = [r["revision"] for r in client.get("/api/revisions").get_json()["revisions"]]
    with alembic_script(ini) as script:
        assert sorted(listed) == sorted(s.revision for s in script.walk_revisions())


def _revision_links(html: str) -> list[str]:
    return re.findall(r'href="/revisions/([^"/]+)"', html)


def test_history_page_links_each_revision_once(zoo_client, zoo_script):
    response = zoo_client.get("/history")
    assert response.status_code == 200
    links = _revision_links(response.get_data(as_text=True))
    assert sorted(links) == sorted(s.revision for s in zoo_script.walk_revisions())


def test_history_page_of_a_large_history_links_each_revision_once(projects, tmp_path):
    ini, spec = projects["branchy"]
    client = _app(ini, tmp_path, f"sqlite:///{tmp_path / 'missing.db'}").test_client()
    links: list[str] = []
    url = "/history?start=0"
    while url:  # window after window, following "Older"
        response = client.get(url)
        assert response.status_code == 200
        html = response.get_data(as_text=True)
        links += _revision_links(html)
        older = re.search(r'<a href="(/history\?start=\d+)" rel="next">', html)
        url = older.group(1) if older else None
    assert sorted(links) == sorted(r.revision for r in spec.revisions)


# ---------------------------------------------------------------- found bugs
# Each failed before its fix in revisions.py.


def _write(folder: Path, rev: hf.RevisionSpec, source: str | None = None) -> Path:
    path = folder / hf.revision_filename(rev)
    path.write_text(source if source is not None else hf.revision_source(rev), "utf-8")
    return path


@pytest.mark.parametrize("child", [
    # The parent file is unreadable (computed header + missing import).
    hf.RevisionSpec("c41d00000001", (hf.BROKEN,), message="child of the unreadable file"),
    # Alembic resolves partial ids only when writing a file, never in one.
    hf.RevisionSpec("c41d00000002", (hf.EXPERIMENT_HEAD,), depends_on=("a1f1e2",),
                    message="depends on a partial id"),
], ids=["child-of-unreadable", "partial-depends-on"])
def test_reference_to_a_missing_revision_draws_the_rest_and_marks_it(tmp_path, child):
    spec = hf.zoo()
    ini = hf.make_project(tmp_path, spec)
    _write(hf.revision_path(ini, spec, hf.BROKEN).parent, child)
    history = our_history(ini)
    assert history.error is None
    assert child.revision in history.revisions
    assert child.revision in history.heads
    name = (*child.down_revision, *child.depends_on)[-1]
    assert any(name in p and child.revision in p for p in history.problems)
    if child.depends_on:  # left out of the graph, and said so
        assert history.missing == ()
        assert name in dict(history.revisions[child.revision].unresolved)["depends_on"]
        assert history.revisions[child.revision].depends_on == ()
    else:  # a missing parent is drawn as a missing node, never a head
        assert history.missing == (name,)
        node = history.revision_map.get_revision(name)
        assert node.missing and name not in history.revisions
        assert name not in history.heads


def test_revision_file_in_a_declared_non_utf8_encoding(tmp_path):
    spec = hf.linear(2)
    ini = hf.make_project(tmp_path, spec)
    rev = hf.RevisionSpec("1a7100000001", (spec.revisions[1].revision,),
                          message="café prices", style=hf.PLAIN)
    folder = hf.revision_path(ini, spec, spec.revisions[0].revision).parent
    source = "# -*- coding: latin-1 -*-\n" + hf.revision_source(rev)
    (folder / hf.revision_filename(rev)).write_bytes(source.encode("latin-1"))
    history = our_history(ini)
    with alembic_script(ini) as script:
        assert script.get_revision(rev.revision).doc == "café prices"
    assert history.unreadable == ()
    assert history.revisions[rev.revision].doc == "café prices"


@pytest.mark.parametrize("prefix, doc_line", [
    ("", '"""Rename C:\\\\temp\\\\new paths'),  # backslash escapes
    ("\ufeff", '"""with a byte-order mark'),
    ("", '"single-quoted docstring"\n"""'),
], ids=["escapes", "bom", "one-quote"])
def test_message_equals_alembic_doc(tmp_path, prefix, doc_line):
    spec = hf.linear(1)
    ini = hf.make_project(tmp_path, spec)
    path = hf.revision_path(ini, spec, spec.revisions[0].revision)
    text = path.read_text(encoding="utf-8")
    first_line = text.splitlines()[0]
    path.write_text(prefix + text.replace(first_line, doc_line, 1), encoding="utf-8")
    history = our_history(ini)
    with alembic_script(ini) as script:
        expected = script.get_revision(spec.revisions[0].revision).doc
    assert expected
    assert history.revisions[spec.revisions[0].revision].doc == expected
