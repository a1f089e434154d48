"""The history graph layout, checked on in-memory revision lists."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from flask import Blueprint, Flask, render_template

from dashboard.services.graph import GraphLayout, GraphRevision, layout_graph

TEMPLATES = Path(__file__).resolve().parent.parent / "dashboard" / "templates"


def rev(
    revision: str,
    *parents: str,
    depends_on: tuple[str, ...] = (),
    labels: tuple[str, ...] = (),
    head: bool = False,
    current: bool = False,
    applied: bool = False,
) -> GraphRevision:
    return GraphRevision(
        revision=revision,
        down_revisions=parents,
        depends_on=depends_on,
        branch_labels=labels,
        message=f"message of {revision}",
        is_head=head,
        is_current=current,
        applied=applied,
    )


def chain(prefix: str, n: int, parent: str | None = None) -> list[GraphRevision]:
    revs = []
    for i in range(n):
        below = parent if i == 0 else f"{prefix}{i - 1}"
        revs.append(rev(f"{prefix}{i}", *([below] if below else [])))
    return revs


def check(revisions: list[GraphRevision]) -> GraphLayout:
    """Lay out and assert what must hold for any input."""
    layout = layout_graph(revisions)
    known = {r.revision for r in revisions}
    node = {n.revision: n for n in layout.nodes}

    assert sorted(n.revision for n in layout.nodes) == sorted(known)
    assert [n.row for n in layout.nodes] == list(range(len(known)))
    assert layout.row_count == len(known)
    assert all(0 <= n.lane < layout.lane_count for n in layout.nodes)

    expected = {
        (r.revision, p, "parent") for r in revisions for p in r.down_revisions if p in known
    } | {(r.revision, d, "depends_on") for r in revisions for d in r.depends_on if d in known}
    got = [(e.child, e.parent, e.kind) for e in layout.edges]
    assert len(got) == len(set(got))
    assert set(got) == expected

    for e in layout.edges:
        child, parent = node[e.child], node[e.parent]
        assert (e.from_row, e.from_lane) == (child.row, child.lane)
        assert (e.to_row, e.to_lane) == (parent.row, parent.lane)
        assert e.from_row < e.to_row  # parents and dependencies sit lower
    # The template runs each edge down its parent's lane from the row after
    # the child: no other node may sit on that stretch.
    occupied = {(n.row, n.lane) for n in layout.nodes}
    for e in layout.edges:
        for r in range(e.from_row + 1, e.to_row):
            assert (r, e.to_lane) not in occupied, e
    return layout


def by_revision(layout: GraphLayout) -> dict:
    return {n.revision: n for n in layout.nodes}


def test_empty_history():
    assert layout_graph([]) == GraphLayout(nodes=(), edges=(), lane_count=0, row_count=0)


def test_linear_chain_stays_in_one_lane_newest_first():
    revisions = chain("r", 100)
    layout = check(revisions)
    assert layout.lane_count == 1
    assert [n.revision for n in layout.nodes] == [f"r{i}" for i in reversed(range(100))]
    assert by_revision(layout)["r0"].is_base
    assert not any(n.is_merge or n.is_branch_point for n in layout.nodes)


def test_fork_then_merge_uses_two_lanes():
    revisions = [
        rev("base"),
        rev("a1", "base"),
        rev("a2", "a1"),
        rev("b1", "base"),
        rev("b2", "b1"),
        rev("merge", "a2", "b2", head=True),
    ]
    layout = check(revisions)
    nodes = by_revision(layout)
    assert layout.lane_count == 2
    assert nodes["merge"].row == 0 and nodes["merge"].is_merge
    assert nodes["base"].is_branch_point and nodes["base"].is_base
    merge_edges = [e for e in layout.edges if e.child == "merge"]
    assert [(e.parent, e.kind) for e in merge_edges] == [("a2", "parent"), ("b2", "parent")]
    # Each branch keeps its own lane from the fork to the merge.
    assert nodes["a1"].lane == nodes["a2"].lane != nodes["b1"].lane == nodes["b2"].lane
    assert nodes["merge"].lane == nodes["a2"].lane == nodes["base"].lane


def test_merges_of_three_and_four_parents():
    revisions = [
        rev("base"),
        *[rev(x, "base") for x in ("a", "b", "c")],
        rev("m3", "a", "b", "c"),
        *[rev(x, "m3") for x in ("d", "e", "f", "g")],
        rev("m4", "d", "e", "f", "g", head=True),
    ]
    layout = check(revisions)
    nodes = by_revision(layout)
    assert layout.lane_count == 4
    assert nodes["m3"].is_merge and nodes["m3"].is_branch_point
    assert nodes["m4"].is_merge and nodes["m4"].row == 0
    for merge, fan_in in (("m3", 3), ("m4", 4)):
        edges = [e for e in layout.edges if e.child == merge]
        assert len(edges) == fan_in
        assert len({e.to_lane for e in edges}) == fan_in


def test_several_bases_and_several_heads():
    revisions = [
        *chain("x", 5),
        *chain("y", 4),
        rev("z0"),
        rev("join", "x4", "z0"),
        rev("h1", "join", head=True),
        rev("h2", "join", head=True),
        rev("y4", "y3", head=True),
    ]
    layout = check(revisions)
    nodes = by_revision(layout)
    assert {n.revision for n in layout.nodes if n.is_base} == {"x0", "y0", "z0"}
    heads = {"h1", "h2", "y4"}
    assert {n.revision for n in layout.nodes if n.is_head} == heads
    assert layout.nodes[0].revision in heads
    # The unrelated y history is drawn in one piece, not interleaved with x.
    y_rows = sorted(nodes[f"y{i}"].row for i in range(5))
    assert y_rows == list(range(y_rows[0], y_rows[0] + 5))
    assert layout.lane_count <= 3


def test_depends_on_across_branches_is_a_dashed_edge_below_its_dependent():
    revisions = [
        rev("root"),
        *chain("a", 3, parent="root"),
        *chain("b", 3, parent="root"),
        rev("b3", "b2", depends_on=("a1",), head=True),
        rev("a3", "a2", head=True),
    ]
    layout = check(revisions)
    nodes = by_revision(layout)
    dep = [e for e in layout.edges if e.kind == "depends_on"]
    assert [(e.child, e.parent) for e in dep] == [("b3", "a1")]
    assert nodes["b3"].row < nodes["a1"].row
    assert not nodes["b3"].is_merge  # a dependency is not a parent


def test_dangling_parent_is_drawn_as_a_base():
    revisions = [
        rev("orphan", "gone-from-disk"),
        rev("child", "orphan"),
        rev("half", "child", "also-gone", depends_on=("missing-dep",)),
    ]
    layout = check(revisions)
    nodes = by_revision(layout)
    assert nodes["orphan"].is_base
    assert not nodes["half"].is_base
    assert [(e.child, e.parent) for e in layout.edges] == [("half", "child"), ("child", "orphan")]
    assert layout.lane_count == 1


def test_repeated_revision_is_refused():
    with pytest.raises(ValueError, match="'a'"):
        layout_graph([rev("a"), rev("a")])


def test_a_cycle_still_lays_out_every_revision():
    # Alembic refuses cycles; a broken script directory must still draw.
    layout = layout_graph([rev("a", "b"), rev("b", "a"), rev("c", "a")])
    assert sorted(n.revision for n in layout.nodes) == ["a", "b", "c"]
    assert len(layout.edges) == 3


def test_lanes_are_reused_along_a_history_of_diamonds():
    revisions = [rev("d0")]
    for i in range(30):
        top = f"d{i}"
        revisions += [rev(f"l{i}", top), rev(f"r{i}", top), rev(f"d{i + 1}", f"l{i}", f"r{i}")]
    layout = check(revisions)
    assert layout.lane_count == 2


MAX_FEATURE_BRANCHES = 3


def simulated_history(seed: int, size: int = 1000, merges: int = 50) -> list[GraphRevision]:
    """A team's history: feature branches fork off the trunk and merge back.

    At most MAX_FEATURE_BRANCHES features are open at once, so together with
    the trunk no more than MAX_FEATURE_BRANCHES + 1 branches are ever open.
    """
    rng = random.Random(seed)
    parents: dict[str, tuple[str, ...]] = {"r0000": ()}
    trunk = "r0000"
    features: list[str] = []  # their latest revisions
    merged = 0
    while len(parents) < size:
        name = f"r{len(parents):04d}"
        roll = rng.random()
        if merged < merges and features and roll < 0.1:
            feature = features.pop(rng.randrange(len(features)))
            pair = [trunk, feature]
            rng.shuffle(pair)  # `alembic merge` keeps whatever order it was given
            parents[name] = tuple(pair)
            trunk = name
            merged += 1
        elif len(features) < MAX_FEATURE_BRANCHES and roll < 0.2:
            parents[name] = (trunk,)
            features.append(name)
        else:
            i = rng.randrange(len(features) + 1)
            if i == len(features):
                parents[name], trunk = (trunk,), name
            else:
                parents[name], features[i] = (features[i],), name
    assert merged == merges
    heads = set(parents).difference(*parents.values())
    return [rev(name, *ps, head=name in heads) for name, ps in parents.items()]


@pytest.mark.parametrize("seed", range(10))
def test_lane_count_is_bounded_by_open_branches_not_history_length(seed):
    revisions = simulated_history(seed)
    layout = check(revisions)
    assert sum(n.is_merge for n in layout.nodes) == 50
    # A lane is held by a revision waiting for its row. Drawn one branch at a
    # time, the revisions waiting below any row are the trunk plus one per
    # feature branch open at that point of the history.
    assert layout.lane_count <= MAX_FEATURE_BRANCHES + 1


def test_same_layout_whatever_the_input_order():
    revisions = simulated_history(9, size=300, merges=20) + [
        rev("dep", "r0010", depends_on=("r0200",), labels=("feature",), head=True),
        rev("stray", "not-here"),
    ]
    expected = layout_graph(revisions)
    rng = random.Random(0)
    for _ in range(5):
        shuffled = revisions[:]
        rng.shuffle(shuffled)
        assert layout_graph(shuffled) == expected


@pytest.fixture
def app():
    app = Flask(__name__, template_folder=str(TEMPLATES))
    pages = Blueprint("pages", __name__)

    @pages.route("/revisions/<revision_id>", endpoint="revision")
    def revision(revision_id):  # pragma: no cover - only its URL is used
        return revision_id

    app.register_blueprint(pages)
    return app


def test_template_links_every_revision_and_dashes_dependencies(app):
    revisions = [
        rev("base", applied=True),
        rev("a1", "base", applied=True, current=True, labels=("auth",)),
        rev("b1", "base", depends_on=("a1",), head=True),
        rev("m", "a1", "b1", head=True),
        rev("x<&>", "m"),
    ]
    revisions[-1] = GraphRevision(**{**vars(revisions[-1]), "message": "drop <script>"})
    layout = layout_graph(revisions)
    with app.test_request_context():
        html = render_template("_history_graph.html", layout=layout)

    assert html.count('<svg class="hg"') >= 1 and "viewBox=" in html
    for r in revisions[:-1]:
        assert f'href="/revisions/{r.revision}"' in html
    assert 'href="/revisions/x%3C&amp;%3E"' in html  # quoted by url_for, then escaped
    assert html.count("<a href=") == len(revisions)
    assert re.search(r'<path class="d" d="M[\d ]+[VCL]', html)
    assert html.count('class="d"') == 2  # the one depends_on edge, plus the legend
    assert "<script>" not in html and "drop &lt;script&gt;" in html
    assert '<tspan class="t">auth</tspan>' in html
    assert "<title>" in html


def test_template_without_revisions(app):
    with app.test_request_context():
        html = render_template("_history_graph.html", layout=layout_graph([]))
    assert "<svg" not in html and "No revisions" in html


def test_unresolved_and_missing_revisions_are_marked(app):
    revisions = [
        GraphRevision(**{**vars(rev("lost")), "missing": True}),
        GraphRevision(**{**vars(rev("labelled", "lost")), "unresolved": True}),
        rev("plain", "labelled", head=True),
    ]
    layout = layout_graph(revisions)
    node = {n.revision: n for n in layout.nodes}
    assert node["lost"].missing and not node["lost"].unresolved
    assert node["labelled"].unresolved and not node["labelled"].missing
    assert not node["plain"].unresolved and not node["plain"].missing
    with app.test_request_context():
        html = render_template("_history_graph.html", layout=layout)
    assert html.count('<tspan class="t tu">missing</tspan>') == 1
    assert html.count('<tspan class="t tu">unresolved</tspan>') == 1
    assert "unresolved or missing</li>" in html  # the legend explains the red ring
    with app.test_request_context():
        plain = render_template("_history_graph.html", layout=layout_graph(chain("c", 2)))
    assert "unresolved" not in plain
