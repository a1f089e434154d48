"""What a rollout over many databases costs, against a plain loop of ``alembic upgrade``.

Each database starts at the first of two revisions (each creates a small table)
and is upgraded to heads, from a fresh copy per measurement:

  loop        ``alembic -c <ini> -x url=<database> upgrade heads`` once per database,
              as a script over tenants runs it: one after the other (parallel 1), or
              four processes at a time (parallel 4)
  rollout     ``rollouts.request_rollout`` over every target of a targets file
              (canary 0, the same parallel), timed until the rollout has finished:
              every target behind the guard (its lock, a verified backup, the run,
              its audit entry), started and watched by the conductor process

It prints both, their ratio, and the dashboard's own overhead per target
((rollout - loop) / targets); while the parallel-4 rollout runs it also times
the rollout page's fragment once a second, as the page polls (``GET
/rollouts/<id>`` with HX-Request: the median, and the SQL statements one
refresh sends to the store).

    /work/main/.venv/bin/python benchmarks/bench_rollout.py [--targets 200] [--postgres 20]
    /work/main/.venv/bin/python benchmarks/bench_rollout.py --quick    # 20 SQLite targets
    /work/main/.venv/bin/python benchmarks/bench_rollout.py --quick --celery

``--celery``: the rollout's runs go to two real Celery workers of concurrency 2
(``celery -A dashboard.fleet worker``, this machine's Redis, each worker with its
own instance folder) instead of the local process pool; the loop is the same.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def make_fleet(root: Path, sqlite_count: int, postgres_urls: list[str]):
    """The project (its env.py also takes ``-x url=``), the databases' URLs at the first
    revision, and a function that puts every database back there."""
    from alembic import command
    from tests.conftest import alembic_config
    from tests.test_rollouts import ENV_PY, REV1, make_project

    ini = make_project(root / "project")
    env_py = ini.parent / "migrations" / "env.py"
    env_py.write_text(ENV_PY.replace(
        "config = context.config\n",
        "config = context.config\n"
        'if context.get_x_argument(as_dictionary=True).get("url"):\n'
        '    config.set_main_option("sqlalchemy.url", '
        'context.get_x_argument(as_dictionary=True)["url"])\n'))
    template = root / "template.db"
    command.upgrade(alembic_config(ini, f"sqlite:///{template}"), REV1)
    paths = [root / "dbs" / f"t{i:03d}.db" for i in range(sqlite_count)]
    paths[0].parent.mkdir()
    urls = [f"sqlite:///{p}" for p in paths] + postgres_urls

    def reset() -> None:
        for path in paths:
            shutil.copy(template, path)
        for url in postgres_urls:
            command.downgrade(alembic_config(ini, url), "base")
            command.upgrade(alembic_config(ini, url), REV1)

    return ini, urls, reset


def plain_loop(ini: Path, urls: list[str], parallel: int) -> float:
    def one(url: str) -> None:
        subprocess.run([ALEMBIC, "-c", str(ini), "-x", f"url={url}", "upgrade", "heads"],
                       check=True, capture_output=True)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, urls))
    return time.monotonic() - started


def rollout(root: Path, ini: Path, urls: list[str], parallel: int, watch: bool,
            executor: dict | None = None):
    from sqlalchemy import event

    from dashboard import create_app
    from dashboard.services import rollouts, store

    targets = root / "targets.toml"
    targets.write_text("".join(
        f'[targets.t{i:03d}]\nalembic_ini = "{ini}"\ndatabase_url = "{url}"\n'
        'labels = ["tenant"]\n' for i, url in enumerate(urls)))
    instance = root / f"instance-p{parallel}"
    app = create_app({"TESTING": True, "DASHBOARD_SECRET_KEY": "b",
                      "DASHBOARD_TARGETS_FILE": str(targets),
                      "DASHBOARD_INSTANCE_DIR": str(instance), "DASHBOARD_SEED_SAMPLE": False,
                      **(executor or {})})
    registry = app.extensions["dashboard_registry"]
    client = app.test_client()
    started = time.monotonic()
    found = rollouts.request_rollout(registry, label="tenant", canary=0, parallel=parallel,
                                     user="bench")
    refreshes, statements = [], []
    engine = store.store_engine(str(instance))

    def count(*args):
        statements.append(args[2])

    shown = 0.0
    while True:
        if watch and time.monotonic() - shown >= 1.0:  # as the page polls: every second
            shown = time.monotonic()
            statements.clear()
            event.listen(engine, "before_cursor_execute", count)
            began = time.monotonic()
            client.get(f"/rollouts/{found.id}", headers={"HX-Request": "true"})
            refreshes.append((time.monotonic() - began, len(statements)))
            event.remove(engine, "before_cursor_execute", count)
        done = rollouts.get_rollout(str(instance), found.id)
        if done.finished:
            break
        time.sleep(0.05)
    took = time.monotonic() - started
    store.close_all()
    return took, done, refreshes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=200, help="SQLite databases")
    parser.add_argument("--postgres", type=int, default=0,
                        help="PostgreSQL databases besides (scratch ones, dropped after)")
    parser.add_argument("--quick", action="store_true", help="20 SQLite databases")
    parser.add_argument("--celery", action="store_true",
                        help="runs on two Celery workers (concurrency 2) through Redis")
    args = parser.parse_args()
    count = 20 if args.quick else args.targets
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rollout-")))
        postgres_urls = []
        if args.postgres:
            from tests.servers import SERVERS, scratch_database

            server = SERVERS["postgresql"]
            postgres_urls = [server.url(stack.enter_context(scratch_database(server, "md_bench")))
                             for _ in range(args.postgres)]
        ini, urls, reset = make_fleet(root, count, postgres_urls)
        executor = None
        if args.celery:
            from tests.fleet_workers import FleetWorkers

            workers = stack.enter_context(FleetWorkers(
                root, root / "targets.toml", root / "workers", own_instances=True))
            executor = dict(workers.settings)
        print(f"{count} SQLite + {len(postgres_urls)} PostgreSQL databases, "
              "2 revisions each (one table per revision); rollout on "
              + ("two Celery workers of concurrency 2" if args.celery
                 else "the local process pool"))
        for parallel in (1, 4):
            reset()
            loop = plain_loop(ini, urls, parallel)
            reset()
            took, done, refreshes = rollout(root, ini, urls, parallel, watch=parallel == 4,
                                            executor=executor)
            print(f"parallel {parallel}: loop of alembic upgrade heads {loop:7.1f} s   "
                  f"rollout {took:7.1f} s ({done.status}, {done.counts})   "
                  f"ratio {took / loop:4.2f}x   overhead {(took - loop) / len(urls):5.2f} s "
                  "per target")
            if refreshes:
                times = [t for t, _ in refreshes]
                print(f"  rollout page fragment while it ran: median "
                      f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
                      f"over {len(times)} refreshes; SQL statements per refresh: "
                      f"{sorted({n for _, n in refreshes})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
