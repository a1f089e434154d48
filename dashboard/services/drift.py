"""Drift: the live schema against the project's models, as autogenerate sees it.

The worker runs env.py online as ``alembic check`` would and hands each database
it opens, with env.py's own ``target_metadata`` and options, to Alembic's
``compare_metadata``; nothing is written. This module turns its report into
what a user reads: in sync, the differences (each in a sentence), or why the
comparison could not be made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from dashboard.services import alembic_process
from dashboard.services.project import Project
from dashboard.services.status import PENDING, UNREACHABLE, UP_TO_DATE, MigrationStatus

IN_SYNC = "in_sync"
DRIFT = "drift"
UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Difference:
    """One difference autogenerate found: what kind, where, and a sentence."""

    kind: str  # Alembic's: add_column, remove_table, modify_type, ...
    table: str | None
    column: str | None
    name: str | None  # of an index or constraint
    detail: str  # the two sides, or what the object is
    sentence: str
    schema: str | None = None
    database: str | None = None  # masked; set when env.py migrates several

    def as_json(self) -> dict:
        return {"kind": self.kind, "schema": self.schema, "table": self.table,
                "column": self.column, "name": self.name, "detail": self.detail,
                "sentence": self.sentence, "database": self.database}


@dataclass(frozen=True)
class DatabaseDrift:
    """One database env.py opened, against the metadata it gave for it."""

    database: str  # masked
    state: str
    differences: tuple[Difference, ...] = ()
    reason: str | None = None

    def as_json(self) -> dict:
        return {"database": self.database, "state": self.state, "reason": self.reason,
                "differences": [d.as_json() for d in self.differences]}


@dataclass(frozen=True)
class DriftReport:
    """The answer for a target: in_sync, drift or unavailable (with the reason)."""

    state: str
    differences: tuple[Difference, ...] = ()
    reason: str | None = None
    databases: tuple[DatabaseDrift, ...] = ()
    note: str | None = None  # what else to know (the database is not at its heads)
    checked_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    files: tuple[str, ...] = ()  # the project's source files the check read

    def as_json(self) -> dict:
        return {"state": self.state, "reason": self.reason, "note": self.note,
                "differences": [d.as_json() for d in self.differences],
                "databases": [d.as_json() for d in self.databases],
                "checked_at": self.checked_at, "duration_s": round(self.duration_s, 3)}


def unavailable(reason: str, **fields) -> DriftReport:
    return DriftReport(UNAVAILABLE, reason=reason, **fields)


def check_drift(project: Project, status: MigrationStatus, timeout: float) -> DriftReport:
    """Compare the target's database(s) with the models now, in the worker."""
    if status.state == UNREACHABLE:
        return unavailable(status.explanation)
    started = time.monotonic()
    try:
        events = alembic_process.call_worker(project, ["drift", "--ini", project.ini_path],
                                             timeout)
    except alembic_process.WorkerFailed as exc:
        return unavailable(str(exc), duration_s=time.monotonic() - started)
    databases = tuple(_database(project, e) for e in events if e.get("event") == "drift")
    files = next((tuple(e.get("files") or ()) for e in events if e.get("event") == "files"), ())
    several = len(databases) > 1
    differences = tuple(d if not several else _named(d, each.database)
                        for each in databases for d in each.differences)
    states = {d.state for d in databases}
    if DRIFT in states:
        state, reason = DRIFT, None
    elif states == {IN_SYNC}:
        state, reason = IN_SYNC, None
    else:
        state = UNAVAILABLE
        reason = " ".join(f"{d.database}: {d.reason}" if several else d.reason
                          for d in databases if d.state == UNAVAILABLE) or \
            "The worker gave no answer."
    return DriftReport(state, differences, reason, databases, note=_note(status),
                       duration_s=time.monotonic() - started, files=files)


def _named(difference: Difference, database: str) -> Difference:
    return replace(difference, database=database,
                   sentence=f"{database}: {difference.sentence}")


