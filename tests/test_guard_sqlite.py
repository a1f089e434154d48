"""The guard on SQLite, as a user sees and keeps it: retention, one run per database,
no committed write lost, a killed server, backups in use, confirmations.

Driven only through the JSON API and HTML forms of ``create_app``, through
``migrate_db.py`` and through real dashboard server processes; every database,
file, process and lock is real.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard import create_app
from tests.conftest import CHATS, REPO, UNIFIED_REASONING, db_revisions, migrate

FINISHED = ("succeeded", "failed", "restored", "cancelled")
STEP_ONE = "9a1d00000001"  # creates table step_one
STEP_TWO = "9a1d00000002"  # sleeps, creates table step_two (or fails)


# ---------------------------------------------------------------- helpers


def write_revision(ini: Path, revision: str, parent: str, *, table: str | None = None,
                   sleep: float = 0.0, fail: bool = False) -> Path:
    """A revision file in the scratch project: creates ``table``, sleeps (when run, not
    in offline mode), then may fail."""
    body = []
    if table:
        body.append(f'op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))')
    if sleep:
        # Like a long statement: slow when it runs, not when its SQL is only written
        # out (the risk findings generate every pending revision's SQL offline first).
        body.append(f"if not op.get_context().as_sql:\n        time.sleep({sleep})")
    if fail:
        body.append('raise RuntimeError("this revision fails on purpose")')
    body = body or ["pass"]
    path = ini.parent / "alembic" / "versions" / f"{revision}_guard_test.py"
    path.write_text("\n".join([
        f'"""guard test revision {revision}"""',
        "import time",
        "",
        "import sqlalchemy as sa",
        "from alembic import op",
        "",
        f'revision = "{revision}"',
        f'down_revision = "{parent}"',
        "branch_labels = None",
        "depends_on = None",
        "",
        "",
        "def upgrade():",
        *(f"    {line}" for line in body),
        "",
        "",
        "def downgrade():",
        "    pass",
        "",
    ]))
    return path


def post_run(client, action="upgrade", target="heads", prefix="/api"):
    return client.post(f"{prefix}/runs", json={"action": action, "target": target})


def wait_for_run(client, run_id, timeout=60.0, prefix="/api") -> dict:
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = client.get(f"{prefix}/runs/{run_id}").get_json()
        if body["status"] in FINISHED:
            return body
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish within {timeout:g} s: {body}")


def wait_for_step(client, run_id, index, timeout=30.0, prefix="/api") -> dict:
    """Wait until step ``index`` (1-based) of the run is running."""
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        body = client.get(f"{prefix}/runs/{run_id}").get_json()
        steps = body["steps"]
        if len(steps) >= index and steps[index - 1]["status"] == "running":
            return body
        if body["status"] in FINISHED:
            break
        time.sleep(0.05)
    raise AssertionError(f"step {index} of run {run_id} never ran: {body}")


def finish_quietly(client, run_id, prefix="/api") -> None:
    """Let a run that a failed assertion left behind end before the test's folders go."""
    try:
        wait_for_run(client, run_id, prefix=prefix)
    except Exception:
        pass


