"""The sample application's migrations, models and seed, run for real on SQLite.

The dashboard ships with this application, so its history must be sound: it
builds exactly the models, every revision goes down as well as up, and its
headers stay literals the dashboard can read without importing them.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path

import alembic.command
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from app_models import Base
from app_models.seed import SAMPLE_START_REVISION, create_sample_database

REPO_ROOT = Path(__file__).resolve().parent.parent
INI_PATH = REPO_ROOT / "alembic.ini"
VERSIONS_DIR = REPO_ROOT / "alembic" / "versions"

UNIFIED_REASONING = "c2756f59bd25"
MERGE = "590e5fac8d96"
AUTH_ROOT = "51b124a2d402"
BRANCH_POINT = "d86069f3a9e2"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def alembic_cfg(db_url: str) -> Config:
    cfg = Config(str(INI_PATH))
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return cfg


@pytest.fixture
def engine(db_url: str):
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(Config(str(INI_PATH)))


def current_heads(engine: sa.Engine) -> set[str]:
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def schema_of(engine: sa.Engine) -> dict[str, dict[str, object]]:
    """Everything about the tables that a migration could change, minus the version table."""
    inspector = sa.inspect(engine)
    schema = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        schema[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c["default"])
                for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table)["constrained_columns"],
            "fks": sorted(
                (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                 fk["options"].get("ondelete"))
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                for ix in inspector.get_indexes(table)
            ),
            "uniques": sorted(
                (uq["name"], tuple(uq["column_names"]))
                for uq in inspector.get_unique_constraints(table)
            ),
            "checks": sorted(ck["name"] for ck in inspector.get_check_constraints(table)),
        }
    return schema


def depends_on(rev) -> tuple[str, ...]:
    """A revision's depends_on, which Alembic keeps as written: None, a str or a tuple."""
    if rev.dependencies is None:
        return ()
    return (rev.dependencies,) if isinstance(rev.dependencies, str) else tuple(rev.dependencies)


def revisions_in_upgrade_order(script: ScriptDirectory) -> list[str]:
    """Every revision after all of its parents and its depends_on targets."""
    graph = {
        rev.revision: {*rev._versioned_down_revisions, *depends_on(rev)}
        for rev in script.walk_revisions()
    }
    return list(TopologicalSorter(graph).static_order())


def applied_revisions(script: ScriptDirectory, heads: set[str]) -> set[str]:
    """The heads and everything they stand on, parents and dependencies alike."""
    applied: set[str] = set()
    todo = list(heads)
    while todo:
        rev = script.get_revision(todo.pop())
        if rev.revision not in applied:
            applied.add(rev.revision)
            todo.extend(rev._versioned_down_revisions)
            todo.extend(depends_on(rev))
    return applied


def test_upgrade_heads_builds_exactly_the_models(alembic_cfg, engine):
    alembic.command.upgrade(alembic_cfg, "heads")

    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []
    # compare_metadata ignores CHECK constraints; their names must match too.
    schema = schema_of(engine)
    for table in Base.metadata.sorted_tables:
        expected = sorted(
            c.name for c in table.constraints if isinstance(c, sa.CheckConstraint)
        )
        assert schema[table.name]["checks"] == expected, table.name


def test_each_revision_upgrades_then_downgrades_one_step_at_a_time(
    alembic_cfg, engine, script
):
    """Up one revision at a time to the head, then down one at a time to base.

    Alembic refuses ``upgrade +1`` at the branch point and ``downgrade -1`` at
    the merge ("Ambiguous walk"), and warns that ``downgrade -1`` from two
    heads will be disallowed, so the steps name their revision there:
    ``upgrade <rev>``, ``downgrade <head>@-1``, and for the merge
    ``downgrade <one of its parents>``.
    """
    order = revisions_in_upgrade_order(script)
    schema_at = [schema_of(engine)]  # schema_at[n]: after the first n revisions of order
    for n, revision in enumerate(order, start=1):
        alembic.command.upgrade(alembic_cfg, revision)
        assert applied_revisions(script, current_heads(engine)) == set(order[:n]), revision
        schema_at.append(schema_of(engine))
    assert current_heads(engine) == {UNIFIED_REASONING}

    for n in range(len(order), 0, -1):
        revision = order[n - 1]
        parents = script.get_revision(revision)._versioned_down_revisions
        if len(parents) > 1:
            alembic.command.downgrade(alembic_cfg, parents[0])
        elif current_heads(engine) == {revision}:
            alembic.command.downgrade(alembic_cfg, "-1")
        else:
            alembic.command.downgrade(alembic_cfg, f"{revision}@-1")
        assert applied_revisions(script, current_heads(engine)) == set(order[: n - 1]), revision
        assert schema_of(engine) == schema_at[n - 1], revision
    assert current_heads(engine) == set()
    assert schema_of(engine) == {}


