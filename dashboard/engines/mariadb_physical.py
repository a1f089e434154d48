"""Physical MariaDB backups (``backup_method = "physical"``).

mariadb-backup copies the schema's files (and the ``mysql`` schema, where
routines and events live) out of the server's data directory while the server
runs, as one xbstream file. To check the file, or to restore from it, the
file is unpacked beside itself, prepared (``mariadb-backup --prepare`` applies
the redo log written during the copy) and opened by a private scratch
``mariadbd``: no network, its own socket in a private folder, no grant
tables, no event scheduler, killed and removed afterwards. A check runs
``CHECK TABLE`` on every table there and reads the version table; a restore
dumps the scratch server with mariadb-dump and goes on as a restore of a dump
does (load beside the live tables, swap them in), so what a restore puts back
is exactly what the dump method would.

It needs the dashboard on the server's machine, able to read the server's
data directory, with mariadb-backup and mariadbd of the server's own version
(Debian: ``apt-get install mariadb-backup``). Why it exists: a check that
loads every row of a dump costs the server about six times the dump itself
(benchmarks/README.md); this one reads the copy's pages instead.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dashboard.engines import servers
from dashboard.engines.base import NOT_RUN, CopyMemo, FileCheck
from dashboard.engines.servers import ServerAddress, Tool
from dashboard.errors import BackupError
from dashboard.lifeline import bound_to_this_process, process_alive

MAGIC = b"XBSTCK01"  # how every xbstream file begins
EXTENSION = ".xbstream"
BACKUP_TOOLS = ("mariadb-backup", "mariabackup")
STREAM_TOOLS = ("mbstream",)
SERVER_TOOLS = ("mariadbd", "mysqld")
# Where distributions put the server: often not on a user's PATH.
SERVER_FOLDERS = ("/usr/sbin", "/usr/libexec", "/usr/local/sbin", "/usr/local/mysql/bin")
START_SECONDS = 120.0
SCRATCH_BUFFER_POOL = "256M"
SCRATCH_USER = "md_scratch"
SCRATCH_PREFIX = ".physical-"  # copies unpacked beside their backup file
MEMORY_FOLDER = "/dev/shm"  # a tmpfs on Linux
STALE_SECONDS = 24 * 3600  # one older than this was left by a process that died
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
INSTALL = "Install mariadb-backup of the server's version (Debian/Ubuntu: apt-get install " \
          "mariadb-backup), or set backup_method = \"dump\"."
# The scratch server: nobody connects to it but this process, over its socket.
NOWHERE = ServerAddress(family="mysql", database="", host=None, port=None, user=None,
                        password=None)


def is_physical(path: str) -> bool:
    """Whether the backup file is mariadb-backup's stream (else it is a dump)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _tool(names: tuple[str, ...]) -> Tool:
    search = os.pathsep.join([os.environ.get("PATH", ""), *SERVER_FOLDERS])
    for name in names:
        path = shutil.which(name, path=search)
        if path:
            return Tool(name, path)
    raise BackupError(f"{' or '.join(names)} was not found on the PATH or in "
                      f"{', '.join(SERVER_FOLDERS)}. {INSTALL} {NOT_RUN}")


