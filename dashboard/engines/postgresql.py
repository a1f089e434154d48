"""PostgreSQL targets: pg_dump/pg_restore backups, an advisory lock, transactional DDL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import servers
from dashboard.engines.base import (
    NOT_RUN,
    CopyMemo,
    CountedAtSwap,
    FileCheck,
    bounded_count,
    version_numbers,
)
from dashboard.engines.servers import ServerAddress, ServerEngine, Tool, sql_literal
from dashboard.errors import BackupError

if TYPE_CHECKING:
    from dashboard.services.project import Project

log = logging.getLogger(__name__)

ENGINE_LOCK_NAME = "migration-dashboard"
# pg_advisory_lock takes a bigint: a fixed key derived from the name.
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(ENGINE_LOCK_NAME.encode()).digest()[:8], "big",
                             signed=True)
NO_SERVER = ServerAddress("postgresql", "", None, None, None, None)
NOT_CHANGED = "The database was not changed."
LEFT_AS_IT_WAS = "The restore runs in one transaction, so the database was left as it was."

# Run in the restore's own transaction, before pg_restore's script. pg_restore
# --clean drops only what the archive holds, so a table, view, schema or large
# object made after the backup would survive it. Instead every large object is
# unlinked and every schema dropped with all it holds, and the script recreates
# what the backup had. The public schema is one the script expects to exist
# (pg_dump never creates it), so it is recreated empty, with its owner,
# privileges and comment as they were. Dropping the database instead would
# need every other session gone and CREATEDB, and would lose database-level
# settings; this keeps the database and, being one transaction, leaves it as
# it was if anything fails. @LOCK_TIMEOUT@ bounds every wait for another
# session's lock (the archive script's own "SET lock_timeout = 0" is replaced
# with the same value, see ``bounded_lock_waits``).
POSTGRES_CLEAR_SQL = """\
SET client_min_messages = warning;
SET lock_timeout = @LOCK_TIMEOUT@;
DO $dashboard_restore$
DECLARE
    doomed name;
    public_owner text;
    public_acl aclitem[];
    public_comment text;
    grant_item record;
BEGIN
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
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

# A scratch copy is for reading the backup back, not for keeping: owners and
# grants of roles that may not exist there are left out, and its commits need
# not wait for the disk.
SCRATCH_RESTORE = ("--no-owner", "--no-privileges", "--exit-on-error", "--no-password")
SCRATCH_OPTIONS = "-c synchronous_commit=off"
# How long ``end_sessions`` waits between cancelling and terminating, and then
# for terminated sessions to be gone (their locks with them).
END_GRACE_SECONDS = 5.0
GONE_SECONDS = 5.0

USER_SCHEMAS = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (.*)$")


@dataclass(frozen=True)
class _Copied:
    """What ``copy`` found while it wrote a backup: the checks ``check`` reports."""

    quick: bool  # only the archive is to be read (backup_verify = "quick")
    sha256: str | None  # of the bytes restored into the scratch database
    restored: FileCheck | None  # the outcome of that restore


