"""Real Alembic projects, made by the real tools, as our users have them.

Each kind is made once per test session by its own tool (``flask db init`` and
``flask db migrate``; ``alembic init -t async|pyproject|multidb|generic`` and
``alembic revision``), with revisions that create real tables; every test
works on a copy of it (``RealProject.copy``), pointed at its own database.
Nothing here imitates a tool: the project's state is always asked of its own
``alembic`` or ``flask db``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

BIN = Path(sys.executable).parent
ALEMBIC = str(BIN / "alembic")
FLASK = str(BIN / "flask")

KINDS = ("flask", "async", "pyproject", "multidb", "env_url")
TOOL_SECONDS = 120

# Each revision's tables, in order: the same schema for every kind.
PLAIN_REVISIONS = (
    ("aa01customers", "create customers", "customers"),
    ("aa02orders", "create orders", "orders"),
    ("aa03invoices", "create invoices", "invoices"),
)
FAILING_TABLE = "doomed"
FAILING_MESSAGE = "failing on purpose after creating a table"


@dataclass(frozen=True)
class RealProject:
    """One project folder and how its own tool is called."""

    kind: str
    root: Path
    revisions: tuple[str, ...]  # oldest first; a straight line
    tables: tuple[str, ...]  # the table each revision creates
    urls: dict[str, str] = field(default_factory=dict)  # multidb: engine name -> URL

    # ------------------------------------------------------------ where things are

    @property
    def dashboard_path(self) -> Path:
        """What DASHBOARD_ALEMBIC_INI names for this project, as a user would set it."""
        if self.kind in ("flask", "pyproject"):
            # The project folder: Flask-Migrate's migrations/, or pyproject.toml's
            # [tool.alembic] with the alembic.ini beside it that holds the URL.
            return self.root
        return self.root / "alembic.ini"

    @property
    def flask_app(self) -> str | None:
        return "app" if self.kind == "flask" else None

    @property
    def env_py(self) -> Path:
        return self.root / "migrations" / "env.py"

    @property
    def reads_database_url(self) -> bool:
        """env.py (or the Flask app) takes its database from DATABASE_URL."""
        return self.kind in ("flask", "env_url") or "DATABASE_URL" in self.env_py.read_text()

    # ------------------------------------------------------------ making copies

    def copy(self, dest: Path) -> RealProject:
        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
        return replace(self, root=dest, urls=dict(self.urls))

    def point_at(self, url: str | None = None, **engines: str) -> None:
        """Write the database URL(s) into the project's own config, where its
        template keeps them (the ini's sqlalchemy.url, or each multidb engine's)."""
        ini = self.root / "alembic.ini"
        text = ini.read_text()
        if self.kind == "multidb":
            for name, value in engines.items():
                text = re.sub(rf"(\[{name}\]\nsqlalchemy\.url = ).*", lambda m, v=value:
                              m.group(1) + v.replace("%", "%%"), text)
                self.urls[name] = value
        else:
            text = re.sub(r"(?m)^sqlalchemy\.url = .*$",
                          lambda m: "sqlalchemy.url = " + url.replace("%", "%%"), text)
        ini.write_text(text)

    def make_env_py_read_database_url(self) -> None:
        """The most common edit of env.py: the URL comes from DATABASE_URL when set."""
        text = self.env_py.read_text()
        text = "import os\n" + text.replace(
            "config = context.config\n",
            "config = context.config\n"
            'if os.environ.get("DATABASE_URL"):\n'
            '    config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n', 1)
        self.env_py.write_text(text)

    # ------------------------------------------------------------ its own tool

    def tool(self, *args: str, database_url: str | None = None) -> str:
        """Run the project's own ``alembic`` (or ``flask db``); its standard output."""
        env = dict(os.environ)
        for name in list(env):
            if name.startswith("DASHBOARD_"):
                env.pop(name)
        if database_url is not None:
            env["DATABASE_URL"] = database_url
        # In the project's folder, as its users run it: alembic finds alembic.ini
        # and pyproject.toml there by itself.
        argv = [FLASK, "--app", "app", "db", *args] if self.kind == "flask" \
            else [ALEMBIC, *args]
        done = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True,
                              timeout=TOOL_SECONDS, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[1:])} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done.stdout

    def heads(self, database_url: str | None = None) -> list[str]:
        return _ids(self.tool("heads", database_url=database_url))

    def current(self, database_url: str | None = None) -> list[str]:
        return _ids(self.tool("current", database_url=database_url))

    def upgrade(self, revision: str, database_url: str | None = None) -> None:
        self.tool("upgrade", revision, database_url=database_url)

    # ------------------------------------------------------------ more revisions

    def add_revision(self, rev_id: str, message: str, table: str, *, fail: bool = False
                     ) -> str:
        """A revision made by the project's own tool on top of its head, filled
        to create ``table`` (and, with ``fail``, to raise after creating it)."""
        # A Flask app reads its database at import: any will do to write a file.
        self.tool("revision", "-m", message, "--rev-id", rev_id,
                  database_url="sqlite://" if self.kind == "flask" else None)
        fill_revision(self.revision_file(rev_id), self.kind == "multidb", table, fail)
        return rev_id

    def add_failing_revision(self, rev_id: str = "ff99doomed") -> str:
        return self.add_revision(rev_id, "doomed", FAILING_TABLE, fail=True)

    def revision_file(self, rev_id: str) -> Path:
        found = list((self.root / "migrations" / "versions").glob(f"{rev_id}_*.py"))
        assert len(found) == 1, found
        return found[0]


