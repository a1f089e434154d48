"""Rollout runs on real Celery workers: two ``celery -A dashboard.fleet worker``
processes (concurrency 2 each) on this machine's Redis, SQLite targets of a
scratch copy of the sample project, driven through ``CeleryExecutor`` as a
rollout's conductor drives it (start each target, poll until it ends).

What a user keeps is asserted: the database's revision and tables, the runs
the dashboard shows for each target, the worker's own record of them, and
what the executor says when a worker is killed mid-run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard import create_app
from dashboard.core import Registry
from dashboard.services import runs
from dashboard.services.executors import RunRequest, TargetRun
from dashboard.settings import settings_from_environ
from tests.conftest import UNIFIED_REASONING, copy_sample_project, db_revisions, migrate
from tests.fleet_workers import FleetWorkers, group_members, require_redis
from tests.test_guard_sqlite import tables, write_revision

STEP = "7f1e00000001"  # each target's one pending revision (the test writes it)
TARGETS = ("ok1", "ok2", "bad", "par1", "par2", "par3", "par4", "killed", "child", "twice",
           "refused", "apart", "rkilled", "rafter")
RUN_SECONDS = 90.0


@dataclass
class Fleet:
    folder: Path
    workers: FleetWorkers
    settings: dict  # the dashboard's
    worker_instance: Path

    def target(self, name: str):
        return Registry(self.settings).get(name)

    def project(self, name: str) -> Path:
        return self.folder / "projects" / name / "alembic.ini"

    def database(self, name: str) -> Path:
        return self.folder / f"{name}.db"

    def worker_runs(self, name: str) -> list[runs.RunRecord]:
        return runs.list_runs(str(self.worker_instance / "targets" / name))

    def client(self):
        return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False,
                           "DASHBOARD_SECRET_KEY": "t", **self.settings}).test_client()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    redis_url = require_redis()
    folder = tmp_path_factory.mktemp("fleet")
    seed_ini = copy_sample_project(folder / "seed")
    seed = folder / "seed.db"
    migrate(seed_ini, f"sqlite:///{seed}", UNIFIED_REASONING)
    lines = []
    for name in TARGETS:
        ini = copy_sample_project(folder / "projects" / name)
        shutil.copy(seed, folder / f"{name}.db")
        lines += [f"[targets.{name}]", f'alembic_ini = "{ini}"',
                  f'database_url = "sqlite:///{folder / name}.db"',
                  f'backup_dir = "{folder / "backups" / name}"', 'labels = ["tenant"]', ""]
    (folder / "targets.toml").write_text("\n".join(lines))
    worker_instance = folder / "worker-instance"
    with FleetWorkers(folder, folder / "targets.toml", worker_instance) as workers:
        settings = {**settings_from_environ({}), **workers.settings,
                    "DASHBOARD_INSTANCE_DIR": str(folder / "dashboard-instance"),
                    "DASHBOARD_SEED_SAMPLE": False}
        assert settings["DASHBOARD_BROKER_URL"] == redis_url
        yield Fleet(folder, workers, settings, worker_instance)


@pytest.fixture
def executor(fleet):
    from dashboard.fleet import CeleryExecutor

    made = CeleryExecutor(fleet.settings)
    yield made
    made.close()


def rollout_id() -> str:
    """Unique per test and session: a task id (rollout:target) is never reused."""
    return f"test-{secrets.token_hex(6)}"


def drive(executor, targets, request: RunRequest, on_poll=None) -> dict[str, TargetRun]:
    """What a conductor does: start every target, poll each until all ended."""
    handles = {t.name: executor.start(t, request) for t in targets}
    last: dict[str, TargetRun] = {}
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        for target in targets:
            if target.name not in last or not last[target.name].finished:
                last[target.name] = executor.poll(target, handles[target.name])
                if on_poll is not None:
                    on_poll(target, handles[target.name], last[target.name])
        if all(run.finished for run in last.values()):
            return last
        time.sleep(0.2)
    raise AssertionError(f"runs did not end within {RUN_SECONDS:g} s: {last}")


def test_runs_on_two_workers_succeed_and_the_dashboard_shows_them(fleet, executor):
    targets = [fleet.target("ok1"), fleet.target("ok2")]
    for target in targets:
        write_revision(fleet.project(target.name), STEP, UNIFIED_REASONING, table="step_one")
    seen: dict[str, list[str]] = {}

    def note(target, handle, run):
        seen.setdefault(target.name, []).append(run.status)

    ended = drive(executor, targets, RunRequest(rollout_id(), "upgrade", "heads", "ada"),
                  note)

    client = fleet.client()
    for target in targets:
        run = ended[target.name]
        assert run.status == "succeeded", run
        assert db_revisions(fleet.database(target.name)) == [STEP]
        assert "step_one" in tables(fleet.database(target.name))
        # The dashboard's own store shows the run the worker reported, step and log.
        body = client.get(f"/api/targets/{target.name}/runs/{run.run_id}").get_json()
        assert body["status"] == "succeeded"
        assert body["user"] == "ada" and body["from"] == [UNIFIED_REASONING]
        assert body["to"] == [STEP]
        assert [s["status"] for s in body["steps"]] == ["succeeded"]
        assert body["executed_by"] in {fleet.workers.hostname(n) for n in ("w1", "w2")}
        assert body["schema_diff"] == ["added table step_one (id INTEGER NOT NULL)"]
        assert any(STEP in log["message"] for log in body["logs"])
        page = client.get(f"/targets/{target.name}/runs/{run.run_id}")
        assert page.status_code == 200 and run.run_id in page.get_data(as_text=True)
        # The worker kept the guard's record in its own instance folder, its backup
        # in the shared backup folder.
        assert [r.id for r in fleet.worker_runs(target.name)] == [run.run_id]
        assert list((fleet.folder / "backups" / target.name).glob("*"))
        # Before a worker took it, the run was "waiting" (queued in Celery).
        assert seen[target.name][0] in ("waiting", "queued", "backing_up", "running")


def test_a_failing_target_is_restored_by_its_worker(fleet, executor):
    target = fleet.target("bad")
    write_revision(fleet.project("bad"), STEP, UNIFIED_REASONING, table="doomed", fail=True)

    run = drive(executor, [target], RunRequest(rollout_id(), "upgrade", "heads", "ada"))["bad"]

    assert run.status == "restored", run
    assert "fails on purpose" in run.error and "as before (checked)" in run.error
    assert db_revisions(fleet.database("bad")) == [UNIFIED_REASONING]
    assert "doomed" not in tables(fleet.database("bad"))
    body = fleet.client().get(f"/api/targets/bad/runs/{run.run_id}").get_json()
    assert body["status"] == "restored" and body["failed_step"] == STEP


def test_a_run_the_guard_refuses_is_failed_with_its_reason(fleet, executor):
    target = fleet.target("refused")

    run = drive(executor, [target], RunRequest(rollout_id(), "upgrade", "f00ba4", "ada"))

    assert run["refused"].status == "failed" and run["refused"].run is None
    assert "f00ba4" in run["refused"].error, run
    assert fleet.worker_runs("refused") == []  # nothing recorded: nothing ran
    assert db_revisions(fleet.database("refused")) == [UNIFIED_REASONING]


def test_four_runs_at_once_overlap_on_two_workers(fleet, executor):
    names = ("par1", "par2", "par3", "par4")
    for name in names:
        write_revision(fleet.project(name), STEP, UNIFIED_REASONING, table="step_one",
                       sleep=3)
    targets = [fleet.target(name) for name in names]

    ended = drive(executor, targets, RunRequest(rollout_id(), "upgrade", "heads", "ada"))

    assert {name: run.status for name, run in ended.items()} == dict.fromkeys(
        names, "succeeded")
    # Start and end times as the workers reported them: the runs overlapped.
    spans = [(run.run.started_at, run.run.finished_at) for run in ended.values()]
    most = max(sum(1 for start, end in spans if start <= moment < end)
               for moment, _ in spans)
    assert most >= 3, spans
    assert {run.run.executed_by for run in ended.values()} == {
        fleet.workers.hostname("w1"), fleet.workers.hostname("w2")}


def test_the_same_task_sent_twice_runs_once_and_a_long_run_is_never_handed_out_again(
        fleet, executor):
    """Sent twice, run once. And a run longer than the visibility timeout (8 s here)
    keeps its message: its worker renews the lease, so Redis hands it out no more
    (without the lease it did, every timeout: README, "Distributed rollouts")."""
    target = fleet.target("twice")
    write_revision(fleet.project("twice"), STEP, UNIFIED_REASONING, table="step_one",
                   sleep=15)
    request = RunRequest(rollout_id(), "upgrade", "heads", "ada")
    first = executor.start(target, request)

    run = drive(executor, [target], request)["twice"]  # starts it a second time

    assert run.status == "succeeded", run
    assert executor.poll(target, first) == run
    assert [r.id for r in fleet.worker_runs("twice")] == [run.run_id]
    assert db_revisions(fleet.database("twice")) == [STEP]
    deliveries = sum(fleet.workers.log(name, whole=True).count(f"[{first}] received")
                     for name in fleet.workers.names)
    assert deliveries == 2  # the two sends, and nothing more


def test_a_worker_killed_mid_run_leaves_its_database_as_before_and_never_runs_it_twice(
        fleet, executor):
    target = fleet.target("killed")
    write_revision(fleet.project("killed"), STEP, UNIFIED_REASONING, table="step_one",
                   sleep=20)
    killed: dict = {}

    def kill_when_running(target, handle, run):
        if killed or run.status != "running" or not run.run.steps or \
                run.run.steps[0].status != "running":
            return
        name = run.run.executed_by.split("@")[0]
        killed.update(name=name, group=fleet.workers.procs[name].pid, at=time.monotonic())
        fleet.workers.kill(name)  # SIGKILL of its main process

    try:
        run = drive(executor, [target], RunRequest(rollout_id(), "upgrade", "heads", "ada"),
                    kill_when_running)["killed"]

        assert killed, "the run never reached its step"
        # Its pool, the runner and the alembic worker died with it (bound to it).
        assert not group_members(killed["group"])
        assert run.status == "failed", run
        assert f"worker {fleet.workers.hostname(killed['name'])}" in run.error
        assert "was lost" in run.error and "not run again" in run.error
        assert "rolled back by the database" in run.error
        # Settled well before the run would have ended by itself.
        assert time.monotonic() - killed["at"] < 20
        assert db_revisions(fleet.database("killed")) == [UNIFIED_REASONING]
        assert "step_one" not in tables(fleet.database("killed"))
        with sqlite3.connect(fleet.database("killed")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # One run, recorded once, by the worker and by the dashboard.
        assert [r.id for r in fleet.worker_runs("killed")] == [run.run_id]
        assert [r.id for r in runs.list_runs(target.instance_dir)] == [run.run_id]
        body = fleet.client().get(f"/api/targets/killed/runs/{run.run_id}").get_json()
        assert body["status"] == "failed"
        assert any("was lost" in log["message"] for log in body["logs"])
    finally:
        if killed:  # the other tests of the module keep two workers
            fleet.workers.start(killed["name"])
            fleet.workers.wait_ready(killed["name"])


def test_a_rollout_whose_worker_is_killed_says_so_and_halts(fleet):
    """Through the whole product: a rollout on the workers, its canary's worker killed
    (SIGKILL) in the step. The canary's database is at its start revision, the rollout
    says the worker was lost and halts; the next target never started."""
    write_revision(fleet.project("rkilled"), STEP, UNIFIED_REASONING, table="step_one",
                   sleep=20)
    write_revision(fleet.project("rafter"), STEP, UNIFIED_REASONING, table="step_one")
    client = fleet.client()
    created = client.post("/api/rollouts", json={
        "targets": ["rkilled", "rafter"], "action": "upgrade", "target": "heads",
        "canary": 1, "parallel": 2})
    assert created.status_code == 202, created.get_json()
    url = created.get_json()["url"]
    assert client.get(url).get_json()["executor"] == "celery"
    killed: dict = {}
    deadline = time.monotonic() + RUN_SECONDS
    try:
        while True:
            rollout = client.get(url).get_json()
            if rollout["status"] != "running":
                break
            assert time.monotonic() < deadline, rollout
            row = rollout["targets"][0]
            if not killed and row["run"]:
                run = client.get(row["run"]).get_json()
                if run["steps"] and run["steps"][0]["status"] == "running":
                    name = run["executed_by"].split("@")[0]
                    killed.update(name=name)
                    fleet.workers.kill(name)
            time.sleep(0.2)

        assert killed, "the canary's step never ran"
        assert rollout["status"] == "halted", rollout
        canary, after = rollout["targets"]
        assert canary["status"] == "failed" and "was lost" in canary["error"], canary
        assert after["status"] == "not_started" and after["run"] is None
        assert db_revisions(fleet.database("rkilled")) == [UNIFIED_REASONING]
        assert "step_one" not in tables(fleet.database("rkilled"))
        assert db_revisions(fleet.database("rafter")) == [UNIFIED_REASONING]
        assert [r.id for r in fleet.worker_runs("rkilled")] == [canary["run_id"]]
        page = client.get(f"/rollouts/{rollout['id']}").get_data(as_text=True)
        assert "was lost" in page and "not_started" in page.replace(" ", "_")
    finally:
        if killed:  # the other tests of the module keep two workers
            fleet.workers.start(killed["name"])
            fleet.workers.wait_ready(killed["name"])


def kill_pool_process_in_step(fleet: Fleet, killed: dict, name: str):
    """An ``on_poll`` for ``drive``: SIGKILL of the pool process carrying out target
    ``name``'s task (its pid, from the task's marker in Redis) once its step runs."""
    import json
    import os
    import signal

    import redis

    from dashboard.fleet import KEY_PREFIX

    client = redis.Redis.from_url(fleet.settings["DASHBOARD_BROKER_URL"])

    def kill(target, handle, run):
        if target.name != name or killed or run.status != "running" or \
                not run.run.steps or run.run.steps[0].status != "running":
            return
        marker = json.loads(client.get(KEY_PREFIX + handle))
        os.kill(marker["pid"], signal.SIGKILL)
        killed.update(pid=marker["pid"], at=time.monotonic())

    return kill


def test_a_killed_pool_process_is_settled_at_once_by_the_task_coming_back(fleet, executor):
    """The worker lives on and puts the task back at once (reject_on_worker_lost); the
    process that ran it is known dead, so the task that comes back settles the run
    without waiting for a heartbeat to expire."""
    target = fleet.target("child")
    write_revision(fleet.project("child"), STEP, UNIFIED_REASONING, table="step_one",
                   sleep=20)
    killed: dict = {}

    run = drive(executor, [target], RunRequest(rollout_id(), "upgrade", "heads", "ada"),
                kill_pool_process_in_step(fleet, killed, "child"))["child"]

    assert killed and run.status == "failed", run
    assert "was lost" in run.error and "rolled back by the database" in run.error
    assert time.monotonic() - killed["at"] < 8  # not the heartbeat's 10 s, nor the run's 20
    assert db_revisions(fleet.database("child")) == [UNIFIED_REASONING]
    assert [r.id for r in fleet.worker_runs("child")] == [run.run_id]


def test_a_task_that_comes_back_on_another_machine_says_where_the_run_is(fleet):
    """Workers with instance folders of their own (as on two machines): the one the
    task comes back to cannot settle the lost run, so it says so and runs nothing;
    the next run on the lost worker's machine settles it."""
    from dashboard.fleet import CeleryExecutor

    target = fleet.target("apart")
    write_revision(fleet.project("apart"), STEP, UNIFIED_REASONING, table="step_one",
                   sleep=20)
    apart = fleet.folder / "apart-instances"
    with FleetWorkers(fleet.folder, fleet.folder / "targets.toml", apart, count=2,
                      concurrency=1, own_instances=True) as workers:
        executor = CeleryExecutor({**fleet.settings, **workers.settings})
        killed: dict = {}

        def kill_when_running(target, handle, run):
            if not killed and run.status == "running" and run.run.steps and \
                    run.run.steps[0].status == "running":
                killed["name"] = run.run.executed_by.split("@")[0]
                workers.kill(killed["name"])

        try:
            run = drive(executor, [target], RunRequest(rollout_id(), "upgrade", "heads",
                                                       "ada"), kill_when_running)["apart"]
            lost_store = workers.instance_of(killed["name"]) / "targets" / "apart"
            assert run.status == "failed", run
            assert "was lost" in run.error and "not run again" in run.error
            assert f"recorded on {os.uname().nodename} in {lost_store}" in run.error
            assert "check the database of target 'apart'" in run.error
            # Nothing ran twice: the database is as before (SQLite's journal rolled back).
            assert db_revisions(fleet.database("apart")) == [UNIFIED_REASONING]
            assert "step_one" not in tables(fleet.database("apart"))
            (left,) = runs.list_runs(str(lost_store))
            assert left.status == "running"  # until the next run on that machine
            # The dashboard's copy of it ends, saying why and where to look.
            assert run.run_id == left.id and run.run.status == "failed"
            body = fleet.client().get(f"/api/targets/apart/runs/{left.id}").get_json()
            assert body["status"] == "failed" and body["error"] == run.error

            # That worker back, a new rollout: its run settles the old one first.
            workers.start(killed["name"])
            workers.wait_ready(killed["name"])
            other = next(n for n in workers.names if n != killed["name"])
            workers.kill(other)  # the new task must land on the lost worker's machine
            write_revision(fleet.project("apart"), STEP, UNIFIED_REASONING,
                           table="step_one")
            again = drive(executor, [target],
                          RunRequest(rollout_id(), "upgrade", "heads", "ada"))["apart"]
            assert again.status == "succeeded", again
            settled = runs.get_run(str(lost_store), left.id)
            assert settled.status == "failed" and "rolled back" in settled.error
        finally:
            executor.close()


