"""MariaDB and MySQL targets: mariadb-dump backups, restores swapped in with one
RENAME TABLE, a named lock per schema."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import mariadb_physical as physical
from dashboard.engines import servers
from dashboard.engines.base import NOT_RUN, CountedAtSwap, FileCheck, bounded_count, version_numbers
from dashboard.engines.servers import ServerAddress, ServerEngine
from dashboard.errors import BackupError

if TYPE_CHECKING:
    from dashboard.services.project import Project

ENGINE_LOCK_NAME = "migration-dashboard"
LOCK_NAME_LIMIT = 64  # characters, GET_LOCK's limit
UNCHANGED = "The database was left as it was; the backup file is unchanged."
OLD_MARK = "mdold"  # a view a restore moved out of the way, dropped once it is done
LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT
END_SESSION_GRACE = 5.0  # seconds a killed statement gets to stop before its connection goes

log = logging.getLogger(__name__)


class MariaDbEngine(ServerEngine):
    """MariaDB and MySQL: an SQL dump by mariadb-dump (or mysqldump), loaded back
    with the mariadb client. Every DDL statement commits on its own."""

    name = "mysql"
    default_port = 3306
    label = "MariaDB/MySQL"
    family = "mysql"
    transactional_ddl = False
    extension = ".sql"
    damage_hint = ""
    dump_tools = ("mariadb-dump", "mysqldump")
    client_tools = ("mariadb", "mysql")
    completed = b"\n-- Dump completed"

    def preflight(self, project: Project) -> None:
        address = self.address(project)
        tools = [servers.find_tool(self.dump_tools, "mysql"),
                 servers.find_tool(self.client_tools, "mysql")]
        server_text = str(servers.scalar(address, "SELECT VERSION()"))
        server = servers.parse_version(server_text)
        server_is_mariadb = "mariadb" in server_text.lower()
        for tool in tools:
            said = tool.version_text()
            client = servers.parse_version(said)
            # MariaDB and MySQL number their versions apart: compare like with like.
            if ("mariadb" in said.lower()) == server_is_mariadb and client[:1] < server[:1]:
                raise BackupError(
                    f"{tool.name} is version {servers.version_string(client)} ({tool.path}: "
                    f"{said!r}) but the server is version {server_text}: install client "
                    f"tools of version {server[0]} or later and put them first on the PATH. "
                    f"{NOT_RUN}")
        if project.backup_method == "physical":
            physical.preflight(address, server_text)

    def source_size(self, project: Project) -> int:
        address = self.address(project)
        return int(servers.scalar(
            address, "SELECT COALESCE(SUM(data_length + index_length), 0) "
            "FROM information_schema.tables WHERE table_schema = DATABASE()"))

    def space_needed(self, project: Project) -> int:
        size = self.source_size(project)
        # The physical copy is unpacked beside itself to be checked.
        return 2 * size if project.backup_method == "physical" else size

    def extension_for(self, project: Project) -> str:
        return physical.EXTENSION if project.backup_method == "physical" else self.extension

    def copy(self, project: Project, destination: str) -> None:
        address = self.address(project)
        if project.backup_method == "physical":  # preflight() has checked what it needs
            # The stream also carries the system tablespace and some free pages.
            physical.copy(address, str(servers.scalar(address, "SELECT @@datadir")),
                          destination, 2 * self.source_size(project), after=NOT_RUN)
        else:
            self._dump(address, destination, after=NOT_RUN)

    def _dump(self, address: ServerAddress, destination: str, after: str,
              options: tuple[str, ...] = (), what: str | None = None) -> None:
        dump = servers.find_tool(self.dump_tools, "mysql")
        with servers.mariadb_option_file(address) as option_file:
            servers.run_tool(
                # --defaults-extra-file must come first, or the tool ignores it.
                [dump.path, f"--defaults-extra-file={option_file}",
                 *self.dump_options(address), *options, f"--result-file={destination}", "--",
                 address.database],
                None, what=what or f"{dump.name} of the {address.describe()}",
                address=address, after=after)

    def dump_options(self, address: ServerAddress) -> list[str]:
        options = ["--single-transaction", "--routines", "--triggers", "--events",
                   "--hex-blob", "--default-character-set=utf8mb4"]
        # The rows of system-versioned tables as they were: without it the dump
        # keeps only the current ones. mariadb-dump refuses it, for the whole
        # dump, when a table keeps transaction-precise history.
        if not _transaction_precise_tables(address):
            options.append("--dump-history")
        return options

    def check(self, path: str, version_table: str,
              project: Project | None = None) -> FileCheck:
        """The dump is complete and, with a project whose backup_verify is "full",
        loads into a scratch database holding the revisions read back from it.

        "quick" reads the file alone: the full check is a load of every row,
        which costs about six times the dump itself (benchmarks/README.md).

        A physical copy is opened by a scratch server on this machine, with or
        without a project: CHECK TABLE on every table ("full"), its revisions read.
        """
        if physical.is_physical(path):
            return physical.check(
                path, version_table, thorough=project is None
                or project.backup_verify != "quick",
                # What a restore dumps first: the definitions, which may name what the
                # copy does not hold (a view of another database's table).
                rehearse=lambda local: self._dump(
                    local, os.devnull, after="", options=("--no-data",),
                    what="Dumping the copy's definitions, as a restore would"))
        if not self._complete(path):
            return FileCheck(False, "the dump does not end with its '-- Dump completed' line: "
                             "it is cut short", ())
        if project is None or project.backup_verify == "quick":
            why = "no server given" if project is None else "quick verification"
            return FileCheck(True, f"dump complete; revisions read from the file "
                             f"(not loaded: {why})", _sql_dump_revisions(path, version_table))
        address = self.address(project)
        try:
            with self.scratch_database(address) as scratch:
                self.load_scratch(project, address, scratch, path)
                revisions = self.scratch_revisions(address, scratch, version_table)
        except BackupError as exc:
            return FileCheck(False, exc.message.rstrip(". "), ())
        return FileCheck(True, "dump complete; loaded into a scratch database (dropped since)",
                         revisions)

    def load_scratch(self, project, address: ServerAddress, scratch: str, path: str) -> None:
        if physical.is_physical(path):
            with self._as_dump(path, after="") as dump:
                self.load_scratch(project, address, scratch, dump)
            return
        self._load(address, scratch, path, "Loading the copy into a scratch database",
                   after="", lock_wait=lock_wait_seconds(project),
                   unlogged=_may_skip_binlog(address))

    def restore(self, project: Project, backup_path: str, marks: dict | None = None,
                touched: frozenset[str] = frozenset()) -> CountedAtSwap | None:
        """Load the dump into a scratch schema, then swap its tables in at once.

        The live database is not touched until one atomic ``RENAME TABLE`` moves
        its tables aside and the backup's in (foreign keys, AUTO_INCREMENT
        values, sequences and history move with their tables); what belongs to
        the schema rather than to a table (views, routines, events) and the
        triggers, which cannot change schema, are then recreated from the
        backup's definitions. Every wait for another session's lock is bounded
        by ``project.lock_timeout``: if the swap cannot have its locks in time,
        nothing has changed.

        Given ``marks``, the writes the swap discarded are counted in the tables it
        moved aside, before they are dropped: a row committed while the swap
        waited for its locks is among them.
        """
        if physical.is_physical(backup_path):
            with self._as_dump(backup_path, after=UNCHANGED) as dump:
                return self.restore(project, dump, marks, touched)
        address = self.address(project)
        servers.find_tool(self.client_tools, "mysql")
        if not self._complete(backup_path):
            raise BackupError("The backup file is cut short (no '-- Dump completed' line). "
                              f"{UNCHANGED}")
        wait = lock_wait_seconds(project)
        with self.scratch_database(address) as scratch, \
                self.scratch_database(address) as aside:
            self._load(address, scratch, backup_path, "Loading the backup into a scratch "
                       "database", after=UNCHANGED, lock_wait=wait)
            with servers.connect(address, scratch, after=UNCHANGED) as source:
                try:
                    backup = _definitions(source)
                    for trigger in backup.triggers:  # or its table could not change schema
                        _sql(source, f"DROP TRIGGER {_quote(source, trigger.name)}")
                except SQLAlchemyError as exc:
                    raise BackupError(
                        f"Reading the backup's definitions in the scratch database failed: "
                        f"{servers.driver_message(exc, address)}. {UNCHANGED}") from exc
            with servers.connect(address, after=UNCHANGED) as conn:
                _swap_in(conn, address, scratch, aside, backup, wait)
            if marks is None:
                return None
            try:
                return CountedAtSwap(self._discarded_in(address, aside, marks, touched, wait))
            except BackupError as exc:  # the restore itself is done
                log.warning("the writes the restore discarded cannot be read: %s", exc.message)
                return CountedAtSwap(None)

    def _load(self, address: ServerAddress, database: str, path: str, what: str,
              after: str, lock_wait: int, unlogged: bool = False) -> None:
        """Run the dump into ``database`` with the mariadb client; ``unlogged``
        keeps it out of the binary log (a check's scratch copy, which replicas
        need not load too)."""
        client = servers.find_tool(self.client_tools, "mysql")
        session = f"SET SESSION lock_wait_timeout = {lock_wait}"
        if unlogged:
            session += ", sql_log_bin = 0"
        with servers.mariadb_option_file(address) as options, open(path, "rb") as dump:
            servers.run_tool(
                [client.path, f"--defaults-extra-file={options}", "--batch",
                 "--default-character-set=utf8mb4", f"--init-command={session}",
                 f"--database={database}"],
                None, stdin=dump, what=what, address=address, after=after)

    def _as_dump(self, path: str, after: str):
        """A physical backup as the dump the dump method would have taken."""
        return physical.as_dump(
            path, lambda local, destination: self._dump(
                local, destination, after, what="Dumping the physical backup"), after)

    def _complete(self, path: str) -> bool:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            return self.completed in handle.read()

    # ------------------------------------------------------------ other sessions' writes

    # MariaDB cannot hold writers off for a whole run, and a restore puts back
    # every table, so rows others wrote meanwhile are lost: say which. A mark
    # per table is its exact row count and its UPDATE_TIME (InnoDB keeps it in
    # memory, in whole seconds, set when a transaction that changed the table
    # commits). UPDATE_TIME tells an UPDATE that kept the count, except for a
    # table written in the very second of the marks: only that one is
    # checksummed (CHECKSUM TABLE reads the whole table: 2.2-2.8 s for 0.5 GiB
    # here, against 0.4-0.9 s for COUNT(*)). A table whose UPDATE_TIME has not
    # moved since is not read at all when checked.

    def write_marks(self, project: Project) -> dict:
        address = self.address(project)
        with servers.connect(address, after="") as conn:
            try:
                _sql(conn, f"SET SESSION lock_wait_timeout = {lock_wait_seconds(project)}")
                # The clock first, then the snapshot: a write after the snapshot
                # sets an UPDATE_TIME no earlier than this second.
                second = conn.execute(text("SELECT NOW()")).scalar_one()
                conn.execute(text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
                marks = {}
                for name, updated in _base_tables(conn):
                    rows = _count(conn, name)
                    checksum = _checksum(conn, name) if updated and updated >= second else None
                    marks[name] = {"rows": rows, "updated": _iso(updated),
                                   "checksum": checksum}
                conn.execute(text("COMMIT"))
            except SQLAlchemyError as exc:
                raise BackupError(f"Reading the tables of the {address.describe()} failed: "
                                  f"{servers.driver_message(exc, address)}.") from exc
        return {"at": _iso(second), "tables": marks}

    def discarded_writes(self, project: Project, marks: dict | None,
                         touched: set[str]) -> list[dict] | None:
        return self._discarded_in(self.address(project), None, marks, touched,
                                  lock_wait_seconds(project))

    def _discarded_in(self, address: ServerAddress, schema: str | None, marks: dict | None,
                      touched: set[str] | frozenset[str], wait: int) -> list[dict] | None:
        """Rows others wrote since ``marks`` in the tables of ``schema`` (the live one
        when None; after a swap, the schema its tables were moved aside to)."""
        if not marks:
            return None
        found = []
        with servers.connect(address, schema, after="") as conn:
            try:
                _sql(conn, f"SET SESSION lock_wait_timeout = {wait}")
                for name, updated in _base_tables(conn):
                    if name in touched:
                        continue
                    rows = _written(conn, name, marks["tables"].get(name), _iso(updated))
                    if rows is None:
                        return None
                    if rows:
                        found.append({"table": name, "rows": rows})
            except SQLAlchemyError as exc:
                log.warning("the writes a restore discards cannot be read: %s",
                            servers.driver_message(exc, address))
                return None
        return found

    # ------------------------------------------------------------ sessions

    def session_id_sql(self) -> str:
        return "SELECT CONNECTION_ID()"

    def read_only_session_sql(self) -> str:
        return "SET SESSION TRANSACTION READ ONLY"

    def end_sessions(self, project: Project, session_ids: list[str]) -> list[str]:
        """KILL QUERY, then (once the statement stopped, or after a few seconds) KILL
        CONNECTION, which rolls its transaction back and frees its locks.

        Only sessions of this schema and of the project's user are touched, so a
        stale id that the server has since given to another connection is left alone."""
        wanted = sorted({int(i) for i in session_ids if str(i).isdigit()})
        if not wanted:
            return []
        address = self.address(project)
        with servers.connect(address, after="") as conn:
            present = _sessions_of(conn, wanted)
            for session in present:
                _kill(conn, "QUERY", session)
            deadline = time.monotonic() + END_SESSION_GRACE
            while time.monotonic() < deadline and any(
                    command != "Sleep" for command in _sessions_of(conn, present).values()):
                time.sleep(0.05)
            for session in _sessions_of(conn, present):
                _kill(conn, "CONNECTION", session)
        return [str(session) for session in present]

    # ------------------------------------------------------------ lock

    # One lock per schema: GET_LOCK names are server-wide, so a bare name would
    # make a migration of one database wait for every other of the server.

    def try_lock(self, connection, holder) -> bool:
        return bool(connection.execute(text("SELECT GET_LOCK(:n, 0)"),
                                       {"n": _lock_of(connection)}).scalar())

    def release_lock(self, connection) -> None:
        connection.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": _lock_of(connection)})

    def lock_is_held(self, connection) -> bool:
        return bool(connection.execute(text("SELECT IS_USED_LOCK(:n)"),
                                       {"n": _lock_of(connection)}).scalar())

    def describe_holder(self, connection) -> str:
        try:
            row = connection.execute(text(
                "SELECT p.ID, p.USER, p.HOST, p.TIME FROM information_schema.PROCESSLIST p "
                "WHERE p.ID = IS_USED_LOCK(:n)"), {"n": _lock_of(connection)}).first()
        except Exception as exc:  # the answer is informative only
            return f"held by another session ({type(exc).__name__})"
        if row is None:
            return "held by another session"
        return f"held by connection {row[0]} of {row[1]}@{row[2]} for {row[3]} s"

    # ------------------------------------------------------------ scratch

    def risk_rules(self):
        from dashboard.engines import risk_mariadb

        return risk_mariadb.RULES

    def server_version(self, conn):
        shown = str(conn.execute(text("SELECT VERSION()")).scalar_one())
        return shown, version_numbers(shown)

    def table_sizes(self, conn, tables):
        """information_schema.TABLES (InnoDB's TABLE_ROWS is an estimate that lags
        behind small tables: those are counted, up to a limit)."""
        if not tables:
            return {}
        rows = conn.execute(text(
            "SELECT TABLE_NAME, TABLE_ROWS, DATA_LENGTH + INDEX_LENGTH FROM "
            "information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN "
            ":names").bindparams(bindparam("names", expanding=True)),
            {"names": list(tables)}).all()
        found = {}
        for name, estimate, size in rows:
            counted = bounded_count(conn, name) if estimate is None or estimate < 1000 \
                else None
            found[name] = (counted if counted is not None else int(estimate),
                           None if size is None else int(size))
        return found

    def create_scratch(self, conn, name: str) -> None:
        quote = conn.dialect.identifier_preparer.quote_identifier
        charset, collation = conn.execute(text(
            "SELECT default_character_set_name, default_collation_name "
            "FROM information_schema.schemata WHERE schema_name = DATABASE()")).one()
        conn.execute(text(f"CREATE DATABASE {quote(name)} CHARACTER SET {charset} "
                          f"COLLATE {collation}"))

    def scratch_privilege(self, name: str) -> str:
        return f"CREATE and DROP privileges on databases named like {name.rsplit('_', 1)[0]}_%"


def _base_tables(conn) -> list[tuple[str, object]]:
    """(name, UPDATE_TIME) of the schema's tables, views and sequences left out."""
    return [tuple(row) for row in conn.execute(text(
        "SELECT table_name, update_time FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') "
        "ORDER BY table_name"))]


