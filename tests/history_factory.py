"""Synthetic Alembic projects on disk, for parity tests and benchmarks.

A spec is plain data (``ProjectSpec`` holding ``RevisionSpec`` rows); ``make_project``
writes it as a real project: alembic.ini, a generic env.py, script.py.mako and one
revision file per row, shaped like Alembic's own template so parsing cost and file
size are realistic. The builders give the shapes the dashboard must read exactly as
Alembic does: a long chain, a large branchy history, and a "zoo" of rare forms.
"""

from __future__ import annotations

import random
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

MISSING_MODULE = "not_installed_app_module"

# Header styles a revision file can be written in.
PLAIN = "plain"  # revision = 'x', single quotes, no annotations (older template)
ANNOTATED = "annotated"  # revision: str = "x", today's template; tuples over several lines
LISTS = "lists"  # down_revision = ["a", "b"], lists instead of tuples
COMPUTED = "computed"  # down_revision = PARENT: only importing the file tells its value


@dataclass(frozen=True)
class RevisionSpec:
    revision: str
    down_revision: tuple[str, ...] = ()
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    message: str = ""
    style: str = ANNOTATED
    # Folder relative to its version location ("" for the location itself).
    folder: str = ""
    # Index into ProjectSpec.version_locations (0 is script_location/versions).
    location: int = 0
    imports_missing_module: bool = False

    @property
    def is_merge(self) -> bool:
        return len(self.down_revision) > 1


@dataclass(frozen=True)
class ProjectSpec:
    revisions: tuple[RevisionSpec, ...]
    # Folders relative to the ini's directory; empty means Alembic's default
    # (script_location/versions, no version_locations key).
    version_locations: tuple[str, ...] = ()
    recursive_version_locations: bool = False
    script_location: str = "migrations"
    # Revisions the dashboard must list as unreadable rather than parse.
    unreadable: tuple[str, ...] = field(default=())

    def without(self, *revisions: str) -> ProjectSpec:
        drop = set(revisions)
        return ProjectSpec(
            revisions=tuple(r for r in self.revisions if r.revision not in drop),
            version_locations=self.version_locations,
            recursive_version_locations=self.recursive_version_locations,
            script_location=self.script_location,
            unreadable=tuple(r for r in self.unreadable if r not in drop),
        )

    def by_id(self, revision: str) -> RevisionSpec:
        return next(r for r in self.revisions if r.revision == revision)


# ---------------------------------------------------------------- writing

