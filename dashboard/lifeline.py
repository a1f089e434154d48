"""Processes that must die with their parent: runs started by a Celery task, and more.

A run started from the web or the command line is detached on purpose (its
runner outlives the server). A run started by a Celery task is the other way
round: if the worker is killed, the run must not go on unattended on a
machine nobody watches, so the runner and its alembic worker are bound to
the process that started them (Linux ``PR_SET_PDEATHSIG``: the kernel sends
SIGKILL when the parent dies). The database then rolls back its open
transaction, or the guard's recovery puts the run's backup back.

The private server that checks a physical MariaDB copy is bound the same way:
it must not outlive the process that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel for SIGKILL when this process's parent dies; if it died already
    (``parent``, given, is no longer the parent), die now. Linux only: elsewhere a
    no-op (documented: runs are then not bound)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def bound_to_this_process() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child dies with this process."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)


def process_alive(pid: int) -> bool:
    """Whether a process of this machine with that pid exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True