def _note(status: MigrationStatus) -> str | None:
    """The differences of a database that is not at its heads are partly the work
    of its pending revisions (autogenerate itself refuses to run then)."""
    if status.state == UP_TO_DATE:
        return None
    if status.state == PENDING:
        count = len(status.pending)
        return (f"The database is not at its head revision ({count} revision"
                f"{'s' if count != 1 else ''} to apply): some of these differences are "
                "what those revisions will change.")
    return status.explanation or None


def _database(project: Project, event: dict) -> DatabaseDrift:
    state = event.get("state")
    if state not in (IN_SYNC, DRIFT, UNAVAILABLE):
        state = UNAVAILABLE
    return DatabaseDrift(
        database=project.scrub(str(event.get("database") or project.masked_url)),
        state=state,
        differences=tuple(difference(project, d) for d in event.get("differences") or ()),
        reason=project.scrub(event["reason"]) if event.get("reason") else None)


# ---------------------------------------------------------------- in words

_SIDES = {"add": ("the models", "the database"), "remove": ("the database", "the models")}
_OBJECTS = {
    "UniqueConstraint": "Unique constraint", "CheckConstraint": "Check constraint",
    "PrimaryKeyConstraint": "Primary key", "ForeignKeyConstraint": "Foreign key",
}


def difference(project: Project, data: dict) -> Difference:
    """One difference as the worker reported it, said in a sentence."""
    kind = str(data.get("kind") or "unknown")
    table, column, name = data.get("table"), data.get("column"), data.get("name")
    schema = data.get("schema")
    where = f"{schema}.{table}" if schema and table else (table or "?")
    columns = ", ".join(str(c) for c in data.get("columns") or ())
    action, _, what = kind.partition("_")
    detail, sentence = "", ""
    if action in _SIDES and what in ("table", "column", "index", "constraint", "fk"):
        has, lacks = _SIDES[action]
        if what == "table":
            detail = f"columns: {columns}"
            subject = f"Table {where}"
        elif what == "column":
            detail = f"{data.get('type')}" + ("" if data.get("nullable", True) else ", NOT NULL")
            subject = f"Column {where}.{column} ({detail})"
        elif what == "index":
            detail = f"{'unique ' if data.get('unique') else ''}index on ({columns})"
            subject = f"{'Unique index' if data.get('unique') else 'Index'} " \
                      f"{name or '(unnamed)'} on {where} ({columns})"
        else:
            label = _OBJECTS.get(str(data.get("constraint")), "Constraint") \
                if what == "constraint" else "Foreign key"
            detail = f"({columns})"
            if what == "fk":
                detail += (f" references {data.get('referred_table')} "
                           f"({', '.join(data.get('referred_columns') or ())})")
            subject = f"{label} {name or '(unnamed)'} on {where} {detail}"
        sentence = f"{subject} is in {has} but not in {lacks}."
    elif action == "modify":
        old, new = data.get("database_side"), data.get("model_side")
        verb = "has"
        if what == "nullable":
            old, new, verb = _nullable(old), _nullable(new), "is"
        elif what == "default":
            old, new = _default(old), _default(new)
        elif what == "comment":
            old, new = _comment(old), _comment(new)
        else:
            verb = "is"
        detail = f"{old} in the database, {new} in the models"
        sentence = f"Column {where}.{column} {verb} {detail}."
    elif kind == "add_table_comment":
        old, new = _comment(data.get("database_side")), _comment(data.get("model_side"))
        detail = f"{old} in the database, {new} in the models"
        sentence = f"Table {where} has {detail}."
    elif kind == "remove_table_comment":  # Alembic's diff does not carry the comment
        detail = "a comment in the database, none in the models"
        sentence = f"Table {where} has {detail}."
    else:  # a kind of a plugin's comparator
        detail = str(data.get("detail") or "")
        sentence = f"{kind}: {detail}" if detail else kind
    return Difference(kind=kind, table=table, column=column, name=name,
                      detail=project.scrub(detail), sentence=project.scrub(sentence),
                      schema=schema)


def _nullable(value) -> str:
    return "nullable" if value else "NOT NULL"


def _default(value) -> str:
    return f"server default {value}" if value else "no server default"


def _comment(value) -> str:
    return f"comment “{value}”" if value else "no comment"
