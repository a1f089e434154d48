"""Whether anything changed in a few folders since they were last read, told by
the kernel (Linux's inotify), so that a warm request need not stat every
revision file to find out.

Editing a file in place changes neither its folder's times nor its size, so
nothing cheaper than a stat of each file can tell from outside; inotify is
told of every write, rename, removal and change of times in a watched folder.
It is trusted only where it sees every change: a local file system (not NFS,
SMB, FUSE or a virtual machine's shared folder, where another machine's edits
go unreported), in the process that made the watch (not a forked child). Any
event at all, an overflowed queue, or a folder that is no longer the one
watched, means "read again". Where inotify is missing or refused (another
system, no instances left), ``FolderWatch.start`` returns None and every
request stats the files, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import weakref
from collections.abc import Iterable

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_ONLYDIR = 0x01000000
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
           | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

# statfs f_type of file systems whose every change goes through this kernel
# (linux/magic.h). Anything else is not trusted.
LOCAL_FILE_SYSTEMS = frozenset({
    0xEF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x858458F6,  # ramfs
    0x794C7630,  # overlayfs (containers)
    0x2FC12FC1,  # zfs
    0xF2F52010,  # f2fs
    0xCA451A4E,  # bcachefs
    0x52654973,  # reiserfs
    0x3153464A,  # jfs
})


class _Libc:
    """The three inotify calls and statfs, or None off Linux."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.statfs = libc.statfs
        self.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]

    def file_system(self, path: str) -> int | None:
        # struct statfs opens with f_type (__fsword_t: a C long on Linux's 64- and
        # 32-bit ABIs); a generous buffer holds the rest.
        buffer = ctypes.create_string_buffer(512)
        if self.statfs(os.fsencode(path), buffer) != 0:
            return None
        return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def _load_libc() -> _Libc | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return _Libc()
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


class FolderWatch:
    """An inotify instance on some folders (their entries, not below them)."""

    def __init__(self, fd: int, folders: frozenset[str],
                 roots: tuple[tuple[str, tuple[int, int]], ...]):
        self._fd = fd
        self._pid = os.getpid()
        self._changed = False
        self.folders = folders
        self.roots = roots  # (path as configured, (st_dev, st_ino)) of each root folder
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def start(cls, roots: Iterable[str], folders: Iterable[str]) -> FolderWatch | None:
        """A watch on ``folders``, vouching also that each of ``roots`` (paths as
        configured, through any symlink) still names the folder it named now;
        None when the kernel cannot watch them all reliably."""
        if _LIBC is None:
            return None
        known: list[tuple[str, tuple[int, int]]] = []
        try:
            for root in roots:  # before the watch: a folder swapped meanwhile shows later
                stat = os.stat(root)
                known.append((root, (stat.st_dev, stat.st_ino)))
        except OSError:
            return None
        fd = _LIBC.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:  # no instances left (fs.inotify.max_user_instances) or none at all
            return None
        watch = cls(fd, frozenset(folders), tuple(known))
        for folder in watch.folders:
            if (_LIBC.file_system(folder) not in LOCAL_FILE_SYSTEMS
                    or _LIBC.add_watch(fd, os.fsencode(folder), WATCHED) < 0):
                watch.close()
                return None
        return watch

    def unchanged(self) -> bool:
        """True while nothing happened in the folders since the watch began and
        every root still names the folder it named then. Once False, stays False."""
        if self._changed or self._pid != os.getpid() or not self._finalizer.alive:
            return False
        try:
            if os.read(self._fd, 65536):
                self._changed = True
        except BlockingIOError:
            pass
        except OSError:
            self._changed = True
        if not self._changed:
            for root, identity in self.roots:
                try:
                    stat = os.stat(root)
                except OSError:
                    self._changed = True
                    break
                if (stat.st_dev, stat.st_ino) != identity:
                    self._changed = True
                    break
        return not self._changed

    def close(self) -> None:
        self._finalizer()
