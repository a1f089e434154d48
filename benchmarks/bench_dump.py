"""What the dashboard's verified backup costs on a real server, against the plain dump tool.

For each engine it builds a database of about ``--size-mb`` (a wide table with
an index, plus alembic_version), then, alternating so all see the same
machine, runs ``--repeat`` times:

  plain      pg_dump --format=custom  /  mariadb-dump --single-transaction
             of the same database into a file (wall time of the tool)
  full       take_backup() with backup_verify "full" (the default): its copy
             part and its verification part (copy_seconds, verify_seconds).
             PostgreSQL restores the dump into a scratch database while it is
             written, so most of that restore is in the copy part.
  quick      PostgreSQL only: take_backup() with backup_verify "quick" (the
             archive alone: pg_restore --list, revisions, sha256)
  physical   MariaDB only: take_backup() with backup_method "physical" and
             backup_verify "full": mariadb-backup's stream of the schema's files,
             then the copy unpacked, prepared and opened by a scratch server that
             runs CHECK TABLE on every table and reads the version table
  previous   PostgreSQL only: the full check as it was before, for comparison:
             pg_dump into the file, then a restore of the file into a scratch
             database (parallel jobs) beside its sha256

and once, for PostgreSQL, write_marks() and discarded_writes() after another
session updated a few rows (what the guard pays to tell which writes a
restore would discard),

then prints the medians and, for each depth, the ratios of the copy and of
copy + verification to the plain dump (targets: PostgreSQL "full" copy +
verification <= 1.5x, MariaDB "physical" copy + verification <= 1.5x; MariaDB
"full" (the dump method) copy <= 1.2x). Databases and files
are removed afterwards.

    /work/main/.venv/bin/python benchmarks/bench_dump.py [--size-mb 1024] [--repeat 3]
        [--engine postgresql --engine mariadb]

Server URLs come from MD_TEST_POSTGRES_URL / MD_TEST_MARIADB_URL, as in the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboard.engines import servers as dbtools  # noqa: E402
from dashboard.services.backups import sha256_file, take_backup  # noqa: E402
from dashboard.services.project import Project  # noqa: E402
from tests.servers import SERVERS, Server  # noqa: E402

# copy + verification over the plain dump, per engine and depth
TARGETS = {("postgresql", "full"): 1.5, ("mariadb", "physical"): 1.5}
COPY_TARGETS = {("mariadb", "full"): 1.2}  # the copy alone over the plain dump
ROW_BYTES = {"postgresql": 330, "mariadb": 290}  # on-disk bytes per row, as measured here
REVISION = "c2756f59bd25"
DEPTHS = {"postgresql": ("full", "quick", "previous"), "mariadb": ("full", "physical")}
SETTINGS = {"full": {"backup_verify": "full"}, "quick": {"backup_verify": "quick"},
            "physical": {"backup_method": "physical", "backup_verify": "full"}}


def build(server: Server, database: str, size_mb: int) -> int:
    """Fill the database to about size_mb; returns its size in bytes as the server counts it."""
    rows = size_mb * (1 << 20) // ROW_BYTES[server.name]
    if server.postgres:
        server.execute(
            "CREATE TABLE events (id BIGINT PRIMARY KEY, user_id INTEGER NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL, kind VARCHAR(20) NOT NULL, payload TEXT)",
            f"INSERT INTO events SELECT g, g % 1000, now() - g * interval '1 second', "
            f"(ARRAY['login','chat','upload','logout'])[1 + g % 4], "
            f"concat_ws(' ', md5(g::text), md5((g * 7)::text), md5((g * 13)::text), "
            f"md5((g * 17)::text), md5((g * 19)::text), md5((g * 23)::text))"
            f" FROM generate_series(1, {rows}) AS g",
            "CREATE INDEX ix_events_user_id ON events (user_id, created_at)",
            "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
            f"INSERT INTO alembic_version VALUES ('{REVISION}')",
            "VACUUM ANALYZE events",
            database=database)
        return server.scalars("SELECT pg_database_size(current_database())",
                              database=database)[0]
    server.execute(
        "CREATE TABLE events (id BIGINT PRIMARY KEY, user_id INTEGER NOT NULL, "
        "created_at DATETIME NOT NULL, kind VARCHAR(20) NOT NULL, payload TEXT) "
        "ENGINE=InnoDB",
        f"INSERT INTO events SELECT seq, seq % 1000, NOW() - INTERVAL seq SECOND, "
        f"ELT(1 + seq % 4, 'login', 'chat', 'upload', 'logout'), "
        f"CONCAT_WS(' ', MD5(seq), MD5(seq * 7), MD5(seq * 13), MD5(seq * 17), "
        f"MD5(seq * 19), MD5(seq * 23)) "
        f"FROM seq_1_to_{rows}",
        "CREATE INDEX ix_events_user_id ON events (user_id, created_at)",
        "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)",
        f"INSERT INTO alembic_version VALUES ('{REVISION}')",
        "ANALYZE TABLE events",
        database=database)
    return int(server.scalars(
        "SELECT SUM(data_length + index_length) FROM information_schema.tables "
        "WHERE table_schema = :db", db=database)[0])


def settle(server: Server, limit: float = 60.0) -> None:
    """Wait until the server has written out what the last run left it to write
    (MariaDB: dirty pages, so the next copy meets a quiet server, not the flushing
    after a scratch load of 0.5 GiB), so every timed run starts from the same state."""
    if server.postgres:
        return
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:  # until the page cleaner stops: idle, it leaves some
        now = tuple(server.scalars(
            "SELECT variable_value FROM information_schema.global_status WHERE variable_name "
            "IN ('INNODB_BUFFER_POOL_PAGES_DIRTY', 'INNODB_CHECKPOINT_AGE') "
            "ORDER BY variable_name"))
        if now == last:
            return
        last = now
        time.sleep(1.0)


def plain_dump(server: Server, database: str, destination: str) -> float:
    """The tool as a person would run it, credentials as the tests' admin URL gives them."""
    address = dbtools.server_address(server.url(database), "postgresql" if server.postgres
                                     else "mysql")
    if server.postgres:
        with dbtools.postgres_environment(address) as env:
            started = time.perf_counter()
            subprocess.run(["pg_dump", "--format=custom", f"--file={destination}", database],
                           env=env, check=True)
            return time.perf_counter() - started
    with dbtools.mariadb_option_file(address) as options:
        started = time.perf_counter()
        subprocess.run(["mariadb-dump", f"--defaults-extra-file={options}",
                        "--single-transaction", f"--result-file={destination}", database],
                       check=True)
        return time.perf_counter() - started


