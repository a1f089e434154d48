"""What an upgrade through the dashboard costs, against ``alembic upgrade heads``.

For each history, from the same starting database (a fresh copy per run):

  alembic     ``alembic -c <ini> upgrade heads`` as a user runs it: the whole process,
              with sqlalchemy.url set in a copy of the project's ini
  dashboard   the real server (waitress, as in production): ``POST /api/runs``
              {"action": "upgrade", "target": "heads"}, then ``GET /api/runs/<id>``
              every 20 ms until the run has finished; timed from the POST to the first
              answer that shows it finished. The run's own ``backup_seconds`` is
              reported apart, and its timestamps split the rest into phases.

Histories: the sample project (a scratch copy of alembic.ini, alembic/ and
app_models/) from an empty database and from ``SAMPLE_START_REVISION`` with the
demo rows, and a generated linear chain of 200 revisions (``--quick``: 50) from
an empty database. One untimed ``alembic upgrade`` per history first compiles
the revision files' .pyc, which both sides then share.

    /work/venv/bin/python benchmarks/bench_upgrade.py [--quick]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_backup import request, start_server, stop_server  # noqa: E402

RATIO_TARGET = 1.2  # dashboard (without its backup) / alembic, at most
POLL_SECONDS = 0.02
ALEMBIC = str(Path(sys.executable).with_name("alembic"))
FINISHED = ("succeeded", "failed", "restored")


@dataclass(frozen=True)
class Scenario:
    name: str
    ini: Path
    template: Path  # the starting database, copied fresh for every run


# ---------------------------------------------------------------- histories


def sample_scenarios(root: Path) -> list[Scenario]:
    from app_models.seed import SAMPLE_START_REVISION
    from tests.conftest import copy_sample_project

    ini = copy_sample_project(root / "sample")
    empty = root / "sample_empty.db"
    sqlite3.connect(empty).close()
    seeded = root / "sample_seeded.db"
    subprocess.run([sys.executable, "-m", "app_models.seed", f"sqlite:///{seeded}",
                    "--ini", str(ini)], cwd=ini.parent, check=True, capture_output=True)
    return [
        Scenario("sample, from base", ini, empty),
        Scenario(f"sample, from {SAMPLE_START_REVISION} + demo rows", ini, seeded),
    ]


def linear_scenario(root: Path, steps: int) -> Scenario:
    from tests import history_factory as hf

    ini = hf.make_project(root / f"linear{steps}", hf.linear(steps))
    empty = root / f"linear{steps}_empty.db"
    sqlite3.connect(empty).close()
    return Scenario(f"linear chain of {steps}, from base", ini, empty)


def fresh_copy(template: Path, dest: Path) -> Path:
    partial = dest.with_suffix(".partial")
    shutil.copyfile(template, partial)
    partial.replace(dest)
    return dest


def revisions(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


# ---------------------------------------------------------------- the two sides


def cli_ini(ini: Path, db: Path) -> Path:
    """A copy of the ini beside it (so %(here)s is unchanged) pointing at ``db``."""
    text = ini.read_text(encoding="utf-8")
    text, count = re.subn(r"(?m)^sqlalchemy\.url\s*=.*$",
                          f"sqlalchemy.url = sqlite:///{db}".replace("%", "%%"), text)
    assert count == 1, f"no sqlalchemy.url in {ini}"
    path = ini.with_name("alembic_benchmark.ini")
    path.write_text(text, encoding="utf-8")
    return path


def run_alembic(scenario: Scenario, db: Path) -> float:
    ini = cli_ini(scenario.ini, fresh_copy(scenario.template, db))
    started = time.perf_counter()
    subprocess.run([ALEMBIC, "-c", str(ini), "upgrade", "heads"], cwd=ini.parent, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_dashboard(port: int, scenario: Scenario, db: Path) -> dict:
    fresh_copy(scenario.template, db)
    status, body = request(port, "GET", "/api/status")  # as a user's open page would
    assert status == 200 and body["pending"], (status, body.get("state"))
    posted = time.time()
    started = time.perf_counter()
    status, body = request(port, "POST", "/api/runs", {"action": "upgrade", "target": "heads"})
    if status != 202:
        raise RuntimeError(f"POST /api/runs: {status} {body}")
    accepted = time.perf_counter() - started
    while True:
        status, run = request(port, "GET", body["url"])
        if run["status"] in FINISHED:
            break
        time.sleep(POLL_SECONDS)
    total = time.perf_counter() - started
    if run["status"] != "succeeded":
        raise RuntimeError(f"run {run['id']} {run['status']}: {run['error']}")
    steps = run["steps"]
    backup_end = run["started_at"] + run["backup_seconds"]
    return {
        "total": total,
        "backup": run["backup_seconds"],
        "accepted": accepted,
        "queued": run["started_at"] - posted,
        "worker start": steps[0]["started_at"] - backup_end,
        "steps": steps[-1]["finished_at"] - steps[0]["started_at"],
        "worker end": run["finished_at"] - steps[-1]["finished_at"],
        "seen": posted + total - run["finished_at"],
        "n_steps": len(steps),
    }


def measure(scenario: Scenario, work: Path, runs: int) -> dict:
    work.mkdir()
    cli_db, dash_db = work / "cli.db", work / "dashboard.db"
    run_alembic(scenario, cli_db)  # compiles the revision files' .pyc for both sides
    heads = revisions(cli_db)
    fresh_copy(scenario.template, dash_db)
    proc, port = start_server(scenario.ini, f"sqlite:///{dash_db}", work / "instance",
                              work / "server.log")
    alembic, dashboard = [], []
    try:
        for _ in range(runs):
            alembic.append(run_alembic(scenario, cli_db))
            assert revisions(cli_db) == heads
            dashboard.append(run_dashboard(port, scenario, dash_db))
            assert revisions(dash_db) == heads
    finally:
        stop_server(proc)
    return {"alembic": alembic, "dashboard": dashboard}


# ---------------------------------------------------------------- report


def report(name: str, result: dict) -> bool:
    alembic = statistics.median(result["alembic"])
    runs = result["dashboard"]
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    without_backup = statistics.median(r["total"] - r["backup"] for r in runs)
    ratio_total = median["total"] / alembic
    ratio_run = without_backup / alembic
    ok = ratio_run <= RATIO_TARGET
    print(f"\n{name}: {median['n_steps']} steps, median of {len(runs)}")
    print(f"{'':<34}{'median s':>10}{'runs s':>24}{'x alembic':>11}")

    def row(label, value, values=None, ratio=None):
        shown = " ".join(f"{v:.2f}" for v in values) if values else ""
        print(f"{label:<34}{value:>10.3f}{shown:>24}"
              f"{'' if ratio is None else f'{ratio:.2f}x':>11}")

    row("alembic upgrade heads (process)", alembic, result["alembic"], 1.0)
    row("dashboard, POST to finished", median["total"], [r["total"] for r in runs], ratio_total)
    row("  of which backup", median["backup"], [r["backup"] for r in runs])
    row("dashboard without the backup", without_backup,
        [r["total"] - r["backup"] for r in runs], ratio_run)
    print("  phases (medians; server timestamps):")
    row("    POST answered (202)", median["accepted"])
    row("    POST -> backup starts", median["queued"])
    row("    backup end -> 1st step starts", median["worker start"])
    row("    first step -> last step done", median["steps"])
    row("    last step -> run finished", median["worker end"])
    row("    run finished -> poll sees it", median["seen"])
    print(f"target: dashboard without the backup <= {RATIO_TARGET}x alembic: "
          f"{ratio_run:.2f}x {'ok' if ok else 'MISSED'}   (with the backup: {ratio_total:.2f}x "
          f"{'ok' if ratio_total <= RATIO_TARGET else 'MISSED'})")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 50-step chain, one run each")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else 3
    steps = 50 if args.quick else 200

    root = Path(tempfile.mkdtemp(prefix="bench_upgrade_"))
    try:
        scenarios = [*sample_scenarios(root), linear_scenario(root, steps)]
        print(f"alembic: {ALEMBIC}; dashboard: waitress over the real API, polled every "
              f"{POLL_SECONDS * 1000:.0f} ms; fresh database copies every run")
        ok = True
        for number, scenario in enumerate(scenarios):
            result = measure(scenario, root / f"work{number}", runs)
            ok = report(scenario.name, result) and ok
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