def rows(path: Path) -> dict:
    """Schema and every row of every table of a SQLite file."""
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as conn:
        schema = sorted(conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
        tables = [name for kind, name, _ in schema if kind == "table"]
        data = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    return {"schema": schema, "rows": data}


def tables(path: Path) -> set[str]:
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def add_user(path: Path, email: str) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO users (email, display_name, password_hash, is_active, "
                     "created_at) VALUES (?, 'x', 'x', 1, '2025-01-01 00:00:00')", (email,))


@pytest.fixture
def seeded(sample_ini, db_url, db_path):
    """The sample database at the chats revision with rows in it."""
    migrate(sample_ini, db_url, CHATS)
    add_user(db_path, "ada@example.com")
    add_user(db_path, "linus@example.com")
    return db_path


@pytest.fixture
def at_head(seeded, sample_ini, db_url):
    """The seeded sample database upgraded to the sample's head."""
    migrate(sample_ini, db_url, "heads")
    return seeded


# ---------------------------------------------------------------- 1. retention


def test_retention_never_deletes_the_backup_being_restored(app_config, seeded):
    app_config["DASHBOARD_BACKUP_RETENTION"] = 2
    client = create_app(app_config).test_client()
    oldest = client.post("/api/backups", json={})
    assert oldest.status_code == 201, oldest.get_json()
    oldest = oldest.get_json()
    content_of_oldest = rows(seeded)
    add_user(seeded, "grace@example.com")  # the second backup differs from the first
    second = client.post("/api/backups", json={})
    assert second.status_code == 201, second.get_json()
    listed = [b["id"] for b in client.get("/api/backups").get_json()["backups"]]
    assert listed == [second.get_json()["id"], oldest["id"]]

    started = client.post(f"/api/backups/{oldest['id']}/restore", json={})
    assert started.status_code == 202, started.get_json()
    run = wait_for_run(client, started.get_json()["id"])

    assert run["status"] == "succeeded", (
        f"restoring the oldest of {len(listed)} kept backups did not succeed: "
        f"{run['status']}: {run['error']}")
    assert rows(seeded) == content_of_oldest, "the database is not the oldest backup's content"
    still = [b["id"] for b in client.get("/api/backups").get_json()["backups"]]
    assert oldest["id"] in still, f"the restored backup {oldest['id']} was deleted: {still}"
    assert os.path.isfile(oldest["path"])
    entries = client.get("/api/audit").get_json()["entries"]
    deletions = [json.dumps(e) for e in entries
                 if "retention" in e["event"] or "backup_deleted" in e["event"]]
    taken = {oldest["id"], second.get_json()["id"], run["backup_id"]}
    for gone in taken - set(still):
        assert any(gone in entry for entry in deletions), (
            f"backup {gone} was deleted by retention without an audit entry: "
            f"{[(e['event'], e['backup_id']) for e in entries]}")


# ---------------------------------------------------------------- 2. one run per database


def spell(db_path: Path, how: str, tmp_path: Path) -> str:
    """The URL of the same SQLite file, spelled another way."""
    if how == "symlink":
        link = tmp_path / "elsewhere" / "link-to-target.db"
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(db_path)
        return f"sqlite:///{link}"
    assert how == "dotdot"
    folder = db_path.parent
    return f"sqlite:///{folder}/../{folder.name}/{db_path.name}"


@pytest.mark.parametrize("how", ["symlink", "dotdot"])
def test_two_dashboards_on_one_sqlite_file_spelled_differently_run_one_at_a_time(
        app_config, at_head, sample_ini, tmp_path, how):
    # Long enough that the second dashboard's request (its first read of the
    # project, on a busy machine) lands while the step still runs.
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, sleep=8)
    first = create_app(app_config).test_client()
    other_url = spell(at_head, how, tmp_path)
    other_config = dict(app_config, DASHBOARD_INSTANCE_DIR=str(tmp_path / "other-instance"),
                        DASHBOARD_DATABASE_URL=other_url)
    second = create_app(other_config).test_client()
    started = post_run(first)
    assert started.status_code == 202, started.get_json()
    run_id = started.get_json()["id"]
    other = None
    try:
        wait_for_step(first, run_id, 1)
        other = post_run(second)
        assert other.status_code == 409, (
            f"a second dashboard (its own instance folder, URL {other_url}) started a run "
            f"on the same file while one runs: {other.status_code} {other.get_json()}")
        assert "already running" in other.get_json()["error"]["message"]
    finally:
        finish_quietly(first, run_id)
        if other is not None and other.status_code == 202:
            finish_quietly(second, other.get_json()["id"])
    assert wait_for_run(first, run_id)["status"] == "succeeded"


