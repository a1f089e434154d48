"""`pip install .` in a fresh venv, then the installed commands, as a user runs them.

One venv per test session: the package is built from a copy of what it ships
(pyproject.toml, README.md, dashboard/) with the build tools of the venv that
runs the tests (setuptools, from requirements-dev.txt) and no index, so
nothing is downloaded; the dependencies come from that venv through a .pth
file. Every command runs outside the repository, so it can only find the
installed package and its own files (templates, htmx, the worker script).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from dashboard.cli import is_local_address, serve_settings
from tests.conftest import CHATS, MERGE, REPO, UNIFIED_REASONING, copy_sample_project, migrate
from tests.e2e_server import STARTUP_TIMEOUT, _free_port, _stop

pytestmark = pytest.mark.packaging

HTMX = "htmx-2.0.11.min.js"
TIMEOUT = 180


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=cwd, env=env or self.env, capture_output=True,
                              text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def _dependency_paths() -> list[str]:
    """Where this interpreter finds its packages: its site-packages and what their
    .pth files add (the venv the tests run in, with requirements-dev.txt)."""
    first = min(sys.path.index(p) for p in site.getsitepackages() if p in sys.path)
    return [p for p in sys.path[first:] if os.path.isdir(p)]


def _clean_env() -> dict[str, str]:
    """The environment of a user who set nothing: no DASHBOARD_*, no PYTHONPATH."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DASHBOARD_", "FLASK_")) and k not in ("PYTHONPATH",
                                                                         "AUTO_MIGRATE")}


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        pytest.fail(f"building the package with no download needs setuptools>=70.1 (this "
                    f"venv has {setuptools.__version__}): pip install -r requirements-dev.txt")
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "dashboard", source / "dashboard",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=TIMEOUT)
    site_packages = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages"
    (site_packages / "dependencies.pth").write_text("\n".join(_dependency_paths()) + "\n")
    env = _clean_env()
    built = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", str(source)],
        cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert built.returncode == 0, built.stdout + built.stderr
    return Installed(venv, site_packages, env)


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the sample with its own database (the ini's default URL) at CHATS."""
    ini = copy_sample_project(tmp_path / "project")
    (ini.parent / "instance").mkdir()
    migrate(ini, f"sqlite:///{ini.parent / 'instance' / 'sample.db'}", CHATS)
    return ini


@pytest.fixture
def workdir(tmp_path) -> Path:
    """The folder the user runs the command in."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def _wait_until_answering(url: str, process: subprocess.Popen, log: Path) -> None:
    """Until the server answers at all (a project it cannot read answers 503)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            get(url)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer:\n{log.read_text()}")


@contextmanager
def serving(installed: Installed, args: list[str], cwd: Path, log: Path):
    """A command that serves the dashboard, started in its own process group; its URL."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen([*args, "--port", str(port)], cwd=cwd, env=installed.env,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_until_answering(f"{url}/api/status", process, log)
        yield url
    finally:
        _stop(process)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ------------------------------------------------------------------ the package

def test_the_command_runs_the_installed_package_not_the_repository(installed, workdir):
    where = installed.run(installed.bin("python"), "-c",
                          "import dashboard; print(dashboard.__file__)", cwd=workdir)

    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).parent == installed.site_packages / "dashboard"
    assert (installed.venv / "bin" / "migration-dashboard").is_file()
    for folder in ("templates", "static"):
        shipped = {p.name for p in (installed.site_packages / "dashboard" / folder).iterdir()}
        assert shipped == {p.name for p in (REPO / "dashboard" / folder).iterdir()}


def test_serve_shows_the_sample_with_the_packaged_templates_and_htmx(
        installed, project, workdir, tmp_path):
    with serving(installed, [installed.bin("migration-dashboard"), "serve", str(project)],
                 workdir, tmp_path / "serve.log") as url:
        status, body = get(f"{url}/api/status")
        page_status, page = get(f"{url}/")
        history_status, history = get(f"{url}/history")
        htmx_status, htmx = get(f"{url}/static/{HTMX}")

    assert status == 200, body
    answer = json.loads(body)
    assert answer["state"] == "pending"
    assert answer["current"] == [CHATS]
    assert answer["heads"] == [UNIFIED_REASONING]
    assert len(answer["pending"]) == 7
    assert answer["database"]["url"] == f"sqlite:///{project.parent / 'instance' / 'sample.db'}"
    assert page_status == 200
    assert CHATS in page.decode() and "7" in page.decode()
    assert history_status == 200 and MERGE in history.decode()
    assert htmx_status == 200
    assert htmx == (REPO / "dashboard" / "static" / HTMX).read_bytes()
    # Installed, the dashboard's own state goes to instance/ of the current folder.
    assert (workdir / "instance" / "dashboard.db").is_file()
    assert not (installed.site_packages / "instance").exists()
    log = (tmp_path / "serve.log").read_text()
    assert f"on {url}/ (project {project})" in log


def test_serve_without_a_project_uses_the_current_folders_alembic_ini(
        installed, project, tmp_path):
    with serving(installed, [installed.bin("migration-dashboard"), "serve"], project.parent,
                 tmp_path / "serve.log") as url:
        status, body = get(f"{url}/api/status")

    assert status == 200, body
    assert json.loads(body)["current"] == [CHATS]


def test_serve_refuses_an_address_that_is_not_local(installed, project, workdir):
    result = installed.run(installed.bin("migration-dashboard"), "serve", str(project),
                           "--host", "0.0.0.0", "--port", str(_free_port()), cwd=workdir)

    assert result.returncode == 2
    assert "not a local address" in result.stderr and "--allow-remote" in result.stderr


@pytest.mark.parametrize("host, local", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.0.2.10", False),
    ("example.org", False),
])
def test_which_addresses_are_local(host, local):
    assert is_local_address(host) is local


def test_a_remote_address_served_on_purpose_is_an_allowed_host(project):
    remote = serve_settings(str(project), host="192.0.2.10", environ={})
    everywhere = serve_settings(str(project), host="0.0.0.0", environ={})

    assert remote["DASHBOARD_ALLOWED_HOSTS"] == "localhost,127.0.0.1,[::1],192.0.2.10"
    assert everywhere["DASHBOARD_ALLOWED_HOSTS"] == "localhost,127.0.0.1,[::1]"
    assert remote["DASHBOARD_ALEMBIC_INI"] == str(project)


def test_a_project_on_the_command_line_wins_over_a_targets_file(project, tmp_path):
    environ = {"DASHBOARD_TARGETS_FILE": str(tmp_path / "targets.toml")}

    assert serve_settings(str(project), environ=environ)["DASHBOARD_TARGETS_FILE"] is None
    assert serve_settings(None, environ=environ)["DASHBOARD_TARGETS_FILE"] == \
        environ["DASHBOARD_TARGETS_FILE"]


def test_serve_says_so_when_the_project_is_missing(installed, workdir):
    result = installed.run(installed.bin("migration-dashboard"), "serve",
                           str(workdir / "nowhere.ini"), cwd=workdir)

    assert result.returncode == 2
    assert "nowhere.ini not found" in result.stderr


# ------------------------------------------------------------------ the verbs

def test_status_pending_and_history_say_what_migrate_db_says(installed, project, workdir):
    def installed_command(*args: str) -> subprocess.CompletedProcess:
        return installed.run(installed.bin("migration-dashboard"), *args, str(project),
                             cwd=workdir)

    def seed_tool(*args: str) -> subprocess.CompletedProcess:
        return installed.run(sys.executable, str(REPO / "migrate_db.py"), *args,
                             "--ini", str(project), "--instance-dir", str(workdir / "instance"),
                             cwd=REPO)

    for verb, flag in (("status", "--check"), ("history", "--history")):
        mine, seed = installed_command(verb, "--json"), seed_tool(flag, "--json")
        assert (mine.returncode, seed.returncode) == (0, 0), mine.stderr + seed.stderr
        assert json.loads(mine.stdout) == json.loads(seed.stdout)
    status, seed_status = installed_command("status"), seed_tool("--check")
    assert status.stdout == seed_status.stdout and f"Current:  {CHATS}" in status.stdout
    pending = installed_command("pending")
    assert pending.returncode == 1, pending.stderr
    assert "7 pending revision(s)" in pending.stdout
    assert "Run `migration-dashboard upgrade` to apply them" in pending.stdout


def test_upgrade_runs_under_the_projects_python_without_the_dashboards_packages(
        installed, project, workdir, tmp_path):
    record = tmp_path / "pythonpath.txt"
    project_python = tmp_path / "project-python"
    project_python.write_text(f'#!/bin/sh\nprintf "%s\\n" "PYTHONPATH=$PYTHONPATH" >> {record}\n'
                              f'exec {installed.bin("python")} "$@"\n')
    project_python.chmod(0o755)
    env = dict(installed.env, DASHBOARD_PYTHON=str(project_python))

    upgrade = installed.run(installed.bin("migration-dashboard"), "upgrade", str(project),
                            cwd=workdir, env=env)

    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert f"now at {UNIFIED_REASONING}" in upgrade.stdout
    with sqlite3.connect(project.parent / "instance" / "sample.db") as conn:
        assert [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")] == [
            UNIFIED_REASONING]
    assert list((workdir / "instance" / "backups").glob("*.sqlite3"))
    # The steps ran under DASHBOARD_PYTHON, which did not inherit the dashboard's packages.
    assert record.read_text().startswith("PYTHONPATH=")
    assert str(installed.site_packages) not in record.read_text()


def test_status_on_a_missing_project_exits_2(installed, workdir):
    missing = installed.run(installed.bin("migration-dashboard"), "status",
                            str(workdir / "nowhere.ini"), cwd=workdir)

    assert missing.returncode == 2
    assert "alembic.ini not found" in missing.stderr


# ------------------------------------------------------------------ flask migration-dashboard

FLASK_APP = '''\
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///app.db"
    db.init_app(app)
    {migrate}
    return app
'''


def _flask_app(folder: Path, *, with_migrate: bool = True) -> Path:
    folder.mkdir()
    (folder / "app.py").write_text(FLASK_APP.format(
        migrate="Migrate(app, db)" if with_migrate else "pass"))
    return folder


def test_flask_lists_the_command_in_a_flask_migrate_app(installed, tmp_path):
    folder = _flask_app(tmp_path / "flaskapp")

    listed = installed.run(installed.bin("python"), "-m", "flask", "--app", "app", "--help",
                           cwd=folder)
    helped = installed.run(installed.bin("python"), "-m", "flask", "--app", "app",
                           "migration-dashboard", "--help", cwd=folder)

    assert listed.returncode == 0, listed.stderr
    assert "migration-dashboard" in listed.stdout
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    assert "--port" in text and "Serve the Migration Dashboard on this application" in text


def test_flask_command_serves_the_apps_migrations_folder(installed, tmp_path):
    folder = _flask_app(tmp_path / "flaskapp")
    init = installed.run(installed.bin("python"), "-m", "flask", "--app", "app", "db", "init",
                         cwd=folder)
    assert init.returncode == 0, init.stdout + init.stderr

    with serving(installed, [installed.bin("python"), "-m", "flask", "--app", "app",
                             "migration-dashboard"], folder, tmp_path / "serve.log") as url:
        status, _ = get(f"{url}/api/status")

    assert status != 500
    log = (tmp_path / "serve.log").read_text()
    assert f"(project {folder / 'migrations'}, Flask app {folder / 'app'})" in log


def test_flask_command_without_flask_migrate_says_so(installed, tmp_path):
    folder = _flask_app(tmp_path / "plainapp", with_migrate=False)

    result = installed.run(installed.bin("python"), "-m", "flask", "--app", "app",
                           "migration-dashboard", cwd=folder)

    assert result.returncode == 2
    assert "has no Flask-Migrate" in result.stderr



def test_an_installed_command_never_seeds_a_sample(installed, tmp_path, workdir):
    ini = copy_sample_project(tmp_path / "fresh")
    (ini.parent / "instance").mkdir()

    status = installed.run(installed.bin("migration-dashboard"), "status", str(ini), cwd=workdir)

    assert status.returncode == 2, status.stdout + status.stderr
    assert "does not exist" in status.stdout + status.stderr
    assert not (ini.parent / "instance" / "sample.db").exists()
