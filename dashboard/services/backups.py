"""Verified backups of the target database, taken before anything changes it.

A migration runs only after ``take_backup`` has returned: the copy was made
online, checked (integrity, revisions, checksum), renamed into place,
described by a manifest beside it and recorded in the dashboard's store.
Whatever fails on the way leaves no partial file and raises ``BackupError``.

How a database is copied, checked and restored depends on its dialect and
sits behind ``BackupFormat``: SQLite through its backup API, PostgreSQL
through pg_dump/pg_restore, MariaDB and MySQL through mariadb-dump and the
mariadb client (``dbtools`` runs those without exposing the password). A
server's dump counts as verified only once it has been restored into a
scratch database that held the expected revisions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from dashboard.errors import BackupError, BadRequest, NotFound
from dashboard.services import dbtools, store
from dashboard.services.dbtools import ServerAddress, Tool
from dashboard.services.project import Project

log = logging.getLogger(__name__)

BACKUP_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
READ_CHUNK = 1 << 20
# Room to leave on the backup disk beyond the copy itself.
FREE_SPACE_MARGIN_BYTES = 16 << 20
FREE_SPACE_MARGIN_RATIO = 0.05
# SQLite copy steps: see SqliteFormat.copy for the tradeoff.
FAST_COPY = True  # rollback-journal databases: copy the file under a read lock
COPY_STEP_BYTES = 64 << 20
MAX_COPY_RESTARTS = 2
LOCK_WAIT_SECONDS = 30.0
NOT_RUN = "Nothing was run."


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


@dataclass(frozen=True)
class FileCheck:
    ok: bool
    detail: str  # what was checked, or what is wrong
    revisions: tuple[str, ...]


class BackupFormat(Protocol):
    """What one dialect needs: copy, check and restore a database file."""

    extension: str
    damage_hint: str  # what to do when a fresh copy fails its check

    def preflight(self, project: Project) -> None:
        """Raise BackupError, before anything is written, if the tools or server won't do."""

    def source_name(self, project: Project) -> str: ...

    def source_size(self, project: Project) -> int: ...

    def live_revisions(self, project: Project) -> tuple[str, ...]: ...

    def copy(self, project: Project, destination: str) -> None: ...

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        """Is the file a sound backup, and of which revisions.

        With ``project``, a server format restores the file into a scratch
        database on that server; without, it checks the file alone.
        """

    def check_live(self, project: Project) -> FileCheck: ...

    def restore(self, project: Project, backup_path: str) -> None: ...


# ---------------------------------------------------------------- the verbs


def take_backup(
    project: Project,
    instance_dir: str,
    backup_dir: str,
    action: str,
    expected_revisions: tuple[str, ...] | list[str] | None = None,
) -> BackupRecord:
    """Copy the target database, verify the copy and record it; or raise BackupError.

    ``expected_revisions`` are the revisions the caller read from the live
    database just before; the copy must hold exactly those.
    """
    fmt = _format_for(project.dialect)
    fmt.preflight(project)
    backup_dir = os.path.abspath(backup_dir)
    created_at = time.time()
    backup_id = _new_id(created_at)

    try:
        os.makedirs(backup_dir, exist_ok=True)
    except OSError as exc:
        raise _failed(f"the backup folder {backup_dir} cannot be created", exc) from exc
    if not os.access(backup_dir, os.W_OK | os.X_OK):
        raise BackupError(f"The backup folder {backup_dir} is not writable. {NOT_RUN}")
    _check_free_space(backup_dir, fmt.source_size(project))

    if expected_revisions is None:
        expected_revisions = fmt.live_revisions(project)
    expected = tuple(sorted(expected_revisions))

    file_name = _file_name(fmt, project, expected, created_at, backup_id)
    final = os.path.join(backup_dir, file_name)
    temp = os.path.join(backup_dir, f".{file_name}.partial")
    manifest = _manifest_path(final)
    stage = "copying the database"
    try:
        started = time.perf_counter()
        fmt.copy(project, temp)
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
        _remove(temp, final, manifest, manifest + ".partial")
        if isinstance(exc, BackupError):
            raise
        if isinstance(exc, (OSError, sqlite3.Error, SQLAlchemyError)):
            raise _failed(f"{stage} failed", exc, backup_dir) from exc
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


def delete_backup(instance_dir: str, backup_id: str) -> None:
    """Remove the file, its manifest and its record."""
    record = get_backup(instance_dir, backup_id)
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