def test_the_command_line_with_its_own_instance_folder_waits_its_turn(
        app_config, at_head, sample_ini, tmp_path):
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, sleep=8)
    client = create_app(app_config).test_client()
    started = post_run(client)
    assert started.status_code == 202, started.get_json()
    run_id = started.get_json()["id"]
    try:
        wait_for_step(client, run_id, 1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
        cli = subprocess.run(
            [sys.executable, "migrate_db.py", "--ini", str(sample_ini),
             "--url", spell(at_head, "symlink", tmp_path),
             "--instance-dir", str(tmp_path / "cli-instance")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 3, (
            f"migrate_db.py ran on the same file while the dashboard runs (exit "
            f"{cli.returncode}): {cli.stdout[-800:]} {cli.stderr[-800:]}")
    finally:
        finish_quietly(client, run_id)


def test_a_targets_file_naming_one_file_twice_runs_one_action_at_a_time(
        at_head, sample_ini, tmp_path):
    # Long enough for two refused requests (each may wait 1 s for a lock being let go).
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, sleep=8)
    config = tmp_path / "targets.toml"
    config.write_text(textwrap.dedent(f"""\
        default = "plain"

        [targets.plain]
        alembic_ini = "{sample_ini}"
        database_url = "sqlite:///{at_head}"

        [targets.linked]
        alembic_ini = "{sample_ini}"
        database_url = "{spell(at_head, 'symlink', tmp_path)}"

        [targets.dotted]
        alembic_ini = "{sample_ini}"
        database_url = "{spell(at_head, 'dotdot', tmp_path)}"
    """))
    client = create_app({
        "TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
        "DASHBOARD_TARGETS_FILE": str(config), "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst"),
        "DASHBOARD_SEED_SAMPLE": False,
    }).test_client()
    started = post_run(client, prefix="/api/targets/plain")
    assert started.status_code == 202, started.get_json()
    run_id = started.get_json()["id"]
    others = {}
    try:
        wait_for_step(client, run_id, 1, prefix="/api/targets/plain")
        for name in ("linked", "dotted"):
            others[name] = post_run(client, prefix=f"/api/targets/{name}")
        answers = {name: r.status_code for name, r in others.items()}
        assert answers == {"linked": 409, "dotted": 409}, (
            f"targets naming the file of the running target 'plain' were not refused: "
            f"{ {n: r.get_json() for n, r in others.items()} }")
    finally:
        finish_quietly(client, run_id, prefix="/api/targets/plain")
        for name, response in others.items():
            if response.status_code == 202:
                finish_quietly(client, response.get_json()["id"], prefix=f"/api/targets/{name}")


# ---------------------------------------------------------------- 3. no committed write lost

WRITER = r'''
import os, sqlite3, sys, time
database, committed, stop, errors = sys.argv[1:5]
conn = sqlite3.connect(database, timeout=60, isolation_level=None)
conn.execute("PRAGMA busy_timeout=60000")
n = 0
with open(committed, "a") as out, open(errors, "a") as err:
    while not os.path.exists(stop):
        n += 1
        email = f"writer{n}@example.com"
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO users (email, display_name, password_hash, is_active, created_at)"
                " VALUES (?, 'writer', 'x', 1, '2025-01-01 00:00:00')", (email,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            err.write(f"{email}: {exc}\n")
            err.flush()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            time.sleep(0.01)
            continue
        out.write(f"{email} {time.time()}\n")
        out.flush()
        time.sleep(0.005)
'''


def _committed(path: Path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(line.split()[0], float(line.split()[1])) for line in lines if line.strip()]


def _wait_for_commits(path: Path, count: int, since: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for _, at in _committed(path) if at > since) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the writer committed fewer than {count} rows in {timeout:g} s")


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_no_write_committed_during_a_failed_run_is_lost(
        client, at_head, sample_ini, tmp_path, journal_mode):
    with closing(sqlite3.connect(at_head)) as conn:
        assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, table="step_one")
    write_revision(sample_ini, STEP_TWO, STEP_ONE, sleep=2, fail=True)
    committed, stop, errors = tmp_path / "committed", tmp_path / "stop", tmp_path / "errors"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(at_head), str(committed),
                               str(stop), str(errors)])
    try:
        _wait_for_commits(committed, 5, 0)
        started = post_run(client)
        assert started.status_code == 202, started.get_json()
        run = wait_for_run(client, started.get_json()["id"])
        ended = time.time()
        _wait_for_commits(committed, 5, ended)  # the writer went on through the whole run
    finally:
        stop.touch()
        writer.wait(timeout=90)
    assert run["status"] == "restored", run
    assert db_revisions(at_head) == [UNIFIED_REASONING]
    assert "step_one" not in tables(at_head)
    with closing(sqlite3.connect(f"{at_head.as_uri()}?mode=ro", uri=True)) as conn:
        present = {r[0] for r in conn.execute("SELECT email FROM users")}
    written = [email for email, _ in _committed(committed)]
    lost = [email for email in written if email not in present]
    assert not lost, (
        f"{len(lost)} of the {len(written)} rows the application saw COMMIT are gone after "
        f"the run was restored ({journal_mode} mode), e.g. {lost[:5]}")


