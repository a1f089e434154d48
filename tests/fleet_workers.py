"""Real Celery worker processes for the fleet tests, on this machine's Redis.

``celery -A dashboard.fleet worker`` is started as a user starts it, each in a
process group of its own, on a queue no other test session uses; every test
waits until each worker answers a ping, and nothing is left running at the
end (the whole group is killed: the worker, its pool, the runs it started).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dashboard.lifeline import bound_to_this_process
from tests.conftest import REPO

REDIS_URL = os.environ.get("MD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_SECONDS = 60.0


def require_redis() -> str:
    """The Redis URL, or a skip (a failure under CI=true) saying why it cannot be used."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        reason = (f"Redis at {REDIS_URL} is not reachable ({type(exc).__name__}); start it "
                  "(redis-server --daemonize yes --bind 127.0.0.1 --port 6379) or set "
                  "MD_TEST_REDIS_URL")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so no skipping: {reason}")
        pytest.skip(reason)
    return REDIS_URL


class FleetWorkers:
    """Celery workers ``w1``, ``w2`` ... sharing a targets file, each with ``concurrency``
    pool processes; ``settings`` is what a dashboard of theirs is given."""

    def __init__(self, folder: Path, targets_file: Path, instance_dir: Path,
                 count: int = 2, concurrency: int = 2, visibility_timeout: int = 8,
                 own_instances: bool = False):
        """``own_instances``: each worker keeps its state in ``instance_dir/<name>``, as
        workers on different machines do; else all share ``instance_dir``."""
        self.folder = folder
        self.instance_dir, self.own_instances = instance_dir, own_instances
        self.queue = f"md-test-{secrets.token_hex(6)}"
        self.concurrency = concurrency
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")},
            "DASHBOARD_BROKER_URL": REDIS_URL, "DASHBOARD_FLEET_QUEUE": self.queue,
            "DASHBOARD_TARGETS_FILE": str(targets_file),
            "DASHBOARD_INSTANCE_DIR": str(instance_dir),
            "DASHBOARD_FLEET_VISIBILITY_TIMEOUT": str(visibility_timeout),
            "PYTHONPATH": str(REPO),
        }
        self.settings = {k: self.env[k] for k in (
            "DASHBOARD_BROKER_URL", "DASHBOARD_FLEET_QUEUE",
            "DASHBOARD_FLEET_VISIBILITY_TIMEOUT", "DASHBOARD_TARGETS_FILE")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.names = [f"w{i}" for i in range(1, count + 1)]

    def instance_of(self, name: str) -> Path:
        return self.instance_dir / name if self.own_instances else self.instance_dir

    def hostname(self, name: str) -> str:
        return f"{name}@{os.uname().nodename}"

    def start(self, name: str) -> None:
        log = open(self.folder / f"{self.queue}-{name}.log", "ab")  # noqa: SIM115 (the process keeps it)
        try:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "dashboard.fleet", "worker",
                 "--concurrency", str(self.concurrency), "-n", f"{name}@%h",
                 "-Q", self.queue, "--loglevel", "INFO", "--without-gossip",
                 "--without-mingle", "--pool", "prefork"],
                env={**self.env, "DASHBOARD_INSTANCE_DIR": str(self.instance_of(name))},
                cwd=str(self.folder), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                # Even a test session killed outright leaves no worker behind.
                preexec_fn=bound_to_this_process())
        finally:
            log.close()

    def __enter__(self) -> FleetWorkers:
        try:
            for name in self.names:
                self.start(name)
            self.wait_ready(*self.names)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self, *names: str) -> None:
        """Until each worker answers a ping (its pool started, consuming the queue)."""
        from dashboard.fleet import make_celery

        celery = make_celery(self.settings)
        wanted = {self.hostname(n) for n in names}
        deadline = time.monotonic() + START_SECONDS
        try:
            while time.monotonic() < deadline:
                for name in names:
                    if self.procs[name].poll() is not None:
                        raise AssertionError(f"worker {name} exited: {self.log(name)}")
                answered = {host for reply in celery.control.ping(
                    destination=sorted(wanted), timeout=1.0) for host in reply}
                if wanted <= answered:
                    return
        finally:
            celery.close()
        raise AssertionError(f"workers {sorted(wanted)} did not answer within "
                             f"{START_SECONDS:g} s: " + " | ".join(self.log(n) for n in names))

    def log(self, name: str, whole: bool = False) -> str:
        """The worker's output: its end, or ``whole``."""
        try:
            text = (self.folder / f"{self.queue}-{name}.log").read_text(errors="replace")
            return text if whole else text[-3000:]
        except OSError:
            return ""

    def kill(self, name: str) -> None:
        """SIGKILL of the worker's main process alone, as an OOM kill or a crash does."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def pool_pids(self, name: str) -> list[int]:
        main = self.procs[name].pid
        return [pid for pid in _pids() if _parent(pid) == main]

    def stop(self) -> None:
        """Every worker's group ends: a warm shutdown first, then SIGKILL."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def group_members(group: int) -> list[int]:
    """Processes still alive in a process group (a worker's, after it was killed)."""
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == group and fields[0] != "Z":
            found.append(pid)
    return found
