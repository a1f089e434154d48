"""How fast the dashboard backs up a large SQLite database, and what a download costs.

Builds (in a temporary folder, deleted afterwards) a SQLite database of about
``--size-mb`` MiB: customers, documents and attachments with their indexes,
random text and blobs, and an alembic_version row. Then, in one run:

  copy      ``cp``, the sqlite3 CLI's ``.backup`` and the dashboard's ``take_backup``
            (its copy timed apart from its verification), median of 3, interleaved,
            with the page cache dropped before each run when the kernel allows it
  download  the real server (waitress, as in production) takes a backup through
            ``POST /api/backups``; the server's RSS is sampled every 20 ms before
            and during a full streamed ``GET /backups/<id>/download``, and the
            downloaded bytes' SHA-256 is compared with the manifest's

    /work/venv/bin/python benchmarks/bench_backup.py [--quick] [--size-mb N]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

COPY_RATIO_TARGET = 0.7  # dashboard copy throughput / cp throughput, at least
RSS_GROWTH_TARGET_MB = 50  # server RSS growth while streaming a download, below
RUNS = 3
SAMPLE_SECONDS = 0.02
DOWNLOAD_CHUNK = 1 << 20
MiB = 1 << 20

WORDS = (
    "invoice order customer account payment refund shipment delivery address "
    "warehouse product price discount tax total balance ledger report summary "
    "migration schema column index table revision upgrade downgrade backup "
    "restore verify checksum session token user profile setting theme message "
    "document attachment upload review approve reject pending archive"
).split()


# ---------------------------------------------------------------- the database


def build_database(path: Path, size_mb: int, revision: str) -> None:
    """A database of about ``size_mb`` MiB shaped like an application's, in rollback mode."""
    rng = random.Random(42)
    paragraphs = [
        " ".join(rng.choices(WORDS, k=rng.randint(60, 600))).capitalize() + "."
        for _ in range(4000)
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript("""
        CREATE TABLE customers (
            id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
            country TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX ix_customers_country_created ON customers (country, created_at);
        CREATE TABLE documents (
            id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers (id),
            title TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE INDEX ix_documents_customer ON documents (customer_id);
        CREATE INDEX ix_documents_title ON documents (title);
        CREATE TABLE attachments (
            id INTEGER PRIMARY KEY, document_id INTEGER NOT NULL REFERENCES documents (id),
            name TEXT NOT NULL, content BLOB NOT NULL, sha1 TEXT NOT NULL);
        CREATE INDEX ix_attachments_document ON attachments (document_id);
        CREATE INDEX ix_attachments_sha1 ON attachments (sha1);
        CREATE TABLE alembic_version (
            version_num VARCHAR(32) NOT NULL,
            CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
    """)
    customers = 50_000
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
        ((i, f"user{i}@example.com", " ".join(rng.choices(WORDS, k=2)).title(),
          rng.choice(("DE", "FR", "GB", "US", "JP", "BR", "IN")),
          f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}") for i in range(customers)),
    )
    conn.execute("COMMIT")
    target = size_mb * MiB
    doc_id = 0
    while path.stat().st_size < target:
        docs, files = [], []
        for _ in range(2000):
            doc_id += 1
            body = rng.choice(paragraphs) + " " + " ".join(rng.choices(WORDS, k=20))
            docs.append((doc_id, rng.randrange(customers), " ".join(rng.choices(WORDS, k=5)),
                         body, f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"))
            content = rng.randbytes(rng.randint(1024, 12 * 1024))
            files.append((doc_id, doc_id, f"file{doc_id}.bin", content,
                          hashlib.sha1(content).hexdigest()))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?)", docs)
        conn.executemany("INSERT INTO attachments VALUES (?, ?, ?, ?, ?)", files)
        conn.execute("COMMIT")
    conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    conn.execute("PRAGMA journal_mode=DELETE")  # what most applications run with
    conn.close()


# ---------------------------------------------------------------- page cache


def can_drop_caches() -> bool:
    try:
        drop_caches()
        return True
    except OSError:
        return False


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as handle:
        while handle.read(8 * MiB):
            pass


# ---------------------------------------------------------------- the copies


def time_cp(source: Path, dest: Path) -> dict:
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(dest)], check=True)
    copied = time.perf_counter() - started
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"cp": copied, "cp+fsync": time.perf_counter() - started}


