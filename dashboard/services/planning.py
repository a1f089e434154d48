"""Planning an action: validate it and list the steps Alembic would take.

Pure functions over the parsed history: nothing here opens a database or
runs a process, so the confirmation page and the guard plan alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alembic.script.revision import RevisionError
from alembic.util import CommandError

from dashboard.errors import BadRequest, Conflict
from dashboard.services.revisions import History, applied_revisions
from dashboard.services.status import UNKNOWN_REVISION, UNREACHABLE

ACTIONS = ("upgrade", "downgrade", "stamp")
_DESTINATION = re.compile(r"^[A-Za-z0-9_@+\-.,:]{1,200}$")


class NothingToDo(BadRequest):
    title = "Nothing to do"


@dataclass(frozen=True)
class PlannedStep:
    revision: str
    message: str
    direction: str  # up, down, stamp


@dataclass(frozen=True)
class ActionPlan:
    action: str
    destination: str  # the revision the run goes to, as the user named it
    from_revs: tuple[str, ...]
    steps: tuple[PlannedStep, ...]
    purge: bool = False
    creates_file: str | None = None  # a new SQLite database: nothing to back up


def check_destination(destination: str) -> str:
    """The destination as typed, stripped; a ``BadRequest`` when it cannot name a revision."""
    target = (destination or "").strip()
    if not target or not _DESTINATION.match(target):
        raise BadRequest(f"'{target}' is not a revision target. Use a revision id, a partial "
                         "id, head, heads, base, label@head, +N or -N.")
    return target


def plan_action(history: History, current: tuple[str, ...], action: str, destination: str,
                state: str | None = None) -> ActionPlan:
    """Validate an action and list the steps Alembic would take, without running it."""
    if action not in ACTIONS:
        raise BadRequest(f"Unknown action '{action}': use upgrade, downgrade or stamp.")
    target = check_destination(destination)  # the destination, as typed
    if history.error:
        raise BadRequest(f"The revision history cannot be read: {history.error}")
    if history.missing:
        raise Conflict(
            "The revision history is incomplete: no readable revision file defines "
            f"{', '.join(history.missing)}, which other revisions name as their parent. "
            "Alembic cannot run this history until that file is found; nothing was run."
        )
    if state == UNREACHABLE:
        raise Conflict("The database cannot be reached; nothing can run.")
    revision_map = history.revision_map
    purge = False
    try:
        if action == "stamp":
            if state == UNKNOWN_REVISION:
                purge = True  # the unknown row must go: Alembic cannot walk from it
            names = [t for t in target.split(",") if t]
            for name in names:
                if name not in ("base", "heads", "head"):
                    revision_map.get_revisions(name)
            steps = tuple(PlannedStep(name, "", "stamp") for name in names)
        elif state == UNKNOWN_REVISION:
            raise Conflict("The database is at a revision no script defines; "
                           "stamp it at the revision its schema matches first.")
        elif action == "upgrade":
            revs = list(revision_map.iterate_revisions(target, current, implicit_base=True))
            steps = tuple(PlannedStep(r.revision, r.doc, "up") for r in reversed(revs))
        else:
            revs = list(revision_map.iterate_revisions(current, target,
                                                       select_for_downgrade=True))
            steps = tuple(PlannedStep(r.revision, r.doc, "down") for r in revs)
    except (RevisionError, CommandError) as exc:
        raise BadRequest(f"Cannot {action} to '{target}': {exc}") from exc
    if action != "stamp" and not steps:
        raise NothingToDo(f"Nothing to {action}: the database is already at "
                          f"{', '.join(current) or 'base'} for target '{target}'.")
    return ActionPlan(action, target, tuple(current), steps, purge)


def plan_for_status(history: History, status, action: str, destination: str) -> ActionPlan:
    """``plan_action`` from a status as read: a database an upgrade would create
    (``status.creatable``) is planned from base."""
    if status.creatable and action == "upgrade":
        return plan_action(history, (), action, destination)
    return plan_action(history, tuple(status.current), action, destination, status.state)


def resulting_revisions(history: History, plan: ActionPlan) -> tuple[str, ...]:
    """Where the database will be after the plan, for the confirmation page:
    the heads of what is applied then."""
    if plan.action == "stamp":
        names = [s.revision for s in plan.steps if s.revision != "base"]
        return tuple(sorted(r.revision for r in history.revision_map.get_revisions(names)
                            if r is not None)) if names else ()
    applied = set(applied_revisions(history, plan.from_revs))
    changed = {s.revision for s in plan.steps}
    applied = applied | changed if plan.action == "upgrade" else applied - changed
    return tuple(sorted(
        rev for rev in applied
        if not any(child in applied for child in history.revisions[rev].nextrev)
    ))