INI_TEMPLATE = """\
# A synthetic Alembic project written by tests/history_factory.py.
[alembic]
script_location = %(here)s/{script_location}
file_template = %%(rev)s_%%(slug)s
path_separator = os
{version_locations}{recursive}
sqlalchemy.url = sqlite:///%(here)s/project.db

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

ENV_PY = '''\
"""Generic Alembic environment: no application imports, no target metadata."""

from logging.config import fileConfig

from sqlalchemy import engine_from_config, pool

from alembic import context

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection) -> None:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        _run_on(connection)
    connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

SCRIPT_MAKO = '''\
"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision: str = ${repr(up_revision)}
down_revision: Union[str, Sequence[str], None] = ${repr(down_revision)}
branch_labels: Union[str, Sequence[str], None] = ${repr(branch_labels)}
depends_on: Union[str, Sequence[str], None] = ${repr(depends_on)}


def upgrade() -> None:
    """Upgrade schema."""
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    """Downgrade schema."""
    ${downgrades if downgrades else "pass"}
'''


def make_project(root: Path, spec: ProjectSpec) -> Path:
    """Write the project described by ``spec`` under ``root``; returns its alembic.ini."""
    root = Path(root)
    script_dir = root / spec.script_location
    (script_dir / "versions").mkdir(parents=True, exist_ok=True)
    (script_dir / "env.py").write_text(ENV_PY, encoding="utf-8")
    (script_dir / "script.py.mako").write_text(SCRIPT_MAKO, encoding="utf-8")
    locations = [root / loc for loc in spec.version_locations] or [script_dir / "versions"]
    for location in locations:
        location.mkdir(parents=True, exist_ok=True)
    for number, rev in enumerate(spec.revisions):
        folder = locations[rev.location] / rev.folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / revision_filename(rev)).write_text(
            revision_source(rev, number), encoding="utf-8"
        )
    version_locations = (
        "version_locations = "
        + ":".join(f"%(here)s/{loc}" for loc in spec.version_locations) + "\n"
        if spec.version_locations else ""
    )
    recursive = "recursive_version_locations = true\n" if spec.recursive_version_locations else ""
    ini = root / "alembic.ini"
    ini.write_text(
        INI_TEMPLATE.format(
            script_location=spec.script_location,
            version_locations=version_locations,
            recursive=recursive,
        ),
        encoding="utf-8",
    )
    return ini


def revision_filename(rev: RevisionSpec) -> str:
    slug = re.sub(r"\W+", "_", rev.message.lower()).strip("_")[:40] or "revision"
    return f"{rev.revision}_{slug}.py"


def revision_path(ini: Path, spec: ProjectSpec, revision: str) -> Path:
    """Where ``make_project`` wrote the file of ``revision``."""
    rev = spec.by_id(revision)
    root = Path(ini).parent
    locations = [root / loc for loc in spec.version_locations] or [
        root / spec.script_location / "versions"
    ]
    return locations[rev.location] / rev.folder / revision_filename(rev)


def _ids(values: tuple[str, ...], style: str, indent: str = "    ") -> str:
    """An id header's value in the file's style."""
    quote = "'" if style == PLAIN else '"'
    if not values:
        return "None"
    items = [f"{quote}{v}{quote}" for v in values]
    if style == LISTS:
        return "[" + ", ".join(items) + "]"
    if len(values) == 1:
        return items[0]
    if style == ANNOTATED:
        return "(\n" + "".join(f"{indent}{item},\n" for item in items) + ")"
    return "(" + ", ".join(items) + ")"


def _headers(rev: RevisionSpec) -> str:
    style = rev.style
    if style == COMPUTED:
        parent = rev.down_revision[0] if rev.down_revision else None
        return (
            f'PARENT = "{parent}"\n' if parent else "PARENT = None\n"
        ) + (
            f'revision = "{rev.revision}"\n'
            "down_revision = PARENT\n"
            f"branch_labels = {_ids(rev.branch_labels, LISTS)}\n"
            f"depends_on = {_ids(rev.depends_on, LISTS)}\n"
        )
    if style == ANNOTATED:
        kind = "Union[str, Sequence[str], None]"
        return (
            f'revision: str = "{rev.revision}"\n'
            f"down_revision: {kind} = {_ids(rev.down_revision, style)}\n"
            f"branch_labels: {kind} = {_ids(rev.branch_labels, style)}\n"
            f"depends_on: {kind} = {_ids(rev.depends_on, style)}\n"
        )
    quote = "'" if style == PLAIN else '"'
    return (
        f"revision = {quote}{rev.revision}{quote}\n"
        f"down_revision = {_ids(rev.down_revision, style)}\n"
        f"branch_labels = {_ids(rev.branch_labels, style)}\n"
        f"depends_on = {_ids(rev.depends_on, style)}\n"
    )


def revision_source(rev: RevisionSpec, number: int = 0) -> str:
    """The text of one revision file, as ``alembic revision`` would write it."""
    message = rev.message or f"revision {rev.revision}"
    day = 1 + number % 28
    lines = [
        f'"""{message}',
        "",
        f"Revision ID: {rev.revision}",
        f"Revises: {', '.join(rev.down_revision)}",
        f"Create Date: 2025-{1 + number // 28 % 12:02d}-{day:02d} 10:{number % 60:02d}:00.000000",
        "",
        '"""',
    ]
    if rev.style == ANNOTATED:
        lines.append("from typing import Sequence, Union")
        lines.append("")
    lines += ["from alembic import op", "import sqlalchemy as sa"]
    if rev.imports_missing_module:
        lines.append(f"import {MISSING_MODULE}  # the host application, absent here")
    lines += ["", "", "# revision identifiers, used by Alembic.", _headers(rev)]
    table = f"t_{rev.revision}"
    if rev.is_merge:
        body_up = body_down = ["    pass"]
    else:
        body_up = [
            "    op.create_table(",
            f"        {table!r},",
            "        sa.Column('id', sa.Integer(), nullable=False),",
            "        sa.Column('name', sa.String(length=100), nullable=False),",
            "        sa.Column('created_at', sa.DateTime(), nullable=True),",
            f"        sa.PrimaryKeyConstraint('id', name='pk_{table}'),",
            "    )",
            f"    op.create_index('ix_{table}_name', {table!r}, ['name'])",
        ]
        body_down = [
            f"    op.drop_index('ix_{table}_name', table_name={table!r})",
            f"    op.drop_table({table!r})",
        ]
    lines += ["", "def upgrade() -> None:", '    """Upgrade schema."""', *body_up]
    lines += ["", "", "def downgrade() -> None:", '    """Downgrade schema."""', *body_down]
    return "\n".join(lines) + "\n"


