"""The dashboard reads a project as Alembic does, without running its env.py.

Every project here is made by the real tools (``alembic init -t pyproject``,
``alembic init -t generic``, ``flask db init``) in a temporary folder, given
revisions by ``alembic revision``, and the dashboard's heads and pending
revisions are compared with what the project's own ``alembic heads`` and
``alembic upgrade --sql`` print.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard.errors import ConfigurationError
from dashboard.services import alembic_process
from dashboard.services import project as project_service
from dashboard.services.revisions import HistoryCache, pending_revisions
from tests.conftest import client_for

BIN = Path(sys.executable).parent
PLACEHOLDER = "driver://user:pass@localhost/dbname"


def tool(folder: Path, name: str, *args: str, env: dict | None = None) -> str:
    """Run one of the venv's tools (alembic, flask) in ``folder``; its stdout."""
    proc = subprocess.run([str(BIN / name), *args], cwd=folder, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def alembic(folder: Path, *args: str) -> str:
    return tool(folder, "alembic", *args)


def alembic_heads(folder: Path) -> set[str]:
    return {line.split()[0] for line in alembic(folder, "heads").splitlines() if line.strip()}


def alembic_pending(folder: Path, current: str) -> list[str]:
    """What ``alembic upgrade heads`` would apply from ``current``, in order."""
    out = alembic(folder, "upgrade", f"{current}:heads", "--sql")
    return re.findall(r"^-- Running upgrade \S* -> (\S+)", out, re.M)


def new_revision(folder: Path, message: str, *args: str) -> str:
    out = alembic(folder, "revision", "-m", message, *args)
    return re.search(r"([0-9a-f]{12})_", out).group(1)


def load_project(named, url, **options):
    """The project as the dashboard reads it, its subprocesses under this Python."""
    return project_service.load_project(str(named), url, python=sys.executable, **options)


def history_of(project):
    return HistoryCache(lambda p, paths: alembic_process.import_headers(p, paths, 120)
                        ).load(project)


def set_ini_url(ini: Path, url: str) -> None:
    text = ini.read_text()
    ini.write_text(re.sub(r"^sqlalchemy\.url = .*$", f"sqlalchemy.url = {url}", text,
                          flags=re.M))


@pytest.fixture
def pyproject_project(tmp_path) -> Path:
    """``alembic init -t pyproject``: two revisions in the script location, and a
    third in a version location declared only in pyproject.toml."""
    folder = tmp_path / "pyproj"
    folder.mkdir()
    alembic(folder, "init", "-t", "pyproject", "alembic")
    set_ini_url(folder / "alembic.ini", "sqlite:///%(here)s/app.db")
    new_revision(folder, "first")
    second = new_revision(folder, "second")
    (folder / "extra_versions").mkdir()
    with open(folder / "pyproject.toml", "a", encoding="utf-8") as handle:
        handle.write('version_locations = ["%(here)s/alembic/versions", '
                     '"%(here)s/extra_versions"]\n')
    new_revision(folder, "extra", "--head", second, "--version-path", "extra_versions")
    alembic(folder, "upgrade", second)
    return folder


def test_pyproject_project_reads_versions_declared_only_in_pyproject(pyproject_project,
                                                                     tmp_path):
    folder = pyproject_project
    second = alembic(folder, "current").split()[0]
    theirs_pending = alembic_pending(folder, second)
    assert len(theirs_pending) == 1  # the revision in extra_versions
    for named in (folder, folder / "pyproject.toml", folder / "alembic.ini"):
        project = load_project(str(named), None)
        assert project.toml_path == str(folder / "pyproject.toml")
        assert project.ini_path == str(folder / "alembic.ini")
        history = history_of(project)
        assert set(history.heads) == alembic_heads(folder)
        assert [r.revision for r in pending_revisions(history, (second,))] == theirs_pending

    client = client_for(folder, f"sqlite:///{folder / 'app.db'}", tmp_path / "instance")
    body = client.get("/api/status").get_json()
    assert body["state"] == "pending"
    assert body["heads"] == sorted(alembic_heads(folder))
    assert [p["revision"] for p in body["pending"]] == theirs_pending


def test_worker_reads_the_same_pyproject_config(pyproject_project, tmp_path):
    """The offline SQL (env.py in the worker) finds script_location in pyproject.toml,
    and a computed header is imported with pyproject's prepend_sys_path."""
    folder = pyproject_project
    lib = folder / "lib"
    lib.mkdir()
    (lib / "host_constants.py").write_text("PARENT = None\n")
    toml = folder / "pyproject.toml"
    text, count = re.subn(r'prepend_sys_path = \[\s*"\."\s*\]',
                          'prepend_sys_path = ["%(here)s/lib"]', toml.read_text())
    assert count == 1
    toml.write_text(text)
    computed = folder / "alembic" / "versions" / "c0ffee000001_computed.py"
    computed.write_text(
        '"""computed parent"""\nfrom alembic import op\nimport sqlalchemy as sa\n'
        "from host_constants import PARENT\n\n"
        'revision = "c0ffee000001"\ndown_revision = PARENT\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n    op.create_table('computed', sa.Column('id', sa.Integer))\n\n\n"
        "def downgrade():\n    op.drop_table('computed')\n"
    )
    assert alembic_heads(folder) >= {"c0ffee000001"}
    project = load_project(str(folder), None)
    history = history_of(project)
    assert history.unreadable == ()
    assert set(history.heads) == alembic_heads(folder)

    client = client_for(folder, f"sqlite:///{folder / 'app.db'}", tmp_path / "instance")
    body = client.get("/api/revisions/c0ffee000001").get_json()
    assert body["upgrade_sql_error"] is None, body["upgrade_sql_error"]
    assert "CREATE TABLE computed" in body["upgrade_sql"]


def test_pyproject_without_an_ini(tmp_path):
    """A project whose whole configuration is pyproject.toml: the worker reads it alone."""
    folder = tmp_path / "only_toml"
    folder.mkdir()
    alembic(folder, "init", "-t", "pyproject", "alembic")
    first = new_revision(folder, "first")
    (folder / "alembic.ini").unlink()
    project = load_project(str(folder), f"sqlite:///{tmp_path / 'x.db'}")
    assert project.ini_path == project.toml_path == str(folder / "pyproject.toml")
    assert history_of(project).heads == (first,)
    client = client_for(folder, f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "instance")
    body = client.get(f"/api/revisions/{first}").get_json()
    assert body["upgrade_sql_error"] is None, body["upgrade_sql_error"]


def test_generic_ini_with_its_separator_and_recursive_locations(tmp_path):
    folder = tmp_path / "generic"
    folder.mkdir()
    alembic(folder, "init", "-t", "generic", "alembic")
    ini = folder / "alembic.ini"
    set_ini_url(ini, "sqlite:///%(here)s/app.db")
    text = ini.read_text().replace("path_separator = os", "path_separator = ;")
    text = text.replace(
        "[alembic]\n",
        "[alembic]\nversion_locations = %(here)s/alembic/versions;%(here)s/more versions\n"
        "recursive_version_locations = true\n", 1)
    ini.write_text(text)
    (folder / "more versions" / "2025").mkdir(parents=True)
    first = new_revision(folder, "first", "--version-path", "alembic/versions")
    nested = new_revision(folder, "nested", "--head", first, "--version-path", "more versions")
    for path in (folder / "more versions").glob(f"{nested}_*.py"):
        path.rename(folder / "more versions" / "2025" / path.name)  # found by recursion only
    new_revision(folder, "side", "--head", first, "--splice", "--version-path",
                 "alembic/versions")
    project = load_project(str(ini), None)
    assert project.version_locations == (str(folder / "alembic" / "versions"),
                                         str(folder / "more versions"))
    history = history_of(project)
    assert len(history.revisions) == 3
    assert set(history.heads) == alembic_heads(folder)
    assert [r.revision for r in pending_revisions(history, (first,))] == alembic_pending(
        folder, first)


def test_relative_script_location_is_the_ini_folders(tmp_path, monkeypatch):
    """An older ini says ``script_location = alembic``: Alembic, run beside the ini,
    finds it there, whatever the dashboard's own working folder."""
    folder = tmp_path / "old"
    folder.mkdir()
    alembic(folder, "init", "-t", "generic", "alembic")
    ini = folder / "alembic.ini"
    ini.write_text(ini.read_text().replace("script_location = %(here)s/alembic",
                                           "script_location = alembic"))
    monkeypatch.chdir(tmp_path)
    project = load_project(str(ini), "sqlite:///x.db")
    assert project.script_location == str(folder / "alembic")


def flask_migrate_project(folder: Path) -> Path:
    """A Flask app with Flask-Migrate, and ``flask db init`` run on it."""
    folder.mkdir()
    (folder / "app.py").write_text(
        "from flask import Flask\nfrom flask_sqlalchemy import SQLAlchemy\n"
        "from flask_migrate import Migrate\n\n"
        "app = Flask(__name__)\n"
        "app.config['SQLALCHEMY_DATABASE_URI'] = 'sqlite:///app.db'\n"
        "db = SQLAlchemy(app)\nmigrate = Migrate(app, db)\n"
    )
    tool(folder, "flask", "--app", "app", "db", "init")
    return folder


def test_flask_migrate_folder_is_found_and_its_script_location_is_its_folder(tmp_path):
    folder = flask_migrate_project(tmp_path / "flaskapp")
    migrations = folder / "migrations"
    assert "script_location" not in (migrations / "alembic.ini").read_text()
    # An application's own pyproject.toml, without [tool.alembic], is passed over.
    (folder / "pyproject.toml").write_text("[project]\nname = 'flaskapp'\n")
    first = re.search(r"([0-9a-f]{12})_", tool(folder, "flask", "--app", "app", "db",
                                               "revision", "-m", "first")).group(1)
    # A computed header is imported by the worker, with no database URL at all.
    (migrations / "versions" / "c0ffee000002_computed.py").write_text(
        f'"""computed"""\nPARENT = {first!r}\nrevision = "c0ffee000002"\n'
        "down_revision = PARENT\nbranch_labels = None\ndepends_on = None\n")
    for named in (folder, migrations, migrations / "alembic.ini"):
        project = load_project(str(named), None, require_url=False)
        assert project.ini_path == str(migrations / "alembic.ini")
        assert project.script_location == str(migrations)
        assert project.database_url is None  # the app names it, not the ini
        assert project.toml_path is None
        history = history_of(project)
        assert history.unreadable == ()
        assert history.heads == ("c0ffee000002",)
    heads = tool(folder, "flask", "--app", "app", "db", "heads")
    assert heads.split()[0] == "c0ffee000002"


def test_worker_takes_the_script_location_of_an_ini_without_one(tmp_path):
    """Any ini without script_location beside an env.py (Flask-Migrate's shape): the
    worker's Config finds the scripts there too (offline SQL through env.py)."""
    folder = tmp_path / "beside"
    folder.mkdir()
    alembic(folder, "init", "-t", "generic", "migrations")
    first = new_revision(folder, "first")
    ini = folder / "migrations" / "alembic.ini"
    text = (folder / "alembic.ini").read_text()
    ini.write_text(re.sub(r"^script_location = .*$", "", text, flags=re.M))
    (folder / "alembic.ini").unlink()
    client = client_for(folder, f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "instance")
    assert client.get("/api/status").get_json()["heads"] == [first]
    body = client.get(f"/api/revisions/{first}").get_json()
    assert body["upgrade_sql_error"] is None, body["upgrade_sql_error"]


def test_folder_without_a_project_names_what_was_looked_for(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 99\n")
    with pytest.raises(ConfigurationError) as caught:
        load_project(str(tmp_path), "sqlite:///x.db")
    text = caught.value.message + " " + caught.value.detail
    for looked_for in ("alembic.ini", "pyproject.toml", "[tool.alembic]",
                       "migrations/alembic.ini"):
        assert looked_for in text
    client = client_for(tmp_path, "sqlite:///x.db", tmp_path / "instance")
    response = client.get("/api/status")
    assert response.status_code == 503
    assert "No Alembic project" in response.get_json()["error"]["message"]


def test_pyproject_without_tool_alembic_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(ConfigurationError, match=r"no \[tool.alembic\]"):
        load_project(str(tmp_path / "pyproject.toml"), "sqlite:///x.db")


# ---------------------------------------------------------------- the database URL


@pytest.fixture
def placeholder_project(tmp_path) -> Path:
    folder = tmp_path / "fresh"
    folder.mkdir()
    alembic(folder, "init", "-t", "generic", "alembic")
    assert PLACEHOLDER in (folder / "alembic.ini").read_text()
    return folder


def test_placeholder_url_says_what_to_do_and_hides_the_password(placeholder_project,
                                                                tmp_path):
    ini = placeholder_project / "alembic.ini"
    with pytest.raises(ConfigurationError) as caught:
        load_project(str(ini), None)
    message = caught.value.message
    assert message.startswith(f"sqlalchemy.url in {ini} is the placeholder")
    assert "set DASHBOARD_DATABASE_URL, or let env.py supply the URL" in message
    assert "Can't load plugin" not in message
    assert ":pass@" not in message

    project = load_project(str(ini), None, require_url=False)
    assert project.database_url is None
    assert project.url_problem == message

    client = client_for(placeholder_project, "", tmp_path / "instance")
    response = client.get("/api/status")
    assert response.status_code == 503
    body = response.get_json()["error"]
    assert "is the placeholder" in body["message"]
    assert "Can't load plugin" not in str(body) and ":pass@" not in str(body)


def test_no_url_at_all(placeholder_project):
    ini = placeholder_project / "alembic.ini"
    set_ini_url(ini, "")
    with pytest.raises(ConfigurationError, match="set DASHBOARD_DATABASE_URL, or let env.py"):
        load_project(str(ini), None)
    assert load_project(str(ini), None, require_url=False).database_url is None


def test_unloadable_dialect_counts_as_no_url(placeholder_project):
    ini = placeholder_project / "alembic.ini"
    set_ini_url(ini, "nosuchdb://admin:s3cret@db.example/app")
    project = load_project(str(ini), None, require_url=False)
    assert project.database_url is None
    assert "nosuchdb" in project.url_problem and "s3cret" not in project.url_problem


def test_dashboard_url_wins_over_the_placeholder(placeholder_project, tmp_path):
    project = load_project(str(placeholder_project), f"sqlite:///{tmp_path / 'x.db'}")
    assert project.database_url == f"sqlite:///{tmp_path / 'x.db'}"
    assert project.url_problem is None


def test_a_bad_dashboard_url_is_refused_without_its_password(placeholder_project):
    with pytest.raises(ConfigurationError) as caught:
        load_project(str(placeholder_project), "driver://u:hunter2@h/db", require_url=False)
    assert "DASHBOARD_DATABASE_URL" in caught.value.message
    assert "hunter2" not in caught.value.message


# ---------------------------------------- histories without their application

KILO, EXPAND_1, CONTRACT_1, EXPAND_2, CONTRACT_2 = (
    "kilo", "354db87e3225", "30018084ec99", "1c844d1677f7", "4af11ca47297")


def neutron_revision(revision: str, down: str | None, labels: str = "None",
                     depends: str = "None", imports: str = "") -> str:
    """A revision file shaped as Neutron's: it imports Neutron, which is not installed
    here, and its branch label is a constant of Neutron's."""
    return (
        f'"""{revision} of a Neutron-shaped history\n\nRevision ID: {revision}\n"""\n\n'
        f"from alembic import op\nimport sqlalchemy as sa\n{imports}\n\n"
        "# revision identifiers, used by Alembic.\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\n"
        f"branch_labels = {labels}\ndepends_on = {depends}\n\n\n"
        f"def upgrade():\n    op.create_table('t_{revision}', sa.Column('id', sa.Integer))\n"
    )


@pytest.fixture
def neutron_project(tmp_path) -> Path:
    folder = tmp_path / "neutron"
    folder.mkdir()
    alembic(folder, "init", "-t", "generic", "alembic_migrations")
    ini = folder / "alembic.ini"
    ini.write_text(ini.read_text().replace(
        "[alembic]\n", "[alembic]\nrecursive_version_locations = true\n", 1))
    set_ini_url(ini, "sqlite:///%(here)s/neutron.db")
    versions = folder / "alembic_migrations" / "versions"
    cli = "from neutron.db.migration import cli\n"
    files = {
        "kilo_initial.py": neutron_revision(KILO, None),
        "liberty/expand/354db87e3225_nsxv_vdr_metadata.py": neutron_revision(
            EXPAND_1, KILO, "(cli.EXPAND_BRANCH,)", imports=cli),
        "liberty/contract/30018084ec99_initial.py": neutron_revision(
            CONTRACT_1, KILO, "(cli.CONTRACT_BRANCH,)", imports=cli),
        "mitaka/expand/1c844d1677f7_dns_nameservers_order.py": neutron_revision(
            EXPAND_2, EXPAND_1, imports="from neutron.db import migration\n"
            "neutron_milestone = [migration.MITAKA]\n"),
        "mitaka/contract/4af11ca47297_drop_cisco_monolithic_tables.py": neutron_revision(
            CONTRACT_2, CONTRACT_1, depends=f"({EXPAND_2!r},)", imports=cli),
    }
    for name, source in files.items():
        (versions / name).parent.mkdir(parents=True, exist_ok=True)
        (versions / name).write_text(source)
    return folder


def alembic_with_neutron_stub(folder: Path, tmp_path: Path, *args: str) -> str:
    """The project's own ``alembic``, with a stand-in for Neutron on the path."""
    stub = tmp_path / "neutron_stub" / "neutron" / "db" / "migration"
    stub.mkdir(parents=True, exist_ok=True)
    for package in (stub.parent.parent, stub.parent, stub):
        (package / "__init__.py").write_text("")
    (stub / "__init__.py").write_text("MITAKA = 'mitaka'\n")
    (stub / "cli.py").write_text("EXPAND_BRANCH = 'expand'\nCONTRACT_BRANCH = 'contract'\n")
    return tool(folder, "alembic", *args, env={"PYTHONPATH": str(tmp_path / "neutron_stub")})


def test_neutron_shaped_history_reads_completely_without_neutron(neutron_project, tmp_path):
    folder = neutron_project
    project = load_project(folder, None)
    history = history_of(project)
    assert history.error is None and history.unreadable == ()
    assert set(history.revisions) == {KILO, EXPAND_1, CONTRACT_1, EXPAND_2, CONTRACT_2}
    theirs = {line.split()[0] for line in
              alembic_with_neutron_stub(folder, tmp_path, "heads").splitlines()}
    assert set(history.heads) == theirs == {EXPAND_2, CONTRACT_2}
    out = alembic_with_neutron_stub(folder, tmp_path, "upgrade", f"{KILO}:heads", "--sql")
    pending = [r.revision for r in pending_revisions(history, (KILO,))]
    assert set(pending) == set(re.findall(r"^-- Running upgrade \S* -> (\S+)", out, re.M))
    assert pending.index(EXPAND_2) < pending.index(CONTRACT_2)  # its depends_on
    unresolved = dict(history.revisions[CONTRACT_1].unresolved)
    assert set(unresolved) == {"branch_labels"}
    assert "cli.CONTRACT_BRANCH" in unresolved["branch_labels"]
    assert "No module named 'neutron'" in unresolved["branch_labels"]
    assert history.revisions[EXPAND_2].unresolved == ()  # its headers are all literals


def test_neutron_shaped_history_pages_and_api(neutron_project, tmp_path):
    from tests import history_factory as hf

    folder = neutron_project
    url = hf.stamp_database(tmp_path / "neutron.db", [KILO])
    client = client_for(folder, url, tmp_path / "instance")

    status = client.get("/api/status")
    assert status.status_code == 200
    assert status.get_json()["state"] == "pending"
    assert sorted(status.get_json()["heads"]) == sorted([EXPAND_2, CONTRACT_2])

    listed = client.get("/api/revisions")
    assert listed.status_code == 200
    by_id = {r["revision"]: r for r in listed.get_json()["revisions"]}
    assert set(by_id) == {KILO, EXPAND_1, CONTRACT_1, EXPAND_2, CONTRACT_2}
    assert set(by_id[EXPAND_1]["unresolved"]) == {"branch_labels"}
    assert by_id[EXPAND_2]["unresolved"] == {} and by_id[EXPAND_2]["missing"] is False

    one = client.get(f"/api/revisions/{EXPAND_1}")
    assert one.status_code == 200
    assert "cli.EXPAND_BRANCH" in one.get_json()["unresolved"]["branch_labels"]

    page = client.get("/history")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert all(rev in text for rev in by_id)
    assert "unresolved" in text and "cli.CONTRACT_BRANCH" in text

    page = client.get(f"/revisions/{CONTRACT_1}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Unresolved headers" in text and "branch_labels" in text
    assert "No module named &#39;neutron&#39;" in text or "No module named 'neutron'" in text

    overview = client.get("/")
    assert overview.status_code == 200 and "unresolved" in overview.get_data(as_text=True)


def test_a_dangling_parent_draws_a_partial_graph_with_the_problem_marked(neutron_project,
                                                                       tmp_path):
    from tests import history_factory as hf

    folder = neutron_project
    lost = "0ff1ce000000"
    (folder / "alembic_migrations" / "versions" / "5c0ffee00001_orphan.py").write_text(
        neutron_revision("5c0ffee00001", lost))
    url = hf.stamp_database(tmp_path / "neutron.db", [KILO])
    client = client_for(folder, url, tmp_path / "instance")

    status = client.get("/api/status")
    assert status.status_code == 200
    body = status.get_json()
    assert body["missing"] == [lost]
    assert any(lost in p and "5c0ffee00001" in p for p in body["problems"])

    by_id = {r["revision"]: r for r in client.get("/api/revisions").get_json()["revisions"]}
    assert by_id["5c0ffee00001"]["down_revisions"] == [lost]
    assert by_id[lost]["missing"] is True and "file" in by_id[lost]["unresolved"]

    page = client.get("/history")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "5c0ffee00001" in text and lost in text and "missing" in text

    page = client.get(f"/revisions/{lost}")
    assert page.status_code == 200
    assert "No readable revision file defines this revision" in page.get_data(as_text=True)
    assert "Back up, then upgrade" not in page.get_data(as_text=True)
    assert client.get("/").status_code == 200
    lint = client.get("/api/lint")
    assert lint.status_code == 200 and lost in lint.get_data(as_text=True), lint.get_json()
    script = client.get("/api/sql/pending")
    assert script.status_code in (200, 409), script.get_data(as_text=True)[:300]
    assert lost in script.get_data(as_text=True)

    refused = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert refused.status_code == 409
    assert lost in refused.get_json()["error"]["message"]
    assert client.get("/api/runs").get_json()["runs"] == []
    assert client.get("/api/status").get_json()["current"] == [KILO]
