"""Rollouts: one upgrade over many targets, canary first, a bounded number at once.

Every scenario runs real runs on real SQLite files (and, in one test, real
PostgreSQL databases) through the rollout's executor, chosen by the
``rollout_mode`` fixture's settings, so the same assertions hold whatever
executes the runs. What is asserted is what a user sees or keeps: each
database's revision, each run's recorded start and end, the rollout's page,
API and exit code.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import event, select

from alembic import command
from dashboard import cli, create_app
from dashboard.services import audit, rollouts, runs, store
from tests.conftest import alembic_config

REV1, REV2 = "aa01customers", "aa02orders"

ENV_PY = '''\
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

REVISION = '''\
"""create {table}"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {parent!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("{table}")
'''


def make_project(root: Path) -> Path:
    """A two-revision project (customers, then orders); its alembic.ini."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\nsqlalchemy.url = sqlite://\n")
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "script.py.mako").write_text("")
    for rev, parent, table in ((REV1, None, "customers"), (REV2, REV1, "orders")):
        (root / "migrations" / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, parent=parent, table=table))
    return root / "alembic.ini"


def revision_of(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


class Fleet:
    """SQLite targets over one project, a targets file naming them, and a dashboard."""

    def __init__(self, tmp_path: Path, settings: dict):
        self.tmp = tmp_path
        self.ini = make_project(tmp_path / "project")
        self.instance = tmp_path / "instance"
        self.settings = settings
        self.dbs: dict[str, Path] = {}
        self.specs: dict[str, str] = {}

    def add(self, name: str, at: str | None = REV1, labels=("tenant",), extra: str = "",
            collide: bool = False) -> Path:
        """A target at revision ``at``; ``collide``: its database already has the table
        the next revision creates, so its upgrade fails."""
        path = self.tmp / f"{name}.db"
        if at:
            command.upgrade(alembic_config(self.ini, f"sqlite:///{path}"), at)
        if collide:
            with sqlite3.connect(path) as conn:
                conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        self.dbs[name] = path
        self.specs[name] = (f'[targets.{name}]\nalembic_ini = "{self.ini}"\n'
                            f'database_url = "sqlite:///{path}"\nlabels = {list(labels)!r}\n'
                            .replace("'", '"') + extra)
        return path

    @property
    def targets_file(self) -> Path:
        path = self.tmp / "targets.toml"
        path.write_text("\n".join(self.specs.values()))
        return path

    def config(self) -> dict:
        return {"TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
                "DASHBOARD_TARGETS_FILE": str(self.targets_file),
                "DASHBOARD_INSTANCE_DIR": str(self.instance), "DASHBOARD_SEED_SAMPLE": False,
                **self.settings}

    def client(self):
        return create_app(self.config()).test_client()

    def run_of(self, row: dict) -> runs.RunRecord:
        return runs.get_run(str(self.instance / "targets" / row["name"]), row["run_id"])


@pytest.fixture(params=["local", "celery"])
def rollout_mode(request, tmp_path):
    """The settings that choose where a rollout's runs execute: the local process pool,
    or Celery (DASHBOARD_BROKER_URL, this machine's Redis and two real workers of
    concurrency 2, each with an instance folder of its own, as on other machines);
    scenarios assert only what any executor must give."""
    if request.param == "local":
        yield {}
        return
    from tests.fleet_workers import FleetWorkers, require_redis

    require_redis()
    with FleetWorkers(tmp_path, tmp_path / "targets.toml", tmp_path / "workers",
                      own_instances=True) as workers:
        yield dict(workers.settings)


@pytest.fixture
def fleet(tmp_path, rollout_mode) -> Fleet:
    """For the plan scenarios, run with every executor."""
    return Fleet(tmp_path, rollout_mode)


@pytest.fixture
def plain_fleet(tmp_path) -> Fleet:
    """For what does not depend on the executor (refusals, pages, command line)."""
    return Fleet(tmp_path, {})


def wait_for(client, url: str, seconds: float = 90.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        body = client.get(url).get_json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def start(client, **body):
    response = client.post("/api/rollouts", json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def run_spans(fleet: Fleet, rollout: dict) -> dict[str, tuple[float, float]]:
    spans = {}
    for row in rollout["targets"]:
        if row["run_id"]:
            run = fleet.run_of(row)
            spans[row["name"]] = (run.started_at or run.created_at, run.finished_at)
    return spans


def most_at_once(spans) -> int:
    moments = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()],
                     key=lambda m: (m[0], m[1]))
    now = peak = 0
    for _, step in moments:
        now += step
        peak = max(peak, now)
    return peak


# ------------------------------------------------------------------ decisions (pure)


def rows(*statuses: str, canaries: int = 0) -> list[rollouts.RolloutTarget]:
    return [rollouts.RolloutTarget(position=i, name=f"t{i}", status=status,
                                   canary=i <= canaries)
            for i, status in enumerate(statuses, start=1)]


def test_next_moves_starts_canaries_alone_then_fills_the_slots():
    moves = rollouts.next_moves(rows("pending", "pending", "pending"), 1, 2, "halt", False)
    assert moves.start == (1,) and moves.as_canary
    waiting = rollouts.next_moves(rows("running", "pending", "pending", canaries=1), 1, 2,
                                  "halt", False)
    assert waiting.start == ()  # the canary has not finished
    after = rollouts.next_moves(rows("succeeded", "pending", "pending", "pending", canaries=1),
                                1, 2, "halt", False)
    assert after.start == (2, 3) and not after.as_canary
    full = rollouts.next_moves(rows("succeeded", "running", "backing_up", "pending",
                                    canaries=1), 1, 2, "halt", False)
    assert full == rollouts.Moves()
    no_canary = rollouts.next_moves(rows("skipped", "pending", "pending"), 0, 4, "halt", False)
    assert no_canary.start == (2, 3)
    done = rollouts.next_moves(rows("succeeded", "skipped", canaries=1), 1, 2, "halt", False)
    assert done.final == "succeeded"


def test_next_moves_on_failure_and_cancel():
    halted = rollouts.next_moves(rows("succeeded", "restored", "running", "pending",
                                      canaries=1), 1, 2, "halt", False)
    assert halted.give_up == (4,) and halted.final is None and not halted.start
    over = rollouts.next_moves(rows("succeeded", "restored", "succeeded", "not_started",
                                    canaries=1), 1, 2, "halt", False)
    assert over.final == "halted"
    going_on = rollouts.next_moves(rows("succeeded", "failed", "pending", canaries=1), 1, 2,
                                   "continue", False)
    assert going_on.start == (3,)
    ended = rollouts.next_moves(rows("succeeded", "failed", "succeeded", canaries=1), 1, 2,
                                "continue", False)
    assert ended.final == "failed"
    canary = rollouts.next_moves(rows("restored", "pending", canaries=1), 1, 2, "continue",
                                 False)
    assert canary.final == "halted" and canary.give_up == (2,)
    cancelled = rollouts.next_moves(rows("running", "pending"), 0, 1, "halt", True)
    assert cancelled.give_up == (2,) and cancelled.final is None
    assert rollouts.next_moves(rows("succeeded", "not_started"), 0, 1, "halt",
                               True).final == "cancelled"


# ------------------------------------------------------------------ plans


def test_canary_first_then_at_most_parallel_and_skips_those_at_destination(fleet):
    names = [f"t{i}" for i in range(7)]
    for name in names:
        fleet.add(name, at=REV2 if name == "t1" else REV1)
    client = fleet.client()
    created = start(client, label="tenant", action="upgrade", target="heads", canary=1,
                    parallel=2)
    assert created["url"] == f"/api/rollouts/{created['id']}"
    done = wait_for(client, created["url"])
    assert done["status"] == "succeeded", done
    rows = {row["name"]: row for row in done["targets"]}
    assert [row["name"] for row in done["targets"]] == names
    assert rows["t1"]["status"] == "skipped" and rows["t1"]["run"] is None
    assert rows["t0"]["canary"] and not any(rows[n]["canary"] for n in names[1:])
    for name in names:
        assert revision_of(fleet.dbs[name]) == [REV2]
    assert done["counts"] == {"succeeded": 6, "skipped": 1}
    spans = run_spans(fleet, done)
    assert set(spans) == set(names) - {"t1"}
    canary_end = spans["t0"][1]
    assert all(start >= canary_end for name, (start, _) in spans.items() if name != "t0")
    assert most_at_once(spans) <= 2
    assert rows["t0"]["run"] == f"/api/targets/t0/runs/{rows['t0']['run_id']}"
    assert rows["t0"]["from"] == [REV1] and rows["t0"]["to"] == [REV2]


def test_a_failure_halts_the_rest_which_stay_at_their_revision(fleet):
    fleet.add("c0")
    fleet.add("bad", collide=True)
    for i in range(4):
        fleet.add(f"t{i}")
    client = fleet.client()
    done = wait_for(client, start(client, label="tenant", canary=1, parallel=1)["url"])
    assert done["status"] == "halted"
    rows = {row["name"]: row for row in done["targets"]}
    assert rows["c0"]["status"] == "succeeded"
    assert rows["bad"]["status"] == "restored" and rows["bad"]["error"]
    assert fleet.run_of(rows["bad"]).status == "restored"
    assert revision_of(fleet.dbs["bad"]) == [REV1], "restored to where it started"
    for i in range(4):
        assert rows[f"t{i}"]["status"] == "not_started" and rows[f"t{i}"]["run"] is None
        assert revision_of(fleet.dbs[f"t{i}"]) == [REV1]


def test_a_failing_canary_halts_even_under_continue(fleet):
    fleet.add("bad", collide=True)
    fleet.add("t0")
    client = fleet.client()
    done = wait_for(client, start(client, targets=["bad", "t0"], on_error="continue")["url"])
    assert done["status"] == "halted"
    assert [r["status"] for r in done["targets"]] == ["restored", "not_started"]
    assert revision_of(fleet.dbs["t0"]) == [REV1]


def test_continue_finishes_the_others_and_the_rollout_is_failed(fleet):
    fleet.add("c0")
    fleet.add("bad", collide=True)
    for i in range(3):
        fleet.add(f"t{i}")
    client = fleet.client()
    done = wait_for(client, start(client, label="tenant", parallel=3,
                                  on_error="continue")["url"])
    assert done["status"] == "failed"
    assert done["counts"] == {"succeeded": 4, "restored": 1}
    for name in ("c0", "t0", "t1", "t2"):
        assert revision_of(fleet.dbs[name]) == [REV2]
    assert revision_of(fleet.dbs["bad"]) == [REV1]


def test_cancel_stops_what_has_not_started(fleet):
    for i in range(6):
        fleet.add(f"t{i}")
    client = fleet.client()
    created = start(client, label="tenant", canary=0, parallel=1)
    cancelled = client.post(f"/api/rollouts/{created['id']}/cancel", json={})
    assert cancelled.status_code == 202
    done = wait_for(client, created["url"])
    assert done["status"] == "cancelled"
    statuses = [row["status"] for row in done["targets"]]
    assert statuses.count("not_started") >= 4, statuses
    for row in done["targets"]:
        expected = [REV2] if row["status"] == "succeeded" else [REV1]
        assert row["status"] in ("succeeded", "not_started")
        assert revision_of(fleet.dbs[row["name"]]) == expected
    again = client.post(f"/api/rollouts/{created['id']}/cancel", json={})
    assert again.status_code == 409 and "finished" in again.get_json()["error"]["message"]
    events = [e.event for e in audit.list_entries(str(fleet.instance))]
    assert events[:3] == ["rollout_cancelled_finished", "rollout_cancelled", "rollout_started"]
    # The rollout's own page shows them: no target's audit page would.
    page = client.get(f"/rollouts/{created['id']}").get_data(as_text=True)
    shown = page[page.index('id="rollout-events"'):]
    assert [e in shown for e in ('data-event="rollout_cancelled_finished"',
                                 'data-event="rollout_cancelled"',
                                 'data-event="rollout_started"')] == [True, True, True]


def test_a_killed_conductor_is_replaced_and_no_target_runs_twice(fleet):
    for i in range(5):
        fleet.add(f"t{i}")
    client = fleet.client()
    created = start(client, label="tenant", canary=0, parallel=1)
    root = str(fleet.instance)
    with store.store_engine(root).connect() as conn:
        pid = conn.execute(select(store.rollouts.c.conductor_pid)).scalar()
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while rollouts.conductor_alive(root, created["id"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = wait_for(client, created["url"])  # reading it starts a new conductor
    assert done["status"] == "succeeded", done
    for i in range(5):
        assert revision_of(fleet.dbs[f"t{i}"]) == [REV2]
        assert len(runs.list_runs(str(fleet.instance / "targets" / f"t{i}"))) == 1


def test_a_run_under_way_outlives_its_killed_conductor(plain_fleet):
    """The local pool forks each runner from a forkserver that dies with the conductor;
    the runner, in a session of its own, finishes its run whatever happens to both."""
    slow = plain_fleet.ini.parent / "migrations" / "versions" / "aa03slow.py"
    slow.write_text(REVISION.format(rev="aa03slow", parent=REV2, table="slow").replace(
        "def upgrade():\n", "def upgrade():\n    import time\n\n"
        "    if not op.get_context().as_sql:\n        time.sleep(4)\n"))
    plain_fleet.add("t0", at=REV2)
    plain_fleet.add("t1", at=REV2)
    client = plain_fleet.client()
    created = start(client, label="tenant", canary=0, parallel=1)
    root = str(plain_fleet.instance)
    deadline = time.monotonic() + 60
    while True:  # until t0's step runs
        row = client.get(created["url"]).get_json()["targets"][0]
        if row["run_id"]:
            run = plain_fleet.run_of(row)
            if run.steps and run.steps[0].status == "running":
                break
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    with store.store_engine(root).connect() as conn:
        pid = conn.execute(select(store.rollouts.c.conductor_pid)).scalar()
    os.killpg(pid, signal.SIGKILL)  # the conductor and its forkserver
    while rollouts.conductor_alive(root, created["id"]):
        time.sleep(0.05)
    done = wait_for(client, created["url"])  # reading it starts a new conductor
    assert done["status"] == "succeeded", done
    first = plain_fleet.run_of(done["targets"][0])
    assert first.id == row["run_id"] and first.status == "succeeded", first
    assert not first.error, "finished by its own runner, not settled by recovery"
    for name in ("t0", "t1"):
        assert revision_of(plain_fleet.dbs[name]) == ["aa03slow"]
        assert len(runs.list_runs(str(plain_fleet.instance / "targets" / name))) == 1


# ------------------------------------------------------------------ refusals


def test_bad_requests_are_clear_4xx(plain_fleet, monkeypatch):
    plain_fleet.add("t0")
    plain_fleet.add("t1", labels=("eu",))
    plain_fleet.add("ro", extra="read_only = true\n")
    monkeypatch.delenv("MISSING_URL", raising=False)
    plain_fleet.specs["broken"] = (f'[targets.broken]\nalembic_ini = "{plain_fleet.ini}"\n'
                             'database_url_env = "MISSING_URL"\nlabels = ["broken"]\n')
    client = plain_fleet.client()

    def refused(body, status, *words):
        response = client.post("/api/rollouts", json=body)
        assert response.status_code == status, response.get_json()
        message = response.get_json()["error"]["message"]
        for word in words:
            assert word in message, message

    refused({"label": "nope"}, 400, "'nope'", "eu", "tenant")
    refused({"targets": ["t0", "ghost"]}, 400, "'ghost'")
    refused({"targets": []}, 400, "targets")
    refused({}, 400, "label")
    refused({"label": "eu", "targets": ["t0"]}, 400, "not both")
    refused({"targets": ["t0", "ro"]}, 403, "ro")
    refused({"label": "broken"}, 503, "broken", "MISSING_URL")
    refused({"label": "eu", "action": "drop"}, 400, "drop")
    refused({"label": "eu", "target": "no such; thing"}, 400, "revision target")
    refused({"label": "eu", "canary": -1}, 400, "canary")
    refused({"label": "eu", "canary": True}, 400, "canary")
    refused({"label": "eu", "parallel": 0}, 400, "parallel")
    refused({"label": "eu", "parallel": "four"}, 400, "parallel")
    refused({"label": "eu", "on_error": "stop"}, 400, "on_error")
    refused({"label": "eu", "confirm": "yes"}, 400, "confirm")
    refused({"label": "eu", "paralel": 2}, 400, "paralel")
    bad_json = client.post("/api/rollouts", data="{", content_type="application/json")
    assert bad_json.status_code == 400
    assert client.post("/api/rollouts", data="label=eu").status_code == 415
    assert client.get("/api/rollouts/nope").status_code == 404
    assert client.post("/api/rollouts/nope/cancel", json={}).status_code == 404
    assert client.get("/rollouts/nope").status_code == 404
    assert client.get("/api/rollouts?status=bogus").status_code == 400


def test_a_rollout_overlapping_a_running_one_is_refused_naming_it(plain_fleet):
    plain_fleet.add("t0")
    plain_fleet.add("t1")
    client = plain_fleet.client()
    root = str(plain_fleet.instance)
    plan = rollouts.RolloutPlan(("t1",), "upgrade", "heads")
    running = rollouts.create_rollout(root, plan, "local", "someone")
    held = rollouts.hold_conductor_lock(root, running)  # its conductor is alive
    try:
        response = client.post("/api/rollouts", json={"label": "tenant"})
        assert response.status_code == 409
        message = response.get_json()["error"]["message"]
        assert running in message and "t1" in message
        code, _, err = run_cli(plain_fleet, "rollout", "--label", "tenant")
        assert code == cli.EXIT_LOCKED and running in err
    finally:
        os.close(held)
    assert revision_of(plain_fleet.dbs["t0"]) == [REV1]


def test_a_risky_upgrade_needs_confirming_once_per_project(plain_fleet):
    for i in range(3):
        plain_fleet.add(f"t{i}", at=REV2)
    with sqlite3.connect(plain_fleet.dbs["t0"]) as conn:
        conn.execute("INSERT INTO customers (id) VALUES (1)")
    (plain_fleet.ini.parent / "migrations" / "versions" / "aa03drop.py").write_text(
        REVISION.format(rev="aa03drop", parent=REV2, table="customers")
        .replace('op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("customers")'))
    client = plain_fleet.client()
    response = client.post("/api/rollouts", json={"label": "tenant"})
    assert response.status_code == 409
    assert "drop_table" in response.get_json()["error"]["message"]
    page = client.post("/rollouts", data={"select": "label", "label": "tenant",
                                          "action": "upgrade", "target": "heads"})
    assert page.status_code == 409
    assert 'name="confirm_risk"' in page.get_data(as_text=True)
    code, _, err = run_cli(plain_fleet, "rollout", "--label", "tenant")
    assert code == cli.EXIT_ERROR and "--yes" in err
    for i in range(3):
        assert revision_of(plain_fleet.dbs[f"t{i}"]) == [REV2]
    confirmed = client.post("/rollouts", data={"select": "label", "label": "tenant",
                                               "action": "upgrade", "target": "heads",
                                               "confirm_risk": "upgrade", "canary": "1",
                                               "parallel": "3"})
    assert confirmed.status_code == 303
    done = wait_for(client, confirmed.headers["Location"].replace("/rollouts/",
                                                                  "/api/rollouts/"))
    assert done["status"] == "succeeded"
    assert revision_of(plain_fleet.dbs["t2"]) == ["aa03drop"]


# ------------------------------------------------------------------ pages


def test_the_rollout_page_shows_a_row_per_target_linking_its_run(plain_fleet):
    plain_fleet.add("t0")
    plain_fleet.add("t1", at=REV2)
    plain_fleet.add("bad", collide=True)
    client = plain_fleet.client()
    assert "Rollouts" in client.get("/").get_data(as_text=True)
    form = client.get("/rollouts/new").get_data(as_text=True)
    assert 'value="tenant"' in form and 'name="targets" value="bad"' in form
    started = client.post("/rollouts", data={"select": "targets", "targets": ["t0", "t1", "bad"],
                                             "action": "upgrade", "target": "heads",
                                             "canary": "1", "parallel": "2",
                                             "on_error": "continue"})
    assert started.status_code == 303
    url = started.headers["Location"]
    done = wait_for(client, url.replace("/rollouts/", "/api/rollouts/"))
    rows = {row["name"]: row for row in done["targets"]}
    page = client.get(url)
    html = page.get_data(as_text=True)
    assert "HX-Request" in page.headers["Vary"] and "<html" in html
    assert 'data-target="t0" data-status="succeeded"' in html
    assert 'data-target="t1" data-status="skipped"' in html
    assert 'data-target="bad" data-status="restored"' in html
    assert f'href="/targets/t0/runs/{rows["t0"]["run_id"]}"' in html
    assert 'href="/targets/t0/"' in html and ">canary<" in html
    assert 'data-count="succeeded">1 succeeded' in html and "hx-trigger" not in html
    fragment = client.get(url, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<html" not in fragment
    assert 'id="rollout-panel"' in fragment
    listing = client.get("/rollouts").get_data(as_text=True)
    assert done["id"] in listing and "1 restored" in listing
    api = client.get("/api/rollouts").get_json()
    assert api["total"] == 1 and api["rollouts"][0]["counts"]["skipped"] == 1
    run_page = client.get(f"/targets/bad/runs/{rows['bad']['run_id']}")
    assert run_page.status_code == 200


def test_a_running_rollout_refreshes_in_one_query_whatever_its_size(plain_fleet):
    names = [f"t{i:03d}" for i in range(200)]
    for name in names:
        plain_fleet.specs[name] = (f'[targets.{name}]\nalembic_ini = "{plain_fleet.ini}"\n'
                             f'database_url = "sqlite:///{plain_fleet.tmp}/{name}.db"\n'
                             'labels = ["tenant"]\n')
    client = plain_fleet.client()
    root = str(plain_fleet.instance)
    rollout_id = rollouts.create_rollout(
        root, rollouts.RolloutPlan(tuple(names), "upgrade", "heads"), "local", "me")
    held = rollouts.hold_conductor_lock(root, rollout_id)
    statements = []
    engine = store.store_engine(root)

    def count(*_args):
        statements.append(_args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        started = time.monotonic()
        fragment = client.get(f"/rollouts/{rollout_id}", headers={"HX-Request": "true"})
        took = time.monotonic() - started
    finally:
        event.remove(engine, "before_cursor_execute", count)
        os.close(held)
    html = fragment.get_data(as_text=True)
    assert fragment.status_code == 200 and html.count('class="rollout-target"') == 200
    assert 'hx-trigger="every 1s"' in html and 'id="cancel-rollout"' in html
    assert len(statements) <= 2, statements
    assert took < 2.0


def test_cancel_asks_first_without_javascript(plain_fleet):
    plain_fleet.add("t0")
    client = plain_fleet.client()
    root = str(plain_fleet.instance)
    rollout_id = rollouts.create_rollout(
        root, rollouts.RolloutPlan(("t0",), "upgrade", "heads"), "local", "me")
    held = rollouts.hold_conductor_lock(root, rollout_id)
    try:
        asked = client.post(f"/rollouts/{rollout_id}/cancel")
        assert asked.status_code == 200 and 'name="confirm" value="yes"' in \
            asked.get_data(as_text=True)
        assert rollouts.get_rollout(root, rollout_id).cancel_requested is False
        done = client.post(f"/rollouts/{rollout_id}/cancel", data={"confirm": "yes"})
        assert done.status_code == 303
        rollout = rollouts.get_rollout(root, rollout_id)
        assert rollout.cancel_requested and rollout.targets[0].status == "not_started"
    finally:
        os.close(held)


# ------------------------------------------------------------------ command line


def run_cli(fleet: Fleet, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    environ = {**os.environ, "DASHBOARD_TARGETS_FILE": str(fleet.targets_file),
               "DASHBOARD_INSTANCE_DIR": str(fleet.instance), **fleet.settings}
    code = cli.main(list(argv), environ=environ, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_command_line_rollout_exit_codes(plain_fleet):
    plain_fleet.add("t0")
    plain_fleet.add("t1")
    plain_fleet.add("bad", collide=True, labels=("doomed",))
    code, out, err = run_cli(plain_fleet, "rollout", "--label", "tenant", "--parallel", "2")
    assert code == cli.EXIT_OK, err
    assert "t0 [canary]: succeeded" in out and f"{REV1} -> {REV2}" in out
    assert "succeeded: 2 succeeded" in out
    code, out, err = run_cli(plain_fleet, "rollout", "--targets", "t0,t1", "--json")
    body = json.loads(out)
    assert code == cli.EXIT_OK and body["counts"] == {"skipped": 2}
    code, out, err = run_cli(plain_fleet, "rollout", "--label", "doomed")
    assert code == cli.EXIT_FAILED and "bad [canary]: restored" in out
    assert "halted" in err
    assert revision_of(plain_fleet.dbs["bad"]) == [REV1]
    code, _, err = run_cli(plain_fleet, "rollout", "--label", "nope")
    assert code == cli.EXIT_ERROR and "'nope'" in err
    with pytest.raises(SystemExit) as usage:
        run_cli(plain_fleet, "rollout", "--to", "heads")
    assert usage.value.code == cli.EXIT_ERROR
    code, _, err = run_cli(plain_fleet, "rollout", "--cancel", "nope")
    assert code == cli.EXIT_ERROR and "nope" in err


# ------------------------------------------------------------------ servers


def test_a_rollout_over_postgresql_databases(fleet):
    from contextlib import ExitStack

    from tests.servers import SERVERS, require, scratch_database

    server = require(SERVERS["postgresql"])
    with ExitStack() as stack:
        names = [stack.enter_context(scratch_database(server, "md_rollout")) for _ in range(3)]
        secret = "Sup3r-s3cret-rollout"  # the server trusts; the password must never show
        for i, database in enumerate(names):
            url = server.url(database, password=secret)
            command.upgrade(alembic_config(fleet.ini, url), REV1)
            if i == 1:  # its upgrade collides with a table already there
                server.execute("CREATE TABLE orders (id integer primary key)",
                               database=database)
            fleet.specs[f"pg{i}"] = (f'[targets.pg{i}]\nalembic_ini = "{fleet.ini}"\n'
                                     f'database_url = "{url}"\nlabels = ["pg"]\n')
        client = fleet.client()
        done = wait_for(client, start(client, label="pg", parallel=2,
                                      on_error="continue")["url"])
        assert done["status"] == "failed"
        assert [row["status"] for row in done["targets"]] == ["succeeded", "restored",
                                                               "succeeded"]

        def version(database):
            return server.scalars("SELECT version_num FROM alembic_version", database=database)

        assert [version(d) for d in names] == [[REV2], [REV1], [REV2]]
        assert done["targets"][1]["error"]
        shown = [json.dumps(done), client.get(f"/rollouts/{done['id']}").get_data(as_text=True),
                 json.dumps(client.get("/api/rollouts").get_json()),
                 (fleet.instance / "audit.jsonl").read_text()]
        with store.store_engine(str(fleet.instance)).connect() as conn:
            shown.append(repr(conn.execute(select(store.rollout_targets)).all()))
        assert not [text for text in shown if secret in text]


def test_a_row_claimed_by_a_dead_conductor_gets_its_turn_again(plain_fleet):
    """A conductor killed between claiming a row and keeping its run's handle: the next
    one starts that target (once), and the rollout does not call it succeeded unseen."""
    plain_fleet.add("t0")
    plain_fleet.add("t1")
    client = plain_fleet.client()
    root = str(plain_fleet.instance)
    rollout_id = rollouts.create_rollout(
        root, rollouts.RolloutPlan(("t0", "t1"), "upgrade", "heads", canary=1), "local", "me")
    with store.store_engine(root).begin() as conn:
        conn.execute(store.rollout_targets.update().where(
            store.rollout_targets.c.position == 1).values(status="waiting", canary=True))
    done = wait_for(client, f"/api/rollouts/{rollout_id}")
    assert done["status"] == "succeeded", done
    assert [row["status"] for row in done["targets"]] == ["succeeded", "succeeded"]
    assert revision_of(plain_fleet.dbs["t0"]) == [REV2]


def test_ctrl_c_leaves_the_rollout_running_and_says_how_to_follow_it(plain_fleet):
    import subprocess
    import sys

    from tests.conftest import REPO

    for i in range(4):
        plain_fleet.add(f"t{i}")
    env = {**os.environ, "DASHBOARD_TARGETS_FILE": str(plain_fleet.targets_file),
           "DASHBOARD_INSTANCE_DIR": str(plain_fleet.instance), "PYTHONPATH": str(REPO),
           **plain_fleet.settings}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard.cli", "rollout", "--label", "tenant",
         "--parallel", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    first = proc.stdout.readline()
    assert first.startswith("Rollout r"), first
    rollout_id = first.split()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert f"rollout --follow {rollout_id}" in err and f"rollout --cancel {rollout_id}" in err
    code, out, _ = run_cli(plain_fleet, "rollout", "--follow", rollout_id)
    assert code == cli.EXIT_OK and "succeeded" in out
    for i in range(4):
        assert revision_of(plain_fleet.dbs[f"t{i}"]) == [REV2]


def test_a_target_locked_by_another_action_exits_3(plain_fleet):
    from dashboard.core import Registry
    from dashboard.services import guard, locking

    plain_fleet.add("t0")
    plain_fleet.add("t1")
    from dashboard.settings import settings_from_environ

    registry = Registry({**settings_from_environ({}), **plain_fleet.config()})
    held = guard.acquire_lock(registry.targets["t0"], locking.LockHolder(
        os.getpid(), "upgrade", "someone-else", "alice", time.time()))
    try:
        code, out, err = run_cli(plain_fleet, "rollout", "--label", "tenant")
    finally:
        held.release()
    assert code == cli.EXIT_LOCKED, out + err
    assert "t0 [canary]: failed" in out and "already running" in out
    assert "t1: not started" in out
    assert revision_of(plain_fleet.dbs["t1"]) == [REV1]
