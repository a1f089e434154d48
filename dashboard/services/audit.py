"""The audit log: every action, restore, backup and failure, append-only.

Kept in the dashboard's own store, never in the target database, so that
restoring the target cannot erase the record of having restored it. Triggers
in the store refuse UPDATE and DELETE on the table, so append-only is
enforced by the store, not just by the absence of a function. Each entry is
also appended to a JSON-lines journal beside the store, so losing the store
does not lose the log.
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import insert

from dashboard.services import store

if TYPE_CHECKING:
    from dashboard.core import Target


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
    """Append one entry. The only writer of the audit table and of its journal
    (``audit.jsonl`` beside the store, fsynced before the entry is committed), from
    which a new store reads the log back if ``dashboard.db`` is lost."""
    engine = store.store_engine(instance_dir)
    values = dict(entry.__dict__)
    values.pop("id")
    values["from_revs"] = store.dumps(entry.from_revs)
    values["to_revs"] = store.dumps(entry.to_revs)
    with engine.begin() as conn:
        result = conn.execute(insert(store.audit).values(**values))
        store.append_audit_journal(instance_dir, {**values, "id": result.inserted_primary_key[0]})


def list_entries(instance_dir: str, limit: int = 500) -> list[AuditEntry]:
    return find_entries(instance_dir, {}, 1, limit).items


def find_entries(instance_dir: str, where: dict, page: int, per_page: int) -> store.Page:
    """One page of entries, newest first, whose ``event``/``outcome``/``user``
    equal ``where``'s."""
    return store.paged(instance_dir, store.audit, (store.audit.c.id.desc(),), where, page,
                       per_page, lambda row: _entry(row._mapping))


def _entry(row) -> AuditEntry:
    return AuditEntry(**{**row, "from_revs": tuple(store.loads(row["from_revs"])),
                         "to_revs": tuple(store.loads(row["to_revs"]))})


# ------------------------------------------------------------------ events
# One dataclass per kind of entry, each saying when it is written; the guard
# builds one and ``record_event`` fills in the database and writes it.


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """Something the dashboard did, or refused to do, to a target database."""

    name: ClassVar[str] = ""
    outcome: ClassVar[str] = "succeeded"
    user: str = field(default_factory=lambda: current_user())
    action: str | None = None
    destination: str | None = None  # the revision an action went to, or a backup id
    from_revs: tuple[str, ...] = ()
    to_revs: tuple[str, ...] = ()
    backup_id: str | None = None
    run_id: str | None = None
    duration: float | None = None
    error: str | None = None
    # A run over several databases names each (masked); else the target's database.
    databases: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ActionSucceeded(AuditEvent):
    """An upgrade, downgrade or stamp ran to its end behind a verified backup."""

    name: ClassVar[str] = "action_succeeded"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class ActionRefused(AuditEvent):
    """The backup before an action failed, so nothing ran."""

    name: ClassVar[str] = "action_refused"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class ActionFailed(AuditEvent):
    """A step failed and putting the database back failed too: it needs a person."""

    name: ClassVar[str] = "action_failed"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class ActionRestored(AuditEvent):
    """A step failed; the pre-action backup was restored and checked."""

    name: ClassVar[str] = "action_restored"
    outcome: ClassVar[str] = "restored"


@dataclass(frozen=True, kw_only=True)
class ActionRolledBack(AuditEvent):
    """A step failed; the action's one transaction was rolled back."""

    name: ClassVar[str] = "action_rolled_back"
    outcome: ClassVar[str] = "restored"


@dataclass(frozen=True, kw_only=True)
class ActionCancelled(AuditEvent):
    """A person cancelled a running action; the database was put back."""

    name: ClassVar[str] = "action_cancelled"
    outcome: ClassVar[str] = "cancelled"


@dataclass(frozen=True, kw_only=True)
class ActionInterrupted(AuditEvent):
    """The process running an action died before it finished."""

    name: ClassVar[str] = "action_interrupted"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class DatabaseCreated(AuditEvent):
    """An upgrade created a SQLite database that did not exist."""

    name: ClassVar[str] = "database_created"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class DatabaseCreationUndone(AuditEvent):
    """An upgrade that created a database failed; the new file was removed."""

    name: ClassVar[str] = "database_creation_undone"
    outcome: ClassVar[str] = "restored"


