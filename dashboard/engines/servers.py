"""The database servers' own client tools, run without showing their password.

pg_dump, pg_restore, psql, mariadb-dump and mariadb take host, port, user
and database from the project's URL. The password goes into a file that only
the dashboard's user can read (a ``PGPASSFILE``, or a MariaDB option file
given as ``--defaults-extra-file``), never onto a command line, where every
local user sees it in the process list; the file is deleted afterwards.
Whatever a tool prints is scrubbed of the password before it reaches a
message. The dashboard's own queries (versions, scratch databases, version
tables) go through SQLAlchemy with the drivers the dashboard ships.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from dashboard.engines.base import NOT_RUN, DatabaseEngine, FileCheck
from dashboard.errors import BackupError
from dashboard.redact import scrub

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
STDERR_LIMIT = 4000
COPY_CHUNK = 1 << 20
HEAD_BYTES = 64 << 10  # what ``amend_head`` sees of a script: its SET lines and more

# URL query parameters the tools can honour, and where each goes.
POSTGRES_QUERY = {
    "host": "PGHOST", "port": "PGPORT", "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT", "application_name": "PGAPPNAME",
}
MARIADB_QUERY = {
    "unix_socket": "socket", "charset": "default-character-set",
    "ssl_ca": "ssl-ca", "ssl_cert": "ssl-cert", "ssl_key": "ssl-key",
}
DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
INSTALL_HINTS = {
    "postgresql": "Install the PostgreSQL client tools (Debian/Ubuntu: apt-get install "
                  "postgresql-client-<server major version>) and put them on the PATH.",
    "mysql": "Install the MariaDB client tools (Debian/Ubuntu: apt-get install "
             "mariadb-client) and put them on the PATH.",
}


@dataclass(frozen=True)
class ServerAddress:
    """Where a PostgreSQL or MariaDB/MySQL database is, read from a project's URL."""

    family: str  # "postgresql" or "mysql" (MariaDB too)
    database: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None = field(repr=False)
    query: tuple[tuple[str, str], ...] = ()  # accepted parameters only

    def describe(self, database: str | None = None) -> str:
        where = dict(self.query).get("unix_socket") or dict(self.query).get("host") \
            or self.host or "localhost"
        port = f":{self.port}" if self.port else ""
        user = f" as {self.user}" if self.user else ""
        return f"database {database or self.database} on {where}{port}{user}"

    def scrub(self, message: str) -> str:
        return scrub(message, secret=self.password)


def server_address(url: str, family: str) -> ServerAddress:
    """Parse the URL, refusing what the client tools could not honour."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise BackupError("The database URL cannot be parsed. Nothing was run.") from exc
    if not parsed.database:
        raise BackupError("The database URL names no database; the backup needs one. "
                          "Nothing was run.")
    accepted = POSTGRES_QUERY if family == "postgresql" else MARIADB_QUERY
    query: list[tuple[str, str]] = []
    for key, value in parsed.query.items():
        if key not in accepted:
            raise BackupError(
                f"The database URL has the parameter ?{key}=, which the backup tools cannot "
                f"honour. Supported: {', '.join(sorted(accepted))}. Remove it or use one of "
                "those. Nothing was run.")
        if not isinstance(value, str):
            raise BackupError(f"The database URL gives ?{key}= more than once (several hosts "
                              "are not supported for backups). Nothing was run.")
        query.append((key, value))
    params = dict(query)
    if family == "postgresql":
        if "host" in params and parsed.host:
            raise BackupError("The database URL gives a host both before the database name "
                              "and as ?host=; keep one. Nothing was run.")
        if "," in params.get("host", "") or "," in params.get("port", ""):
            raise BackupError("Several hosts in ?host= are not supported for backups; name "
                              "the primary server. Nothing was run.")
    return ServerAddress(
        family=family, database=parsed.database, host=parsed.host, port=parsed.port,
        user=parsed.username, password=parsed.password, query=tuple(query),
    )


# ---------------------------------------------------------------- SQL connections


@contextmanager
def connect(address: ServerAddress, database: str | None = None,
            after: str = "Nothing was run.") -> Iterator[Connection]:
    """An autocommit connection, or BackupError saying the server cannot be reached."""
    url = URL.create(
        DRIVERS[address.family], username=address.user, password=address.password,
        host=address.host, port=address.port, database=database or address.database,
        query=dict(address.query),
    )
    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                           connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS})
    try:
        try:
            connection = engine.connect()
        except SQLAlchemyError as exc:
            said = driver_message(exc, address)
            raise BackupError(
                f"Cannot connect to the {address.describe(database)}: {said}. "
                f"Check that the server runs and the URL is right. {after}",
                detail=said) from exc
        with connection:
            yield connection
    finally:
        engine.dispose()


def driver_message(exc: BaseException, address: ServerAddress) -> str:
    """The driver's own words for an error, without the SQL or the password."""
    inner = getattr(exc, "orig", None) or exc
    return address.scrub(" ".join(str(inner).split()))


