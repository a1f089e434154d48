"""Verified backups of the target database, taken before anything changes it.

A migration runs only after ``take_backup`` has returned: the copy was made
online, checked (integrity, revisions, checksum), renamed into place,
described by a manifest beside it and recorded in the dashboard's store.
Whatever fails on the way leaves no partial file and raises ``BackupError``.

How a database is copied, checked and restored is its engine's business
(``dashboard.engines``): SQLite through its backup API, PostgreSQL through
pg_dump/pg_restore, MariaDB and MySQL through mariadb-dump and the mariadb
client. A server's dump counts as verified only once it has been restored
into a scratch database that held the expected revisions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import DatabaseEngine, engine_for
from dashboard.engines.base import NOT_RUN, CountedAtSwap, describe_failure, remove_files
from dashboard.errors import BackupError, BadRequest, Conflict, NotFound
from dashboard.lifeline import process_alive
from dashboard.services import runs, store
from dashboard.services.project import Project

log = logging.getLogger(__name__)

BACKUP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
READ_CHUNK = 1 << 20
# Room to leave on the backup disk beyond the copy itself.
FREE_SPACE_MARGIN_BYTES = 16 << 20
FREE_SPACE_MARGIN_RATIO = 0.05


@dataclass(frozen=True)
class BackupRecord:
    id: str
    created_at: float  # epoch seconds
    database: str  # masked URL
    dialect: str
    revisions: tuple[str, ...]
    action: str  # what the backup precedes: "upgrade heads", "restore of <id>", "manual"
    path: str  # absolute
    file_name: str
    size: int
    sha256: str
    verified: bool
    verification: str  # what was checked, or why it failed
    copy_seconds: float | None
    verify_seconds: float | None

    @property
    def created_at_iso(self) -> str:
        return _iso(self.created_at)

    def as_json(self) -> dict:
        """The manifest written beside the file, and the API's view of a backup."""
        data = asdict(self)
        data["revisions"] = list(self.revisions)
        data["created_at_iso"] = self.created_at_iso
        return data


# ---------------------------------------------------------------- the verbs


def take_backup(
    project: Project,
    instance_dir: str,
    backup_dir: str,
    action: str,
    expected_revisions: tuple[str, ...] | list[str] | None = None,
    copy: Callable[[str], None] | None = None,
) -> BackupRecord:
    """Copy the target database, verify the copy and record it; or raise BackupError.

    ``expected_revisions`` are the revisions the caller read from the live
    database just before; the copy must hold exactly those. ``copy`` writes the
    copy to the path it is given, instead of the engine (the worker does, for a
    SQLite database whose write lock it already holds).
    """
    fmt = _engine_for_backup(project.database_url)
    fmt.preflight(project)
    backup_dir = os.path.abspath(backup_dir)
    created_at = time.time()
    backup_id = _new_id(created_at)

    try:
        os.makedirs(backup_dir, exist_ok=True)
    except OSError as exc:
        raise describe_failure(f"the backup folder {backup_dir} cannot be created", exc) from exc
    if not os.access(backup_dir, os.W_OK | os.X_OK):
        raise BackupError(f"The backup folder {backup_dir} is not writable. {NOT_RUN}")
    _check_free_space(backup_dir, fmt.space_needed(project))

    if expected_revisions is None:
        expected_revisions = fmt.live_revisions(project)
    expected = tuple(sorted(expected_revisions))

    file_name = _file_name(fmt, project, expected, created_at, backup_id)
    final = os.path.join(backup_dir, file_name)
    _remove_dead_partials(backup_dir)
    # Whose it is, in its name: a copy left by a killed process is found by that.
    temp = os.path.join(backup_dir, f".{file_name}.{os.getpid()}.partial")
    manifest = _manifest_path(final)
    stage = "copying the database"
    try:
        started = time.perf_counter()
        if copy is None:
            fmt.copy(project, temp)
        else:
            copy(temp)
        _fsync_path(temp)
        copy_seconds = time.perf_counter() - started

        stage = "verifying the copy"
        started = time.perf_counter()
        # sha256 and integrity_check both release the GIL: read the file twice at once.
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(sha256_file, temp)
            check = fmt.check(temp, project.version_table, project)
            sha256 = digest.result()
        verify_seconds = time.perf_counter() - started
        if not check.ok:
            raise BackupError(
                f"The copy failed verification: {check.detail}. {fmt.damage_hint}{NOT_RUN}"
            )
        if check.revisions != expected:
            raise BackupError(
                f"The copy is at {_revs(check.revisions)} but the database was expected at "
                f"{_revs(expected)}: it changed while the backup was taken. {NOT_RUN}"
            )

        stage = "saving the backup"
        size = os.path.getsize(temp)
        os.replace(temp, final)
        record = BackupRecord(
            id=backup_id,
            created_at=created_at,
            database=project.masked_url,
            dialect=project.dialect,
            revisions=expected,
            action=action,
            path=final,
            file_name=file_name,
            size=size,
            sha256=sha256,
            verified=True,
            verification=(
                f"{check.detail}; {project.version_table} at {_revs(expected)} as expected; "
                f"sha256 over {size} bytes"
            ),
            copy_seconds=copy_seconds,
            verify_seconds=verify_seconds,
        )
        _write_json(manifest, {**record.as_json(), "version_table": project.version_table})
        _fsync_path(backup_dir)

        stage = "recording the backup"
        with store.store_engine(instance_dir).begin() as conn:
            conn.execute(store.backups.insert().values(**_row(record)))
    except BaseException as exc:
        remove_files(temp, final, manifest, manifest + ".partial")
        if isinstance(exc, BackupError):
            raise
        if isinstance(exc, (OSError, sqlite3.Error, SQLAlchemyError)):
            raise describe_failure(f"{stage} failed", exc, backup_dir) from exc
        raise
    log.info("backup %s of %s taken in %.2fs, verified in %.2fs",
             backup_id, record.database, copy_seconds, verify_seconds)
    return record


