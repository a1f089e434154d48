"""Rollouts: one upgrade over many targets, canary first, a bounded number at once.

Every scenario runs real runs on real SQLite files (and, in one test, real
PostgreSQL databases) through the rollout's executor, chosen by the
``rollout_mode`` fixture's settings, so the same assertions hold whatever
executes the runs. What is asserted is what a user sees or keeps: each
database's revision, each run's recorded start and end, the rollout's page,
API and exit code.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from alembic import command
from dashboard import create_app
from dashboard.services import runs
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


@pytest.fixture(params=["local"])
def rollout_mode(request) -> dict:
    """The settings that choose where a rollout's runs execute ("celery" comes with
    DASHBOARD_BROKER_URL and real workers); scenarios assert only what any executor
    must give."""
    return {"local": {}}[request.param]


@pytest.fixture
def fleet(tmp_path, rollout_mode) -> Fleet:
    return Fleet(tmp_path, rollout_mode)


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