def _count(conn, table: str) -> int:
    return int(_sql(conn, f"SELECT COUNT(*) FROM {_quote(conn, table)}").scalar_one())


def _checksum(conn, table: str) -> int | None:
    return _sql(conn, f"CHECKSUM TABLE {_quote(conn, table)}").one()[1]


def _iso(moment) -> str | None:
    return moment.isoformat(sep=" ") if moment is not None else None


def _written(conn, table: str, mark: dict | None, updated: str | None) -> int | None:
    """Rows of ``table`` others wrote since ``mark``: 0 for none, None when it cannot tell.

    The count's difference; at least 1 when only the content changed."""
    if mark is None:  # made since the marks
        return _count(conn, table)
    if mark["checksum"] is None:
        if updated is None and mark["updated"] is not None:
            return None  # the server restarted, or evicted the table: its UPDATE_TIME is gone
        if updated == mark["updated"]:
            return 0
        return abs(_count(conn, table) - mark["rows"]) or 1
    changed = abs(_count(conn, table) - mark["rows"])
    return changed or int(_checksum(conn, table) != mark["checksum"])


def _sessions_of(conn, ids) -> dict[int, str]:
    """{id: command} of those of ``ids`` connected to this schema as this user."""
    rows = conn.execute(text(
        "SELECT ID, COMMAND FROM information_schema.PROCESSLIST WHERE ID IN :ids "
        "AND DB = DATABASE() AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
        .bindparams(bindparam("ids", expanding=True)), {"ids": list(ids)})
    return {int(row[0]): row[1] for row in rows}


def _kill(conn, what: str, session: int) -> None:
    try:
        conn.execute(text(f"KILL {what} {int(session)}"))
    except SQLAlchemyError as exc:  # gone meanwhile (1094 unknown thread), or not ours
        log.info("KILL %s %s: %s", what, session, getattr(exc, "orig", exc))


def lock_name(database: str) -> str:
    """The GET_LOCK name of one schema; hashed when it would be too long."""
    name = f"{ENGINE_LOCK_NAME}:{database}"
    if len(name) <= LOCK_NAME_LIMIT:
        return name
    return f"{ENGINE_LOCK_NAME}:{hashlib.sha256(database.encode()).hexdigest()[:40]}"


def _lock_of(connection) -> str:
    return lock_name(connection.execute(text("SELECT DATABASE()")).scalar_one())


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


def lock_wait_seconds(project: Project) -> int:
    """lock_wait_timeout for the engine's own statements (whole seconds, at least one)."""
    return max(1, math.ceil(project.lock_timeout))


def _may_skip_binlog(address: ServerAddress) -> bool:
    """Whether the server logs binary changes and this user may keep a session out of it."""
    with servers.connect(address, after="") as conn:
        try:
            if not conn.execute(text("SELECT @@log_bin")).scalar():
                return False
            conn.execute(text("SET SESSION sql_log_bin = 0"))
        except SQLAlchemyError:  # needs BINLOG ADMIN (or SUPER)
            return False
        return True


def _transaction_precise_tables(address: ServerAddress) -> list[str]:
    with servers.connect(address) as conn:
        try:
            return list(conn.execute(text(
                "SELECT DISTINCT table_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND generation_expression = 'ROW START' "
                "AND data_type = 'bigint'")).scalars())
        except SQLAlchemyError as exc:
            raise BackupError(f"The {address.describe()} cannot be read: "
                              f"{servers.driver_message(exc, address)}. {NOT_RUN}") from exc


# ---------------------------------------------------------------- the restore's swap


@dataclass(frozen=True)
class Definition:
    """One object's CREATE statement, with the session settings it was made under."""

    name: str
    sql: str
    settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class SchemaObjects:
    tables: tuple[str, ...]  # base tables, system-versioned tables and sequences
    views: tuple[Definition, ...] = ()
    triggers: tuple[Definition, ...] = ()
    routines: tuple[Definition, ...] = ()  # named "PROCEDURE x" or "FUNCTION x"
    events: tuple[Definition, ...] = ()  # named "EVENT x"


def _names(conn) -> dict[str, list[str]]:
    """The current schema's objects by kind: table, view, trigger, routine, event."""
    found: dict[str, list[str]] = {"table": [], "view": [], "trigger": [], "routine": [],
                                   "event": []}
    for kind, name in conn.execute(text(
            "SELECT IF(table_type = 'VIEW', 'view', 'table'), table_name "
            "FROM information_schema.tables WHERE table_schema = DATABASE() "
            "UNION ALL SELECT 'trigger', trigger_name FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE() "
            "UNION ALL SELECT 'routine', CONCAT(routine_type, ' ', routine_name) "
            "FROM information_schema.routines WHERE routine_schema = DATABASE() "
            "UNION ALL SELECT 'event', CONCAT('EVENT ', event_name) FROM information_schema.events "
            "WHERE event_schema = DATABASE()")):
        found[kind].append(name)
    return found


def _definitions(conn, kinds=("table", "view", "trigger", "routine", "event")) -> SchemaObjects:
    """What SHOW CREATE says of the objects of the connection's current schema.

    Read from inside the schema, so names in it are not qualified with it."""
    names = {kind: found if kind in kinds else [] for kind, found in _names(conn).items()}

    def show(kind_and_name: str, column: str, *settings: str) -> Definition:
        kind, name = kind_and_name.split(" ", 1)
        row = _sql(conn, f"SHOW CREATE {kind} {_quote(conn, name)}").mappings().one()
        if row[column] is None:  # a routine of another definer, without the right to see it
            raise BackupError(f"The definition of {kind.lower()} {name} cannot be read "
                              f"(SHOW CREATE {kind} shows none to this user). {UNCHANGED}")
        return Definition(kind_and_name, row[column],
                          tuple((key, row[key]) for key in settings))

    charset = ("character_set_client", "collation_connection")
    return SchemaObjects(
        tables=tuple(names["table"]),
        views=tuple(replace(show(f"VIEW {name}", "Create View", *charset), name=name)
                    for name in names["view"]),
        triggers=tuple(replace(show(f"TRIGGER {name}", "SQL Original Statement", "sql_mode",
                                    *charset), name=name)
                       for name in names["trigger"]),
        routines=tuple(show(routine, f"Create {routine.split()[0].title()}", "sql_mode",
                            *charset) for routine in names["routine"]),
        events=tuple(show(event, "Create Event", "sql_mode", "time_zone", *charset)
                     for event in names["event"]),
    )


def _swap_in(conn, address: ServerAddress, scratch: str, aside: str, backup: SchemaObjects,
             wait: int) -> None:
    """Move the live tables into ``aside`` and the scratch schema's into the live one, in
    one RENAME TABLE; then recreate the backup's triggers, views, routines and events in
    the live schema and drop what the backup did not have.

    A table with triggers cannot change schema, and within the live schema a table
    moved aside would keep its foreign keys' names, which the backup's tables
    bring too: so the live tables' triggers are dropped just before the swap,
    while every table that has one is locked, and recreated if the swap fails."""
    quote = conn.dialect.identifier_preparer.quote_identifier
    live = quote(address.database)
    try:
        _sql(conn, f"SET SESSION lock_wait_timeout = {wait}, foreign_key_checks = 0")
        current = _names(conn)
        triggers = _definitions(conn, kinds=("trigger",)).triggers
        trigger_tables = list(conn.execute(text(
            "SELECT DISTINCT event_object_table FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE()")).scalars())
    except SQLAlchemyError as exc:
        raise BackupError(f"Reading the {address.describe()} before the restore failed: "
                          f"{servers.driver_message(exc, address)}. {UNCHANGED}") from exc
    # A view cannot change schema either; one in the way of a table of the
    # backup is renamed within the live schema, and dropped afterwards.
    in_the_way = {name: f"{OLD_MARK}_{secrets.token_hex(4)}_{i}"
                  for i, name in enumerate(n for n in current["view"] if n in backup.tables)}
    # In pairs, each name given back right after it was freed: a reader of
    # information_schema, which takes no lock, sees at most one name missing
    # for the instant between the two; sessions that use the tables wait for
    # the whole statement and see the old tables or the new ones.
    moves = [f"{live}.{quote(name)} TO {live}.{quote(old)}" for name, old in in_the_way.items()]
    incoming = set(backup.tables)
    for name in current["table"]:
        moves.append(f"{live}.{quote(name)} TO {quote(aside)}.{quote(name)}")
        if name in incoming:
            moves.append(f"{quote(scratch)}.{quote(name)} TO {live}.{quote(name)}")
    moves += [f"{quote(scratch)}.{quote(name)} TO {live}.{quote(name)}"
              for name in backup.tables if name not in current["table"]]
    dropped: list[Definition] = []
    try:
        if trigger_tables:
            _sql(conn, "LOCK TABLES " + ", ".join(f"{quote(t)} WRITE" for t in trigger_tables))
            try:
                for trigger in triggers:
                    _sql(conn, f"DROP TRIGGER {quote(trigger.name)}")
                    dropped.append(trigger)
            finally:
                _sql(conn, "UNLOCK TABLES")
        if moves:
            _sql(conn, "RENAME TABLE " + ", ".join(moves))
    except SQLAlchemyError as exc:
        lost = _recreate(conn, dropped)
        if _error_code(exc) == LOCK_WAIT_TIMEOUT:
            said = (f"Another session held a lock on the database's tables for {wait} s "
                    "(DASHBOARD_LOCK_TIMEOUT), so the backup could not be swapped in")
        else:
            said = f"Swapping the backup's tables in failed: {servers.driver_message(exc, address)}"
        if lost:
            raise BackupError(f"{said}. The tables were left as they were, but their "
                              f"triggers {', '.join(lost)} could not be recreated; the backup "
                              "file is unchanged.") from exc
        raise BackupError(f"{said}. {UNCHANGED}") from exc

    step = "recreating the triggers"
    try:
        for trigger in backup.triggers:
            _create(conn, trigger)
        step = "recreating the views"
        _create_views(conn, backup.views)
        step = "recreating the routines"
        _replace_all(conn, backup.routines, current["routine"])
        step = "recreating the events"
        _replace_all(conn, backup.events, current["event"])
        step = "dropping the views the backup did not have"
        kept = {view.name for view in backup.views}
        for name in current["view"]:
            if name not in kept:
                _sql(conn, f"DROP VIEW IF EXISTS {quote(in_the_way.get(name, name))}")
    except SQLAlchemyError as exc:
        raise BackupError(
            f"The backup's tables are in place, but {step} failed: "
            f"{servers.driver_message(exc, address)}. Restore the backup again (the file is "
            "unchanged).") from exc


def _recreate(conn, triggers: list[Definition]) -> list[str]:
    """Put back triggers dropped for a swap that did not happen; the names it could not."""
    lost = []
    for trigger in triggers:
        try:
            _create(conn, trigger)
        except SQLAlchemyError as exc:
            log.error("trigger %s could not be recreated: %s", trigger.name, exc)
            lost.append(trigger.name)
    return lost


def _create(conn, definition: Definition, statement: str | None = None) -> None:
    for key, value in definition.settings:
        conn.execute(text(f"SET SESSION {key} = :value"), {"value": value})
    _sql(conn, statement or definition.sql)
    _sql(conn, "SET SESSION sql_mode = DEFAULT, NAMES utf8mb4, time_zone = DEFAULT")


def _or_replace(sql: str) -> str:
    return re.sub(r"^\s*CREATE\s", "CREATE OR REPLACE ", sql, count=1, flags=re.I)


def _create_views(conn, views: tuple[Definition, ...]) -> None:
    """CREATE OR REPLACE each view; one naming a view not made yet waits for the next round."""
    waiting = list(views)
    while waiting:
        failed: list[tuple[Definition, SQLAlchemyError]] = []
        for view in waiting:
            try:
                _create(conn, view, _or_replace(view.sql))
            except SQLAlchemyError as exc:
                failed.append((view, exc))
        if len(failed) == len(waiting):
            raise failed[0][1]
        waiting = [view for view, _ in failed]


def _replace_all(conn, wanted: tuple[Definition, ...], current: list[str]) -> None:
    """Routines or events (named "PROCEDURE x", "EVENT y"): CREATE OR REPLACE the
    backup's, drop the others."""
    kept = {definition.name for definition in wanted}
    for name in current:
        if name not in kept:
            kind, bare = name.split(" ", 1)
            _sql(conn, f"DROP {kind} IF EXISTS {_quote(conn, bare)}")
    for definition in wanted:
        _create(conn, definition, _or_replace(definition.sql))


def _sql(conn, statement: str):
    """Run SQL as it is: no parameters, so no '%' in it is taken for one."""
    return conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def _quote(conn, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _error_code(exc: SQLAlchemyError) -> int | None:
    args = getattr(getattr(exc, "orig", None), "args", ())
    return args[0] if args and isinstance(args[0], int) else None