# ---------------------------------------------------------------- 4. kill -9 of the server


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def request(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, _body(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _body(exc.read())


def _body(raw: bytes):
    """The answer's JSON, or its text when it is not JSON (an HTML error page)."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@contextmanager
def dashboard_server(ini: Path, url: str, instance_dir: Path, log: Path) -> Iterator[Server]:
    """The dashboard served by waitress in its own process (and process group)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env.update({
        "DASHBOARD_ALEMBIC_INI": str(ini), "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": str(instance_dir), "DASHBOARD_SEED_SAMPLE": "false",
        "DASHBOARD_SECRET_KEY": "test-secret", "PYTHONUNBUFFERED": "1",
    })
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "waitress", "--host", "127.0.0.1", "--port", str(port),
             "wsgi:app"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the dashboard exited with {process.returncode}:\n"
                                     f"{log.read_text(errors='replace')[-3000:]}")
            try:
                server.request("GET", "/api/runs")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError("the dashboard did not answer within 30 s") from None
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.parametrize("second_step", ["finishes", "fails"])
def test_killing_the_server_mid_run_leaves_a_finished_migration_and_a_final_status(
        at_head, sample_ini, db_url, instance_dir, tmp_path, second_step):
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, table="step_one")
    write_revision(sample_ini, STEP_TWO, STEP_ONE, table="step_two", sleep=4,
                   fail=second_step == "fails")
    before = rows(at_head)
    log = tmp_path / "server.log"
    workers: list[int] = []
    try:
        with dashboard_server(sample_ini, db_url, instance_dir, log) as server:
            status, started = server.request("POST", "/api/runs",
                                              {"action": "upgrade", "target": "heads"})
            assert status == 202, started
            run_id = started["id"]
            deadline = time.monotonic() + 30
            while True:
                _, run = server.request("GET", f"/api/runs/{run_id}")
                if len(run["steps"]) == 2 and run["steps"][1]["status"] == "running":
                    sleep_ends = run["steps"][1]["started_at"] + 4
                    break
                assert run["status"] not in FINISHED and time.monotonic() < deadline, run
                time.sleep(0.05)
            time.sleep(0.5)  # well inside the step's 4 s sleep
            workers = _children(server.process.pid)
            os.kill(server.process.pid, signal.SIGKILL)  # the server only, not its group
            server.process.wait()
        deadline = time.monotonic() + 30  # whatever was left running ends by itself
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "the migration never ended"

        def ended_as_expected() -> bool:
            if second_step == "finishes":
                return (db_revisions(at_head) == [STEP_TWO]
                        and {"step_one", "step_two"} <= tables(at_head))
            return rows(at_head) == before

        while time.time() < sleep_ends:  # the step sleeps on, whoever runs it now
            time.sleep(0.1)
        settle = time.monotonic() + 3  # room for whatever finishes the work after the worker
        while not ended_as_expected() and time.monotonic() < settle:
            time.sleep(0.1)
        problems = []
        extra = sorted(tables(at_head) - {name for _, name, _ in before["schema"]})
        if second_step == "finishes" and not ended_as_expected():
            problems.append(
                "the killed server's migration did not finish by itself: the database is at "
                f"{db_revisions(at_head)} (expected [{STEP_TWO!r}]) with new tables {extra}")
        if second_step == "fails" and not ended_as_expected():
            problems.append(
                "the killed server's failed migration did not leave the database as it started: "
                f"it is at {db_revisions(at_head)} with new tables {extra}")

        with dashboard_server(sample_ini, db_url, instance_dir, log) as again:
            deadline = time.monotonic() + 15
            while True:
                _, run = again.request("GET", f"/api/runs/{run_id}")
                if run["status"] in FINISHED or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        expected = "succeeded" if second_step == "finishes" else "restored"
        if run["status"] != expected:
            problems.append(f"after a restart the run says {run['status']!r}, not {expected!r}: "
                            f"{run['error']}")
        assert not problems, "\n".join(problems)
    finally:
        for pid in workers:  # never leave a worker of ours behind
            try:
                if _alive(pid) and b"alembic_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# ---------------------------------------------------------------- 5. backups in use


