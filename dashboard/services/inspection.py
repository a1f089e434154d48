"""What the read-only pages and the JSON API show, assembled once for both."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from itertools import pairwise

from dashboard.services.alembic_process import OfflineSql
from dashboard.services.project import Project
from dashboard.services.revisions import (
    History,
    ScriptRevision,
    children_of,
    dependents_of,
    path_relative,
)
from dashboard.services.status import MigrationStatus


@dataclass(frozen=True)
class RevisionSummary:
    revision: str
    down_revisions: tuple[str, ...]
    branch_labels: tuple[str, ...]
    depends_on: tuple[str, ...]
    message: str
    is_head: bool
    is_merge: bool
    is_branch_point: bool
    is_base: bool
    applied: bool
    is_current: bool
    declared_labels: tuple[str, ...] = ()  # in the file; Alembic spreads labels along a branch
    # (header, why) for headers that could not be read: shown as "unresolved".
    unresolved: tuple[tuple[str, str], ...] = ()
    missing: bool = False  # named by others, defined by no readable file

    def as_json(self) -> dict:
        return {
            "revision": self.revision,
            "down_revisions": list(self.down_revisions),
            "branch_labels": list(self.branch_labels),
            "depends_on": list(self.depends_on),
            "message": self.message,
            "is_head": self.is_head,
            "is_merge": self.is_merge,
            "is_branch_point": self.is_branch_point,
            "applied": self.applied,
            "unresolved": dict(self.unresolved),
            "missing": self.missing,
        }


@dataclass(frozen=True)
class RevisionDetail:
    summary: RevisionSummary
    children: tuple[str, ...]
    dependents: tuple[str, ...]
    create_date: str | None
    path: str
    docstring: str
    upgrade_source: str
    downgrade_source: str
    sql: OfflineSql
    dialect: str
    findings: object = None  # findings.Lint of both directions, with the SQL

    def as_json(self) -> dict:
        data = self.summary.as_json()
        data.update(
            children=list(self.children),
            dependents=list(self.dependents),
            create_date=self.create_date,
            path=self.path,
            docstring=self.docstring,
            upgrade_source=self.upgrade_source,
            downgrade_source=self.downgrade_source,
            dialect=self.dialect,
            upgrade_sql=self.sql.upgrade_sql,
            downgrade_sql=self.sql.downgrade_sql,
            upgrade_sql_error=self.sql.upgrade_error,
            downgrade_sql_error=self.sql.downgrade_error,
        )
        if self.findings is not None:
            data["findings"] = [f.as_json() for f in self.findings.findings]
            data["findings_note"] = self.findings.note
        return data


def summarize(history: History, revision: ScriptRevision,
              status: MigrationStatus | None) -> RevisionSummary:
    heads = set(history.revision_map.heads)
    applied = status.applied if status else frozenset()
    current = set(status.current) if status else set()
    return RevisionSummary(
        revision=revision.revision,
        down_revisions=revision.down_revisions,
        branch_labels=tuple(sorted(revision.branch_labels)),
        depends_on=revision.depends_on,
        message=revision.doc,
        is_head=revision.revision in heads,
        is_merge=revision.is_merge_point,
        is_branch_point=revision.is_branch_point,
        is_base=not revision.down_revisions,
        applied=revision.revision in applied,
        is_current=revision.revision in current,
        declared_labels=revision.header.branch_labels,
        unresolved=revision.unresolved,
        missing=revision.missing,
    )


def status_json(history: History, status: MigrationStatus) -> dict:
    """The body of GET /api/status (and of ``migrate_db.py --check --json``): the
    status with what is wrong in the history."""
    body = status.as_json()
    body["unreadable"] = [{"path": u.path, "reason": u.reason} for u in history.unreadable]
    body["problems"] = list(history.problems)
    body["missing"] = list(history.missing)
    return body


def revision_summaries(history: History, status: MigrationStatus | None
                       ) -> list[RevisionSummary]:
    """Every revision, newest first (Alembic's walk order from the heads)."""
    if history.error:
        return []

    def compute():
        ordered = history.revision_map.iterate_revisions(
            "heads", "base", inclusive=True, implicit_base=True, assert_relative_length=False
        )
        return [summarize(history, rev, status) for rev in ordered]  # type: ignore[arg-type]

    key = ("summaries", tuple(status.current) if status else None, status.state if status else None)
    return history.memo(key, compute)


def function_source(source: str, name: str) -> str:
    """The source of a top-level function, or an empty string."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
            return "\n".join(lines[start:node.end_lineno])
    return ""


def revision_detail(project: Project, history: History, revision: ScriptRevision,
                    status: MigrationStatus | None, sql: OfflineSql,
                    findings=None) -> RevisionDetail:
    try:
        with open(revision.path, encoding="utf-8") as handle:
            source = handle.read()
    except OSError:  # also a missing revision, which has no file
        source = ""
    return RevisionDetail(
        summary=summarize(history, revision, status),
        children=children_of(history, revision),
        dependents=dependents_of(history, revision),
        create_date=revision.header.create_date,
        path=path_relative(project, revision.path) if revision.path else "",
        docstring=revision.header.docstring,
        upgrade_source=function_source(source, "upgrade"),
        downgrade_source=function_source(source, "downgrade"),
        sql=sql,
        dialect=project.dialect,
        findings=findings,
    )


def graph_layout(summaries: list[RevisionSummary]):
    """Lane layout of the history for the SVG graph."""
    from dashboard.services.graph import GraphRevision, layout_graph

    return layout_graph([
        GraphRevision(
            revision=s.revision,
            down_revisions=s.down_revisions,
            depends_on=s.depends_on,
            branch_labels=s.declared_labels,
            message=s.message,
            is_head=s.is_head,
            is_current=s.is_current,
            applied=s.applied,
            unresolved=bool(s.unresolved) and not s.missing,
            missing=s.missing,
        )
        for s in summaries
    ])


# Rows of the history page: a long history is shown this many at a time.
HISTORY_WINDOW = 200
MAX_WINDOW = 1000
SEARCH_LIMIT = 50


@dataclass(frozen=True)
class HistoryView:
    """What the history page shows: windows of the graph (one, or several around
    the heads and the current revisions), where the next windows start, and the
    search results."""

    total: int
    windows: tuple  # graph.GraphLayout windows, top to bottom
    size: int
    start: int | None  # a window asked for by its first row; None: the opening view
    newer_start: int | None  # first row of the window above, if any
    older_start: int | None  # first row of the window below, if any
    current: tuple[str, ...]
    heads: tuple[str, ...]
    query: str = ""
    matches: tuple[RevisionSummary, ...] = ()
    more_matches: int = 0

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """(first row, count) of the rows between two windows."""
        return [(a.first_row + a.row_count, b.first_row - a.first_row - a.row_count)
                for a, b in pairwise(self.windows)]


def history_view(history: History, status: MigrationStatus | None, *,
                 start: int | None = None, around: str | None = None,
                 size: int = HISTORY_WINDOW, query: str = "") -> HistoryView:
    """The history page's windows: rows from ``start``, or centred on the revision
    ``around`` names, or (neither) the heads and the current revisions with the
    rows near them; and the revisions ``query`` finds."""
    from dashboard.services.graph import window
    from dashboard.services.revisions import resolve_revision

    summaries = revision_summaries(history, status)
    key = ("layout", tuple(status.current) if status else None, status.state if status else None)
    layout = history.memo(key, lambda: graph_layout(summaries))
    row_of = history.memo(key + ("rows",), lambda: {n.revision: n.row for n in layout.nodes})
    total = layout.row_count
    current = tuple(r for r in (status.current if status else ()) if r in row_of)
    heads = tuple(r for r in history.heads if r in row_of)
    if around:
        row = row_of.get(resolve_revision(history, around).revision, 0)
        start = max(0, min(row - size // 2, total - size))
    if start is not None:
        start = max(0, min(start, total - size))
        ranges = [(start, start + size)]
    else:
        ranges = _opening_ranges(total, [row_of[h] for h in heads],
                                 [row_of[c] for c in current], size)
    windows = tuple(window(layout, a, b) for a, b in ranges)
    first, stop = (windows[0].first_row, windows[-1].first_row + windows[-1].row_count) \
        if windows else (0, 0)
    matches, more = search_revisions(summaries, query) if query else ((), 0)
    return HistoryView(
        total=total, windows=windows, size=size, start=start,
        newer_start=max(0, first - size) if first > 0 else None,
        older_start=stop if stop < total else None,
        current=current, heads=heads, query=query, matches=matches, more_matches=more,
    )


def _opening_ranges(total: int, head_rows: list[int], current_rows: list[int],
                    size: int) -> list[tuple[int, int]]:
    """Rows to open the page on: the whole history when it fits in one window;
    otherwise the rows below each head and around each current revision (mostly
    above it: what is pending next), about ``size`` rows in all, ranges that
    touch or nearly touch joined."""
    if total <= size:
        return [(0, total)] if total else []
    focus = len(head_rows) + len(current_rows) or 1
    context = max(10, size // focus)
    ranges = [(row, row + context) for row in head_rows or [0]]
    ranges += [(row - context * 3 // 4, row + context // 4 + 1) for row in current_rows]
    joined: list[list[int]] = []
    for a, b in sorted((max(0, a), min(total, b)) for a, b in ranges):
        if joined and a <= joined[-1][1] + 10:
            joined[-1][1] = max(joined[-1][1], b)
        else:
            joined.append([a, b])
    return [(a, b) for a, b in joined]


def search_revisions(summaries: list[RevisionSummary], query: str
                     ) -> tuple[tuple[RevisionSummary, ...], int]:
    """Revisions whose id contains ``query`` (a prefix, as usually typed), one
    of whose branch labels contains it, or whose message has every word of it;
    case-insensitive, newest first. Returns the first ``SEARCH_LIMIT`` and how
    many more there are."""
    needle = query.strip().lower()
    words = needle.split()
    if not words:
        return (), 0
    found = [
        s for s in summaries
        if needle in s.revision.lower()
        or any(needle in label.lower() for label in s.branch_labels)
        or all(word in s.message.lower() for word in words)
    ]
    return tuple(found[:SEARCH_LIMIT]), max(0, len(found) - SEARCH_LIMIT)


def revision_suggestions(history: History, status: MigrationStatus | None, typed: str,
                         action: str, limit: int = 30) -> list[RevisionSummary]:
    """Revisions to offer as the user types a downgrade or stamp destination:
    those whose id or label starts with, or message contains, what was typed
    (a downgrade only offers applied revisions); with nothing typed, the ones
    nearest the current revision."""
    summaries = revision_summaries(history, status)
    if action == "downgrade":
        summaries = [s for s in summaries if s.applied and not s.is_current]
    needle = typed.strip().lower()
    if not needle:
        if action == "downgrade":
            return summaries[:limit]
        rows = [i for i, s in enumerate(summaries) if s.is_current or s.is_head]
        first = max(0, min(rows, default=0) - 2)
        return summaries[first:first + limit]
    starts = [s for s in summaries if s.revision.lower().startswith(needle)
              or any(label.lower().startswith(needle) for label in s.branch_labels)]
    if len(starts) < limit:
        seen = {s.revision for s in starts}
        starts += [s for s in summaries if s.revision not in seen
                   and needle in s.message.lower()][:limit - len(starts)]
    return starts[:limit]


def revision_messages(history: History) -> dict[str, str]:
    """Each revision's message, for tables that show only ids."""
    return history.memo(("messages",), lambda: {
        rev: script.doc for rev, script in history.revisions.items()
    })


def revision_files(project: Project, history: History) -> dict[str, str]:
    """Each revision's file, relative to the project, for a failure to name what to fix."""
    return history.memo(("files", project.script_location), lambda: {
        rev: path_relative(project, script.path)
        for rev, script in history.revisions.items() if script.path
    })


@dataclass(frozen=True)
class TargetSummary:
    """One row of the targets table."""

    name: str
    is_default: bool
    read_only: bool
    database: str  # masked
    dialect: str
    state: str
    current: tuple[str, ...]
    pending_count: int | None  # None: the state could not be read, so nobody knows
    last_run: object | None  # runs.RunRecord
    last_backup: object | None  # backups.BackupRecord
    error: str | None = None

    def as_json(self) -> dict:
        run, backup = self.last_run, self.last_backup
        return {
            "name": self.name, "default": self.is_default, "read_only": self.read_only,
            "database": self.database, "dialect": self.dialect, "state": self.state,
            "current": list(self.current), "pending_count": self.pending_count,
            "last_action": ({"id": run.id, "action": run.action, "target": run.target,
                             "status": run.status, "finished_at": run.finished_at}
                            if run else None),
            "last_backup": ({"id": backup.id, "created_at": backup.created_at,
                             "revisions": list(backup.revisions)} if backup else None),
            "error": self.error,
        }


# States in which the pending list is known (elsewhere it is empty for want of a reading).
KNOWN_PENDING = ("up_to_date", "pending", "uninitialized")


def target_summary(registry, name: str) -> TargetSummary:
    from dashboard.errors import DashboardError
    from dashboard.services import backups, runs

    try:
        dashboard = registry.get(name)
        project, _history, status = dashboard.read_state()
        recent_runs = runs.list_runs(dashboard.instance_dir, limit=1)
        recent_backups = backups.list_backups(dashboard.instance_dir)[:1]
        return TargetSummary(
            name=name, is_default=name == registry.default, read_only=dashboard.read_only,
            database=project.masked_url, dialect=project.dialect, state=status.state,
            current=tuple(status.current),
            pending_count=len(status.pending) if status.state in KNOWN_PENDING else None,
            last_run=recent_runs[0] if recent_runs else None,
            last_backup=recent_backups[0] if recent_backups else None,
            error=status.explanation if status.state == "unreachable" else None,
        )
    except DashboardError as exc:
        return TargetSummary(
            name=name, is_default=name == registry.default,
            read_only=registry.targets[name].read_only, database="", dialect="",
            state="error", current=(), pending_count=None, last_run=None, last_backup=None,
            error=exc.message + (f" {exc.detail}" if exc.detail else ""),
        )


def target_summaries(registry) -> list[TargetSummary]:
    """Every target's row, read in parallel: a server that is down costs its
    connect timeout once, not once per target."""
    from concurrent.futures import ThreadPoolExecutor

    names = list(registry.targets)
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return list(pool.map(lambda n: target_summary(registry, n), names))


def pending_sql_script(target) -> tuple[str, str]:
    """The SQL of every pending revision's upgrade, in the order Alembic applies them,
    as one script to review or hand to a DBA: (file name, text). Each revision's part
    is what ``alembic upgrade <parent>:<revision> --sql`` prints for it."""
    import time

    from dashboard.errors import Conflict

    project, history, status = target.read_state()
    if not status.pending:
        raise Conflict(f"Nothing is pending: the database is {status.state.replace('_', ' ')}.")
    unreadable = [p.revision for p in status.pending if p.revision not in history.revisions]
    if unreadable:
        raise Conflict(f"No readable revision file defines {', '.join(unreadable)}, which the "
                       "pending upgrade needs, so no script is given.")
    revisions = [history.revisions[p.revision] for p in status.pending]
    found = target.upgrade_sql(project, revisions)
    failed = [(r.revision, found[r.revision].error) for r in revisions
              if found[r.revision].sql is None]
    if failed:
        revision, error = failed[0]
        raise Conflict(f"The SQL of revision {revision} could not be generated, so no script "
                       f"is given: {error}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    parts = [f"-- Pending upgrade of {project.masked_url} ({project.dialect}), "
             f"from {', '.join(status.current) or 'base'} to {', '.join(status.heads)}",
             f"-- {len(revisions)} revision(s), generated offline by Migration Dashboard "
             f"at {stamp}", ""]
    for revision in revisions:
        parts += [f"-- Upgrade {revision.revision}: {revision.doc}".rstrip(),
                  found[revision.revision].sql.rstrip(), ""]
    name = f"upgrade-{(status.current or ['base'])[0][:12]}-to-{status.heads[0][:12]}.sql"
    return name, "\n".join(parts)