def previous_full_check(project: Project, folder: Path) -> tuple[float, float]:
    """The full check as it was before the restore ran during the dump: pg_dump
    writes the file (fsync'd), then it is restored into a scratch database with
    parallel jobs while its sha256 is read. (copy seconds, verification seconds)"""
    folder.mkdir()
    path = str(folder / "previous.dump")
    address = dbtools.server_address(project.database_url, "postgresql")
    started = time.perf_counter()
    with dbtools.postgres_environment(address) as env:
        env["PGDATABASE"] = address.database
        subprocess.run(["pg_dump", "--format=custom", "--no-password", f"--file={path}"],
                       env=env, check=True)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    copied = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(sha256_file, path)
        check = project.engine.check(path, project.version_table, project)  # no copy() made it
        digest.result()
    assert check.ok and "restored into a scratch database" in check.detail, check
    return copied - started, time.perf_counter() - copied


def project_for(url: str) -> Project:
    return Project(ini_path="", script_location="", version_locations=(),
                   recursive_version_locations=False, database_url=url,
                   version_table="alembic_version", python=sys.executable)


def bench(server: Server, size_mb: int, repeat: int, work: Path) -> dict:
    database = f"md_bench_{secrets.token_hex(4)}"
    server.create_database(database)
    try:
        started = time.perf_counter()
        size = build(server, database, size_mb)
        built = time.perf_counter() - started
        project = project_for(server.url(database))
        times = {"plain": []}
        files = {}
        for depth in DEPTHS[server.name]:
            times |= {f"{depth} copy": [], f"{depth} verify": [], f"{depth} total": []}
        for i in range(repeat):
            target = work / f"plain-{server.name}-{i}"
            settle(server)
            times["plain"].append(plain_dump(server, database, str(target)))
            files["plain"] = target.stat().st_size
            target.unlink()
            for depth in DEPTHS[server.name]:
                folder = work / f"dashboard-{server.name}-{depth}-{i}"
                if depth == "previous":
                    started = time.perf_counter()
                    copy_seconds, verify_seconds = previous_full_check(project, folder)
                    times["previous total"].append(time.perf_counter() - started)
                    times["previous copy"].append(copy_seconds)
                    times["previous verify"].append(verify_seconds)
                    files["previous"] = (folder / "previous.dump").stat().st_size
                    shutil.rmtree(folder)
                    continue
                settle(server)
                started = time.perf_counter()
                record = take_backup(dataclasses.replace(project, **SETTINGS[depth]),
                                     str(work / "instance"), str(folder), "benchmark")
                times[f"{depth} total"].append(time.perf_counter() - started)
                times[f"{depth} copy"].append(record.copy_seconds)
                times[f"{depth} verify"].append(record.verify_seconds)
                files[depth] = record.size
                shutil.rmtree(folder)
        marks = {}
        if server.postgres:  # what counting other sessions' writes costs on this table
            started = time.perf_counter()
            taken = project.engine.write_marks(project)
            marks["write_marks"] = time.perf_counter() - started
            server.execute("UPDATE events SET kind = kind WHERE id % 100000 = 0",
                           database=database)
            started = time.perf_counter()
            marks["found"] = project.engine.discarded_writes(project, taken, set())
            marks["discarded_writes"] = time.perf_counter() - started
        return {"size": size, "built": built, "times": times, "files": files, "marks": marks}
    finally:
        for name in server.databases_like(database):
            server.drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", action="append", choices=sorted(SERVERS))
    args = parser.parse_args(argv)
    engines = args.engine or ["postgresql", "mariadb"]
    ok = True
    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="bench-dump-") as work:
        for name in engines:
            server = SERVERS[name]
            result = bench(server, args.size_mb, args.repeat, Path(work))
            med = {key: statistics.median(runs) for key, runs in result["times"].items()}
            runs = result["times"]
            tool = "pg_dump --format=custom" if server.postgres else \
                "mariadb-dump --single-transaction"
            print(f"\n== {name}: database {result['size'] / mib:,.0f} MiB (built in "
                  f"{result['built']:.1f} s), median of {args.repeat}, "
                  f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
            print(f"  {'plain ' + tool:<40} {med['plain']:7.2f} s   file "
                  f"{result['files']['plain'] / mib:,.1f} MiB   runs: "
                  f"{', '.join(f'{t:.2f}' for t in runs['plain'])}")
            for depth in DEPTHS[name]:
                both = [c + v for c, v in zip(runs[f"{depth} copy"], runs[f"{depth} verify"],
                                              strict=True)]
                # The ratio of each run to the plain dump beside it, then their median.
                ratio = statistics.median(b / p for b, p in zip(both, runs["plain"],
                                                                 strict=True))
                target = TARGETS.get((name, depth))
                verdict = "" if target is None else \
                    f"   (target <= {target}x: {'ok' if ratio <= target else 'MISSED'})"
                ok &= target is None or ratio <= target
                copy_ratio = statistics.median(c / p for c, p in zip(
                    runs[f"{depth} copy"], runs["plain"], strict=True))
                copy_target = COPY_TARGETS.get((name, depth))
                ok &= copy_target is None or copy_ratio <= copy_target
                copy_verdict = "" if copy_target is None else \
                    f" (target <= {copy_target}x: " \
                    f"{'ok' if copy_ratio <= copy_target else 'MISSED'})"
                print(f"  {depth + ' copy':<40} {med[f'{depth} copy']:7.2f} s   "
                      f"{copy_ratio:.2f}x{copy_verdict}   file "
                      f"{result['files'][depth] / mib:,.1f} MiB   runs: "
                      f"{', '.join(f'{t:.2f}' for t in runs[f'{depth} copy'])}")
                print(f"  {depth + ' verification':<40} {med[f'{depth} verify']:7.2f} s   "
                      f"runs: {', '.join(f'{t:.2f}' for t in runs[f'{depth} verify'])}")
                print(f"  {depth + ' copy + verification':<40} "
                      f"{statistics.median(both):7.2f} s   RATIO to plain {ratio:.2f}x{verdict}")
                if depth != "previous":
                    print(f"  {depth + ' take_backup total':<40} "
                          f"{med[f'{depth} total']:7.2f} s   "
                          "(checks, copy, verification, manifest, store)")
            if result["marks"]:
                marks = result["marks"]
                print(f"  {'write_marks':<40} {marks['write_marks']:7.2f} s")
                print(f"  {'discarded_writes':<40} {marks['discarded_writes']:7.2f} s   "
                      f"found {marks['found']}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
