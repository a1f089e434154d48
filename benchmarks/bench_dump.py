"""What the dashboard's verified backup costs on a real server, against the plain dump tool.

For each engine it builds a database of about ``--size-mb`` (a wide table with
an index, plus alembic_version), then, alternating so both see the same
machine, runs ``--repeat`` times:

  plain      pg_dump --format=custom  /  mariadb-dump --single-transaction
             of the same database into a file (wall time of the tool)
  dashboard  take_backup() at each verification depth (backup_verify "full",
             then "quick"): its copy part (the dump, plus the fsync of the
             file) and its verification part (full: restore into a scratch
             database, read the version table, sha256; quick: the file
             alone) reported apart

and prints the medians, the ratio of the copy to the plain dump (target
<= 1.2x) and of copy + verification to the plain dump at each depth (target
<= 1.5x for "full"). Databases and files are removed afterwards.

    /work/venv/bin/python benchmarks/bench_dump.py [--size-mb 200] [--repeat 3]
        [--engine postgresql --engine mariadb] [--depth full --depth quick]

Server URLs come from MD_TEST_POSTGRES_URL / MD_TEST_MARIADB_URL, as in the tests.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dashboard.engines import servers as dbtools  # noqa: E402
from dashboard.services.backups import take_backup  # noqa: E402
from dashboard.services.project import Project  # noqa: E402
from tests.servers import SERVERS, Server  # noqa: E402

COPY_RATIO_TARGET = 1.2
GUARD_RATIO_TARGET = 1.5  # copy + full verification, to the plain dump
DEPTHS = ("full", "quick")
ROW_BYTES = {"postgresql": 350, "mariadb": 290}  # on-disk bytes per row, as measured here
REVISION = "c2756f59bd25"


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


def project_for(url: str, depth: str = "full") -> Project:
    return Project(ini_path="", script_location="", version_locations=(),
                   recursive_version_locations=False, database_url=url,
                   version_table="alembic_version", python=sys.executable,
                   backup_verify=depth)


def bench(server: Server, size_mb: int, repeat: int, work: Path,
          depths: tuple[str, ...] = DEPTHS) -> dict:
    database = f"md_bench_{secrets.token_hex(4)}"
    server.create_database(database)
    try:
        started = time.perf_counter()
        size = build(server, database, size_mb)
        built = time.perf_counter() - started
        plain, files = [], {}
        runs = {depth: {"copy": [], "verify": [], "guard": [], "total": []} for depth in depths}
        for i in range(repeat):
            target = work / f"plain-{server.name}-{i}"
            plain.append(plain_dump(server, database, str(target)))
            files["plain"] = target.stat().st_size
            target.unlink()
            for depth in depths:
                folder = work / f"dashboard-{server.name}-{depth}-{i}"
                started = time.perf_counter()
                record = take_backup(project_for(server.url(database), depth),
                                     str(work / "instance"), str(folder), "benchmark")
                runs[depth]["total"].append(time.perf_counter() - started)
                runs[depth]["copy"].append(record.copy_seconds)
                runs[depth]["verify"].append(record.verify_seconds)
                runs[depth]["guard"].append(record.copy_seconds + record.verify_seconds)
                files["dashboard"] = record.size
                shutil.rmtree(folder)
        return {"size": size, "built": built, "plain": plain, "runs": runs, "files": files}
    finally:
        for name in server.databases_like(database):
            server.drop_database(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engine", action="append", choices=sorted(SERVERS))
    parser.add_argument("--depth", action="append", choices=DEPTHS,
                        help="verification depths to time (default: both)")
    args = parser.parse_args(argv)
    engines = args.engine or ["postgresql", "mariadb"]
    depths = tuple(args.depth or DEPTHS)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-dump-") as work:
        for name in engines:
            server = SERVERS[name]
            result = bench(server, args.size_mb, args.repeat, Path(work), depths)
            plain = statistics.median(result["plain"])
            tool = "pg_dump --format=custom" if server.postgres else \
                "mariadb-dump --single-transaction"
            mib = 1 << 20
            print(f"\n== {name}: database {result['size'] / mib:,.0f} MiB (built in "
                  f"{result['built']:.1f} s), median of {args.repeat}")
            print(f"  plain {tool:<30}   {plain:7.2f} s   file "
                  f"{result['files']['plain'] / mib:,.1f} MiB   "
                  f"runs: {', '.join(f'{t:.2f}' for t in result['plain'])}")
            for depth, runs in result["runs"].items():
                med = {key: statistics.median(values) for key, values in runs.items()}
                copy_ratio, guard_ratio = med["copy"] / plain, med["guard"] / plain
                ok &= copy_ratio <= COPY_RATIO_TARGET
                checked = "restore into a scratch database, version table, sha256" \
                    if depth == "full" else "the file alone: complete, revisions, sha256"
                label = f"[{depth}]".ljust(8)
                print(f"  {label}dashboard copy (dump + fsync)  {med['copy']:7.2f} s   "
                      f"ratio {copy_ratio:5.2f} x  (target <= {COPY_RATIO_TARGET}x: "
                      f"{'ok' if copy_ratio <= COPY_RATIO_TARGET else 'MISSED'})")
                print(f"  {label}dashboard verification         {med['verify']:7.2f} s   "
                      f"({checked})")
                target = ""
                if depth == "full":
                    ok &= guard_ratio <= GUARD_RATIO_TARGET
                    target = (f"  (target <= {GUARD_RATIO_TARGET}x: "
                              f"{'ok' if guard_ratio <= GUARD_RATIO_TARGET else 'MISSED'})")
                print(f"  {label}copy + verification            {med['guard']:7.2f} s   "
                      f"RATIO {guard_ratio:5.2f} x{target}   "
                      f"runs: {', '.join(f'{t:.2f}' for t in runs['guard'])}")
                print(f"  {label}take_backup total              {med['total']:7.2f} s   "
                      "(checks, copy, verification, manifest, store)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