def test_unified_reasoning_fills_defaults_for_existing_rows(alembic_cfg, engine, script):
    assert script.get_revision(UNIFIED_REASONING).down_revision == MERGE
    alembic.command.upgrade(alembic_cfg, MERGE)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO users (id, email, display_name, password_hash) VALUES "
                "(1, 'old@example.com', 'Old', 'x'), (2, 'older@example.com', 'Older', 'x')"
            )
        )
        connection.execute(
            sa.text("INSERT INTO user_settings (user_id, theme) VALUES (1, 'dark'), (2, 'light')")
        )

    alembic.command.upgrade(alembic_cfg, UNIFIED_REASONING)

    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT user_id, theme, use_unified_reasoning, selected_reasoning_mode "
                "FROM user_settings ORDER BY user_id"
            )
        ).all()
        assert rows == [(1, "dark", 0, "auto"), (2, "light", 0, "auto")]
        # New rows get the same values from the server defaults...
        connection.execute(
            sa.text(
                "INSERT INTO users (id, email, display_name, password_hash) "
                "VALUES (3, 'new@example.com', 'New', 'x')"
            )
        )
        connection.execute(sa.text("INSERT INTO user_settings (user_id) VALUES (3)"))
        new_row = connection.execute(
            sa.text(
                "SELECT use_unified_reasoning, selected_reasoning_mode "
                "FROM user_settings WHERE user_id = 3"
            )
        ).one()
        assert tuple(new_row) == (0, "auto")
    # ...and NULL is refused from now on.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE user_settings SET selected_reasoning_mode = NULL WHERE user_id = 1")
        )

    alembic.command.downgrade(alembic_cfg, "-1")
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT user_id, theme FROM user_settings ORDER BY user_id")
        ).all()
    assert rows == [(1, "dark"), (2, "light"), (3, "system")]
    columns = {c["name"] for c in sa.inspect(engine).get_columns("user_settings")}
    assert not {"use_unified_reasoning", "selected_reasoning_mode"} & columns


def test_offline_sql_renders_the_whole_history_both_ways(db_url):
    output = io.StringIO()
    cfg = Config(str(INI_PATH), output_buffer=output)
    cfg.set_main_option("sqlalchemy.url", db_url)

    alembic.command.upgrade(cfg, "base:heads", sql=True)
    alembic.command.downgrade(cfg, "heads:base", sql=True)

    sql = output.getvalue()
    assert (
        "UPDATE user_settings SET selected_reasoning_mode='auto' "
        "WHERE user_settings.selected_reasoning_mode IS NULL"
    ) in sql
    assert "DROP TABLE users" in sql


def test_create_sample_database_stops_at_the_start_revision_with_demo_rows(tmp_path, script):
    db_file = tmp_path / "instance" / "sample.db"  # the parent folder does not exist yet
    url = f"sqlite:///{db_file}"

    create_sample_database(str(INI_PATH), url)
    create_sample_database(str(INI_PATH), url)  # a second run adds nothing

    engine = sa.create_engine(url)
    try:
        assert current_heads(engine) == {SAMPLE_START_REVISION}
        assert set(schema_of(engine)) == {
            "users",
            "user_settings",
            "chat_sessions",
            "chat_messages",
        }
        with engine.connect() as connection:
            count = {
                table: connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("users", "user_settings", "chat_sessions", "chat_messages")
            }
            orphans = connection.execute(
                sa.text(
                    "SELECT count(*) FROM chat_messages m "
                    "LEFT JOIN chat_sessions s ON s.id = m.chat_session_id WHERE s.id IS NULL"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert count["users"] == count["user_settings"] == 3
    assert count["chat_sessions"] == 2
    assert count["chat_messages"] >= 4
    assert orphans == 0
    # Left behind the branches, so the dashboard has pending revisions to show.
    assert script.get_revision(SAMPLE_START_REVISION).is_branch_point


def test_seed_runs_as_a_module(tmp_path):
    db_file = tmp_path / "sample.db"

    subprocess.run(
        [sys.executable, "-m", "app_models.seed", f"sqlite:///{db_file}", "--ini", str(INI_PATH)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )

    engine = sa.create_engine(f"sqlite:///{db_file}")
    try:
        assert current_heads(engine) == {SAMPLE_START_REVISION}
    finally:
        engine.dispose()


def test_failed_seed_leaves_no_file_behind(tmp_path):
    db_file = tmp_path / "sample.db"

    with pytest.raises(CommandError):
        create_sample_database(str(INI_PATH), f"sqlite:///{db_file}", revision="0123456789ab")

    assert not db_file.exists()


def test_history_has_one_branch_point_one_auth_branch_one_merge_and_one_head(script):
    revisions = {rev.revision: rev for rev in script.walk_revisions()}

    assert len(revisions) == 10
    assert script.get_heads() == [UNIFIED_REASONING]
    assert [r for r, rev in revisions.items() if rev.is_merge_point] == [MERGE]
    assert set(revisions[MERGE].down_revision) == {"fd1ebc85cf60", "47039f9eed57"}
    assert [r for r, rev in revisions.items() if rev.is_branch_point] == [BRANCH_POINT]
    # Labels are inherited by descendants; only one revision declares one.
    declared = {r: rev.module.branch_labels for r, rev in revisions.items()}
    assert {r: labels for r, labels in declared.items() if labels} == {AUTH_ROOT: ("auth",)}
    assert revisions["fd1ebc85cf60"].dependencies == "51b124a2d402"
    assert script.get_base() == "c6736c07319a"


HEADER_NAMES = ("revision", "down_revision", "branch_labels", "depends_on")


@pytest.mark.parametrize("path", sorted(VERSIONS_DIR.glob("*.py")), ids=lambda p: p.stem)
def test_revision_headers_are_literals_matching_the_docstring(path: Path):
    """The dashboard reads these headers without importing the files."""
    module = ast.parse(path.read_text())
    headers = {}
    for node in module.body:
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id in HEADER_NAMES:
            headers[target.id] = ast.literal_eval(node.value)
    assert set(headers) == set(HEADER_NAMES)

    revision = headers["revision"]
    assert len(revision) == 12 and int(revision, 16) >= 0
    assert path.name.startswith(f"{revision}_")
    down = headers["down_revision"]
    down = [] if down is None else [down] if isinstance(down, str) else list(down)
    docstring = ast.get_docstring(module)
    assert f"Revision ID: {revision}" in docstring
    revises = next(line for line in docstring.splitlines() if line.startswith("Revises:"))
    assert revises.removeprefix("Revises:").strip() == ", ".join(down)
    assert any(line.startswith("Create Date: ") for line in docstring.splitlines())