def test_postgresql_targets_on_the_workers_one_killed_mid_run(fleet, executor):
    from tests.servers import SERVERS, require, scratch_database

    pg = require(SERVERS["postgresql"])
    with scratch_database(pg, "md_fleet") as ok_db, \
            scratch_database(pg, "md_fleet") as killed_db:
        lines = []
        for name, db, sleep in (("pgok", ok_db, 0), ("pgkilled", killed_db, 20)):
            ini = copy_sample_project(fleet.folder / "projects" / name)
            migrate(ini, pg.url(db), UNIFIED_REASONING)
            write_revision(ini, STEP, UNIFIED_REASONING, table="step_one", sleep=sleep)
            # Workers read the targets file at each task: a target added now is known.
            lines += [f"[targets.{name}]", f'alembic_ini = "{ini}"',
                      f'database_url = "{pg.url(db)}"', ""]
        with open(fleet.folder / "targets.toml", "a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(lines))
        killed: dict = {}

        ended = drive(executor, [fleet.target("pgok"), fleet.target("pgkilled")],
                      RunRequest(rollout_id(), "upgrade", "heads", "ada"),
                      kill_pool_process_in_step(fleet, killed, "pgkilled"))

        def state(db):
            return (pg.scalars("SELECT version_num FROM alembic_version", database=db),
                    "step_one" in pg.scalars("SELECT tablename FROM pg_tables", database=db))

        assert ended["pgok"].status == "succeeded", ended["pgok"]
        assert state(ok_db) == ([STEP], True)
        assert killed and ended["pgkilled"].status == "failed", ended["pgkilled"]
        assert "was lost" in ended["pgkilled"].error
        assert "rolled back by the database" in ended["pgkilled"].error
        assert state(killed_db) == ([UNIFIED_REASONING], False)
        assert [r.id for r in fleet.worker_runs("pgkilled")] == [ended["pgkilled"].run_id]


# ------------------------------------------------------------------ no broker needed


def _run_json(run_id: str, status: str, steps: list[str], logs: int, finished=None) -> dict:
    return {"id": run_id, "action": "upgrade", "target": "heads", "destination": "heads",
            "status": status, "from": ["a"], "to": ["b"] if finished else [],
            "backup_id": "bk", "restore_backup_id": None, "error": None,
            "failed_step": None, "user": "ada", "created_at": 100.0, "started_at": 101.0,
            "finished_at": finished, "backup_seconds": 0.1, "discarded_writes": None,
            "backups": [], "schema_note": None,
            "steps": [{"revision": f"r{i}", "direction": "up", "status": s,
                       "started_at": 102.0 + i, "finished_at": None}
                      for i, s in enumerate(steps)],
            "logs": [{"ts": 110.0 + i, "level": "INFO", "message": f"line {i}"}
                     for i in range(logs)]}


def test_a_reported_run_is_kept_once_and_an_older_report_never_wins(tmp_path):
    inst = str(tmp_path)
    running = _run_json("r1", "running", ["succeeded", "running"], 2)
    done = _run_json("r1", "succeeded", ["succeeded", "succeeded"], 3, finished=120.0)

    assert runs.upsert_run_json(inst, running, "w1@host")
    assert runs.upsert_run_json(inst, done, "w1@host")
    assert runs.upsert_run_json(inst, done, "w1@host")  # the same report again
    assert not runs.upsert_run_json(inst, running, "w1@host")  # late, older

    kept = runs.get_run(inst, "r1")
    assert kept.status == "succeeded" and kept.to_revs == ("b",)
    assert [s.status for s in kept.steps] == ["succeeded", "succeeded"]
    assert [log.message for log in kept.logs] == ["line 0", "line 1", "line 2"]
    assert kept.executed_by == "w1@host"
    assert runs.list_runs(inst)[0].id == "r1"


def test_a_mirrored_run_is_never_settled_by_the_dashboard_and_cannot_be_cancelled_here(
        tmp_path, sample_ini, db_url):
    from dashboard.core import Target
    from dashboard.errors import Conflict
    from dashboard.services import guard

    migrate(sample_ini, db_url, UNIFIED_REASONING)
    settings = {**settings_from_environ({}), "DASHBOARD_ALEMBIC_INI": str(sample_ini),
                "DASHBOARD_DATABASE_URL": db_url, "DASHBOARD_INSTANCE_DIR": str(tmp_path / "i"),
                "DASHBOARD_SEED_SAMPLE": False}
    target = Target(settings)
    runs.upsert_run_json(target.instance_dir, _run_json("r2", "running", ["running"], 1),
                         "w2@elsewhere")

    assert target.reap_interrupted_runs() == []  # its own worker settles it
    assert runs.get_run(target.instance_dir, "r2").status == "running"
    with pytest.raises(Conflict, match="Celery worker w2@elsewhere"):
        guard.cancellable_run(target, "r2")


def test_a_run_the_guard_recorded_here_is_never_overwritten_by_a_report(tmp_path):
    """A worker sharing the dashboard's instance folder: its runs are the guard's own."""
    inst = str(tmp_path)
    runs.create_run(inst, run_id="r3", action="upgrade", target="heads", user="ada",
                    from_revs=("a",))
    assert not runs.upsert_run_json(inst, _run_json("r3", "succeeded", [], 0, 120.0), "w1")
    kept = runs.get_run(inst, "r3")
    assert kept.status == "queued" and kept.executed_by is None


def test_a_worker_without_a_broker_refuses_to_start(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "dashboard.fleet", "worker", "-n",
         f"nobroker-{secrets.token_hex(3)}@%h", "--concurrency", "1"],
        env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True,
        timeout=60)
    assert done.returncode != 0
    assert "DASHBOARD_BROKER_URL is not set" in done.stderr + done.stdout