@dataclass(frozen=True, kw_only=True)
class RestoreSucceeded(AuditEvent):
    """A backup was restored into the database (after a backup of the state it replaced)."""

    name: ClassVar[str] = "restore_succeeded"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class RestoreFailed(AuditEvent):
    """Loading a backup failed; the database was left as it was (checked)."""

    name: ClassVar[str] = "restore_failed"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class RestoreRefused(AuditEvent):
    """The backup of the current state failed, so the restore did not start."""

    name: ClassVar[str] = "restore_refused"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class BackupTaken(AuditEvent):
    """A manual backup was taken and verified."""

    name: ClassVar[str] = "backup_taken"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class BackupFailed(AuditEvent):
    """A manual backup could not be taken or verified."""

    name: ClassVar[str] = "backup_failed"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class BackupVerified(AuditEvent):
    """A backup was checked again, and passed."""

    name: ClassVar[str] = "backup_verified"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class BackupVerificationFailed(AuditEvent):
    """A backup was checked again, and failed."""

    name: ClassVar[str] = "backup_verification_failed"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class BackupDeleted(AuditEvent):
    """A person deleted a backup."""

    name: ClassVar[str] = "backup_deleted"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class BackupExpired(AuditEvent):
    """Retention deleted an old backup after a newer one was taken."""

    name: ClassVar[str] = "backup_expired"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class RehearsalStarted(AuditEvent):
    """A rehearsal began: the pending upgrade is to run on a copy, never on the database."""

    name: ClassVar[str] = "rehearsal_started"
    outcome: ClassVar[str] = "started"


@dataclass(frozen=True, kw_only=True)
class RehearsalPassed(AuditEvent):
    """A rehearsal ran every step on its copy (and the schema came back the same after
    a round trip); the copy was removed."""

    name: ClassVar[str] = "rehearsal_passed"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class RehearsalFailed(AuditEvent):
    """A rehearsal failed: a step on the copy, the copy itself, or a round trip whose
    schema differs; the database itself was not touched."""

    name: ClassVar[str] = "rehearsal_failed"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class RolloutStarted(AuditEvent):
    """A rollout over several targets was recorded and its conductor started (written
    in the root instance folder's log; each target's run is audited in its own)."""

    name: ClassVar[str] = "rollout_started"
    outcome: ClassVar[str] = "started"


@dataclass(frozen=True, kw_only=True)
class RolloutSucceeded(AuditEvent):
    """Every target of a rollout succeeded or was already at the destination."""

    name: ClassVar[str] = "rollout_succeeded"
    outcome: ClassVar[str] = "succeeded"


@dataclass(frozen=True, kw_only=True)
class RolloutHalted(AuditEvent):
    """A rollout stopped starting targets after a failure (a canary's, or any under
    on_error "halt"); the runs under way finished."""

    name: ClassVar[str] = "rollout_halted"
    outcome: ClassVar[str] = "halted"


@dataclass(frozen=True, kw_only=True)
class RolloutFailed(AuditEvent):
    """A rollout ended with failed targets (on_error "continue"), or its conductor failed."""

    name: ClassVar[str] = "rollout_failed"
    outcome: ClassVar[str] = "failed"


@dataclass(frozen=True, kw_only=True)
class RolloutCancelled(AuditEvent):
    """A person cancelled a rollout: what had not started will not start."""

    name: ClassVar[str] = "rollout_cancelled"
    outcome: ClassVar[str] = "cancelled"


@dataclass(frozen=True, kw_only=True)
class RolloutFinishedCancelled(AuditEvent):
    """A cancelled rollout ended: the runs that were under way finished."""

    name: ClassVar[str] = "rollout_cancelled_finished"
    outcome: ClassVar[str] = "cancelled"


def record_event(target: Target, event: AuditEvent) -> None:
    """Write one event for ``target``: its database masked, any error scrubbed."""
    project = target.project()
    record(target.instance_dir, AuditEntry(
        event=event.name, outcome=event.outcome,
        database=", ".join(event.databases) or project.masked_url,
        user=event.user, action=event.action, target=event.destination,
        from_revs=tuple(event.from_revs), to_revs=tuple(event.to_revs),
        backup_id=event.backup_id, run_id=event.run_id, duration=event.duration,
        error=project.scrub(event.error) if event.error else None,
    ))


def _kinds() -> list[type[AuditEvent]]:
    found, todo = [], [AuditEvent]
    while todo:
        for kind in todo.pop().__subclasses__():
            found.append(kind)
            todo.append(kind)
    return found


# What the audit log can be filtered by.
EVENTS = tuple(sorted({kind.name for kind in _kinds() if kind.name}))
OUTCOMES = tuple(sorted({kind.outcome for kind in _kinds()}))