# ---------------------------------------------------------------- the databases


def sync_url(url: str) -> str:
    """The same database through a synchronous driver, for the test's own reads."""
    parsed = make_url(url)
    driver = {"aiosqlite": "sqlite", "asyncpg": "postgresql+psycopg"}.get(parsed.get_driver_name())
    if driver is None:
        return url
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def async_url(url: str) -> str:
    parsed = make_url(url)
    driver = "sqlite+aiosqlite" if parsed.get_backend_name() == "sqlite" \
        else "postgresql+asyncpg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def tables_of(url: str) -> list[str]:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        return sorted(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _ids(output: str) -> list[str]:
    """Revision ids from ``alembic heads``/``current`` output ("abc123 (head)")."""
    found = set()
    for line in output.splitlines():
        match = re.match(r"^([0-9A-Za-z_]+)(?: \(|$)", line.strip())
        if match:
            found.add(match.group(1))
    return sorted(found)


# ---------------------------------------------------------------- filling revision files

_PASS_BODY = r'(def {name}\(\)[^:]*:\n(?:    """[^\n]*"""\n)?)    pass\n'


def fill_revision(path: Path, multidb: bool, table: str, fail: bool = False) -> None:
    """Give a revision made by ``alembic revision`` a real upgrade and downgrade."""
    up = (f'    op.create_table("{table}", sa.Column("id", sa.Integer(), primary_key=True),\n'
          f'                    sa.Column("name", sa.String(50)))\n')
    if fail:
        up += f'    raise RuntimeError("{FAILING_MESSAGE}")\n'
    down = f'    op.drop_table("{table}")\n'
    text = path.read_text()
    names = (("upgrade_engine1", up), ("downgrade_engine1", down),
             ("upgrade_engine2", up), ("downgrade_engine2", down)) if multidb \
        else (("upgrade", up), ("downgrade", down))
    for name, body in names:
        text, count = re.subn(_PASS_BODY.format(name=name),
                              lambda m, b=body: m.group(1) + b, text, count=1)
        assert count == 1, f"no empty {name}() in {path}"
    path.write_text(text)


# ---------------------------------------------------------------- the factories


def make(kind: str, root: Path) -> RealProject:
    """A project of ``kind`` made by its real tool in ``root`` (which must not exist)."""
    root.mkdir(parents=True)
    if kind == "flask":
        return _flask_project(root)
    template = {"env_url": "generic"}.get(kind, kind)
    project = RealProject(kind, root, (), ())
    _run([ALEMBIC, "init", "-t", template, "migrations"], root)
    if kind == "env_url":
        text = project.env_py.read_text()
        project.env_py.write_text("import os\n" + text.replace(
            "config = context.config\n",
            "config = context.config\n"
            'config.set_main_option("sqlalchemy.url", os.environ["DATABASE_URL"])\n', 1))
    for rev_id, message, table in PLAIN_REVISIONS:
        project.add_revision(rev_id, message, table)
    return replace(project, revisions=tuple(r for r, _, _ in PLAIN_REVISIONS),
                   tables=tuple(t for _, _, t in PLAIN_REVISIONS))


FLASK_APP = '''\
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
db = SQLAlchemy(app)
migrate = Migrate(app, db)


class Customer(db.Model):
    __tablename__ = "customers"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(50), nullable=False)
'''

FLASK_ORDERS = '''

class Order(db.Model):
    __tablename__ = "orders"
    id = db.Column(db.Integer, primary_key=True)
    customer_id = db.Column(db.Integer, db.ForeignKey("customers.id"), nullable=False)
'''


def _flask_project(root: Path) -> RealProject:
    """``flask db init``, a model, ``flask db migrate``, ``flask db upgrade``, a
    second model, ``flask db migrate``: the way a Flask-Migrate user gets there."""
    (root / "app.py").write_text(FLASK_APP)
    scratch = f"sqlite:///{root / 'autogenerate.db'}"
    project = RealProject("flask", root, (), ())
    project.tool("init", database_url=scratch)
    project.tool("migrate", "-m", "customers", database_url=scratch)
    project.tool("upgrade", database_url=scratch)
    (root / "app.py").write_text(FLASK_APP + FLASK_ORDERS)
    project.tool("migrate", "-m", "orders", database_url=scratch)
    (root / "autogenerate.db").unlink()
    first = _ids(project.tool("heads", database_url=scratch))
    history = project.tool("history", database_url=scratch)
    # "<parent> -> <rev> (head), message" lines, newest first
    order = [m.group(1) for m in re.finditer(r"-> (\w+)", history)][::-1]
    assert order[-1:] == first, history
    return replace(project, revisions=tuple(order), tables=("customers", "orders"))


def _run(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_SECONDS,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AssertionError(f"{argv} failed: {done.stdout}\n{done.stderr}")