def read_revisions(connection: Connection, version_table: str) -> tuple[str, ...]:
    if not inspect(connection).has_table(version_table):
        return ()
    quoted = connection.dialect.identifier_preparer.quote(version_table)
    rows = connection.execute(text(f"SELECT version_num FROM {quoted}"))
    return tuple(sorted(row[0] for row in rows))


# ---------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tool:
    name: str
    path: str

    def version_text(self) -> str:
        """The first line of ``--version``."""
        try:
            done = subprocess.run([self.path, "--version"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackupError(f"{self.name} ({self.path}) cannot be run: {exc}. "
                              "Nothing was run.") from exc
        lines = (done.stdout or done.stderr).decode("utf-8", "replace").strip().splitlines()
        if done.returncode != 0 or not lines:
            raise BackupError(f"{self.name} ({self.path}) does not answer --version. "
                              "Nothing was run.")
        return lines[0]


def find_tool(names: tuple[str, ...], family: str) -> Tool:
    """The first of ``names`` on the PATH, or a BackupError saying what to install."""
    for name in names:
        path = shutil.which(name)
        if path:
            return Tool(name, path)
    wanted = " or ".join(names)
    raise BackupError(f"{wanted} was not found on the PATH ({os.environ.get('PATH', '')}). "
                      f"{INSTALL_HINTS[family]} Nothing was run.")


def parse_version(version_text: str) -> tuple[int, ...]:
    """(15, 20) from "pg_dump (PostgreSQL) 15.20 (Debian ...)", and so on.

    MariaDB tools say "Ver 10.19 Distrib 10.11.19-MariaDB": the Distrib one counts.
    """
    match = re.search(r"Distrib (\d+(?:\.\d+)*)", version_text) or \
        re.search(r"(\d+(?:\.\d+)+|\d+)", version_text.split(")", 1)[-1]) or \
        re.search(r"(\d+(?:\.\d+)*)", version_text)
    if not match:
        return ()
    return tuple(int(part) for part in match.group(1).split("."))


def postgres_major(version: tuple[int, ...]) -> tuple[int, ...]:
    """PostgreSQL majors: 9.6 before 10, a single number since."""
    return version[:2] if version and version[0] < 10 else version[:1]


def version_string(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version) or "unknown"


# ---------------------------------------------------------------- credentials


@contextmanager
def private_folder() -> Iterator[str]:
    """A folder only this user can enter (mkdtemp is 0700), removed afterwards."""
    folder = tempfile.mkdtemp(prefix="dashboard-cred-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(path: str, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)


@contextmanager
def postgres_environment(address: ServerAddress) -> Iterator[dict[str, str]]:
    """Environment for libpq tools: PGHOST, PGPORT, PGUSER and a temporary PGPASSFILE."""
    env = dict(os.environ)
    env["PGCONNECT_TIMEOUT"] = str(CONNECT_TIMEOUT_SECONDS)
    for key in ("PGDATABASE", "PGSERVICE", "PGHOSTADDR"):
        env.pop(key, None)
    if address.host:
        env["PGHOST"] = address.host
    if address.port:
        env["PGPORT"] = str(address.port)
    if address.user:
        env["PGUSER"] = address.user
    for key, value in address.query:
        env[POSTGRES_QUERY[key]] = value
    if not address.password:
        yield env  # the user's own ~/.pgpass or PGPASSWORD, as for any libpq program
        return
    with private_folder() as folder:
        passfile = os.path.join(folder, "pgpass")
        # One line matching any host, port and database: the scratch database too.
        _write_private(passfile, f"*:*:*:*:{_pgpass_escape(address.password)}\n")
        env["PGPASSFILE"] = passfile
        env.pop("PGPASSWORD", None)  # it would win over the file
        yield env


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def mariadb_option_file(address: ServerAddress) -> Iterator[str]:
    """A 0600 option file for ``--defaults-extra-file=``, deleted afterwards."""
    params = dict(address.query)
    lines = ["[client]"]
    if address.user:
        lines.append(f"user={_option_value(address.user)}")
    if address.password:
        lines.append(f"password={_option_value(address.password)}")
    if "unix_socket" in params:
        lines.append("protocol=SOCKET")
    else:
        # The driver connects over TCP even to "localhost"; the client would use
        # the Unix socket, and may log in as a different account there.
        lines.append(f"host={_option_value(address.host or 'localhost')}")
        lines.append("protocol=TCP")
        if address.port:
            lines.append(f"port={address.port}")
    for key, value in params.items():
        lines.append(f"{MARIADB_QUERY[key]}={_option_value(value)}")
    with private_folder() as folder:
        path = os.path.join(folder, "client.cnf")
        _write_private(path, "\n".join(lines) + "\n")
        yield path


def _option_value(value: str) -> str:
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\t", "\\t"))
    return f'"{escaped}"'


# ---------------------------------------------------------------- running


def run_tool(argv: list[str], env: dict[str, str] | None, *, what: str,
             address: ServerAddress, after: str, stdin=None, stdout=None) -> None:
    """Run one tool to completion; a failure is a BackupError with its scrubbed stderr."""
    with tempfile.TemporaryFile() as stderr:
        try:
            done = subprocess.run(argv, env=env, stdin=stdin or subprocess.DEVNULL,
                                  stdout=stdout or subprocess.DEVNULL, stderr=stderr,
                                  check=False)
        except OSError as exc:
            raise BackupError(f"{what} failed: {argv[0]} cannot be run: {exc.strerror}. "
                              f"{after}") from exc
        if done.returncode != 0:
            raise tool_failure(what, argv[0], done.returncode, _tail(stderr), address, after)


SAID_BYTES = 8 * 1024 * 1024


def run_piped(producer: list[str], consumer: list[str], env: dict[str, str], *,
              prelude: bytes, what: str, address: ServerAddress, after: str,
              amend_head: Callable[[bytes], bytes] | None = None) -> str:
    """``producer | consumer``, with ``prelude`` sent to the consumer first; what the
    consumer said on stderr (its first ``SAID_BYTES``), once both succeeded.

    The bytes go through this process, so the consumer never sees the end of
    its input unless the producer succeeded: when the producer fails, the
    consumer is killed with its input still open (a psql inside a transaction
    then commits nothing). ``amend_head`` may rewrite the first ``HEAD_BYTES``
    of the producer's output (a script's SET lines).
    """
    with tempfile.TemporaryFile() as producer_err, tempfile.TemporaryFile() as consumer_err:
        source = _start(producer, env, what, after, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=producer_err)
        sink = _start(consumer, env, what, after, started=source, stdin=subprocess.PIPE,
                      stdout=subprocess.DEVNULL, stderr=consumer_err)
        pump = _Pump(prelude, source, sink, amend_head)
        thread = threading.Thread(target=pump.run, name="dbtools-pump", daemon=True)
        thread.start()
        thread.join()
        source_code = source.wait()
        sink_code = sink.wait()
        if source_code != 0:
            raise tool_failure(what, producer[0], source_code, _tail(producer_err),
                               address, after)
        if sink_code != 0 or pump.error:
            detail = _tail(consumer_err) or str(pump.error or "")
            raise tool_failure(what, consumer[0], sink_code, detail, address, after)
        consumer_err.seek(0)
        return consumer_err.read(SAID_BYTES).decode("utf-8", "replace")


def _start(argv: list[str], env, what: str, after: str,
           started: subprocess.Popen | None = None, **popen) -> subprocess.Popen:
    """Start one tool of a pipeline; if it cannot be run, stop the one ``started``
    before it and say which tool it was."""
    try:
        return subprocess.Popen(argv, env=env, **popen)
    except OSError as exc:
        if started is not None:
            started.kill()
            started.wait()
        raise BackupError(f"{what} failed: {argv[0]} cannot be run: {exc.strerror}. "
                          f"{after}".rstrip()) from exc


class _Pump:
    def __init__(self, prelude: bytes, source: subprocess.Popen, sink: subprocess.Popen,
                 amend_head: Callable[[bytes], bytes] | None = None):
        self.prelude, self.source, self.sink = prelude, source, sink
        self.amend_head = amend_head
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sink.stdin.write(self.prelude)
            if self.amend_head is not None:
                self.sink.stdin.write(self.amend_head(self.source.stdout.read(HEAD_BYTES)))
            while block := self.source.stdout.read(COPY_CHUNK):
                self.sink.stdin.write(block)
        except BrokenPipeError as exc:  # the consumer stopped: it says why on stderr
            self.error = exc
            self.source.kill()
        except BaseException as exc:
            self.error = exc
        if self.source.wait() != 0 or self.error:
            self.sink.kill()
        try:
            self.sink.stdin.close()
        except BrokenPipeError:
            pass
        self.source.stdout.close()


@dataclass(frozen=True)
class Dumped:
    """What ``dump_to_file`` wrote, and how its consumer fared."""

    size: int
    sha256: str  # of the bytes written, as they came from the producer
    consumer_failure: BackupError | None  # None: the consumer read it all and succeeded


def dump_to_file(producer: list[str], destination: str, env: dict[str, str], *, what: str,
                 address: ServerAddress, after: str, consumer: list[str] | None = None,
                 consumer_what: str = "") -> Dumped:
    """Write the producer's output to ``destination`` and, as it is written, to the
    consumer's input: a dump restored while it is taken.

    The consumer reads from the file behind the writer, so a slow consumer never
    holds the producer up. A producer failure is a BackupError (the consumer is
    killed first); a consumer failure is not: it stops the producer (the copy can
    no longer be verified) and is returned in ``consumer_failure``.
    """
    with tempfile.TemporaryFile() as producer_err, tempfile.TemporaryFile() as consumer_err:
        source = _start(producer, env, what, after, stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE, stderr=producer_err)
        sink = None
        if consumer:
            sink = _start(consumer, env, consumer_what, "", started=source,
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=consumer_err)
        tee = _Tee(source, sink, destination)
        try:
            tee.run()
        finally:
            for process in (source, sink):
                if process is not None and process.poll() is None and tee.failed:
                    process.kill()
            source.stdout.close()
            source.wait()
            if sink is not None:
                sink.wait()
        if source.returncode != 0 and not tee.stopped_for_consumer:
            raise tool_failure(what, producer[0], source.returncode, _tail(producer_err),
                               address, after)
        failure = None
        if sink is not None and (sink.returncode != 0 or tee.feed_error is not None):
            detail = _tail(consumer_err) or str(tee.feed_error or "")
            failure = tool_failure(consumer_what, consumer[0], sink.returncode, detail,
                                   address, "")
        return Dumped(tee.written, tee.sha256, failure)


class _Tee:
    """The producer's output into a file (hashed on the way), and from the file,
    behind the writer, into the sink's input."""

    def __init__(self, source: subprocess.Popen, sink: subprocess.Popen | None,
                 destination: str):
        self.source, self.sink, self.destination = source, sink, destination
        self.written = 0
        self.sha256 = ""
        self.done = False
        self.failed = False  # something went wrong here: kill what still runs
        self.stopped_for_consumer = False
        self.feed_error: BaseException | None = None
        self.changed = threading.Condition()

    def run(self) -> None:
        digest = hashlib.sha256()
        feeder = None
        try:
            with open(self.destination, "wb") as out:
                if self.sink is not None:
                    feeder = threading.Thread(target=self._feed, name="dbtools-tee",
                                              daemon=True)
                    feeder.start()
                while block := self.source.stdout.read(COPY_CHUNK):
                    out.write(block)
                    out.flush()  # the feeder reads it from the file
                    digest.update(block)
                    with self.changed:
                        self.written += len(block)
                        self.changed.notify()
                    if self.sink is not None and self.sink.poll() not in (None, 0):
                        self.stopped_for_consumer = True  # it failed: the copy is no use
                        self.source.kill()
                        break
        except BaseException:
            self.failed = True
            self.source.kill()
            if self.sink is not None:
                self.sink.kill()  # before it sees the end of a partial input
            raise
        finally:
            if self.source.wait() != 0 and self.sink is not None \
                    and not self.stopped_for_consumer:
                self.sink.kill()
            with self.changed:
                self.done = True
                self.changed.notify()
            if feeder is not None:
                feeder.join()
        self.sha256 = digest.hexdigest()

    def _feed(self) -> None:
        position = 0
        try:
            with open(self.destination, "rb", buffering=0) as written:
                while True:
                    with self.changed:
                        while position >= self.written and not self.done:
                            self.changed.wait()
                        available = self.written
                        if position >= available and self.done:
                            break
                    while position < available:
                        block = written.read(min(COPY_CHUNK, available - position))
                        if not block:
                            raise OSError(f"{self.destination} is shorter than was written")
                        self.sink.stdin.write(block)
                        position += len(block)
        except BaseException as exc:  # a consumer that stopped says why on stderr
            self.feed_error = None if isinstance(exc, BrokenPipeError) else exc
        finally:
            try:
                self.sink.stdin.close()
            except BrokenPipeError:
                pass


def tool_failure(what: str, tool: str, code: int, stderr: str, address: ServerAddress,
                 after: str) -> BackupError:
    name = os.path.basename(tool)
    said = address.scrub(stderr.strip()) or "(nothing on stderr)"
    return BackupError(f"{what} failed: {name} exited with status {code}: "
                       f"{said.rstrip('.')}. {after}".rstrip(), detail=said)


def _tail(handle) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - STDERR_LIMIT))
    data = handle.read().decode("utf-8", "replace")
    return ("…" if size > STDERR_LIMIT else "") + data


# ---------------------------------------------------------------- engines

SCRATCH_MARK = "mdverify"


# Names of this machine in a URL: one host for a database's identity.
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost", "localhost.localdomain"})


class ServerEngine(DatabaseEngine, abc.ABC):
    """What PostgreSQL and MariaDB/MySQL share: an address, SQL reads, scratch databases."""

    family = ""  # "postgresql" or "mysql": which client tools and driver
    default_port = 0  # the port a URL without one reaches
    scratch_name_limit = 64
    holds_off_writers = False
    counts_writes_at_restore = True

    def identity(self, url: str) -> str:
        """Engine, host, port and database, spelled one way: ``localhost``,
        ``127.0.0.1``, ``::1`` and a local socket are one host, no port is the
        default port, and the driver (psycopg, asyncpg, pymysql) does not count.
        Holds no user and no password."""
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            return url.split(":", 1)[0]
        host = (parsed.host or str(parsed.query.get("host") or "") or "localhost").lower()
        if host.strip("[]") in LOOPBACK or host.startswith("/"):
            host = "localhost"
        return f"{self.name}://{host}:{parsed.port or self.default_port}/{parsed.database or ''}"

    def connect_args(self) -> dict:
        return {"connect_timeout": 5}

    def address(self, project) -> ServerAddress:
        return server_address(project.database_url, self.family)

    def source_name(self, project) -> str:
        return self.address(project).database

    def live_revisions(self, project) -> tuple[str, ...]:
        return live_revisions(self.address(project), project.version_table)

    def check_live(self, project) -> FileCheck:
        address = self.address(project)
        try:
            revisions = live_revisions(address, project.version_table, after="")
        except BackupError as exc:
            return FileCheck(False, exc.message.rstrip(". "), ())
        return FileCheck(True, f"{project.version_table} read", revisions)

    # Scratch databases, where a backup is restored to be verified.

    @abc.abstractmethod
    def create_scratch(self, conn: Connection, name: str) -> None:
        """Create the empty scratch database ``name`` like the target's."""

    def drop_scratch_sql(self, quoted_name: str) -> str:
        return f"DROP DATABASE IF EXISTS {quoted_name}"

    def scratch_privilege(self, name: str) -> str:
        return "the right to create databases"

    def scratch_name(self, database: str) -> str:
        suffix = f"_{SCRATCH_MARK}_{secrets.token_hex(4)}"
        stem = database.encode()[:self.scratch_name_limit - len(suffix)]
        return stem.decode("utf-8", "ignore") + suffix

    @contextmanager
    def scratch_database(self, address: ServerAddress,
                         why: str = "The backup cannot be verified") -> Iterator[str]:
        """A new, empty database beside the target, dropped afterwards whatever happens."""
        name = self.scratch_name(address.database)
        with connect(address) as conn:
            quote = conn.dialect.identifier_preparer.quote_identifier
            try:
                self.create_scratch(conn, name)
            except SQLAlchemyError as exc:
                raise BackupError(
                    f"{why}: a scratch database cannot be created "
                    f"({driver_message(exc, address)}). Its user needs "
                    f"{self.scratch_privilege(name)}") from exc
        try:
            yield name
        finally:
            try:
                with connect(address) as conn:
                    conn.execute(text(self.drop_scratch_sql(quote(name))))
            except (BackupError, SQLAlchemyError) as exc:
                said = exc.message if isinstance(exc, BackupError) else \
                    driver_message(exc, address)
                log.error("the scratch database %s could not be dropped: %s", name, said)

    @abc.abstractmethod
    def load_scratch(self, project, address: ServerAddress, scratch: str, path: str) -> None:
        """Load the backup file ``path`` into the empty scratch database ``scratch``."""

    @contextmanager
    def scratch_copy(self, project, backup_path: str, folder: str) -> Iterator[str]:
        address = self.address(project)
        with self.scratch_database(address, "The copy cannot be made") as scratch:
            self.load_scratch(project, address, scratch, backup_path)
            yield make_url(project.database_url).set(database=scratch).render_as_string(
                hide_password=False)

    # The database's own lock. A file lock serialises the processes of one
    # machine; two dashboards on two machines (or a dashboard and an
    # application auto-migrating) meet only at the database, so the lock is
    # also taken there, on a dedicated connection held for the whole action,
    # and released by the server when that connection ends.

    def acquire_lock(self, project, holder) -> SessionLock:
        from dashboard.services.locking import LockHeld

        engine = self.open_engine(project.database_url, read_only=False)
        try:
            connection = engine.connect()
        except Exception as exc:
            engine.dispose()
            from dashboard.engines.base import DatabaseUnreachable

            raise DatabaseUnreachable(scrub(f"{type(exc).__name__}: {exc}",
                                            project.database_url)) from exc
        try:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            if not self.try_lock(connection, holder):
                who = self.describe_holder(connection)
                raise LockHeld(f"A migration is already running on this database ({who}).")
        except Exception:
            connection.close()
            engine.dispose()
            raise
        return SessionLock(engine, connection, self)

    def lock_holder(self, project) -> str | None:
        from dashboard.engines.base import DatabaseUnreachable

        try:
            engine = self.open_engine(project.database_url, read_only=True)
            connection = engine.connect()
        except DatabaseUnreachable:
            return None
        except Exception:
            return None
        try:
            if not self.lock_is_held(connection):
                return None
            return f"A migration is already running on this database " \
                   f"({self.describe_holder(connection)})."
        except Exception:
            return None
        finally:
            connection.close()
            engine.dispose()

    @abc.abstractmethod
    def try_lock(self, connection: Connection, holder) -> bool:
        """Take the database's lock for this action on ``connection``, without waiting."""

    @abc.abstractmethod
    def release_lock(self, connection: Connection) -> None:
        """Let go of the lock taken on ``connection``."""

    @abc.abstractmethod
    def lock_is_held(self, connection: Connection) -> bool:
        """Whether any session holds this database's lock now."""

    @abc.abstractmethod
    def describe_holder(self, connection: Connection) -> str:
        """Who holds this database's lock, as the server says."""

    def scratch_revisions(self, address: ServerAddress, scratch: str,
                          version_table: str) -> tuple[str, ...]:
        with connect(address, scratch, after="") as conn:
            try:
                return read_revisions(conn, version_table)
            except SQLAlchemyError as exc:
                raise BackupError(f"{version_table} cannot be read in the scratch database: "
                                  f"{driver_message(exc, address)}") from exc


def scalar(address: ServerAddress, sql: str):
    with connect(address) as conn:
        try:
            return conn.execute(text(sql)).scalar_one()
        except SQLAlchemyError as exc:
            raise BackupError(f"The {address.describe()} cannot be read: "
                              f"{driver_message(exc, address)}. {NOT_RUN}") from exc


def live_revisions(address: ServerAddress, version_table: str,
                   after: str = NOT_RUN) -> tuple[str, ...]:
    with connect(address, after=after) as conn:
        try:
            return read_revisions(conn, version_table)
        except SQLAlchemyError as exc:
            raise BackupError(f"The revisions of the {address.describe()} cannot be read: "
                              f"{driver_message(exc, address)}. {after}") from exc


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class SessionLock:
    """A database lock held by one dedicated connection; ``release()`` frees it."""

    def __init__(self, engine, connection: Connection, owner: ServerEngine):
        self.engine = engine
        self.connection = connection
        self.owner = owner

    def release(self) -> None:
        if self.connection is None:
            return
        try:
            self.owner.release_lock(self.connection)
        except Exception:
            pass  # closing the connection releases it anyway
        finally:
            self.connection.close()
            self.engine.dispose()
            self.connection = None


def holder_label(holder) -> str:
    # Visible to other sessions (pg_stat_activity.application_name is 63 bytes).
    return f"mdash {holder.action} {holder.user}"[:63]
