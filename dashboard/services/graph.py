"""Rows and lanes for the revision history graph, like ``git log --graph``.

The history page draws the graph as server-side SVG (no Graphviz, no JS), so
the geometry must come from somewhere that can be tested on its own: this
module is a pure function over plain dataclasses. It reads no files and knows
nothing of Flask or Alembic; the revisions service builds the input and the
``_history_graph.html`` template turns rows and lanes into pixels.

Drawing contract for the template: an edge leaves its child's node, bends
into the parent's lane before the next row, then runs straight down that lane
to the parent. The layout keeps a lane reserved for a parent from the row of
its first child to its own row, so that vertical run never crosses a node.

A long history is shown a window of rows at a time (``window``): an edge whose
other end lies outside the window is kept, marked as entering from above or
leaving below, so a branch that continues out of view is drawn running off the
edge of the window, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

EdgeKind = Literal["parent", "depends_on"]


@dataclass(frozen=True)
class GraphRevision:
    revision: str
    down_revisions: tuple[str, ...]  # parents (merge: 2+; base: empty)
    depends_on: tuple[str, ...]  # extra dependency edges (full revision ids), drawn dashed
    branch_labels: tuple[str, ...]
    message: str
    is_head: bool
    is_current: bool  # the database is at this revision
    applied: bool  # applied to the database (an ancestor of a current revision, or current)
    unresolved: bool = False  # some headers (labels, depends_on) could not be read
    missing: bool = False  # named as a parent or dependency; no readable file defines it


@dataclass(frozen=True)
class GraphNode:
    revision: str
    row: int  # 0 is the top row, a head
    lane: int  # column, 0 is leftmost
    message: str
    branch_labels: tuple[str, ...]
    is_head: bool
    is_current: bool
    applied: bool
    is_merge: bool
    is_branch_point: bool
    is_base: bool  # no parent in the graph (none at all, or only unknown ones)
    unresolved: bool = False
    missing: bool = False


@dataclass(frozen=True)
class GraphEdge:
    child: str
    parent: str
    kind: EdgeKind
    from_row: int
    from_lane: int
    to_row: int
    to_lane: int
    enters: bool = False  # the child is above the window: drawn from its top edge
    leaves: bool = False  # the parent is below the window: drawn to its bottom edge


@dataclass(frozen=True)
class GraphLayout:
    nodes: tuple[GraphNode, ...]  # sorted by row
    edges: tuple[GraphEdge, ...]  # sorted by child row, then parents before depends_on
    lane_count: int
    row_count: int
    first_row: int = 0  # of the whole layout, when this is a window of it
    total_rows: int | None = None  # rows of the whole layout (None: this is the whole)

    @property
    def enters(self) -> bool:
        return any(e.enters for e in self.edges)

    @property
    def leaves(self) -> bool:
        return any(e.leaves for e in self.edges)

    @property
    def leaving_lanes(self) -> tuple[int, ...]:
        return tuple(sorted({e.to_lane for e in self.edges if e.leaves}))

    @property
    def entering_lanes(self) -> tuple[int, ...]:
        return tuple(sorted({e.to_lane for e in self.edges if e.enters}))


def layout_graph(revisions: Sequence[GraphRevision]) -> GraphLayout:
    """Place each revision on its own row, newest first, and give it a lane.

    The result depends only on the revisions, not on the order of the list.
    Parent or dependency ids missing from the list are ignored (the revision
    is then drawn as a base). Raises ``ValueError`` if a revision id repeats.
    """
    by_id = _index(revisions)
    parents = {rev: _known(r.down_revisions, rev, by_id) for rev, r in by_id.items()}
    depends = {rev: _known(r.depends_on, rev, by_id) for rev, r in by_id.items()}
    # A dependency must be applied first, so it is ordered like a parent: every
    # edge then points down the page and can own a lane while it waits.
    targets = {rev: _unique((*parents[rev], *depends[rev])) for rev in by_id}

    order = _newest_first(by_id, targets)
    row = {rev: i for i, rev in enumerate(order)}
    lane, lane_count = _assign_lanes(order, targets)

    child_count = dict.fromkeys(by_id, 0)
    for ps in parents.values():
        for p in ps:
            child_count[p] += 1

    nodes = tuple(
        GraphNode(
            revision=rev,
            row=row[rev],
            lane=lane[rev],
            message=by_id[rev].message,
            branch_labels=by_id[rev].branch_labels,
            is_head=by_id[rev].is_head,
            is_current=by_id[rev].is_current,
            applied=by_id[rev].applied,
            is_merge=len(_unique(by_id[rev].down_revisions)) > 1,
            is_branch_point=child_count[rev] > 1,
            is_base=not parents[rev],
            unresolved=by_id[rev].unresolved,
            missing=by_id[rev].missing,
        )
        for rev in order
    )
    edges = tuple(
        GraphEdge(
            child=rev,
            parent=target,
            kind=kind,
            from_row=row[rev],
            from_lane=lane[rev],
            to_row=row[target],
            to_lane=lane[target],
        )
        for rev in order
        for kind, ids in (("parent", parents[rev]), ("depends_on", depends[rev]))
        for target in ids
    )
    return GraphLayout(nodes=nodes, edges=edges, lane_count=lane_count, row_count=len(order))


def window(layout: GraphLayout, first: int, stop: int) -> GraphLayout:
    """Rows ``first`` to ``stop - 1`` of ``layout``, renumbered from 0.

    Edges with one end in the window, or passing through it, are kept: an edge
    from a child above the window enters at its top edge in the parent's lane
    (the lane it runs down in), and one to a parent below leaves at its bottom
    edge. Lanes no row or edge of the window uses are closed up, keeping their
    order, so the labels sit as far left as the window allows.
    """
    total = layout.row_count
    first, stop = max(0, first), min(total, stop)
    nodes = layout.nodes[first:stop]
    kept: list[tuple[GraphEdge, bool, bool]] = []
    passing: set[tuple[str, str]] = set()
    for e in layout.edges:
        if e.to_row < e.from_row:  # only a broken (cyclic) history: drawn when whole
            if first <= e.to_row and e.from_row < stop:
                kept.append((e, False, False))
            continue
        if e.to_row < first or e.from_row >= stop:
            continue
        enters, leaves = e.from_row < first, e.to_row >= stop
        if enters:  # one line per parent and kind: they share its lane from here
            if (e.parent, e.kind) in passing:
                continue
            passing.add((e.parent, e.kind))
        kept.append((e, enters, leaves))
    used = sorted({n.lane for n in nodes}
                  | {e.to_lane for e, _, _ in kept}
                  | {e.from_lane for e, enters, _ in kept if not enters})
    lane = {old: new for new, old in enumerate(used)}
    return GraphLayout(
        nodes=tuple(replace(n, row=n.row - first, lane=lane[n.lane]) for n in nodes),
        edges=tuple(
            replace(e, from_row=e.from_row - first, to_row=e.to_row - first,
                    from_lane=lane[e.to_lane if enters else e.from_lane],
                    to_lane=lane[e.to_lane], enters=enters, leaves=leaves)
            for e, enters, leaves in kept
        ),
        lane_count=len(used),
        row_count=len(nodes),
        first_row=first,
        total_rows=total,
    )


def _index(revisions: Sequence[GraphRevision]) -> dict[str, GraphRevision]:
    by_id: dict[str, GraphRevision] = {}
    for r in revisions:
        if r.revision in by_id:
            raise ValueError(f"revision {r.revision!r} appears more than once")
        by_id[r.revision] = r
    return by_id


def _unique(ids: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ids))


def _known(ids: Iterable[str], own: str, by_id: dict[str, GraphRevision]) -> tuple[str, ...]:
    # Self-references are dropped: they cannot be drawn and would block ordering.
    return _unique(i for i in ids if i in by_id and i != own)


def _newest_first(
    by_id: dict[str, GraphRevision], targets: dict[str, tuple[str, ...]]
) -> list[str]:
    """Children before parents, one branch at a time (git's ``--topo-order``).

    Kahn's algorithm with a stack: a revision becomes ready once all its
    children are placed, and the most recently readied one goes next, so a
    chain is followed down to its branch point before another head starts.
    """
    waiting_children = dict.fromkeys(by_id, 0)
    for ts in targets.values():
        for t in ts:
            waiting_children[t] += 1
    ready = sorted((rev for rev, n in waiting_children.items() if n == 0), reverse=True)
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(by_id):
        if not ready:
            # Only a cycle gets here. Alembic refuses cycles, but a broken script
            # directory should still draw, so break it at the smallest id.
            ready.append(min(rev for rev in by_id if rev not in placed))
        rev = ready.pop()
        if rev in placed:
            continue
        placed.add(rev)
        order.append(rev)
        # Reversed so the first parent is on top of the stack: the chain a
        # revision continues is the one drawn straight below it.
        for t in reversed(targets[rev]):
            waiting_children[t] -= 1
            if waiting_children[t] == 0 and t not in placed:
                ready.append(t)
    return order


def _assign_lanes(
    order: list[str], targets: dict[str, tuple[str, ...]]
) -> tuple[dict[str, int], int]:
    """Give each revision a lane; return the lanes and how many were used.

    A lane is held by one revision from the row of its first child down to its
    own row. A revision inherits its own lane for its first not-yet-waiting
    parent (a chain stays straight) and every other new parent takes the
    leftmost free lane, so lanes are reused and their number is the most
    revisions ever waiting at once, not the length of the history.
    """
    holder: list[str | None] = []  # lane -> revision waiting in it
    waiting_in: dict[str, int] = {}  # revision -> its reserved lane
    lane: dict[str, int] = {}
    for rev in order:
        own = waiting_in.pop(rev, None)
        if own is None:
            own = _free_lane(holder)
        holder[own] = None
        lane[rev] = own
        inherit = own
        for t in targets[rev]:
            if t in waiting_in or t in lane:
                continue  # already has a lane (edge joins it) or is above (cycle)
            if inherit is None:
                inherit = _free_lane(holder)
            holder[inherit] = t
            waiting_in[t] = inherit
            inherit = None
    return lane, len(holder)


def _free_lane(holder: list[str | None]) -> int:
    for i, rev in enumerate(holder):
        if rev is None:
            return i
    holder.append(None)
    return len(holder) - 1