def apply_retention(instance_dir: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` backups; returns the deleted ids."""
    if keep < 0:
        raise BadRequest(f"Cannot keep {keep} backups.")
    deleted = []
    for record in list_backups(instance_dir)[keep:]:
        delete_backup(instance_dir, record.id)
        deleted.append(record.id)
    return deleted


def restore_backup_file(project: Project, record: BackupRecord) -> None:
    """Write the backup's content into the live database in place, then check it.

    The caller holds the lock and has taken a backup of the current state.
    """
    fmt = _format_for(project.dialect)
    if FORMATS.get(record.dialect) is not fmt:
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
    fmt.restore(project, record.path)
    check = fmt.check_live(project)
    if not check.ok:
        raise BackupError(f"After restoring backup {record.id} the database fails its "
                          f"check: {check.detail}.")
    if check.revisions != tuple(sorted(record.revisions)):
        raise BackupError(
            f"After restoring backup {record.id} the database is at {_revs(check.revisions)}, "
            f"not at {_revs(record.revisions)} as the backup says."
        )


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


# ---------------------------------------------------------------- SQLite


class SqliteFormat:
    extension = ".sqlite3"
    damage_hint = "The database itself may be damaged: run PRAGMA integrity_check on it. "

    def preflight(self, project: Project) -> None:
        _sqlite_path(project)

    def source_name(self, project: Project) -> str:
        return Path(_sqlite_path(project)).stem

    def source_size(self, project: Project) -> int:
        with closing(_open_live(project)) as source:
            try:
                pages = source.execute("PRAGMA page_count").fetchone()[0]
                page_size = source.execute("PRAGMA page_size").fetchone()[0]
            except sqlite3.Error as exc:
                raise _failed("the database cannot be read", exc) from exc
        return pages * page_size

    def live_revisions(self, project: Project) -> tuple[str, ...]:
        # Not status.read_database_revisions: its 2 s lock timeout is too short
        # for a busy database, and a backup may wait for a lock.
        with closing(_open_live(project)) as source:
            try:
                return _read_revisions(source, project.version_table)
            except sqlite3.Error as exc:
                raise _failed("the database's revisions cannot be read", exc) from exc

    def copy(self, project: Project, destination: str) -> None:
        """An online, consistent copy.

        Rollback-journal mode: the file is copied whole by ``cp`` while we
        hold SQLite's shared lock (see ``_copy_file_under_read_lock``), at the
        kernel's speed; writers wait for that lock as for any long reader.
        Otherwise, and if that is not possible: SQLite's backup API, which
        writes the copy one page per system call (about 3x slower). Copying
        in steps releases the read lock between steps, so writers wait at
        most one step (64 MiB); but a write from another connection restarts
        the copy from page 1, so after a few chunked attempts it copies in
        one step, which always finishes. In WAL mode readers never block
        writers and the main file alone is not a snapshot, so the backup API
        copies in one step from the start. mmap on the source would gain
        about 15% but turns a disk read error into SIGBUS in the web process.
        """
        with closing(_open_live(project)) as source:
            try:
                page_size = source.execute("PRAGMA page_size").fetchone()[0]
                wal = source.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            except sqlite3.Error as exc:
                raise _failed("the database cannot be read", exc) from exc
            if not wal and FAST_COPY:
                try:
                    _copy_file_under_read_lock(source, _sqlite_path(project), destination)
                    return
                except _FastCopyUnavailable as exc:
                    log.info("fast copy unavailable (%s): using the backup API", exc)
            if not wal:
                step = max(1, COPY_STEP_BYTES // page_size)
                try:
                    _backup_into(source, destination, step, MAX_COPY_RESTARTS)
                    return
                except _TooManyRestarts:
                    log.info("backup kept restarting under writes: copying in one step")
            _backup_into(source, destination, -1, None)

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        # A backup file is opened immutable: no locks, no -wal/-shm beside it.
        return _check_file(path, version_table, immutable=True)

    def check_live(self, project: Project) -> FileCheck:
        return _check_file(_sqlite_path(project), project.version_table, immutable=False)

    def restore(self, project: Project, backup_path: str) -> None:
        live = _sqlite_path(project)
        if not os.path.isfile(live):
            raise BackupError(f"The database file does not exist: {live}. Nothing was restored.")
        # Through the backup API, not a file copy: the live file keeps its inode
        # and the application's open connections see the new content. The
        # destination is written in one transaction, so a failure leaves it as it was.
        try:
            with closing(_connect(backup_path, "ro", immutable=True)) as source, \
                    closing(_connect(live, "rw", timeout=LOCK_WAIT_SECONDS)) as target:
                source.backup(target, pages=-1, progress=_CopyWatch(None), sleep=0.05)
        except _Locked as exc:
            raise BackupError(f"The database stayed locked for {LOCK_WAIT_SECONDS:g} s; "
                              "it was not changed.") from exc
        except sqlite3.Error as exc:
            raise BackupError(f"The restore could not write the database: {exc}. "
                              "It was left as it was.", detail=str(exc)) from exc


# ---------------------------------------------------------------- servers


SCRATCH_MARK = "mdverify"
POSTGRES_NAME_BYTES = 63
MARIADB_NAME_CHARS = 64

# Run in the restore's own transaction, before pg_restore's script. pg_restore
# --clean drops only what the archive holds, so a table, view or schema made
# after the backup would survive it. Instead every schema is dropped with
# all it holds, and the script recreates what the backup had. The public
# schema is one the script expects to exist (pg_dump never creates it), so
# it is recreated empty, with its owner, privileges and comment as they were.
# Dropping the database instead would need every other session gone and
# CREATEDB, and would lose database-level settings; this keeps the database
# and, being one transaction, leaves it as it was if anything fails.
POSTGRES_CLEAR_SQL = """\
SET client_min_messages = warning;
SET lock_timeout = '30s';
DO $dashboard_restore$
DECLARE
    doomed name;
    public_owner text;
    public_acl aclitem[];
    public_comment text;
    grant_item record;
BEGIN
    FOR doomed IN
        SELECT nspname FROM pg_catalog.pg_namespace
        WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('information_schema', 'public')
    LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', doomed);
    END LOOP;
    SELECT nspowner::regrole::text, nspacl, obj_description(oid, 'pg_namespace')
        INTO public_owner, public_acl, public_comment
        FROM pg_catalog.pg_namespace WHERE nspname = 'public';
    IF public_owner IS NULL THEN
        RETURN;
    END IF;
    DROP SCHEMA public CASCADE;
    CREATE SCHEMA public;
    IF public_comment IS NOT NULL THEN
        EXECUTE format('COMMENT ON SCHEMA public IS %L', public_comment);
    END IF;
    FOR grant_item IN SELECT grantee, privilege_type, is_grantable
                      FROM aclexplode(public_acl)
    LOOP
        EXECUTE format('GRANT %s ON SCHEMA public TO %s%s', grant_item.privilege_type,
                       CASE WHEN grant_item.grantee = 0 THEN 'PUBLIC'
                            ELSE grant_item.grantee::regrole::text END,
                       CASE WHEN grant_item.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    IF public_owner <> quote_ident(current_user) THEN
        EXECUTE format('ALTER SCHEMA public OWNER TO %s', public_owner);
    END IF;
END
$dashboard_restore$;
"""


class PostgresFormat:
    """pg_dump's custom format, restored with pg_restore through psql."""

    extension = ".dump"
    damage_hint = ""

    def preflight(self, project: Project) -> None:
        address = _address(project, "postgresql")
        tools = [dbtools.find_tool((name,), "postgresql")
                 for name in ("pg_dump", "pg_restore", "psql")]
        with dbtools.connect(address) as conn:
            number = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        # 150020 is 15.20; 90624 is 9.6.24.
        server = (number // 10000, number % 10000) if number >= 100000 else \
            (number // 10000, number // 100 % 100, number % 100)
        for tool in tools:
            said = tool.version_text()
            client = dbtools.parse_version(said)
            if dbtools.postgres_major(client) < dbtools.postgres_major(server):
                raise BackupError(
                    f"{tool.name} is version {dbtools.version_string(client)} ({tool.path}: "
                    f"{said!r}) but the PostgreSQL server is version "
                    f"{dbtools.version_string(server)}: {tool.name} cannot work with a newer "
                    f"server. Install the PostgreSQL "
                    f"{dbtools.version_string(dbtools.postgres_major(server))} (or later) "
                    f"client tools and put them first on the PATH. {NOT_RUN}")

    def source_name(self, project: Project) -> str:
        return _address(project, "postgresql").database

    def source_size(self, project: Project) -> int:
        address = _address(project, "postgresql")
        return _scalar(address, "SELECT pg_database_size(current_database())")

    def live_revisions(self, project: Project) -> tuple[str, ...]:
        return _live_revisions(_address(project, "postgresql"), project.version_table)

    def copy(self, project: Project, destination: str) -> None:
        address = _address(project, "postgresql")
        pg_dump = dbtools.find_tool(("pg_dump",), "postgresql")
        with dbtools.postgres_environment(address) as env:
            env["PGDATABASE"] = address.database
            dbtools.run_tool(
                [pg_dump.path, "--format=custom", "--no-password", f"--file={destination}"],
                env, what=f"pg_dump of the {address.describe()}", address=address,
                after=NOT_RUN)

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        try:
            pg_restore = dbtools.find_tool(("pg_restore",), "postgresql")
            entries = _pg_list(pg_restore, path)
            listed = f"pg_restore --list reads {entries} entries"
            if project is None:
                revisions = _pg_archive_revisions(pg_restore, path, version_table)
                return FileCheck(True, f"{listed}; revisions read from the archive "
                                 "(not restored: no server given)", revisions)
            address = _address(project, "postgresql")
            with _scratch_database(address) as scratch:
                with dbtools.postgres_environment(address) as env:
                    dbtools.run_tool(
                        [pg_restore.path, "--no-owner", "--no-privileges", "--exit-on-error",
                         "--no-password", f"--jobs={min(4, os.cpu_count() or 1)}",
                         f"--dbname={_conninfo(scratch)}", path],
                        env, what="Restoring the copy into a scratch database",
                        address=address, after="")
                revisions = _scratch_revisions(address, scratch, version_table)
        except BackupError as exc:
            return FileCheck(False, exc.message.rstrip(". "), ())
        return FileCheck(True, f"{listed}; restored into a scratch database (dropped since)",
                         revisions)

    def check_live(self, project: Project) -> FileCheck:
        return _check_live(_address(project, "postgresql"), project.version_table)

    def restore(self, project: Project, backup_path: str) -> None:
        address = _address(project, "postgresql")
        pg_restore = dbtools.find_tool(("pg_restore",), "postgresql")
        psql = dbtools.find_tool(("psql",), "postgresql")
        _pg_list(pg_restore, backup_path)  # unreadable: refuse before anything is dropped
        with dbtools.postgres_environment(address) as env:
            env["PGDATABASE"] = address.database
            dbtools.run_piped(
                [pg_restore.path, "--clean", "--if-exists", "--no-owner", "--file=-",
                 backup_path],
                [psql.path, "--no-psqlrc", "--quiet", "--no-password", "--set=ON_ERROR_STOP=1",
                 "--single-transaction", "--file=-"],
                env, prelude=POSTGRES_CLEAR_SQL.encode(),
                what=f"Restoring the {address.describe()}", address=address,
                after="The restore runs in one transaction, so the database was left as it was.")


class MariaDbFormat:
    """An SQL dump by mariadb-dump (or mysqldump), loaded back with the mariadb client."""

    extension = ".sql"
    damage_hint = ""
    dump_tools = ("mariadb-dump", "mysqldump")
    client_tools = ("mariadb", "mysql")
    completed = b"\n-- Dump completed"

    def preflight(self, project: Project) -> None:
        address = _address(project, "mysql")
        tools = [dbtools.find_tool(self.dump_tools, "mysql"),
                 dbtools.find_tool(self.client_tools, "mysql")]
        server_text = str(_scalar(address, "SELECT VERSION()"))
        server = dbtools.parse_version(server_text)
        server_is_mariadb = "mariadb" in server_text.lower()
        for tool in tools:
            said = tool.version_text()
            client = dbtools.parse_version(said)
            # MariaDB and MySQL number their versions apart: compare like with like.
            if ("mariadb" in said.lower()) == server_is_mariadb and client[:1] < server[:1]:
                raise BackupError(
                    f"{tool.name} is version {dbtools.version_string(client)} ({tool.path}: "
                    f"{said!r}) but the server is version {server_text}: install client "
                    f"tools of version {server[0]} or later and put them first on the PATH. "
                    f"{NOT_RUN}")

    def source_name(self, project: Project) -> str:
        return _address(project, "mysql").database

    def source_size(self, project: Project) -> int:
        address = _address(project, "mysql")
        return int(_scalar(
            address, "SELECT COALESCE(SUM(data_length + index_length), 0) "
            "FROM information_schema.tables WHERE table_schema = DATABASE()"))

    def live_revisions(self, project: Project) -> tuple[str, ...]:
        return _live_revisions(_address(project, "mysql"), project.version_table)

    def copy(self, project: Project, destination: str) -> None:
        address = _address(project, "mysql")
        dump = dbtools.find_tool(self.dump_tools, "mysql")
        with dbtools.mariadb_option_file(address) as options:
            dbtools.run_tool(
                # --defaults-extra-file must come first, or the tool ignores it.
                [dump.path, f"--defaults-extra-file={options}", "--single-transaction",
                 "--routines", "--triggers", "--events", "--hex-blob",
                 "--default-character-set=utf8mb4", f"--result-file={destination}",
                 "--", address.database],
                None, what=f"{dump.name} of the {address.describe()}", address=address,
                after=NOT_RUN)

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        if not self._complete(path):
            return FileCheck(False, "the dump does not end with its '-- Dump completed' line: "
                             "it is cut short", ())
        if project is None:
            return FileCheck(True, "dump complete; revisions read from the file "
                             "(not loaded: no server given)",
                             _sql_dump_revisions(path, version_table))
        address = _address(project, "mysql")
        try:
            with _scratch_database(address) as scratch:
                self._load(address, scratch, path, "Loading the copy into a scratch database",
                           after="")
                revisions = _scratch_revisions(address, scratch, version_table)
        except BackupError as exc:
            return FileCheck(False, exc.message.rstrip(". "), ())
        return FileCheck(True, "dump complete; loaded into a scratch database (dropped since)",
                         revisions)

    def check_live(self, project: Project) -> FileCheck:
        return _check_live(_address(project, "mysql"), project.version_table)

    def restore(self, project: Project, backup_path: str) -> None:
        """Empty the database, then load the dump into it.

        MariaDB cannot roll DDL back, so this is not atomic; the dump was loaded
        into a scratch database when it was taken, and its checksum has just
        been checked, so a failure half-way is unlikely, and it is reported.
        """
        address = _address(project, "mysql")
        dbtools.find_tool(self.client_tools, "mysql")
        if not self._complete(backup_path):
            raise BackupError("The backup file is cut short (no '-- Dump completed' line). "
                              "The database was not changed.")
        _mariadb_empty(address)
        self._load(address, address.database, backup_path,
                   f"Loading the backup into the {address.describe()}",
                   after="The database was emptied first, so it is only partly restored; "
                         "the backup file is unchanged and can be restored again.")

    def _load(self, address: ServerAddress, database: str, path: str, what: str,
              after: str) -> None:
        client = dbtools.find_tool(self.client_tools, "mysql")
        with dbtools.mariadb_option_file(address) as options, open(path, "rb") as dump:
            dbtools.run_tool(
                [client.path, f"--defaults-extra-file={options}", "--batch",
                 "--default-character-set=utf8mb4", f"--database={database}"],
                None, stdin=dump, what=what, address=address, after=after)

    def _complete(self, path: str) -> bool:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            return self.completed in handle.read()


def _address(project: Project, family: str) -> ServerAddress:
    return dbtools.server_address(project.database_url, family)


def _scalar(address: ServerAddress, sql: str):
    with dbtools.connect(address) as conn:
        try:
            return conn.execute(text(sql)).scalar_one()
        except SQLAlchemyError as exc:
            raise BackupError(f"The {address.describe()} cannot be read: "
                              f"{dbtools.driver_message(exc, address)}. {NOT_RUN}") from exc


def _live_revisions(address: ServerAddress, version_table: str,
                    after: str = NOT_RUN) -> tuple[str, ...]:
    with dbtools.connect(address, after=after) as conn:
        try:
            return dbtools.read_revisions(conn, version_table)
        except SQLAlchemyError as exc:
            raise BackupError(f"The revisions of the {address.describe()} cannot be read: "
                              f"{dbtools.driver_message(exc, address)}. {after}") from exc


def _check_live(address: ServerAddress, version_table: str) -> FileCheck:
    try:
        revisions = _live_revisions(address, version_table, after="")
    except BackupError as exc:
        return FileCheck(False, exc.message.rstrip(". "), ())
    return FileCheck(True, f"{version_table} read", revisions)


def _scratch_revisions(address: ServerAddress, scratch: str,
                       version_table: str) -> tuple[str, ...]:
    with dbtools.connect(address, scratch, after="") as conn:
        try:
            return dbtools.read_revisions(conn, version_table)
        except SQLAlchemyError as exc:
            raise BackupError(f"{version_table} cannot be read in the scratch database: "
                              f"{dbtools.driver_message(exc, address)}") from exc


@contextmanager
def _scratch_database(address: ServerAddress) -> Iterator[str]:
    """A new, empty database beside the target, dropped afterwards whatever happens."""
    postgres = address.family == "postgresql"
    name = _scratch_name(address.database, postgres)
    with dbtools.connect(address) as conn:
        quote = conn.dialect.identifier_preparer.quote_identifier
        try:
            if postgres:
                # Like the source, from template0 so nothing in template1 gets in the way.
                encoding, collate, ctype = conn.execute(text(
                    "SELECT pg_encoding_to_char(encoding), datcollate, datctype "
                    "FROM pg_database WHERE datname = current_database()")).one()
                conn.execute(text(
                    f"CREATE DATABASE {quote(name)} TEMPLATE template0 ENCODING "
                    f"{_literal(encoding)} LC_COLLATE {_literal(collate)} "
                    f"LC_CTYPE {_literal(ctype)}"))
            else:
                charset, collation = conn.execute(text(
                    "SELECT default_character_set_name, default_collation_name "
                    "FROM information_schema.schemata WHERE schema_name = DATABASE()")).one()
                conn.execute(text(f"CREATE DATABASE {quote(name)} CHARACTER SET {charset} "
                                  f"COLLATE {collation}"))
        except SQLAlchemyError as exc:
            need = "the CREATEDB privilege" if postgres else \
                f"CREATE and DROP privileges on databases named like {name.rsplit('_', 1)[0]}_%"
            raise BackupError(
                f"The backup cannot be verified: a scratch database cannot be created "
                f"({dbtools.driver_message(exc, address)}). Its user needs {need}") from exc
    try:
        yield name
    finally:
        drop = f"DROP DATABASE IF EXISTS {quote(name)}" + (" WITH (FORCE)" if postgres else "")
        try:
            with dbtools.connect(address) as conn:
                conn.execute(text(drop))
        except (BackupError, SQLAlchemyError) as exc:
            said = exc.message if isinstance(exc, BackupError) else \
                dbtools.driver_message(exc, address)
            log.error("the scratch database %s could not be dropped: %s", name, said)


def _scratch_name(database: str, postgres: bool) -> str:
    suffix = f"_{SCRATCH_MARK}_{secrets.token_hex(4)}"
    if postgres:  # identifiers are cut at 63 bytes
        stem = database.encode()[:POSTGRES_NAME_BYTES - len(suffix)]
        return stem.decode("utf-8", "ignore") + suffix
    return database[:MARIADB_NAME_CHARS - len(suffix)] + suffix


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _conninfo(database: str) -> str:
    """A libpq connection string naming the database, so no name is read as options."""
    return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pg_list(pg_restore: Tool, path: str) -> int:
    """How many entries the archive's table of contents has; BackupError if unreadable."""
    with tempfile.TemporaryFile() as listing:
        dbtools.run_tool([pg_restore.path, "--list", path], None, stdout=listing,
                         what="Reading the archive with pg_restore --list",
                         address=_NO_SERVER, after="")
        listing.seek(0)
        return sum(1 for line in listing if line.strip() and not line.startswith(b";"))


def _pg_archive_revisions(pg_restore: Tool, path: str, version_table: str) -> tuple[str, ...]:
    """The version table's rows, read from the archive's COPY data."""
    with tempfile.TemporaryFile() as data:
        dbtools.run_tool([pg_restore.path, "--data-only", f"--table={version_table}",
                          "--file=-", path], None, stdout=data,
                         what="Reading the version table from the archive",
                         address=_NO_SERVER, after="")
        data.seek(0)
        revisions, copying = [], False
        for raw in data:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("COPY "):
                copying = True
            elif line == "\\.":
                copying = False
            elif copying:
                revisions.append(line.split("\t", 1)[0])
    return tuple(sorted(revisions))


def _sql_dump_revisions(path: str, version_table: str) -> tuple[str, ...]:
    """The version table's rows, read from the dump's INSERT statement."""
    prefix = f"INSERT INTO `{version_table.replace('`', '``')}` VALUES".encode()
    statement: list[bytes] = []
    with open(path, "rb") as handle:
        for line in handle:
            if statement or line.startswith(prefix):  # mariadb-dump puts rows on lines of their own
                statement.append(line)
                if line.rstrip().endswith(b";"):
                    break
    values = b"".join(statement)[len(prefix):].decode("utf-8")
    return tuple(sorted(re.findall(r"\('((?:[^'\\]|\\.)*)'\)", values)))


def _mariadb_empty(address: ServerAddress) -> None:
    """Drop every table, view, sequence, routine and event of the database."""
    after = "The database may be partly emptied; the backup file is unchanged."
    with dbtools.connect(address, after="The database was not changed.") as conn:
        quote = conn.dialect.identifier_preparer.quote_identifier
        try:
            objects = conn.execute(text(
                "SELECT table_type, table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE()")).all()
            routines = conn.execute(text(
                "SELECT routine_type, routine_name FROM information_schema.routines "
                "WHERE routine_schema = DATABASE()")).all()
            events = conn.execute(text(
                "SELECT event_name FROM information_schema.events "
                "WHERE event_schema = DATABASE()")).scalars().all()
            conn.execute(text("SET SESSION foreign_key_checks = 0"))
            kinds = {"VIEW": "VIEW", "SEQUENCE": "SEQUENCE"}
            # Views first: they name the tables.
            for kind, name in sorted(objects, key=lambda row: row[0] != "VIEW"):
                conn.execute(text(f"DROP {kinds.get(kind, 'TABLE')} IF EXISTS {quote(name)}"))
            for kind, name in routines:
                conn.execute(text(f"DROP {kind} IF EXISTS {quote(name)}"))
            for name in events:
                conn.execute(text(f"DROP EVENT IF EXISTS {quote(name)}"))
        except SQLAlchemyError as exc:
            raise BackupError(f"Emptying the {address.describe()} before the restore failed: "
                              f"{dbtools.driver_message(exc, address)}. {after}") from exc


_NO_SERVER = ServerAddress("postgresql", "", None, None, None, None)

FORMATS: dict[str, BackupFormat] = {
    "sqlite": SqliteFormat(),
    "postgresql": PostgresFormat(),
}
FORMATS["mysql"] = FORMATS["mariadb"] = MariaDbFormat()


class _TooManyRestarts(Exception):
    pass


class _Locked(Exception):
    pass


class _CopyWatch:
    """Progress callback of ``Connection.backup``: bounds restarts and lock waits.

    Python's backup loop retries a busy source forever and cannot be told to
    stop except by the callback raising.
    """

    def __init__(self, max_restarts: int | None):
        self.max_restarts = max_restarts
        self.restarts = 0
        self.remaining: int | None = None
        self.busy_since: float | None = None

    def __call__(self, status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            self.busy_since = self.busy_since or time.monotonic()
            if time.monotonic() - self.busy_since > LOCK_WAIT_SECONDS:
                raise _Locked()
            return
        self.busy_since = None
        if self.remaining is not None and remaining >= self.remaining:
            self.restarts += 1  # another connection wrote: SQLite started over
            if self.max_restarts is not None and self.restarts > self.max_restarts:
                raise _TooManyRestarts()
        self.remaining = remaining


class _FastCopyUnavailable(Exception):
    pass


def _copy_file_under_read_lock(source: sqlite3.Connection, path: str, destination: str) -> None:
    """Copy the database file whole while holding SQLite's shared lock on it.

    In rollback-journal mode a writer changes the database file only under an
    exclusive lock, which it cannot get while we hold a shared one, so the file
    is a consistent snapshot for as long as our read transaction lasts (writers
    queue on their busy timeout meanwhile, as they would for the backup API's
    single step). The copy is made by ``cp`` in a child process, not by
    opening the file here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included. This copies at the
    kernel's speed (copy_file_range) instead of one page per system call."""
    _remove(destination)
    try:
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # takes the lock
    except sqlite3.Error as exc:
        raise _FastCopyUnavailable(f"cannot take a read lock: {exc}") from exc
    try:
        try:
            subprocess.run(["cp", "--", path, destination], check=True, timeout=3600,
                           stdin=subprocess.DEVNULL, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            _remove(destination)
            raise _FastCopyUnavailable(f"cp failed: {exc}") from exc
    finally:
        source.execute("COMMIT")


def _backup_into(
    source: sqlite3.Connection, destination: str, pages: int, max_restarts: int | None
) -> None:
    _remove(destination)
    try:
        with closing(_connect(destination, "rwc")) as target:
            # The file is fsynced and verified before it counts; no journal needed.
            target.execute("PRAGMA journal_mode=OFF")
            target.execute("PRAGMA synchronous=OFF")
            source.backup(target, pages=pages, progress=_CopyWatch(max_restarts), sleep=0.05)
    except _Locked as exc:
        raise BackupError(
            f"The database stayed locked for {LOCK_WAIT_SECONDS:g} s and could not be copied. "
            f"{NOT_RUN}"
        ) from exc


def _sqlite_path(project: Project) -> str:
    database = make_url(project.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(f"Only SQLite database files can be backed up, not {project.masked_url}.")
    return os.path.abspath(database)


def _open_live(project: Project) -> sqlite3.Connection:
    path = _sqlite_path(project)
    if not os.path.isfile(path):
        raise BackupError(f"The database file does not exist: {path}. {NOT_RUN}")
    try:
        return _connect(path, "ro", timeout=LOCK_WAIT_SECONDS)
    except sqlite3.Error as exc:
        raise _failed("the database cannot be opened", exc) from exc


def _connect(path: str, mode: str, *, immutable: bool = False,
             timeout: float = 5.0) -> sqlite3.Connection:
    uri = f"{Path(path).as_uri()}?mode={mode}" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)


def _check_file(path: str, version_table: str, *, immutable: bool) -> FileCheck:
    try:
        with closing(_connect(path, "ro", immutable=immutable)) as conn:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                return FileCheck(False, "integrity_check: " + "; ".join(rows[:5]), ())
            return FileCheck(True, "integrity_check ok", _read_revisions(conn, version_table))
    except sqlite3.Error as exc:
        return FileCheck(False, f"the file cannot be read as SQLite: {exc}", ())


def _read_revisions(conn: sqlite3.Connection, version_table: str) -> tuple[str, ...]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (version_table,)
    ).fetchone()
    if not exists:
        return ()
    quoted = '"' + version_table.replace('"', '""') + '"'
    return tuple(sorted(row[0] for row in conn.execute(f"SELECT version_num FROM {quoted}")))


# ---------------------------------------------------------------- helpers


def _format_for(dialect: str) -> BackupFormat:
    fmt = FORMATS.get(dialect)
    if fmt is None:
        raise BackupError(f"Backups of {dialect} databases are not supported yet",
                          detail=NOT_RUN)
    return fmt


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
    try:
        fmt = _format_for(record.dialect)
    except BackupError as exc:
        return exc.message, ""
    if project is not None and _format_for(project.dialect) is not fmt:
        project = None  # another server: check the file alone
    check = fmt.check(record.path, manifest.get("version_table", "alembic_version"), project)
    if not check.ok:
        return check.detail, ""
    if check.revisions != manifest_revs:
        return (f"The file is at {_revs(check.revisions)}, the manifest says "
                f"{_revs(manifest_revs)}"), ""
    return None, (f"file present; sha256 matches the manifest; {check.detail}; "
                  f"revisions {_revs(check.revisions)} match the manifest")


def _check_free_space(backup_dir: str, size: int) -> None:
    needed = size + FREE_SPACE_MARGIN_BYTES + int(size * FREE_SPACE_MARGIN_RATIO)
    free = shutil.disk_usage(backup_dir).free
    if free < needed:
        raise BackupError(
            f"Not enough free space in {backup_dir}: the backup needs about "
            f"{_size(needed)} (the database is {_size(size)}, plus a safety margin) "
            f"and {_size(free)} is free. {NOT_RUN}"
        )


def _failed(what: str, exc: BaseException, backup_dir: str | None = None) -> BackupError:
    """A BackupError saying what failed, in words, for OS and SQLite errors."""
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper around the driver's error
    code = getattr(exc, "sqlite_errorcode", None)
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
            code == sqlite3.SQLITE_FULL:
        reason = f"the disk holding {backup_dir or 'the backup'} is full"
    elif isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"permission denied ({exc.strerror})"
    elif isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    elif code == sqlite3.SQLITE_CORRUPT or code == sqlite3.SQLITE_NOTADB:
        reason = f"the database file is damaged ({exc})"
    elif code == sqlite3.SQLITE_BUSY or code == sqlite3.SQLITE_LOCKED:
        reason = f"the database is locked ({exc})"
    else:
        reason = str(exc)
    filename = getattr(exc, "filename", None)
    where = f" ({filename})" if filename else ""
    return BackupError(f"Backup failed: {what}: {reason}{where}. {NOT_RUN}", detail=str(exc))


def _new_id(created_at: float) -> str:
    return f"{_stamp(created_at)}-{secrets.token_hex(4)}"


def _file_name(fmt: BackupFormat, project: Project, revisions: tuple[str, ...],
               created_at: float, backup_id: str) -> str:
    # Built only from the database's name (or file stem) and revision ids: no credentials.
    stem = _safe(fmt.source_name(project), 60) or "database"
    revision = _safe(revisions[0], 32) if revisions else "base"
    if len(revisions) > 1:
        revision += f"+{len(revisions) - 1}"
    short = backup_id.rsplit("-", 1)[1]
    return f"{stem}__{revision}__{_stamp(created_at)}__{short}{fmt.extension}"


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


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("could not remove %s", path)


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

