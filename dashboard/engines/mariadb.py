"""MariaDB and MySQL targets: mariadb-dump backups, a named lock per schema."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import servers
from dashboard.engines.base import NOT_RUN, FileCheck
from dashboard.engines.servers import ServerAddress, ServerEngine
from dashboard.errors import BackupError

if TYPE_CHECKING:
    from dashboard.services.project import Project

ENGINE_LOCK_NAME = "migration-dashboard"
LOCK_NAME_LIMIT = 64  # characters, GET_LOCK's limit
END_SESSION_GRACE = 5.0  # seconds a killed statement gets to stop before its connection goes

log = logging.getLogger(__name__)

class MariaDbEngine(ServerEngine):
    """MariaDB and MySQL: an SQL dump by mariadb-dump (or mysqldump), loaded back
    with the mariadb client. Every DDL statement commits on its own."""

    name = "mysql"
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

    def source_size(self, project: Project) -> int:
        address = self.address(project)
        return int(servers.scalar(
            address, "SELECT COALESCE(SUM(data_length + index_length), 0) "
            "FROM information_schema.tables WHERE table_schema = DATABASE()"))

    def copy(self, project: Project, destination: str) -> None:
        address = self.address(project)
        dump = servers.find_tool(self.dump_tools, "mysql")
        with servers.mariadb_option_file(address) as options:
            servers.run_tool(
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
        address = self.address(project)
        try:
            with self.scratch_database(address) as scratch:
                self._load(address, scratch, path, "Loading the copy into a scratch database",
                           after="")
                revisions = self.scratch_revisions(address, scratch, version_table)
        except BackupError as exc:
            return FileCheck(False, exc.message.rstrip(". "), ())
        return FileCheck(True, "dump complete; loaded into a scratch database (dropped since)",
                         revisions)

    def restore(self, project: Project, backup_path: str) -> None:
        """Empty the database, then load the dump into it.

        MariaDB cannot roll DDL back, so this is not atomic; the dump was loaded
        into a scratch database when it was taken, and its checksum has just
        been checked, so a failure half-way is unlikely, and it is reported.
        """
        address = self.address(project)
        servers.find_tool(self.client_tools, "mysql")
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
        client = servers.find_tool(self.client_tools, "mysql")
        with servers.mariadb_option_file(address) as options, open(path, "rb") as dump:
            servers.run_tool(
                [client.path, f"--defaults-extra-file={options}", "--batch",
                 "--default-character-set=utf8mb4", f"--database={database}"],
                None, stdin=dump, what=what, address=address, after=after)

    def _complete(self, path: str) -> bool:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            return self.completed in handle.read()


    # ------------------------------------------------------------ lock

    # ------------------------------------------------------------ sessions

    def session_id_sql(self) -> str:
        return "SELECT CONNECTION_ID()"

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

    def create_scratch(self, conn, name: str) -> None:
        quote = conn.dialect.identifier_preparer.quote_identifier
        charset, collation = conn.execute(text(
            "SELECT default_character_set_name, default_collation_name "
            "FROM information_schema.schemata WHERE schema_name = DATABASE()")).one()
        conn.execute(text(f"CREATE DATABASE {quote(name)} CHARACTER SET {charset} "
                          f"COLLATE {collation}"))

    def scratch_privilege(self, name: str) -> str:
        return f"CREATE and DROP privileges on databases named like {name.rsplit('_', 1)[0]}_%"


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


def _mariadb_empty(address: ServerAddress) -> None:
    """Drop every table, view, sequence, routine and event of the database."""
    after = "The database may be partly emptied; the backup file is unchanged."
    with servers.connect(address, after="The database was not changed.") as conn:
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
                              f"{servers.driver_message(exc, address)}. {after}") from exc