def verify_backup(instance_dir: str, backup_id: str,
                  project: Project | None = None) -> BackupRecord:
    """Check an existing backup again against its manifest; record the outcome.

    A PostgreSQL or MariaDB backup is restored into a scratch database on the
    project's server when ``project`` is given; without it only the file is read.
    """
    record = get_backup(instance_dir, backup_id)
    started = time.perf_counter()
    problem, checked = _reverify(record, project)
    verified = problem is None
    updated = replace(
        record,
        verified=verified,
        verification=checked if verified else problem,
        verify_seconds=time.perf_counter() - started,
    )
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(
            store.backups.update()
            .where(store.backups.c.id == record.id)
            .values(verified=updated.verified, verification=updated.verification,
                    verify_seconds=updated.verify_seconds)
        )
    return updated


def list_backups(instance_dir: str) -> list[BackupRecord]:
    """Every recorded backup, newest first."""
    table = store.backups
    with store.store_engine(instance_dir).connect() as conn:
        rows = conn.execute(select(table).order_by(table.c.created_at.desc(), table.c.id.desc()))
        return [_record(row) for row in rows]


def find_backups(instance_dir: str, where: dict, page: int, per_page: int) -> store.Page:
    """One page of backups, newest first, whose ``verified`` equals ``where``'s."""
    table = store.backups
    return store.paged(instance_dir, table, (table.c.created_at.desc(), table.c.id.desc()),
                       where, page, per_page, _record)