def time_sqlite_cli(source: Path, dest: Path) -> dict:
    started = time.perf_counter()
    subprocess.run(["sqlite3", str(source), f".backup '{dest}'"], check=True)
    return {"sqlite3 .backup": time.perf_counter() - started}


def time_take_backup(project, instance_dir: Path) -> dict:
    from dashboard.services import backups

    started = time.perf_counter()
    record = backups.take_backup(project, str(instance_dir), str(instance_dir / "backups"),
                                 "benchmark")
    total = time.perf_counter() - started
    os.remove(record.path)
    os.remove(record.path + ".json")
    return {"dashboard copy": record.copy_seconds, "dashboard verify": record.verify_seconds,
            "dashboard total": total}


def measure_copies(source: Path, tmp: Path, project, cold: bool) -> dict[str, list[float]]:
    dest = tmp / "copy.db"
    instance = tmp / "instance_direct"
    times: dict[str, list[float]] = {}
    for _ in range(RUNS):
        for run in (lambda: time_cp(source, dest),
                    lambda: time_sqlite_cli(source, dest),
                    lambda: time_take_backup(project, instance)):
            if dest.exists():
                dest.unlink()
            if cold:
                drop_caches()
            else:
                warm(source)
            for name, seconds in run().items():
                times.setdefault(name, []).append(seconds)
    if dest.exists():
        dest.unlink()
    return times


# ---------------------------------------------------------------- the server