def preflight(address: ServerAddress, server_text: str) -> None:
    """Refuse, before anything is written, what a physical copy cannot do here."""
    if "mariadb" not in server_text.lower():
        raise BackupError(f"backup_method = \"physical\" needs a MariaDB server "
                          f"(mariadb-backup); this one is {server_text}. Set backup_method "
                          f"= \"dump\". {NOT_RUN}")
    server = servers.parse_version(server_text)
    for names in (BACKUP_TOOLS, SERVER_TOOLS):
        tool = _tool(names)
        said = tool.version_text()
        if servers.parse_version(said.split(" based on ")[-1])[:2] != server[:2]:
            raise BackupError(
                f"{tool.name} is {said!r} ({tool.path}) but the server is version "
                f"{server_text}: a physical copy needs mariadb-backup and mariadbd of the "
                f"server's own version. {INSTALL} {NOT_RUN}")
    _tool(STREAM_TOOLS)
    with servers.connect(address) as conn:
        try:
            datadir, host = conn.execute(text("SELECT @@datadir, @@hostname")).one()
        except SQLAlchemyError as exc:
            raise BackupError(f"The {address.describe()} cannot be read: "
                              f"{servers.driver_message(exc, address)}. {NOT_RUN}") from exc
    here = socket.gethostname()
    if str(host).lower() != here.lower():
        raise BackupError(
            f"The server runs on {host}, not on this machine ({here}): a physical copy "
            f"reads the server's own files. Run the dashboard on the server's machine, or "
            f"set backup_method = \"dump\". {NOT_RUN}")
    if not os.access(datadir, os.R_OK | os.X_OK):
        raise BackupError(
            f"The server's data directory {datadir} cannot be read by this user "
            f"(uid {os.geteuid()}): a physical copy reads the server's files. Run the "
            f"dashboard as a user who may (the server's own, or in its group), or set "
            f"backup_method = \"dump\". {NOT_RUN}")


@dataclass(frozen=True)
class _Unpacked:
    """A copy unpacked while ``copy`` wrote it: ``check`` opens it instead of
    unpacking the file again, once the file is shown to hold the same bytes."""

    folder: str
    sha256: str  # of the bytes written to the file and unpacked


_unpacked: CopyMemo[_Unpacked] = CopyMemo(
    forget=lambda left: shutil.rmtree(left.folder, ignore_errors=True))


def copy(address: ServerAddress, datadir: str, destination: str, size: int,
         after: str) -> None:
    """mariadb-backup's stream of the schema (and of ``mysql``) into ``destination``,
    unpacked beside it as it is written (from the file, behind the writer)."""
    tool, stream = _tool(BACKUP_TOOLS), _tool(STREAM_TOOLS)
    for place in (os.path.dirname(os.path.abspath(destination)), MEMORY_FOLDER):
        _sweep(place)
    folder = _scratch_folder(destination, size)
    try:
        with servers.mariadb_option_file(address) as options, \
                servers.private_folder() as work:
            listing = os.path.join(work, "databases")
            with open(listing, "w", encoding="utf-8") as handle:
                handle.write(f"{address.database}\nmysql\n")
            dumped = servers.dump_to_file(
                # --defaults-extra-file must come first, or the tool ignores it.
                [tool.path, f"--defaults-extra-file={options}", "--backup",
                 "--stream=xbstream", f"--datadir={datadir}", f"--databases-file={listing}",
                 f"--target-dir={os.path.join(work, 'target')}", f"--tmpdir={work}"],
                destination, dict(os.environ), what=f"{tool.name} of the {address.describe()}",
                address=address, after=after, consumer=[stream.path, "-x", "-C", folder],
                consumer_what="Unpacking the copy as it was written")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if dumped.consumer_failure is not None:  # the file is unpacked again by the check
        shutil.rmtree(folder, ignore_errors=True)
        return
    _unpacked.remember(destination, _Unpacked(folder, dumped.sha256))


def _scratch_folder(path: str, size: int) -> str:
    """Where to unpack a copy of about ``size`` bytes: in memory when it fits with
    room to spare (it is read once and thrown away; a disk's page cache costs about
    twice the time here), else beside the backup file, whose folder has room."""
    prefix = f"{SCRATCH_PREFIX}{os.getpid()}-"  # whose it is, for _sweep
    if size <= _memory_to_spare():
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=MEMORY_FOLDER)
        except OSError:
            pass
    try:
        return tempfile.mkdtemp(prefix=prefix, dir=os.path.dirname(os.path.abspath(path)))
    except OSError:
        return tempfile.mkdtemp(prefix=prefix)