def import_manifests(instance_dir: str, backup_dir: str, database: str) -> list[BackupRecord]:
    """List again the backups of ``database`` (its masked URL) whose file and manifest
    are in ``backup_dir`` but whose record is not in the store: after ``dashboard.db``
    was lost or moved aside. Returns the records added."""
    try:
        names = sorted(os.listdir(backup_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise store.storage_error(exc, backup_dir) from exc
    with store.store_engine(instance_dir).connect() as conn:
        known = set(conn.execute(select(store.backups.c.id)).scalars())
    found = []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        manifest = os.path.join(os.path.abspath(backup_dir), name)
        record = _from_manifest(manifest)
        if record is not None and record.id not in known and record.database == database:
            found.append(record)
    if found:
        with store.store_engine(instance_dir).begin() as conn:
            conn.execute(store.backups.insert().prefix_with("OR IGNORE"),
                         [_row(record) for record in found])
        log.info("listed %d backups again from their manifests in %s", len(found), backup_dir)
    return found


def _from_manifest(manifest: str) -> BackupRecord | None:
    """The record a manifest describes, if its backup file is beside it."""
    path = manifest[: -len(".json")]
    if not os.path.isfile(path):
        return None
    try:
        with open(manifest, encoding="utf-8") as handle:
            data = json.load(handle)
        record = BackupRecord(
            id=str(data["id"]), created_at=float(data["created_at"]),
            database=str(data["database"]), dialect=str(data["dialect"]),
            revisions=tuple(str(r) for r in data["revisions"]), action=str(data["action"]),
            path=path, file_name=os.path.basename(path), size=int(data["size"]),
            sha256=str(data["sha256"]), verified=bool(data["verified"]),
            verification=str(data.get("verification") or ""),
            copy_seconds=data.get("copy_seconds"), verify_seconds=data.get("verify_seconds"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the backup manifest %s: %s", manifest, exc)
        return None
    return record if BACKUP_ID.fullmatch(record.id) else None


def get_backup(instance_dir: str, backup_id: str) -> BackupRecord:
    if not isinstance(backup_id, str) or not BACKUP_ID.fullmatch(backup_id):
        raise BadRequest(f"{backup_id!r} is not a backup id (like 20240131T235959Z-0a1b2c3d).")
    with store.store_engine(instance_dir).connect() as conn:
        row = conn.execute(
            select(store.backups).where(store.backups.c.id == backup_id)
        ).first()
    if row is None:
        raise NotFound(f"There is no backup {backup_id}.")
    return _record(row)


def deletable_backup(instance_dir: str, backup_id: str) -> BackupRecord:
    """The backup, if it may be deleted: never one a run still needs (409)."""
    record = get_backup(instance_dir, backup_id)
    if record.id in runs.pinned_backups(instance_dir):
        raise Conflict(f"Backup {record.id} is in use by a run that has not finished (it is "
                       "the run's way back, or the backup being restored): it cannot be "
                       "deleted until that run ends.")
    return record


def delete_backup(instance_dir: str, backup_id: str) -> None:
    """Remove the file, its manifest and its record; never a backup a run still needs."""
    record = deletable_backup(instance_dir, backup_id)
    for path in (record.path, _manifest_path(record.path)):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackupError(f"Backup {backup_id} cannot be deleted: {exc.strerror}: {path}",
                              detail=str(exc)) from exc
    with store.store_engine(instance_dir).begin() as conn:
        conn.execute(store.backups.delete().where(store.backups.c.id == backup_id))


def apply_retention(instance_dir: str, keep: int,
                    also_keep: set[str] | frozenset[str] = frozenset()) -> list[BackupRecord]:
    """Delete all but the newest ``keep`` backups; returns the deleted ones.

    A backup an unfinished run needs (and any in ``also_keep``) is never deleted,
    nor counted against ``keep``."""
    if keep < 0:
        raise BadRequest(f"Cannot keep {keep} backups.")
    pinned = runs.pinned_backups(instance_dir) | set(also_keep)
    deletable = [record for record in list_backups(instance_dir) if record.id not in pinned]
    deleted = []
    for record in deletable[keep:]:
        delete_backup(instance_dir, record.id)
        deleted.append(record)
    return deleted


def restore_backup_file(project: Project, record: BackupRecord, marks: dict | None = None,
                        touched: frozenset[str] = frozenset()) -> CountedAtSwap | None:
    """Write the backup's content into the live database in place, then check it.

    The caller holds the lock and has taken a backup of the current state. Given a
    run's write ``marks``, what the engine counted of others' writes at the swap
    (None if it did not count).
    """
    fmt = _engine_for_backup(project.database_url)
    if _engine_of_record(record) is not fmt:
        raise BackupError(
            f"Backup {record.id} is of a {record.dialect} database, not {project.dialect}."
        )
    if not os.path.isfile(record.path):
        raise BackupError(f"The file of backup {record.id} is missing: {record.path}. "
                          "The database was not changed.")
    sha256 = sha256_file(record.path)
    if sha256 != record.sha256:
        raise BackupError(
            f"The file of backup {record.id} changed since it was taken (sha256 {sha256[:12]}, "
            f"expected {record.sha256[:12]}). The database was not changed."
        )
    fmt.preflight(project)
    counted = fmt.restore(project, record.path, marks, touched)
    check = fmt.check_live(project)
    if not check.ok:
        raise BackupError(f"After restoring backup {record.id} the database fails its "
                          f"check: {check.detail}.")
    if check.revisions != tuple(sorted(record.revisions)):
        raise BackupError(
            f"After restoring backup {record.id} the database is at {_revs(check.revisions)}, "
            f"not at {_revs(record.revisions)} as the backup says."
        )
    return counted


def iter_backup_file(record: BackupRecord, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """The file's bytes in chunks, for a streamed download.

    The file is opened now, so a missing file is a NotFound before any byte is sent.
    """
    try:
        handle = open(record.path, "rb")
    except FileNotFoundError as exc:
        raise NotFound(f"The file of backup {record.id} is missing.") from exc

    def chunks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(chunk):
                yield block

    return chunks()


def download_name(record: BackupRecord) -> str:
    return record.file_name


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


# ---------------------------------------------------------------- helpers


def _engine_for_backup(url: str) -> DatabaseEngine:
    return engine_for(url)


def _engine_of_record(record: BackupRecord) -> DatabaseEngine:
    """The engine that made a backup, from the dialect its manifest names."""
    return engine_for(f"{record.dialect}://")


def _reverify(record: BackupRecord, project: Project | None) -> tuple[str | None, str]:
    """(what is wrong or None, what was checked)."""
    if not os.path.isfile(record.path):
        return f"The backup file is missing: {record.path}", ""
    manifest_path = _manifest_path(record.path)
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        manifest_sha, manifest_revs = manifest["sha256"], tuple(sorted(manifest["revisions"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"The manifest {manifest_path} is missing or unreadable: {exc}", ""
    sha256 = sha256_file(record.path)
    if sha256 != manifest_sha:
        return (f"sha256 {sha256[:12]}… does not match the manifest's {manifest_sha[:12]}…: "
                "the file changed after the backup was taken"), ""
    if sha256 != record.sha256:
        return "The manifest's sha256 differs from the recorded one", ""
    fmt = _engine_of_record(record)
    if project is not None and project.engine is not fmt:
        project = None  # another server: check the file alone
    check = fmt.check(record.path, manifest.get("version_table", "alembic_version"), project)
    if not check.ok:
        return check.detail, ""
    if check.revisions != manifest_revs:
        return (f"The file is at {_revs(check.revisions)}, the manifest says "
                f"{_revs(manifest_revs)}"), ""
    return None, (f"file present; sha256 matches the manifest; {check.detail}; "
                  f"revisions {_revs(check.revisions)} match the manifest")


_PARTIAL = re.compile(r"^\..+\.(\d+)\.partial$")


def _remove_dead_partials(backup_dir: str) -> None:
    """Remove the copies that backups killed on the way left: never a backup (a copy
    becomes one only when it is renamed), and never one whose process still lives."""
    try:
        names = os.listdir(backup_dir)
    except OSError:
        return
    for name in names:
        match = _PARTIAL.match(name)
        if match is None or process_alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(backup_dir, name))
            log.info("removed %s, left by a backup that was killed", name)
        except OSError:
            pass


def _check_free_space(backup_dir: str, size: int) -> None:
    needed = size + FREE_SPACE_MARGIN_BYTES + int(size * FREE_SPACE_MARGIN_RATIO)
    free = shutil.disk_usage(backup_dir).free
    if free < needed:
        raise BackupError(
            f"Not enough free space in {backup_dir}: the backup needs about "
            f"{_size(needed)} ({_size(size)} for the copy and its check, plus a safety margin) "
            f"and {_size(free)} is free. {NOT_RUN}"
        )


def _new_id(created_at: float) -> str:
    return f"{_stamp(created_at)}-{secrets.token_hex(4)}"


def _file_name(fmt: DatabaseEngine, project: Project, revisions: tuple[str, ...],
               created_at: float, backup_id: str) -> str:
    # Built only from the database's name (or file stem) and revision ids: no credentials.
    stem = _safe(fmt.source_name(project), 60) or "database"
    revision = _safe(revisions[0], 32) if revisions else "base"
    if len(revisions) > 1:
        revision += f"+{len(revisions) - 1}"
    short = backup_id.rsplit("-", 1)[1]
    return f"{stem}__{revision}__{_stamp(created_at)}__{short}{fmt.extension_for(project)}"


def _safe(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:limit]


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%SZ")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _revs(revisions) -> str:
    return ", ".join(revisions) if revisions else "no revision"


def _size(count: int) -> str:
    return f"{count / (1 << 20):,.1f} MiB"


def _manifest_path(path: str) -> str:
    return path + ".json"


def _write_json(path: str, data: dict) -> None:
    temp = path + ".partial"
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _row(record: BackupRecord) -> dict:
    data = asdict(record)
    del data["file_name"]
    data["revisions"] = store.dumps(record.revisions)
    return data


def _record(row) -> BackupRecord:
    return BackupRecord(
        id=row.id,
        created_at=row.created_at,
        database=row.database,
        dialect=row.dialect,
        revisions=tuple(store.loads(row.revisions)),
        action=row.action,
        path=row.path,
        file_name=os.path.basename(row.path),
        size=row.size,
        sha256=row.sha256,
        verified=bool(row.verified),
        verification=row.verification,
        copy_seconds=row.copy_seconds,
        verify_seconds=row.verify_seconds,
    )

