"""A long history on the history page: windows, search, jump to current,
and the downgrade and stamp inputs' suggestions (a real generated project of
1,000 revisions, a real SQLite database stamped in its middle)."""

from __future__ import annotations

import re

import pytest

from dashboard.services.graph import GraphRevision, layout_graph, window
from tests import history_factory as hf
from tests.conftest import client_for

N = 1000


@pytest.fixture(scope="module")
def long_history(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    spec = hf.branchy(n_revisions=N, merges=20, labelled_branches=2, seed=5)
    ini = hf.make_project(root / "project", spec)
    current = spec.revisions[N // 2].revision
    url = hf.stamp_database(root / "db.sqlite", [current])
    client = client_for(ini, url, root / "instance")
    return client, spec, current


def _links(html: str) -> list[str]:
    return re.findall(r'<a href="/revisions/([^"/]+)" id="r-', html)


def test_the_page_opens_on_the_heads_and_the_current_revision(long_history):
    client, spec, current = long_history
    response = client.get("/history")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert len(response.data) < 200_000
    shown = set(_links(html))
    assert current in shown and f'id="r-{current}"' in html
    heads = client.get("/api/status").get_json()["heads"]
    assert set(heads) <= shown
    assert 50 <= len(shown) <= 400
    assert f"{N} revisions" in html
    jump = re.search(r'<a href="([^"]+)" class="jump-current">Jump to current', html)
    assert jump and jump.group(1).endswith(f"#r-{current}")
    target = client.get(jump.group(1).split("#")[0])
    assert f'id="r-{current}"' in target.get_data(as_text=True)


def test_older_and_newer_walk_every_revision_once(long_history):
    client, spec, _ = long_history
    seen: list[str] = []
    url = "/history?start=0"
    pages = 0
    while url:
        html = client.get(url).get_data(as_text=True)
        seen += _links(html)
        older = re.search(r'<a href="(/history\?start=\d+)" rel="next">Older', html)
        url = older.group(1) if older else None
        pages += 1
    assert pages == N // 200
    assert sorted(seen) == sorted(r.revision for r in spec.revisions)
    last = client.get("/history?start=800").get_data(as_text=True)
    newer = re.search(r'<a href="(/history\?start=\d+)" rel="prev">', last)
    assert newer and newer.group(1) == "/history?start=600"
    assert 'rel="next"' not in last


def test_edges_out_of_the_window_are_drawn_leaving_it(long_history):
    client, _, _ = long_history
    html = client.get("/history?start=400").get_data(as_text=True)
    assert "continues in newer revisions" in html and "continues in older revisions" in html
    assert re.search(r'<path class="k\d x" d="M', html)  # a chevron where edges leave
    assert re.search(r'<path class="(k\d|d)" d="M\d+ 0V', html)  # an edge entering at the top


def _results(html: str) -> str:
    start = html.index('id="search-results"')
    return html[start:html.index("</section>", start)]


@pytest.mark.parametrize("query", ["id", "message"])
def test_search_finds_by_id_prefix_and_message_words(long_history, query):
    client, spec, _ = long_history
    wanted = spec.revisions[123 if query == "id" else 321].revision
    q = wanted[:7] if query == "id" else spec.by_id(wanted).message
    response = client.get("/history", query_string={"q": q})
    assert response.status_code == 200
    results = _results(response.get_data(as_text=True))
    assert f'href="/revisions/{wanted}"' in results
    assert f"around={wanted}#r-{wanted}" in results
    shown = client.get(f"/history?around={wanted}").get_data(as_text=True)
    assert f'id="r-{wanted}"' in shown


def test_search_finds_by_branch_label(long_history):
    client, spec, _ = long_history
    label = next(r.branch_labels[0] for r in spec.revisions if r.branch_labels)
    results = _results(client.get("/history", query_string={"q": label}).get_data(as_text=True))
    found = re.findall(r'<li><a href="/revisions/([0-9a-f]+)">', results)
    status = client.get("/api/revisions").get_json()["revisions"]
    labelled = [r["revision"] for r in status if label in r["branch_labels"]]
    assert found and found == labelled[:len(found)]  # newest first, each on the branch


def test_a_search_finding_nothing_says_so(long_history):
    client, _, _ = long_history
    html = client.get("/history?q=no+such+words+anywhere").get_data(as_text=True)
    assert "0 revisions found" in html and "No revision id" in html


@pytest.mark.parametrize("args", [
    "start=abc", "start=-1", "start=1.5", "start=%C2%B2", "size=0", "size=100000", "size=x",
    "q=" + "x" * 201, "around=0", "around=",
])
def test_bad_window_arguments_are_a_4xx(long_history, args):
    client, _, _ = long_history
    response = client.get(f"/history?{args}")
    if args == "around=":
        assert response.status_code == 200  # empty: the opening view
        return
    assert 400 <= response.status_code < 500, response.status_code
    if args == "around=0":
        assert response.status_code in (400, 404)
    else:
        assert response.status_code == 400


def test_an_unknown_revision_to_show_is_a_404(long_history):
    response = long_history[0].get("/history?around=ffffffffffff")
    assert response.status_code == 404


def test_a_start_past_the_end_shows_the_last_window(long_history):
    client, spec, _ = long_history
    html = client.get("/history?start=99999").get_data(as_text=True)
    assert len(_links(html)) == 200 and 'rel="next"' not in html


def test_downgrade_and_stamp_suggest_revisions_in_a_datalist(long_history):
    client, spec, current = long_history
    html = client.get("/history").get_data(as_text=True)
    downgrade = html[html.index('name="target" id="downgrade-target"'):html.index("</datalist>",
                                                                   html.index('id="downgrade-target"'))]
    assert 'name="target"' in downgrade and 'value="-1"' in downgrade
    assert 'list="downgrade-suggestions"' in downgrade and "<select" not in downgrade
    assert '<option value="-1">' in downgrade and '<option value="base">' in downgrade
    assert 'hx-get="/history/suggestions?action=downgrade"' in downgrade
    assert downgrade.count("<option") <= 30
    assert 'list="stamp-suggestions"' in html

    typed = spec.revisions[10].revision[:5]
    options = client.get("/history/suggestions",
                         query_string={"action": "downgrade", "target": typed})
    assert options.status_code == 200
    assert f'<option value="{spec.revisions[10].revision}">' in options.get_data(as_text=True)
    later = spec.revisions[N - 1].revision  # not applied: no downgrade goes there
    options = client.get("/history/suggestions",
                         query_string={"action": "downgrade", "target": later})
    assert f'value="{later}"' not in options.get_data(as_text=True)
    options = client.get("/history/suggestions",
                         query_string={"action": "stamp", "target": later[:6]})
    assert f'value="{later}"' in options.get_data(as_text=True)
    assert client.get("/history/suggestions?action=upgrade").status_code == 400


def test_a_typed_relative_downgrade_still_previews(long_history):
    client, _, current = long_history
    for target in ("-1", "base"):
        response = client.get("/actions/preview", query_string={"action": "downgrade",
                                                                 "target": target})
        assert response.status_code != 500


# ---------------------------------------------------------------- the pure window

def _rev(name, *parents, head=False):
    return GraphRevision(revision=name, down_revisions=parents, depends_on=(),
                         branch_labels=(), message=name, is_head=head, is_current=False,
                         applied=False)


def test_window_keeps_edges_that_cross_its_edges_and_closes_unused_lanes():
    # two branches off "base": a long one (a1..a5) and a short one (b1)
    revisions = [_rev("base"), _rev("a1", "base"), _rev("a2", "a1"), _rev("a3", "a2"),
                 _rev("a4", "a3"), _rev("a5", "a4", head=True), _rev("b1", "base", head=True)]
    whole = layout_graph(revisions)
    rows = {n.revision: n.row for n in whole.nodes}
    first = rows["a3"]
    part = window(whole, first, first + 2)
    assert [n.revision for n in part.nodes] == [n.revision for n in whole.nodes[first:first + 2]]
    assert part.first_row == first and part.total_rows == len(revisions)
    by_child = {(e.child, e.parent): e for e in part.edges}
    leaving = [e for e in part.edges if e.leaves]
    entering = [e for e in part.edges if e.enters]
    assert leaving and entering
    # the edge into the window's top row comes from above it, in that row's lane
    top = part.nodes[0]
    into_top = [e for e in entering if e.parent == top.revision]
    assert into_top and into_top[0].to_lane == top.lane and into_top[0].from_row < 0
    # every edge leaving ends below the last row
    assert all(e.to_row >= part.row_count for e in leaving)
    assert all(0 <= n.lane < part.lane_count for n in part.nodes)
    assert by_child  # nothing dropped silently: each kept edge names its revisions
    assert window(whole, 0, len(revisions)).edges == tuple(
        e for e in whole.edges)  # the whole window is the whole graph