def stamp_database(path: Path, revisions: tuple[str, ...] | list[str]) -> str:
    """A SQLite file whose alembic_version holds ``revisions``; returns its URL.

    Written directly (the table Alembic creates) so stamping a 5,000-revision
    history does not cost a ScriptDirectory load."""
    path = Path(path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL, "
            "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
        conn.execute("DELETE FROM alembic_version")
        conn.executemany("INSERT INTO alembic_version VALUES (?)", [(r,) for r in revisions])
    return f"sqlite:///{path}"


# ---------------------------------------------------------------- builders

def _new_id(rng: random.Random, taken: set[str]) -> str:
    while True:
        rev = f"{rng.getrandbits(48):012x}"
        if rev not in taken and not rev.isdigit():
            taken.add(rev)
            return rev


def linear(n: int, seed: int = 1) -> ProjectSpec:
    """One chain of ``n`` revisions in the default version folder."""
    rng = random.Random(seed)
    taken: set[str] = set()
    revisions = []
    parent: tuple[str, ...] = ()
    for i in range(n):
        rev = _new_id(rng, taken)
        revisions.append(RevisionSpec(
            rev, parent, message=f"step {i} of the chain",
            style=PLAIN if i % 3 == 0 else ANNOTATED,
        ))
        parent = (rev,)
    return ProjectSpec(tuple(revisions))


def branchy(
    n_revisions: int = 1000,
    merges: int = 50,
    labelled_branches: int = 4,
    seed: int = 7,
) -> ProjectSpec:
    """A large history: an unlabelled trunk plus ``labelled_branches`` independent
    labelled bases, forks off older revisions, ``merges`` merges of two or three
    heads, and a few ``depends_on`` on earlier revisions."""
    rng = random.Random(seed)
    taken: set[str] = set()
    revisions: list[RevisionSpec] = []
    heads: list[str] = []
    styles = (PLAIN, ANNOTATED, LISTS)

    def add(parents: tuple[str, ...], labels: tuple[str, ...] = (), message: str = "") -> None:
        rev = _new_id(rng, taken)
        depends: tuple[str, ...] = ()
        if parents and revisions and rng.random() < 0.02:
            target = rng.choice(revisions[: max(1, len(revisions) - 20)]).revision
            if target not in parents:
                depends = (target,)
        revisions.append(RevisionSpec(
            rev, parents, branch_labels=labels, depends_on=depends,
            message=message or f"change {len(revisions)}",
            style=styles[len(revisions) % len(styles)],
        ))
        for p in parents:
            if p in heads:
                heads.remove(p)
        heads.append(rev)

    add((), message="trunk base")
    for k in range(labelled_branches):
        add((), labels=(f"branch{k}",), message=f"start of branch{k}")
    remaining_merges = merges
    while len(revisions) < n_revisions:
        left = n_revisions - len(revisions)
        if remaining_merges and rng.random() < remaining_merges / max(left, 1) * 1.5:
            if len(heads) < 3:
                add((rng.choice(revisions).revision,), message="fork")
                continue
            width = 3 if rng.random() < 0.2 and len(heads) >= 4 else 2
            parents = tuple(rng.sample(heads, width))
            add(parents, message=f"merge {', '.join(parents)}")
            remaining_merges -= 1
        elif rng.random() < 0.06:
            add((rng.choice(revisions).revision,), message="fork")
        else:
            add((rng.choice(heads),))
    return ProjectSpec(tuple(revisions))


# Zoo ids, chosen so prefixes collide ("1a2b3c" names three revisions).
CORE_BASE, CORE_1, CORE_2 = "1a2b3c4d5e01", "1a2b3c4d5e02", "1a2b3c4d5e03"
CORE_SIDE = "c0de5ide0001"
AUTH_BASE, AUTH_1, AUTH_2 = "a0f1e2d3c4b5", "a1f1e2d3c4b5", "a2f1e2d3c4b5"
BILLING_BASE, BILLING_1, BILLING_2 = "b0b1b2b3b4b5", "b1b1b2b3b4b5", "b2b1b2b3b4b5"
REPORTS_BASE, REPORTS_1, REPORTS_COMPUTED = "e0e1e2e3e4e5", "e1e1e2e3e4e5", "e2e1e2e3e4e5"
MERGE_3, MERGE_4 = "3333aaaa0001", "4444bbbb0001"
RELEASE_HEAD, HOTFIX_HEAD = "5555cccc0001", "5555dddd0001"
EXPERIMENT_BASE, EXPERIMENT_HEAD = "7777eeee0001", "7777ffff0001"
BROKEN = "9999deadbeef"


def zoo() -> ProjectSpec:
    """Every rare form in one project (see the module docstring of the tests)."""
    r = RevisionSpec
    revisions = (
        # core: labelled base at the top of the first location, children nested.
        r(CORE_BASE, (), ("core",), message="core base", style=PLAIN),
        r(CORE_1, (CORE_BASE,), message="core accounts", folder="core"),
        r(CORE_2, (CORE_1,), message="core profiles", folder="core", style=PLAIN),
        r(CORE_SIDE, (CORE_1,), message="core side branch", folder="core/side", style=LISTS),
        # auth: second base; depends on core by full id; one file imports the app.
        r(AUTH_BASE, (), ("auth",), message="auth base", style=LISTS, folder="auth"),
        r(AUTH_1, (AUTH_BASE,), depends_on=(CORE_1,), message="auth sessions",
          folder="auth/2024", style=LISTS),
        r(AUTH_2, (AUTH_1,), message="auth tokens use the app's models", folder="auth/2024",
          style=PLAIN, imports_missing_module=True),
        # billing: third base; a dependency on two revisions and a branch point.
        # (Alembic resolves a partial id only when writing a file, never in one:
        # a partial id in depends_on makes RevisionMap raise KeyError.)
        r(BILLING_BASE, (), ("billing",), message="billing base", folder="billing"),
        r(BILLING_1, (BILLING_BASE,), depends_on=(AUTH_1, CORE_2), message="billing invoices",
          folder="billing"),
        r(BILLING_2, (BILLING_BASE,), message="billing refunds", folder="billing",
          style=PLAIN),
        # reports: fourth base, in the second version location; depends on a label;
        # one computed header that only an import can read.
        r(REPORTS_BASE, (), ("reports",), message="reports base", location=1),
        r(REPORTS_1, (REPORTS_BASE,), depends_on=("core",), message="reports daily",
          location=1, folder="daily"),
        r(REPORTS_COMPUTED, (REPORTS_1,), message="reports computed parent", location=1,
          style=COMPUTED),
        # merges of three and four parents.
        r(MERGE_3, (CORE_2, AUTH_2, BILLING_1), message="merge core auth and billing"),
        r(MERGE_4, (MERGE_3, BILLING_2, REPORTS_COMPUTED, CORE_SIDE),
          message="merge everything", location=1, folder="merges/2025", style=LISTS),
        # two heads after the big merge, one labelled.
        r(RELEASE_HEAD, (MERGE_4,), ("release",), message="release head"),
        r(HOTFIX_HEAD, (MERGE_4,), message="hotfix head", style=PLAIN),
        # an independent history labelled at its head, not at its base.
        r(EXPERIMENT_BASE, (), message="experiment base", location=1, style=PLAIN),
        r(EXPERIMENT_HEAD, (EXPERIMENT_BASE,), ("experiment",), message="experiment head",
          location=1),
        # computed header and a missing import: unreadable even by importing.
        r(BROKEN, (EXPERIMENT_HEAD,), message="broken computed and missing import",
          location=1, style=COMPUTED, imports_missing_module=True),
    )
    return ProjectSpec(
        revisions,
        version_locations=("migrations/versions", "extra_versions"),
        recursive_version_locations=True,
        unreadable=(BROKEN,),
    )