def _memory_to_spare() -> int:
    """Bytes a copy may take in MEMORY_FOLDER: a quarter of the memory available,
    and half of the folder's free space."""
    try:
        free = shutil.disk_usage(MEMORY_FOLDER).free
        with open("/proc/meminfo", encoding="ascii") as handle:
            available = next(int(line.split()[1]) * 1024 for line in handle
                             if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return min(free // 2, available // 4)


def _sweep(folder: str) -> None:
    """Remove copies unpacked by a process that died before it removed them (its
    pid is in the name), or left for a day."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(SCRATCH_PREFIX):
            continue
        try:
            pid = entry.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
            stale = not (pid.isdigit() and process_alive(int(pid))) or \
                entry.stat(follow_symlinks=False).st_mtime < time.time() - STALE_SECONDS
        except OSError:
            continue
        if stale:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


@contextmanager
def opened(path: str, after: str, unpacked: _Unpacked | None = None
           ) -> Iterator[ServerAddress]:
    """A scratch server on a prepared copy of the backup file ``path`` (unpacked
    now, or already in ``unpacked``); the address of the backed-up schema there.
    The server and the copy are gone afterwards."""
    backup, stream, server = _tool(BACKUP_TOOLS), _tool(STREAM_TOOLS), _tool(SERVER_TOOLS)
    data = unpacked.folder if unpacked is not None else \
        _scratch_folder(path, os.path.getsize(path))
    try:
        if unpacked is None:
            with open(path, "rb") as source:
                servers.run_tool([stream.path, "-x", "-C", data], None, stdin=source,
                                 what="Unpacking the physical copy", address=NOWHERE,
                                 after=after)
        servers.run_tool([backup.path, "--prepare", f"--target-dir={data}"], None,
                         what="Preparing the physical copy (mariadb-backup --prepare)",
                         address=NOWHERE, after=after)
        with servers.private_folder() as run, _server(server, data, run, after) as local:
            yield replace(local, database=_schema(local, after))
    finally:
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def _server(server: Tool, data: str, run: str, after: str) -> Iterator[ServerAddress]:
    """The scratch server, and how to log in to it: an account of its own, made at
    its start (with --skip-grant-tables a server shows no events)."""
    sock = os.path.join(run, "mysqld.sock")
    log = os.path.join(run, "error.log")
    password = secrets.token_hex(16)
    init = os.path.join(run, "init.sql")
    with open(init, "w", encoding="utf-8") as handle:
        handle.write(f"CREATE OR REPLACE USER '{SCRATCH_USER}'@'localhost' IDENTIFIED BY "
                     f"'{password}';\nGRANT ALL PRIVILEGES ON *.* TO '{SCRATCH_USER}'@"
                     f"'localhost' WITH GRANT OPTION;\n")
    argv = [server.path, f"--defaults-file={os.path.join(data, 'backup-my.cnf')}",
            f"--datadir={data}", f"--socket={sock}", "--skip-networking",
            f"--init-file={init}", "--skip-log-bin", "--skip-slave-start",
            "--event-scheduler=OFF", f"--pid-file={os.path.join(run, 'mysqld.pid')}",
            f"--log-error={log}", f"--tmpdir={run}",
            f"--innodb-buffer-pool-size={SCRATCH_BUFFER_POOL}"]
    if os.geteuid() == 0:
        argv.append("--user=root")  # the copy is root's; mariadbd refuses root otherwise
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL,
                                   preexec_fn=bound_to_this_process())
    except OSError as exc:
        raise BackupError(f"The scratch server cannot be started: {server.path}: "
                          f"{exc.strerror}. {after}".rstrip()) from exc
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _answers(sock):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BackupError(
                    f"The scratch server on the physical copy did not start: "
                    f"{_said(log)}. {after}".rstrip())
            time.sleep(0.05)
        yield ServerAddress(family="mysql", database="", host=None, port=None,
                            user=SCRATCH_USER, password=password,
                            query=(("unix_socket", sock),))
    finally:
        # Its data is thrown away: no clean shutdown is needed.
        process.kill()
        process.wait()


def _answers(sock: str) -> bool:
    if not os.path.exists(sock):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sock)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _said(log: str) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if "[ERROR]" in line]
    except OSError:
        lines = []
    return "; ".join(lines[-3:]) or "it exited without saying why"


def _schema(local: ServerAddress, after: str) -> str:
    """The one user schema in the copy (the copy holds it and ``mysql``)."""
    with servers.connect(local, after=after) as conn:
        names = [name for name in conn.execute(text("SHOW DATABASES")).scalars()
                 if name.lower() not in SYSTEM_SCHEMAS]
    if len(names) != 1:
        raise BackupError(f"The physical copy holds {len(names)} schemas "
                          f"({', '.join(names) or 'none'}), not one. {after}".rstrip())
    return names[0]


def check(path: str, version_table: str, thorough: bool,
          rehearse: Callable[[ServerAddress], None]) -> FileCheck:
    """Open the copy; with ``thorough``, CHECK TABLE every table; read the revisions.

    A copy ``copy`` unpacked as it wrote it is opened as it is, and the file must
    then hold the bytes it unpacked (hashed meanwhile)."""
    unpacked = _unpacked.recall(path)
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(_sha256, path) if unpacked is not None else None
        found = _check(path, version_table, thorough, unpacked, rehearse)
        if digest is not None and found.ok and digest.result() != unpacked.sha256:
            return FileCheck(False, "the file differs from the copy unpacked as it was "
                             "written", ())
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check(path: str, version_table: str, thorough: bool, unpacked: _Unpacked | None,
           rehearse: Callable[[ServerAddress], None]) -> FileCheck:
    try:
        with opened(path, "", unpacked) as local, servers.connect(local, after="") as conn:
            tables = list(conn.execute(text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_type <> 'VIEW' "
                "ORDER BY table_name")).scalars())
            quote = conn.dialect.identifier_preparer.quote_identifier
            problems = []
            for table in tables if thorough else ():
                for row in conn.execute(text(f"CHECK TABLE {quote(table)}")):
                    kind, said = str(row[2]).lower(), str(row[3])
                    if kind == "error" or (kind == "status" and said != "OK"):
                        problems.append(f"{table}: {said}")
            revisions = servers.read_revisions(conn, version_table)
            if not problems:
                try:
                    rehearse(local)
                except BackupError as exc:
                    problems.append(f"{exc.message.rstrip('. ')}: a restore could not dump "
                                    f"it back; set backup_method = \"dump\" for this database")
    except BackupError as exc:
        return FileCheck(False, exc.message.rstrip(". "), ())
    except SQLAlchemyError as exc:
        return FileCheck(False, f"the scratch server on the physical copy failed: "
                         f"{servers.driver_message(exc, NOWHERE)}", ())
    if problems:
        return FileCheck(False, "the physical copy failed its check: "
                         + "; ".join(problems[:5]), ())
    checked = (f"CHECK TABLE passed on its {len(tables)} tables" if thorough
               else "tables not checked: quick verification")
    return FileCheck(True, f"physical copy (mariadb-backup) prepared and opened by a scratch "
                     f"server; {checked}; its definitions dump as a restore's would",
                     revisions)


@contextmanager
def as_dump(path: str, dump: Callable[[ServerAddress, str], None],
            after: str) -> Iterator[str]:
    """The backup as a dump file beside it (removed afterwards), written by
    ``dump(address, destination)`` from the scratch server's schema."""
    left = _unpacked.recall(path)  # unpacked by a copy nobody checked: not used unchecked
    if left is not None:
        shutil.rmtree(left.folder, ignore_errors=True)
    folder = os.path.dirname(os.path.abspath(path))
    handle, destination = tempfile.mkstemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-",
                                           suffix=".sql", dir=folder)
    os.close(handle)
    try:
        with opened(path, after) as local:
            dump(local, destination)
        yield destination
    finally:
        try:
            os.unlink(destination)
        except OSError:
            pass