class RssSampler(threading.Thread):
    """VmRSS of one process every 20 ms, as (monotonic time, bytes)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            self.stopped.wait(SAMPLE_SECONDS)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ini: Path, url: str, instance_dir: Path, log_path: Path):
    port = free_port()
    env = dict(os.environ,
               DASHBOARD_ALEMBIC_INI=str(ini), DASHBOARD_DATABASE_URL=url,
               DASHBOARD_INSTANCE_DIR=str(instance_dir), DASHBOARD_SEED_SAMPLE="0",
               DASHBOARD_SECRET_KEY="benchmark")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "waitress", "--host", "127.0.0.1", f"--port={port}",
         "wsgi:app"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}")
        try:
            status, _ = request(port, "GET", "/api/status")
            if status == 200:
                return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not answer within 60 s")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request(port: int, method: str, path: str, body: dict | None = None,
            timeout: float = 600) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


def download(port: int, path: str) -> tuple[int, str, float]:
    """Read the whole response in 1 MiB chunks; returns (bytes, sha256, seconds)."""
    digest = hashlib.sha256()
    buffer = bytearray(DOWNLOAD_CHUNK)
    view = memoryview(buffer)
    total = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {response.read()[:500]!r}")
        while count := response.readinto(buffer):
            digest.update(view[:count])
            total += count
    finally:
        conn.close()
    return total, digest.hexdigest(), time.perf_counter() - started


def measure_download(ini: Path, url: str, tmp: Path) -> dict:
    instance = tmp / "instance_server"
    proc, port = start_server(ini, url, instance, tmp / "server.log")
    try:
        sampler = RssSampler(proc.pid)
        sampler.start()
        before_backup = rss_bytes(proc.pid)
        started = time.perf_counter()
        status, manifest = request(port, "POST", "/api/backups", {})
        backup_seconds = time.perf_counter() - started
        if status != 201:
            raise RuntimeError(f"POST /api/backups: {status} {manifest}")
        time.sleep(1.0)  # let the backup's allocations settle, then take the baseline
        idle_start = time.monotonic()
        time.sleep(1.0)
        idle_end = time.monotonic()
        size, sha256, seconds = download(port, f"/backups/{manifest['id']}/download")
        download_end = time.monotonic()
        time.sleep(0.1)
        sampler.stopped.set()
        sampler.join()
        idle = sampler.between(idle_start, idle_end)
        during = sampler.between(idle_end, download_end)
        return {
            "backup_seconds": backup_seconds,
            "manifest": manifest,
            "rss_before_backup": before_backup,
            "rss_baseline": statistics.median(idle),
            "rss_peak": max(during),
            "samples": len(during),
            "size": size,
            "sha256": sha256,
            "download_seconds": seconds,
        }
    finally:
        stop_server(proc)


# ---------------------------------------------------------------- report


def report_copies(times: dict[str, list[float]], size: int, cold: bool) -> bool:
    median = {name: statistics.median(values) for name, values in times.items()}
    cp = median["cp"]
    print(f"\nCopying a {size / MiB:,.0f} MiB database, median of {RUNS} "
          f"({'page cache dropped before each run' if cold else 'warm page cache'})")
    print(f"{'what':<22}{'median s':>10}{'runs s':>24}{'MiB/s':>9}{'vs cp':>8}")
    for name, values in times.items():
        rate = size / MiB / median[name]
        runs = " ".join(f"{v:.2f}" for v in values)
        print(f"{name:<22}{median[name]:>10.2f}{runs:>24}{rate:>9.0f}{cp / median[name]:>7.2f}x")
    ratio = cp / median["dashboard copy"]
    verdict = "ok" if ratio >= COPY_RATIO_TARGET else "MISSED"
    print(f"target: dashboard copy >= {COPY_RATIO_TARGET}x cp throughput: "
          f"{ratio:.2f}x {verdict}  (against cp+fsync: "
          f"{median['cp+fsync'] / median['dashboard copy']:.2f}x)")
    print("(dashboard copy = the file copied under a read lock (backup API in WAL mode) "
          "+ fsync; verify = "
          "integrity_check + revisions + sha256; total adds the size/revision reads, "
          "manifest and store record)")
    return verdict == "ok"


def report_download(result: dict) -> bool:
    manifest = result["manifest"]
    growth = (result["rss_peak"] - result["rss_baseline"]) / MiB
    rate = result["size"] / MiB / result["download_seconds"]
    print("\nStreaming the backup from the real server (waitress), RSS of the server process")
    print(f"POST /api/backups       {result['backup_seconds']:.2f} s (copy "
          f"{manifest['copy_seconds']:.2f} s, verify {manifest['verify_seconds']:.2f} s)")
    print(f"download                {result['size'] / MiB:,.0f} MiB in "
          f"{result['download_seconds']:.2f} s ({rate:,.0f} MiB/s), "
          f"{result['samples']} RSS samples")
    print(f"RSS before the backup   {result['rss_before_backup'] / MiB:.1f} MB")
    print(f"RSS baseline (idle)     {result['rss_baseline'] / MiB:.1f} MB")
    print(f"RSS peak while reading  {result['rss_peak'] / MiB:.1f} MB")
    ok_growth = growth < RSS_GROWTH_TARGET_MB
    print(f"target: RSS growth < {RSS_GROWTH_TARGET_MB} MB: {growth:.1f} MB "
          f"{'ok' if ok_growth else 'MISSED'}")
    same = result["sha256"] == manifest["sha256"] and result["size"] == manifest["size"]
    print(f"sha256 of the download {'equals' if same else 'DIFFERS FROM'} the manifest's "
          f"({result['sha256'][:16]}…, {result['size']} bytes)")
    return ok_growth and same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 64 MiB database")
    parser.add_argument("--size-mb", type=int, default=None, help="database size (1024)")
    args = parser.parse_args(argv)
    size_mb = args.size_mb or (64 if args.quick else 1024)

    from dashboard.services.project import load_project
    from tests import history_factory as hf

    tmp = Path(tempfile.mkdtemp(prefix="bench_backup_"))
    try:
        free = shutil.disk_usage(tmp).free
        if free < 4 * size_mb * MiB:
            print(f"Not enough free space in {tmp}: {free / MiB:,.0f} MiB free, "
                  f"{4 * size_mb:,} MiB needed.")
            return 2
        spec = hf.linear(3)
        ini = hf.make_project(tmp / "project", spec)
        db = tmp / "big.db"
        started = time.perf_counter()
        build_database(db, size_mb, spec.revisions[-1].revision)
        size = db.stat().st_size
        print(f"built {db.name}: {size / MiB:,.0f} MiB in {time.perf_counter() - started:.1f} s "
              f"(3 tables, 6 indexes, random text and blobs, rollback journal)")
        cold = can_drop_caches()
        print("page cache: " + ("dropped before each run (sync; echo 3 > "
                                "/proc/sys/vm/drop_caches worked)" if cold else
                                "cannot be dropped here; every run reads a warm cache"))
        url = f"sqlite:///{db}"
        project = load_project(str(ini), url, python=sys.executable)
        ok = report_copies(measure_copies(db, tmp, project, cold), size, cold)
        ok = report_download(measure_download(ini, url, tmp)) and ok
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
