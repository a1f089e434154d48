"""What a rehearsal on a copy costs, against a plain ``alembic upgrade heads`` of the same copy.

For each history, from the same starting database (a fresh copy per run):

  alembic     ``alembic -c <ini> upgrade heads`` on a copy, as a user runs it (the whole
              process; bench_upgrade.py's own measure)
  rehearsal   the real server (waitress): ``POST /api/rehearsals`` {"target": "heads",
              "roundtrip": false, then true}, ``GET /api/rehearsals/<id>`` every 20 ms
              until it has finished; timed from the POST to the answer that shows it
              finished. Its fresh verified backup is reported apart (the backup's
              copy_seconds + verify_seconds), as is the sum of its steps' durations.

The real database is checked unchanged (its revisions and its bytes) after every
rehearsal. Histories: bench_upgrade.py's (the sample project from base and from its
demo start, a linear chain of 200 revisions; ``--quick``: 50, one run each).

    /work/venv/bin/python benchmarks/bench_rehearsal.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_backup import request, start_server, stop_server  # noqa: E402
from benchmarks.bench_upgrade import (  # noqa: E402
    Scenario,
    fresh_copy,
    linear_scenario,
    revisions,
    run_alembic,
    sample_scenarios,
)

POLL_SECONDS = 0.02


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def state(db: Path) -> tuple[str, list[str]]:
    """The file's bytes and its revisions (none for a database without a version table)."""
    try:
        return sha256(db), revisions(db)
    except sqlite3.OperationalError:
        return sha256(db), []


def run_rehearsal(port: int, db: Path, roundtrip: bool) -> dict:
    before = state(db)
    started = time.perf_counter()
    status, body = request(port, "POST", "/api/rehearsals",
                           {"target": "heads", "roundtrip": roundtrip})
    if status != 202:
        raise RuntimeError(f"POST /api/rehearsals: {status} {body}")
    while True:
        status, rehearsal = request(port, "GET", body["url"])
        if rehearsal["status"] != "running":
            break
        time.sleep(POLL_SECONDS)
    total = time.perf_counter() - started
    if rehearsal["status"] != "passed":
        raise RuntimeError(f"rehearsal {rehearsal['id']}: {rehearsal['error']}")
    if state(db) != before:
        raise RuntimeError("the real database changed during a rehearsal")
    _, backup = request(port, "GET", f"/api/backups/{rehearsal['backup_id']}")
    steps = rehearsal["steps"]
    return {"total": total,
            "backup": (backup["copy_seconds"] or 0) + (backup["verify_seconds"] or 0),
            "steps": sum(s["duration_s"] for s in steps),
            "up steps": sum(s["duration_s"] for s in steps if s["phase"] == "upgrade"),
            "n_steps": len(steps)}


def measure(scenario: Scenario, work: Path, runs: int) -> dict:
    work.mkdir()
    cli_db, real_db = work / "cli.db", work / "real.db"
    run_alembic(scenario, cli_db)  # compiles the revision files' .pyc for every side
    fresh_copy(scenario.template, real_db)
    proc, port = start_server(scenario.ini, f"sqlite:///{real_db}", work / "instance",
                              work / "server.log")
    result: dict = {"alembic": [], "up": [], "roundtrip": []}
    try:
        for _ in range(runs):
            result["alembic"].append(run_alembic(scenario, cli_db))
            result["up"].append(run_rehearsal(port, real_db, roundtrip=False))
            result["roundtrip"].append(run_rehearsal(port, real_db, roundtrip=True))
    finally:
        stop_server(proc)
    return result


def report(name: str, result: dict) -> None:
    alembic = statistics.median(result["alembic"])
    print(f"\n{name}: median of {len(result['alembic'])}")
    print(f"{'':<44}{'median s':>10}{'x alembic':>11}")

    def row(label: str, value: float, ratio: bool = True) -> None:
        print(f"{label:<44}{value:>10.3f}{f'{value / alembic:.2f}x' if ratio else '':>11}")

    row("alembic upgrade heads of a copy (process)", alembic)
    for kind, label in (("up", "rehearsal, upgrade only"),
                        ("roundtrip", "rehearsal, up + down + up again")):
        runs = result[kind]
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        row(f"{label} ({median['n_steps']:.0f} steps)", median["total"])
        row("  of which its fresh verified backup", median["backup"], ratio=False)
        row("  without the backup", median["total"] - median["backup"])
        row("  its steps' own durations, summed", median["steps"], ratio=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 50-step chain, one run each")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else 3
    root = Path(tempfile.mkdtemp(prefix="bench_rehearsal_"))
    try:
        scenarios = [*sample_scenarios(root), linear_scenario(root, 50 if args.quick else 200)]
        print("rehearsal: waitress over the real API, polled every "
              f"{POLL_SECONDS * 1000:.0f} ms; the real database checked unchanged after each")
        for number, scenario in enumerate(scenarios):
            report(scenario.name, measure(scenario, root / f"work{number}", runs))
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
