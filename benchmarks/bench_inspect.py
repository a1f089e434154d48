"""How fast the read side answers, against Alembic's own cost for the same answer.

Generates (in a temporary folder) a 5,000-revision chain and a 1,000-revision
history with 50 merges and labelled branches, each with a SQLite database stamped
at a middle revision (and the chain also at its head), then measures:

  baseline   ScriptDirectory.from_config + list(walk_revisions()) +
             MigrationContext.get_current_heads(), in a fresh interpreter each time
             (Alembic executes every revision file anew; the .pyc files are warm)
  status     /api/status: first request of a fresh app in a fresh interpreter with an
             empty instance folder (first start ever), then again in another fresh
             interpreter on the same instance folder (a restart: the parsed headers
             are read from its cache file), then warm
  history    /history after a restart, then warm: the opening view, a window in the
             middle (?start=), a search (?q=); and the size of each page's HTML
  reload     /api/status right after a revision file was edited (or added)

Each fresh-interpreter figure times only the work, not interpreter start-up or
imports. Requests go through Flask's test client.

    /work/venv/bin/python benchmarks/bench_inspect.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
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

WARM_STATUS_TARGET = 0.01  # x baseline
FIRST_REQUEST_TARGET = 0.5  # x baseline, first start ever (nothing cached)
RESTART_TARGET = 0.1  # x baseline, first request after a restart
HISTORY_WARM_TARGET = 0.1  # x baseline: "well under Alembic's own load"
HISTORY_BYTES = 500_000
EDITED_MESSAGE = "edited while the dashboard was running"


@dataclass(frozen=True)
class Scenario:
    name: str
    ini: Path
    url: str
    revisions: int
    large: bool  # the history the /history targets are set for


# ---------------------------------------------------------------- children
# Each runs in its own interpreter and prints one JSON line.


def child_baseline(ini: str, url: str, repeat: int) -> dict:
    # The modules every revision file imports are loaded before timing, as in
    # any process that already uses Alembic: only the reading is measured.
    import sqlalchemy  # noqa: F401
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from alembic import op  # noqa: F401

    times, count, current = [], 0, []
    for _ in range(repeat):
        started = time.perf_counter()
        script = ScriptDirectory.from_config(Config(ini))
        count = len(list(script.walk_revisions()))
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as conn:
            current = list(MigrationContext.configure(conn).get_current_heads())
        engine.dispose()
        times.append(time.perf_counter() - started)
    return {"times": times, "revisions": count, "current": current,
            "modules": sum(1 for m in sys.modules if m.endswith("_py"))}


def _app(ini: str, url: str, instance: str):
    from dashboard import create_app

    return create_app({
        "TESTING": True,
        "DASHBOARD_ALEMBIC_INI": ini,
        "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": instance,
        "DASHBOARD_PYTHON": sys.executable,
        "DASHBOARD_SEED_SAMPLE": False,
        "DASHBOARD_SECRET_KEY": "bench",
    })


def _timed_get(client, url: str):
    started = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}: {response.get_data()[:500]!r}")
    return elapsed, response


def _profiled(fn, label: str, out: list[str]):
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    result = profile.runcall(fn)
    buffer = io.StringIO()
    stats = pstats.Stats(profile, stream=buffer)
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    out.append(f"===== profile: {label}\n{buffer.getvalue()}")
    return result


def child_status(ini: str, url: str, instance: str, warm: int, profile: bool) -> dict:
    import flask  # noqa: F401 - imports are start-up, not the first request

    started = time.perf_counter()
    app = _app(ini, url, instance)
    create_seconds = time.perf_counter() - started
    client = app.test_client()
    profiles: list[str] = []
    if profile:
        first, response = _profiled(lambda: _timed_get(client, "/api/status"),
                                    "first /api/status", profiles)
    else:
        first, response = _timed_get(client, "/api/status")
    body = response.get_json()
    warm_times = [_timed_get(client, "/api/status")[0] for _ in range(warm)]
    if profile:
        _profiled(lambda: _timed_get(client, "/api/status"), "warm /api/status", profiles)
    reload_seconds, noticed, what = _edit_and_reload(app, client, body)
    # A dashboard that is restarted has run for a while: env.py's answer, asked in the
    # background after its first request, is in and kept by then. Without this the
    # "restart" child would ask again and time its warm requests beside that question.
    kept = os.path.join(instance, "env-py-answer.json")
    deadline = time.monotonic() + 60
    while not os.path.exists(kept) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "create_app": create_seconds,
        "first": first,
        "warm": warm_times,
        "state": body["state"],
        "pending": len(body["pending"]),
        "reload": reload_seconds,
        "reload_noticed": noticed,
        "reload_what": what,
        "profiles": profiles,
    }


def _edit_and_reload(app, client, body: dict):
    """Edit the last pending revision's message (or add a new head when nothing
    is pending), time the next /api/status, check it shows the change, undo."""
    from tests import history_factory as hf

    history = app.extensions["dashboard"].history()
    if body["pending"]:
        rev = body["pending"][-1]["revision"]
        path = Path(history.revisions[rev].path)
        original = path.read_text(encoding="utf-8")
        old_message = history.revisions[rev].doc
        path.write_text(original.replace(old_message, EDITED_MESSAGE, 1), encoding="utf-8")
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        try:
            seconds, response = _timed_get(client, "/api/status")
            noticed = response.get_json()["pending"][-1]["message"] == EDITED_MESSAGE
        finally:
            path.write_text(original, encoding="utf-8")
        return seconds, noticed, "edited message"
    (head,) = body["heads"]
    new = hf.RevisionSpec("feedfacecafe", (head,), message=EDITED_MESSAGE)
    path = Path(history.revisions[head].path).parent / hf.revision_filename(new)
    path.write_text(hf.revision_source(new), encoding="utf-8")
    try:
        seconds, response = _timed_get(client, "/api/status")
        pending = response.get_json()["pending"]
        noticed = [p["revision"] for p in pending] == [new.revision]
    finally:
        path.unlink()
    return seconds, noticed, "added head"


def child_history(ini: str, url: str, instance: str, warm: int, profile: bool) -> dict:
    import flask  # noqa: F401

    app = _app(ini, url, instance)
    client = app.test_client()
    profiles: list[str] = []
    if profile:
        first, response = _profiled(lambda: _timed_get(client, "/history"),
                                    "first /history", profiles)
    else:
        first, response = _timed_get(client, "/history")
    total = len(app.extensions["dashboard"].history().revisions)
    pages = {"opening": "/history", "middle": f"/history?start={total // 2}",
             "search": "/history?q=of+the+chain"}
    result: dict = {"first": first, "profiles": profiles, "pages": {}}
    for name, page in pages.items():
        times, html = [], b""
        for _ in range(warm):
            seconds, response = _timed_get(client, page)
            times.append(seconds)
            html = response.get_data()
        result["pages"][name] = {"url": page, "warm": times, "bytes": len(html),
                                 "links": html.count(b'id="r-')}
    if profile:
        _profiled(lambda: _timed_get(client, "/history"), "warm /history", profiles)
    return result


def run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True, text=True, cwd=str(REPO), timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run


def build(root: Path, quick: bool) -> list[Scenario]:
    from tests import history_factory as hf

    chain = 1000 if quick else 5000
    branchy_n, merges = (300, 15) if quick else (1000, 50)
    linear = hf.linear(chain)
    linear_ini = hf.make_project(root / "linear", linear)
    mid = linear.revisions[chain // 2].revision
    head = linear.revisions[-1].revision
    branchy = hf.branchy(n_revisions=branchy_n, merges=merges, labelled_branches=4, seed=7)
    branchy_ini = hf.make_project(root / "branchy", branchy)
    branchy_mid = branchy.revisions[branchy_n // 2].revision
    return [
        Scenario(f"linear {chain}, db at mid", linear_ini,
                 hf.stamp_database(root / "linear_mid.db", [mid]), chain, True),
        Scenario(f"linear {chain}, db at head", linear_ini,
                 hf.stamp_database(root / "linear_head.db", [head]), chain, True),
        Scenario(f"branchy {branchy_n} ({merges} merges), db at mid", branchy_ini,
                 hf.stamp_database(root / "branchy_mid.db", [branchy_mid]), branchy_n, False),
    ]


def measure(scenario: Scenario, root: Path, args) -> dict:
    ini, url = str(scenario.ini), scenario.url
    flags = ["--profile"] if args.profile else []
    cold = run_child("baseline", ini, url, "1")  # compiles and writes the .pyc files
    runs = [run_child("baseline", ini, url, "2") for _ in range(args.baseline_runs)]
    instance = tempfile.mkdtemp(prefix="instance-", dir=root)  # nothing cached yet
    status = run_child("status", ini, url, instance, str(args.warm), *flags)
    restart = run_child("status", ini, url, instance, str(args.warm), *flags)
    history = run_child("history", ini, url, instance, str(args.history_warm), *flags)
    return {
        "cold_pyc": cold["times"][0],
        "baseline": statistics.median(r["times"][0] for r in runs),
        "baseline_in_process_repeat": statistics.median(r["times"][1] for r in runs),
        "alembic_revisions": runs[0]["revisions"],
        "alembic_modules": runs[0]["modules"],
        "status": status,
        "restart": restart,
        "history": history,
    }


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:9.1f} ms"


def report(scenario: Scenario, m: dict) -> list[str]:
    base = m["baseline"]
    status, restart, history = m["status"], m["restart"], m["history"]
    warm = statistics.median(restart["warm"])
    rows = [
        ("baseline: Alembic, fresh process (.pyc warm)", base, None),
        ("  Alembic, first run ever (compiles .pyc)", m["cold_pyc"], None),
        ("  Alembic, repeated in the same process", m["baseline_in_process_repeat"], None),
        ("create_app() (not part of any request)", status["create_app"], None),
        ("/api/status first request, first start (nothing cached)", status["first"],
         FIRST_REQUEST_TARGET),
        ("/api/status first request after a restart (cache file)", restart["first"],
         RESTART_TARGET),
        (f"/api/status warm (median of {len(restart['warm'])})", warm, WARM_STATUS_TARGET),
        (f"/api/status after a file change ({status['reload_what']}, "
         f"{'noticed' if status['reload_noticed'] else 'NOT NOTICED'})",
         status["reload"], None),
        ("/history first request after a restart", history["first"], None),
    ]
    for name, page in history["pages"].items():
        rows.append((f"/history {name} warm (median of {len(page['warm'])}): {page['url']}",
                     statistics.median(page["warm"]),
                     HISTORY_WARM_TARGET if scenario.large else None))
    lines = [
        f"## {scenario.name}: {scenario.revisions} revisions "
        f"(Alembic loaded {m['alembic_revisions']}, kept {m['alembic_modules']} in sys.modules), "
        f"state {status['state']}, "
        f"{status['pending']} pending",
        f"{'measure':<72} {'time':>12} {'x baseline':>11}  target",
    ]
    for label, seconds, ratio_target in rows:
        ratio = seconds / base if base else float("nan")
        target = ""
        if ratio_target is not None:
            verdict = "ok" if ratio <= ratio_target else "MISSED"
            target = f"<= {ratio_target}x  {verdict}"
        lines.append(f"{label:<72} {_fmt_s(seconds)} {ratio:10.3f}x  {target}")
    for name, page in history["pages"].items():
        size_target = ""
        if scenario.large:
            size_ok = page["bytes"] < HISTORY_BYTES
            size_target = f"< {HISTORY_BYTES // 1000} KB  {'ok' if size_ok else 'MISSED'}"
        label = f"/history {name} HTML size ({page['links']} revision rows)"
        lines.append(f"{label:<72} {page['bytes'] / 1e3:9.1f} KB {'':>11}  {size_target}")
    for run in (status, restart):
        if not run["reload_noticed"]:
            lines.append("!! the file change was NOT reflected by the next /api/status")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller histories, fewer runs")
    parser.add_argument("--profile", action="store_true",
                        help="print cProfile output of the first and warm requests")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    args.warm = 10 if args.quick else 20
    args.history_warm = 3 if args.quick else 5
    args.baseline_runs = 2 if args.quick else 3
    with tempfile.TemporaryDirectory(prefix="bench_inspect_") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        scenarios = build(root, args.quick)
        print(f"generated the histories in {time.perf_counter() - started:.1f} s "
              f"(Python {sys.version.split()[0]})\n")
        for scenario in scenarios:
            m = measure(scenario, root, args)
            print("\n".join(report(scenario, m)) + "\n", flush=True)
            for text in (m["status"]["profiles"] + m["restart"]["profiles"]
                         + m["history"]["profiles"]):
                print(text)
    return 0


def _child(argv: list[str]) -> int:
    mode, *rest = argv
    profile = "--profile" in rest
    rest = [a for a in rest if a != "--profile"]
    if mode == "baseline":
        result = child_baseline(rest[0], rest[1], int(rest[2]))
    elif mode == "status":
        result = child_status(rest[0], rest[1], rest[2], int(rest[3]), profile)
    elif mode == "history":
        result = child_history(rest[0], rest[1], rest[2], int(rest[3]), profile)
    else:
        raise SystemExit(f"unknown child mode {mode}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
