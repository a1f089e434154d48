"""One action at a time per target database, across processes.

An ``flock`` on a file in the instance folder: the kernel releases it when
the last process holding it dies, so a lock left by a dead server or worker
is released by construction, never by guessing from a PID. The worker
subprocess inherits the descriptor, so the lock stays held while a
migration runs even if the process that started it is gone. Who holds it is
written into the file for the "already running" message. The holder removes
the file when it lets go, so nothing is left beside the database; whoever
locked the old file meanwhile sees it is gone and locks the new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass

from dashboard.errors import Conflict, DashboardError
from dashboard.services.store import storage_error


@dataclass(frozen=True)
class LockHolder:
    pid: int
    action: str
    run_id: str
    user: str
    started_at: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return (f"A migration is already running (started at {when}, action {self.action}, "
                f"by {self.user}, run {self.run_id}).")


class LockHeld(Conflict):
    """Another action holds the lock of this database."""


class ActionLock:
    """A held lock; ``release()`` (or process exit) frees it."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path
        self.engine_lock = None  # the database's own lock, from its engine

    def release(self) -> None:
        if self.engine_lock is not None:
            self.engine_lock.release()
            self.engine_lock = None
        if self.fd >= 0:
            try:
                os.ftruncate(self.fd, 0)
                if _same_file(self.fd, self.path):
                    os.unlink(self.path)  # still locked: nobody can take this one now
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1

    @property
    def fds(self) -> tuple[int, ...]:
        """The open lock files, for a worker that must keep them held if we die."""
        return (self.fd,) if self.fd >= 0 else ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class LockGroup:
    """The locks of every database one run changes, held and released as one."""

    def __init__(self, locks: list[ActionLock]):
        self.locks = list(locks)

    @property
    def fd(self) -> int:
        return self.locks[0].fd if self.locks else -1

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(fd for lock in self.locks for fd in lock.fds)

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_path(instance_dir: str, target_key: str, beside: str | None = None) -> str:
    """The lock file: ``beside`` the database when its engine names one and its folder
    takes it, else in the instance folder, named after the database's identity."""
    if beside and os.access(os.path.dirname(beside) or ".", os.W_OK):
        return beside
    digest = hashlib.sha256(target_key.encode()).hexdigest()[:16]
    folder = os.path.join(instance_dir, "locks")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, folder) from exc
    return os.path.join(folder, f"target-{digest}.lock")


def acquire(instance_dir: str, target_key: str, holder: LockHolder,
            wait: float = 1.0, beside: str | None = None) -> ActionLock:
    """Take the lock, waiting at most ``wait`` seconds (a run that has just
    recorded its result is still letting go), or raise ``Conflict`` naming
    who holds it."""
    path = lock_path(instance_dir, target_key, beside)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise storage_error(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            current = read_holder(instance_dir, target_key, beside)
            message = current.describe() if current else "A migration is already running."
            raise LockHeld(message) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it as it let go: lock the file there now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.__dict__).encode(), 0)
    except OSError as exc:  # never keep a lock nobody can release
        ActionLock(fd, path).release()
        raise storage_error(exc, path) from exc
    return ActionLock(fd, path)


def _same_file(fd: int, path: str) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def read_holder(instance_dir: str, target_key: str,
                beside: str | None = None) -> LockHolder | None:
    """Who holds the lock, or None when nobody does."""
    try:
        path = lock_path(instance_dir, target_key, beside)
    except DashboardError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: read who by
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        raw = os.pread(fd, 4096, 0)
    finally:
        os.close(fd)
    try:
        return LockHolder(**json.loads(raw.decode()))
    except (ValueError, TypeError):
        return LockHolder(pid=0, action="unknown", run_id="?", user="?", started_at=time.time())
