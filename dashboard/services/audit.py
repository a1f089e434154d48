"""The audit log: every action, restore, backup and failure, append-only.

Kept in the dashboard's own store, never in the target database, so that
restoring the target cannot erase the record of having restored it. Triggers
in the store refuse UPDATE and DELETE on the table, so append-only is
enforced by the store, not just by the absence of a function.
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass, field

from sqlalchemy import insert, select

from dashboard.services import store


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log."""

    event: str  # action_succeeded, action_failed, action_restored, backup_taken, ...
    outcome: str  # succeeded, failed, restored, refused
    database: str  # masked URL
    user: str = field(default_factory=lambda: current_user())
    action: str | None = None
    target: str | None = None
    from_revs: tuple[str, ...] = ()
    to_revs: tuple[str, ...] = ()
    backup_id: str | None = None
    run_id: str | None = None
    duration: float | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)
    id: int | None = None

    def as_json(self) -> dict:
        data = dict(self.__dict__)
        data["from_revs"] = list(self.from_revs)
        data["to_revs"] = list(self.to_revs)
        data["at_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        return data


def current_user() -> str:
    """The OS user running the dashboard (a signed-in user later)."""
    try:
        return getpass.getuser()
    except Exception:
        return f"uid {os.getuid()}"


def record(instance_dir: str, entry: AuditEntry) -> None:
    """Append one entry. The only writer of the audit table."""
    engine = store.store_engine(instance_dir)
    values = dict(entry.__dict__)
    values.pop("id")
    values["from_revs"] = store.dumps(entry.from_revs)
    values["to_revs"] = store.dumps(entry.to_revs)
    with engine.begin() as conn:
        conn.execute(insert(store.audit).values(**values))


def list_entries(instance_dir: str, limit: int = 500) -> list[AuditEntry]:
    engine = store.store_engine(instance_dir)
    with engine.connect() as conn:
        rows = conn.execute(
            select(store.audit).order_by(store.audit.c.id.desc()).limit(limit)
        ).mappings().all()
    return [
        AuditEntry(**{**row, "from_revs": tuple(store.loads(row["from_revs"])),
                      "to_revs": tuple(store.loads(row["to_revs"]))})
        for row in rows
    ]