def test_the_backup_of_a_running_run_cannot_be_deleted(client, at_head, sample_ini):
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, sleep=3)
    started = post_run(client)
    assert started.status_code == 202, started.get_json()
    run_id = started.get_json()["id"]
    try:
        run = wait_for_step(client, run_id, 1)
        backup = client.get(f"/api/backups/{run['backup_id']}").get_json()
        refused = client.delete(f"/api/backups/{backup['id']}")
        assert refused.status_code == 409, (
            f"the pre-action backup of running run {run_id} was deleted: "
            f"{refused.status_code} {refused.get_data(as_text=True)[:300]}")
        assert os.path.isfile(backup["path"])
        assert client.get(f"/api/backups/{backup['id']}").status_code == 200
    finally:
        finish_quietly(client, run_id)
    assert wait_for_run(client, run_id)["status"] == "succeeded"


def test_a_backup_being_restored_cannot_be_deleted(client, at_head):
    taken = client.post("/api/backups", json={})
    assert taken.status_code == 201, taken.get_json()
    backup = taken.get_json()
    # An application transaction holds the write lock: the restore waits for it.
    holder = sqlite3.connect(at_head, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    run_id = None
    try:
        started = client.post(f"/api/backups/{backup['id']}/restore", json={})
        assert started.status_code == 202, started.get_json()
        run_id = started.get_json()["id"]
        run = client.get(f"/api/runs/{run_id}").get_json()
        assert run["status"] not in FINISHED, run
        refused = client.delete(f"/api/backups/{backup['id']}")
        assert refused.status_code == 409, (
            f"backup {backup['id']} was deleted while it is being restored: "
            f"{refused.status_code} {refused.get_data(as_text=True)[:300]}")
        assert os.path.isfile(backup["path"])
        assert client.get(f"/api/runs/{run_id}").get_json()["status"] not in FINISHED
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        if run_id:
            finish_quietly(client, run_id)
    assert wait_for_run(client, run_id)["status"] == "succeeded"


# ---------------------------------------------------------------- a project from `alembic init`


@pytest.fixture
def plain_project(tmp_path) -> Path:
    """A project made by the real `alembic init`: its env.py builds its own engine from
    sqlalchemy.url and ignores any connection the dashboard could hand it."""
    from alembic.config import Config

    from alembic import command

    root = tmp_path / "plain"
    root.mkdir()
    config = Config(str(root / "alembic.ini"))
    command.init(config, str(root / "alembic"))
    ini = root / "alembic.ini"
    text = ini.read_text().replace("sqlalchemy.url = driver://user:pass@localhost/dbname",
                                   f"sqlalchemy.url = sqlite:///{root / 'app.db'}")
    ini.write_text(text)
    return ini


@pytest.mark.parametrize("fails", [False, True])
def test_a_project_made_by_alembic_init_runs_in_the_held_transaction(plain_project, tmp_path,
                                                                     fails):
    db = plain_project.parent / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('kept')")
    versions = plain_project.parent / "alembic" / "versions"
    (versions / "aaa100000001_first.py").write_text(
        '"""first"""\nimport sqlalchemy as sa\nfrom alembic import op\n'
        'revision = "aaa100000001"\ndown_revision = None\n'
        'def upgrade():\n'
        '    op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))\n'
        '    op.execute("UPDATE notes SET body = \'changed\'")\n'
        'def downgrade():\n    op.drop_table("t1")\n')
    write_revision(plain_project, "bbb200000002", "aaa100000001", table="t2", fail=fails)
    before = rows(db)
    client = create_app({
        "TESTING": True, "WTF_CSRF_ENABLED": False, "DASHBOARD_SECRET_KEY": "t",
        "DASHBOARD_ALEMBIC_INI": str(plain_project), "DASHBOARD_DATABASE_URL": None,
        "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst"), "DASHBOARD_SEED_SAMPLE": False,
    }).test_client()
    started = post_run(client)
    assert started.status_code == 202, started.get_json()
    run = wait_for_run(client, started.get_json()["id"])
    if fails:
        assert run["status"] == "restored", run
        assert "rolled back" in run["error"], run["error"]
        assert rows(db) == before
    else:
        assert run["status"] == "succeeded", run
        assert {"t1", "t2", "notes", "alembic_version"} <= tables(db)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT body FROM notes").fetchall() == [("changed",)]