def test_a_broker_that_cannot_be_reached_is_a_clear_503_without_its_url(tmp_path, sample_ini):
    from dashboard.core import Target
    from dashboard.errors import Unavailable
    from dashboard.fleet import CeleryExecutor

    settings = {**settings_from_environ({}), "DASHBOARD_ALEMBIC_INI": str(sample_ini),
                "DASHBOARD_INSTANCE_DIR": str(tmp_path / "i"),
                "DASHBOARD_BROKER_URL": "redis://:s3cret-pw@127.0.0.1:1/0"}
    executor = CeleryExecutor(settings)
    try:
        with pytest.raises(Unavailable) as raised:
            executor.start(Target(settings), RunRequest(rollout_id(), "upgrade", "heads", "a"))
    finally:
        executor.close()
    assert raised.value.status_code == 503
    assert "s3cret-pw" not in raised.value.message and "broker" in raised.value.message
    assert "127.0.0.1:1" not in raised.value.message
    # It says what went wrong, not only that something did.
    assert "Connection refused" in raised.value.message, raised.value.message


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("bound", [True, False])
def test_a_bound_child_dies_with_its_parent_and_a_detached_one_lives_on(bound, tmp_path):
    """What a Celery task's run gets (bound), and what a web-started run keeps."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "from dashboard.lifeline import bound_to_this_process\n"
         f"extra = {{'preexec_fn': bound_to_this_process()}} if {bound} else {{}}\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
         " start_new_session=True, **extra)\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(60)\n"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + (5 if bound else 1)  # a detached one: a look
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(child) is not bound
    finally:
        parent.stdout.close()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