class PostgresEngine(ServerEngine):
    """PostgreSQL: pg_dump's custom format, restored with pg_restore through psql.

    DDL is transactional, so a whole action can run in one transaction."""

    name = "postgresql"
    default_port = 5432
    label = "PostgreSQL"
    family = "postgresql"
    transactional_ddl = True
    scratch_name_limit = 63  # identifiers are cut at 63 bytes
    extension = ".dump"
    damage_hint = ""

    def __init__(self) -> None:
        super().__init__()
        self._copied: CopyMemo[_Copied] = CopyMemo()

    def preflight(self, project: Project) -> None:
        address = self.address(project)
        tools = [servers.find_tool((name,), "postgresql")
                 for name in ("pg_dump", "pg_restore", "psql")]
        with servers.connect(address) as conn:
            number = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        # 150020 is 15.20; 90624 is 9.6.24.
        server = (number // 10000, number % 10000) if number >= 100000 else \
            (number // 10000, number // 100 % 100, number % 100)
        for tool in tools:
            said = tool.version_text()
            client = servers.parse_version(said)
            if servers.postgres_major(client) < servers.postgres_major(server):
                raise BackupError(
                    f"{tool.name} is version {servers.version_string(client)} ({tool.path}: "
                    f"{said!r}) but the PostgreSQL server is version "
                    f"{servers.version_string(server)}: {tool.name} cannot work with a newer "
                    f"server. Install the PostgreSQL "
                    f"{servers.version_string(servers.postgres_major(server))} (or later) "
                    f"client tools and put them first on the PATH. {NOT_RUN}")

    def source_size(self, project: Project) -> int:
        address = self.address(project)
        return servers.scalar(address, "SELECT pg_database_size(current_database())")

    # ------------------------------------------------------------ backups

    def copy(self, project: Project, destination: str) -> None:
        """pg_dump's custom format into ``destination``.

        With backup_verify "full", the dump is restored into a scratch database
        while it is written (pre-data and data from the stream, then post-data,
        indexes and constraints, from the file with parallel jobs), so checking
        it costs little more than taking it; ``check`` then reports that restore
        once it has made sure the file holds the very bytes restored."""
        address = self.address(project)
        pg_dump = servers.find_tool(("pg_dump",), "postgresql")
        if project.backup_verify == "quick":
            with servers.postgres_environment(address) as env:
                env["PGDATABASE"] = address.database
                servers.run_tool(
                    [pg_dump.path, "--format=custom", "--no-password",
                     f"--file={destination}"],
                    env, what=f"pg_dump of the {address.describe()}", address=address,
                    after=NOT_RUN)
            self._copied.remember(destination, _Copied(True, None, None))
            return
        pg_restore = servers.find_tool(("pg_restore",), "postgresql")
        with ExitStack() as stack:
            try:
                scratch = stack.enter_context(self.scratch_database(address))
            except BackupError as exc:
                raise BackupError(f"{exc.message} (or set backup_verify to quick). {NOT_RUN}",
                                  detail=exc.detail) from exc
            env = stack.enter_context(servers.postgres_environment(address))
            env["PGDATABASE"] = address.database
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {SCRATCH_OPTIONS}".strip()
            into_scratch = [pg_restore.path, *SCRATCH_RESTORE, f"--dbname={_conninfo(scratch)}"]
            dumped = servers.dump_to_file(
                [pg_dump.path, "--format=custom", "--no-password"], destination, env,
                what=f"pg_dump of the {address.describe()}", address=address, after=NOT_RUN,
                consumer=[*into_scratch, "--section=pre-data", "--section=data"],
                consumer_what="Restoring the copy into a scratch database as it was written")
            try:
                if dumped.consumer_failure is not None:
                    raise dumped.consumer_failure
                servers.run_tool(
                    [*into_scratch, "--section=post-data", f"--jobs={_jobs()}", destination],
                    env, what="Restoring the copy's indexes and constraints into the scratch "
                    "database", address=address, after="")
                restored = FileCheck(
                    True, "restored into a scratch database as it was written (dropped since)",
                    self.scratch_revisions(address, scratch, project.version_table))
            except BackupError as exc:
                restored = FileCheck(False, exc.message.rstrip(". "), ())
        self._copied.remember(destination, _Copied(False, dumped.sha256, restored))

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        """What ``copy`` found, for the file it wrote; otherwise the archive alone
        (no server given) or a restore of the file into a scratch database."""
        copied = self._copied.recall(path)
        if copied is not None and not copied.quick:
            return _restored_copy(path, copied)
        try:
            pg_restore = servers.find_tool(("pg_restore",), "postgresql")
            listed = f"pg_restore --list reads {len(_pg_toc(pg_restore, path))} entries"
            if project is None or copied is not None:
                why = "backup_verify is quick" if copied else "no server given"
                return FileCheck(True, f"{listed}; revisions read from the archive (not "
                                 f"restored: {why})",
                                 _pg_archive_revisions(pg_restore, path, version_table))
            address = self.address(project)
            with self.scratch_database(address) as scratch:
                self.load_scratch(project, address, scratch, path)
                revisions = self.scratch_revisions(address, scratch, version_table)
        except BackupError as exc:
            return FileCheck(False, exc.message.rstrip(". "), ())
        return FileCheck(True, f"{listed}; restored into a scratch database (dropped since)",
                         revisions)

    def load_scratch(self, project, address: ServerAddress, scratch: str, path: str) -> None:
        pg_restore = servers.find_tool(("pg_restore",), "postgresql")
        with servers.postgres_environment(address) as env:
            env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {SCRATCH_OPTIONS}".strip()
            servers.run_tool(
                [pg_restore.path, *SCRATCH_RESTORE, f"--jobs={_jobs()}",
                 f"--dbname={_conninfo(scratch)}", path],
                env, what="Restoring the copy into a scratch database",
                address=address, after="")

    # ------------------------------------------------------------ restores

    def restore(self, project: Project, backup_path: str, marks: dict | None = None,
                touched: frozenset[str] = frozenset()) -> CountedAtSwap | None:
        """The backup's content in place of the database's, owners and grants
        included, in one transaction; other sessions' locks are waited for at
        most ``project.lock_timeout`` seconds.

        Given ``marks``, the restore's transaction first locks every table it will
        discard and counts, under that lock, what other sessions wrote to it since
        the marks: a row committed while the restore waited is counted too."""
        address = self.address(project)
        pg_restore = servers.find_tool(("pg_restore",), "postgresql")
        psql = servers.find_tool(("psql",), "postgresql")
        entries = _pg_toc(pg_restore, backup_path)  # unreadable: refuse before anything
        self._check_owners(address, entries)
        tables = self._tables_of(address, project.version_table) \
            if _usable(marks, self.name) else None
        timeout = _lock_timeout_literal(project.lock_timeout)
        clear = POSTGRES_CLEAR_SQL.replace("@LOCK_TIMEOUT@", timeout)
        counting = tables is not None
        if counting:
            clear = (f"SET lock_timeout = {timeout};\n"
                     + _count_writes_sql(marks["snapshot"], _untouched(tables, touched),
                                         lock=True) + ";\n" + clear)
        with servers.postgres_environment(address) as env:
            env["PGDATABASE"] = address.database
            try:
                said = servers.run_piped(
                    [pg_restore.path, "--clean", "--if-exists", "--file=-", backup_path],
                    [psql.path, "--no-psqlrc", "--quiet", "--no-password",
                     "--set=ON_ERROR_STOP=1", "--single-transaction", "--file=-"],
                    env, prelude=clear.encode(), amend_head=bounded_lock_waits(
                        project.lock_timeout),
                    what=f"Restoring the {address.describe()}", address=address,
                    after=LEFT_AS_IT_WAS)
            except BackupError as exc:
                if "due to lock timeout" in f"{exc.detail} {exc.message}":
                    raise self._lock_timeout_error(address, project.lock_timeout,
                                                   exc) from exc
                raise
        if marks is None:
            return None
        if not counting:
            return CountedAtSwap(None)
        return CountedAtSwap(_tally(marks["rows"], _counts_said(said.splitlines()), touched))

    def _tables_of(self, address: ServerAddress, version_table: str) -> dict[str, str] | None:
        """The tables a restore will discard (see ``_user_tables``); None if unreadable."""
        try:
            with servers.connect(address, after=NOT_CHANGED) as conn:
                return _user_tables(conn, version_table)
        except (BackupError, SQLAlchemyError) as exc:
            log.warning("the tables of %s cannot be read: %s", address.describe(), exc)
            return None

    def _check_owners(self, address: ServerAddress, entries: list[str]) -> None:
        """Refuse, before anything is dropped, a restore whose objects could not be
        given back to their owners (or whose present schemas could not be dropped)."""
        with servers.connect(address, after=NOT_CHANGED) as conn:
            try:
                roles = set(conn.execute(text("SELECT rolname FROM pg_catalog.pg_roles"))
                            .scalars())
                needed = _archive_owners(entries, roles) | set(conn.execute(text(
                    "SELECT pg_catalog.pg_get_userbyid(owner) FROM ("
                    "SELECT n.nspowner AS owner FROM pg_catalog.pg_namespace n "
                    f"WHERE {USER_SCHEMAS} "
                    "UNION SELECT lomowner FROM pg_catalog.pg_largeobject_metadata) AS o"))
                    .scalars())
                rows = conn.execute(text(
                    "SELECT r.name, quote_ident(r.name), p.oid IS NOT NULL, "
                    "p.oid IS NOT NULL AND pg_has_role(current_user, p.oid, 'USAGE') "
                    "FROM unnest(CAST(:names AS text[])) AS r(name) "
                    "LEFT JOIN pg_catalog.pg_roles p ON p.rolname = r.name ORDER BY 1"),
                    {"names": sorted(needed)}).all()
                user, quoted_user = conn.execute(text(
                    "SELECT current_user, quote_ident(current_user)")).one()
            except SQLAlchemyError as exc:
                raise BackupError(f"The owners of the {address.describe()} cannot be read: "
                                  f"{servers.driver_message(exc, address)}. "
                                  f"{NOT_CHANGED}") from exc
        missing = [name for name, _, exists, _ in rows if not exists]
        if missing:
            raise BackupError(
                f"The backup's objects belong to roles that do not exist on this server: "
                f"{', '.join(missing)}. A restore gives every object back to its owner: "
                f"create those roles first. {NOT_CHANGED}")
        refused = [(name, quoted) for name, quoted, _, usable in rows if not usable]
        if refused:
            names = ", ".join(name for name, _ in refused)
            grant = ", ".join(quoted for _, quoted in refused)
            raise BackupError(
                f"A restore gives every object back to its owner as at backup time, and "
                f"{user}, whom the dashboard connects as, is not a superuser and cannot act "
                f"as {names}. Let it (GRANT {grant} TO {quoted_user};) or restore as a "
                f"superuser. {NOT_CHANGED}")

    def _lock_timeout_error(self, address: ServerAddress, seconds: float,
                            failure: BackupError) -> BackupError:
        holders = ""
        try:
            with servers.connect(address, after="") as conn:
                rows = conn.execute(text(
                    "SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, "
                    "a.xact_start FROM pg_catalog.pg_locks l "
                    "JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.granted AND l.locktype IN ('relation', 'object') "
                    "AND a.datname = current_database() AND a.pid <> pg_backend_pid() "
                    "ORDER BY a.xact_start NULLS LAST LIMIT 3")).all()
            holders = "".join(
                f"Session {row.pid} ({row.usename}, '{row.application_name}', {row.state}"
                + (f" since {row.xact_start:%H:%M:%S}" if row.xact_start else "")
                + ") holds locks there now. " for row in rows)
        except (BackupError, SQLAlchemyError):
            pass  # who it was is a hint; the failure is the message
        return BackupError(
            f"Restoring the {address.describe()} gave up: another session held a lock on it "
            f"for {seconds:g} s (the lock timeout, DASHBOARD_LOCK_TIMEOUT). {holders}"
            f"{LEFT_AS_IT_WAS}", detail=failure.detail)

    # ------------------------------------------------------------ lock

    def try_lock(self, connection, holder) -> bool:
        connection.execute(text("SELECT set_config('application_name', :a, false)"),
                           {"a": servers.holder_label(holder)})
        return bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                       {"k": PG_LOCK_KEY}).scalar())

    def release_lock(self, connection) -> None:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})

    # Advisory locks belong to one database: another database's holder is no holder.
    HELD_HERE = ("l.locktype = 'advisory' AND l.granted "
                 "AND l.database = (SELECT oid FROM pg_catalog.pg_database "
                 "WHERE datname = current_database()) "
                 "AND l.classid = ((:k >> 32) & 4294967295)::oid "
                 "AND l.objid = (:k & 4294967295)::oid AND l.objsubid = 1")

    def lock_is_held(self, connection) -> bool:
        return bool(connection.execute(text(
            f"SELECT count(*) FROM pg_catalog.pg_locks l WHERE {self.HELD_HERE}"),
            {"k": PG_LOCK_KEY}).scalar())

    def describe_holder(self, connection) -> str:
        try:
            row = connection.execute(text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start "
                "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a "
                f"ON a.pid = l.pid WHERE {self.HELD_HERE}"), {"k": PG_LOCK_KEY}).first()
        except Exception as exc:  # the answer is informative only
            return f"held by another session ({type(exc).__name__})"
        if row is None:
            return "held by another session"
        since = f"{row.backend_start:%Y-%m-%d %H:%M:%S}"
        return (f"held by session {row.pid} '{row.application_name}' from "
                f"{row.client_addr or 'local socket'} since {since}")

    # ------------------------------------------------------------ other sessions

    def session_id_sql(self) -> str:
        return "SELECT pg_backend_pid()"

    def read_only_session_sql(self) -> str:
        return "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"

    def end_sessions(self, project: Project, session_ids: list[str],
                     grace: float = END_GRACE_SECONDS) -> list[str]:
        """Cancel what these sessions of this database run; terminate those that are
        not idle ``grace`` seconds later (still running, or in a transaction that
        holds locks). Returns the ids that were still there. BackupError if the
        server cannot be reached."""
        pids = sorted({int(sid) for sid in map(str, session_ids) if sid.isdigit()})
        if not pids:
            return []
        address = self.address(project)
        this_database = ("pid = ANY(CAST(:pids AS int[])) AND datname = current_database() "
                         "AND pid <> pg_backend_pid()")
        with servers.connect(address, after="") as conn:
            def busy(among: list[int]) -> list[int]:
                return list(conn.execute(text(
                    f"SELECT pid FROM pg_catalog.pg_stat_activity WHERE {this_database} "
                    "AND state IS DISTINCT FROM 'idle' ORDER BY pid"),
                    {"pids": among}).scalars())

            present = list(conn.execute(text(
                f"SELECT pid FROM pg_catalog.pg_stat_activity WHERE {this_database} "
                "ORDER BY pid"), {"pids": pids}).scalars())
            _signal(conn, "pg_cancel_backend", busy(present), address)
            deadline = time.monotonic() + grace
            while (left := busy(present)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if left:
                _signal(conn, "pg_terminate_backend", left, address)
                deadline = time.monotonic() + GONE_SECONDS
                while busy(left) and time.monotonic() < deadline:
                    time.sleep(0.05)
        return [str(pid) for pid in present]

    def write_marks(self, project: Project) -> dict | None:
        """A snapshot of the server's transactions and every table's row count, read
        in that snapshot: what ``discarded_writes`` compares with. One count(*) per
        table; None if the tables cannot all be read. Writes committed between the
        backup and these marks are not told apart from the backup's: take them
        right after it."""
        address = self.address(project)
        try:
            with servers.connect(address, after="") as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    snapshot = conn.execute(text("SELECT txid_current_snapshot()::text"))\
                        .scalar_one()
                    tables = _user_tables(conn, project.version_table)
                    if tables is None:
                        return None
                    rows = {name: conn.execute(text(f"SELECT count(*) FROM {quoted}"))
                            .scalar_one() for name, quoted in tables.items()}
        except (BackupError, SQLAlchemyError) as exc:
            log.warning("write marks of %s not taken: %s", address.describe(), exc)
            return None
        return {"engine": self.name, "snapshot": snapshot, "rows": rows}

    def discarded_writes(self, project: Project, marks: dict | None,
                         touched: set[str]) -> list[dict] | None:
        """Rows of tables outside ``touched`` that other sessions wrote since ``marks``.

        A row is new or updated if the transaction that wrote it (its xmin) is not
        visible in the marks' snapshot; old rows that are gone are the count at the
        marks less the old rows still there. One pass per table, in the server, in
        one snapshot. Frozen by a VACUUM FREEZE since the marks, an updated row
        would read as old; its table still shows any deleted rows."""
        if not _usable(marks, self.name):
            return None
        address = self.address(project)
        try:
            with servers.connect(address, after="") as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                said: list[str] = []
                conn.connection.dbapi_connection.add_notice_handler(
                    lambda notice: said.append(notice.message_primary or ""))
                with conn.begin():
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    tables = _user_tables(conn, project.version_table)
                    if tables is None:
                        return None
                    conn.execute(text(_count_writes_sql(marks["snapshot"], _untouched(
                        tables, touched), lock=False).replace(":", r"\:")))
        except (BackupError, SQLAlchemyError) as exc:
            log.warning("discarded writes of %s unknown: %s", address.describe(), exc)
            return None
        return _tally(marks["rows"], _counts_said(said), touched)

    # ------------------------------------------------------------ scratch

    def risk_rules(self):
        from dashboard.engines import risk_postgresql

        return risk_postgresql.RULES

    def server_version(self, conn):
        shown = str(conn.execute(text("SHOW server_version")).scalar_one())
        return shown, version_numbers(shown)

    def table_sizes(self, conn, tables):
        """pg_class.reltuples (-1 until the table is first analysed: then counted, up to
        a limit) and pg_total_relation_size, for tables on the search path."""
        if not tables:
            return {}
        rows = conn.execute(text(
            "SELECT c.relname, c.reltuples, pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname = ANY (current_schemas(false)) AND c.relname = ANY (:names)"),
            {"names": list(tables)}).all()
        found = {}
        for name, estimate, size in rows:
            counted = bounded_count(conn, name) if estimate is None or estimate < 1000 \
                else None
            found[name] = (counted if counted is not None else int(estimate), int(size))
        return found

    def create_scratch(self, conn, name: str) -> None:
        # Like the source, from template0 so nothing in template1 gets in the way.
        quote = conn.dialect.identifier_preparer.quote_identifier
        encoding, collate, ctype = conn.execute(text(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype "
            "FROM pg_database WHERE datname = current_database()")).one()
        conn.execute(text(
            f"CREATE DATABASE {quote(name)} TEMPLATE template0 ENCODING "
            f"{sql_literal(encoding)} LC_COLLATE {sql_literal(collate)} "
            f"LC_CTYPE {sql_literal(ctype)}"))

    def drop_scratch_sql(self, quoted_name: str) -> str:
        return f"DROP DATABASE IF EXISTS {quoted_name} WITH (FORCE)"

    def scratch_privilege(self, name: str) -> str:
        return "the CREATEDB privilege"


def bounded_lock_waits(seconds: float) -> Callable[[bytes], bytes]:
    """Rewrites the head of a pg_restore script so that its ``SET lock_timeout = 0``
    (which would let every later statement wait forever) says ``seconds``."""
    amended = f"SET lock_timeout = {_lock_timeout_literal(seconds)};".encode()

    def amend(head: bytes) -> bytes:
        return head.replace(b"SET lock_timeout = 0;", amended, 1)

    return amend


def _lock_timeout_literal(seconds: float) -> str:
    return f"'{max(1, round(seconds * 1000))}ms'"


def _jobs() -> int:
    return min(4, os.cpu_count() or 1)


def _signal(conn, function: str, pids: list[int], address: ServerAddress) -> None:
    for pid in pids:
        try:
            conn.execute(text(f"SELECT {function}(:pid)"), {"pid": pid})
        except SQLAlchemyError as exc:  # not ours to signal: said, then left
            log.warning("%s(%s) refused: %s", function, pid,
                        servers.driver_message(exc, address))


def _user_tables(conn, version_table: str) -> dict[str, str] | None:
    """Every ordinary table outside the system schemas: display name (``name`` in
    public, else ``schema.name``) to its quoted name. None if one cannot be read
    whole (no SELECT right, or row security that applies to this user)."""
    rows = conn.execute(text(
        "SELECT n.nspname, c.relname, quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
        "has_table_privilege(c.oid, 'SELECT') AND (NOT c.relrowsecurity OR r.rolsuper "
        "OR r.rolbypassrls OR (c.relowner = r.oid AND NOT c.relforcerowsecurity)) "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_roles r ON r.rolname = current_user "
        f"WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {USER_SCHEMAS}")).all()
    tables = {}
    for schema, name, quoted, readable in rows:
        if schema == "public" and name == version_table:
            continue
        if not readable:
            return None
        tables[name if schema == "public" else f"{schema}.{name}"] = quoted
    return tables


def _archive_owners(entries: list[str], roles: set[str]) -> set[str]:
    """The owners the archive's table of contents names.

    pg_restore --list ends each entry with its owner, unquoted: a name with a
    space is found as the longest known role the line ends with; an unknown
    owner is its last word."""
    owners = set()
    for entry in entries:
        match = TOC_ENTRY.match(entry)
        if not match or match.group(1).endswith(" "):
            continue  # no owner (BLOBS, ENCODING ...)
        rest = match.group(1)
        spaces = [i for i, char in enumerate(rest) if char == " "]
        owners.add(next((rest[i + 1:] for i in spaces if rest[i + 1:] in roles),
                        rest.rsplit(" ", 1)[-1]))
    return owners


def _conninfo(database: str) -> str:
    """A libpq connection string naming the database, so no name is read as options."""
    return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _restored_copy(path: str, copied: _Copied) -> FileCheck:
    """The restore ``copy`` made, if ``path`` still holds the bytes it restored."""
    if not copied.restored.ok:
        return copied.restored
    try:
        found = _sha256_file(path)
        if found != copied.sha256:
            return FileCheck(False, f"the file differs from the dump restored into the scratch "
                             f"database (sha256 {found[:12]}…, restored {copied.sha256[:12]}…)",
                             ())
        pg_restore = servers.find_tool(("pg_restore",), "postgresql")
        listed = f"pg_restore --list reads {len(_pg_toc(pg_restore, path))} entries"
    except (BackupError, OSError) as exc:
        return FileCheck(False, getattr(exc, "message", None) or str(exc), ())
    return FileCheck(True, f"{listed}; {copied.restored.detail}", copied.restored.revisions)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(servers.COPY_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _pg_toc(pg_restore: Tool, path: str) -> list[str]:
    """The archive's table of contents, an entry a line; BackupError if unreadable."""
    with tempfile.TemporaryFile() as listing:
        servers.run_tool([pg_restore.path, "--list", path], None, stdout=listing,
                         what="Reading the archive with pg_restore --list",
                         address=NO_SERVER, after="")
        listing.seek(0)
        return [line.decode("utf-8", "replace").rstrip("\n") for line in listing
                if line.strip() and not line.startswith(b";")]


def _pg_archive_revisions(pg_restore: Tool, path: str, version_table: str) -> tuple[str, ...]:
    """The version table's rows, read from the archive's COPY data."""
    with tempfile.TemporaryFile() as data:
        servers.run_tool([pg_restore.path, "--data-only", f"--table={version_table}",
                          "--file=-", path], None, stdout=data,
                         what="Reading the version table from the archive",
                         address=NO_SERVER, after="")
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


# ---------------------------------------------------------------- other sessions' writes

WRITES_SAID = "dashboard-written-since-marks:"


def _usable(marks, engine_name: str) -> bool:
    return isinstance(marks, dict) and marks.get("engine") == engine_name \
        and isinstance(marks.get("rows"), dict) and "snapshot" in marks


def _untouched(tables: dict[str, str], touched) -> dict[str, str]:
    return {name: quoted for name, quoted in tables.items()
            if name not in touched and (name if "." in name else f"public.{name}")
            not in touched}


def _count_writes_sql(snapshot: str, tables: dict[str, str], lock: bool) -> str:
    """A DO block that counts, per table, its rows and those written by transactions
    the marks' ``snapshot`` did not see, and says them in one WARNING (JSON after
    ``WRITES_SAID``). With ``lock``, each table is locked ACCESS EXCLUSIVE before it is
    counted (inside a restore's transaction: nothing more can be written to it
    before the restore replaces it). One place for the rule, used by the count
    before a restore and by the restore itself."""
    given = json.dumps(tables)
    take_lock = ("EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', t.value);"
                 if lock else "")
    return f"""DO $dashboard_writes$
DECLARE
    snap txid_snapshot := CAST({sql_literal(snapshot)} AS txid_snapshot);
    mark_xmin bigint;
    mark_age integer;
    t record;
    now_rows bigint;
    new_rows bigint;
    found jsonb := '{{}}';
BEGIN
    -- age() counts back from one point for the whole transaction: the marks'
    -- oldest running transaction is this many ago.
    mark_xmin := txid_snapshot_xmin(snap);
    mark_age := age(CAST((mark_xmin % 4294967296)::text AS xid));
    FOR t IN SELECT key, value FROM json_each_text({sql_literal(given)}) LOOP
        BEGIN  -- a table dropped since it was listed is left out (counted as dropped)
            {take_lock}
            EXECUTE format('SELECT count(*), count(*) FILTER (WHERE age(xmin) <= $1 AND '
                           'NOT txid_visible_in_snapshot($2 + ($1 - age(xmin)), $3)) '
                           'FROM %s', t.value)
                INTO now_rows, new_rows USING mark_age, mark_xmin, snap;
            found := found || jsonb_build_object(t.key, jsonb_build_array(now_rows, new_rows));
        EXCEPTION WHEN undefined_table THEN
            NULL;
        END;
    END LOOP;
    RAISE WARNING '%', {sql_literal(WRITES_SAID)} || found::text;
END
$dashboard_writes$"""


def _counts_said(lines: list[str]) -> dict[str, list[int]] | None:
    """The counts a ``_count_writes_sql`` block said, from its messages."""
    for line in lines:
        at = line.find(WRITES_SAID)
        if at >= 0:
            try:
                return json.loads(line[at + len(WRITES_SAID):])
            except ValueError:
                return None
    return None


def _tally(marked: dict, counts: dict[str, list[int]] | None, touched) -> list[dict] | None:
    """[{"table", "rows"}] others wrote since the marks (``marked``: rows per table
    then), from the ``counts`` of the tables there now; None when they were not said."""
    if counts is None:
        return None
    found = []
    for name in sorted(set(counts) | set(marked)):
        qualified = name if "." in name else f"public.{name}"
        if name in touched or qualified in touched:
            continue
        before = int(marked.get(name, 0))
        if name not in counts:  # dropped since
            rows = before
        else:
            now, new = counts[name]
            old_left = now - new
            # Rows replaced or deleted, and any the marks did not count.
            rows = max(new, before - old_left) + max(0, old_left - before)
        if rows:
            found.append({"table": name, "rows": rows})
    return found
