"""Risk findings of pending revisions, on real SQLite files and real PostgreSQL and
MariaDB servers: revision files that do each risky operation are written into a
scratch copy of the sample project on top of its head, with the sample's rows in
the database; the findings are read as users get them (API, CLI, pages)."""

from __future__ import annotations

import io
import textwrap

import pytest

from dashboard.cli import EXIT_FAILED, EXIT_NO_SQL, EXIT_OK, migrate_db_main
from tests.conftest import UNIFIED_REASONING, client_for, copy_sample_project
from tests.servers import SERVERS, load_sample, require, scratch_database

REVISION = '''\
"""{message}"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
    pass
'''


def add_revision(ini, rev: str, body: str, down: str = UNIFIED_REASONING,
                 message: str = "risky") -> str:
    versions = ini.parent / "alembic" / "versions"
    (versions / f"{rev}_{message.replace(' ', '_')}.py").write_text(REVISION.format(
        message=message, rev=rev, down=down, body=textwrap.indent(textwrap.dedent(body), "    ")))
    return rev


def found(client, rev: str | None = None) -> set[tuple[str, str, str | None]]:
    body = client.get("/api/lint").get_json()
    assert "findings" in body, body
    return {(f["rule"], f["severity"], f["table"]) for f in body["findings"]
            if rev is None or f["revision"] == rev}


def above_info(client, rev: str) -> list[dict]:
    return [f for f in client.get("/api/lint").get_json()["findings"]
            if f["revision"] == rev and f["severity"] != "info"]


# ------------------------------------------------------------------ SQLite

SQLITE_RISKY = """
op.drop_table("user_login_sessions")
op.add_column("users", sa.Column("age", sa.Integer(), nullable=False))
links = sa.Table("chat_session_documents", sa.MetaData(),
                 sa.Column("chat_session_id", sa.Integer(), primary_key=True),
                 sa.Column("document_id", sa.Integer(), primary_key=True),
                 sa.Column("attached_at", sa.DateTime()))
with op.batch_alter_table("chat_session_documents", copy_from=links,
                          recreate="always") as batch:
    batch.drop_column("attached_at")
"""

SAFE = """
op.create_table("tags", sa.Column("id", sa.Integer(), primary_key=True),
                sa.Column("name", sa.String(50), nullable=False))
op.create_index("ix_tags_name", "tags", ["name"])
op.add_column("users", sa.Column("nickname", sa.String(50), nullable=True))
"""


@pytest.fixture
def sqlite_sample(tmp_path):
    ini = copy_sample_project(tmp_path / "project")
    url = f"sqlite:///{tmp_path / 'target.db'}"
    load_sample(ini, url)
    return ini, url


def test_sqlite_risky_revision_findings_with_rows(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    rev = add_revision(ini, "ee01risky", SQLITE_RISKY)
    client = client_for(ini, url, tmp_path / "instance")
    rules = found(client, rev)
    assert ("drop_table", "error", "user_login_sessions") in rules
    assert ("drop_column", "error", "chat_session_documents") in rules  # the copy lacks it
    assert ("batch_rebuild", "warning", "chat_session_documents") in rules
    assert ("not_null_without_default", "warning", "users") in rules
    assert not any(rule == "could_not_parse" for rule, _, _ in rules), rules
    drop = next(f for f in client.get("/api/lint").get_json()["findings"]
                if f["rule"] == "drop_table")
    assert drop["rows"] == 1 and "(1 row" in drop["message"], drop
    assert drop["revision"] == rev and drop["direction"] == "upgrade" and drop["safer"]
    column = next(f for f in client.get(f"/api/revisions/{rev}").get_json()["findings"]
                  if f["rule"] == "drop_column")
    assert column["column"] == "attached_at" and column["rows"] == 1


def test_sqlite_safe_revision_has_nothing_above_info(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    rev = add_revision(ini, "ee02safe", SAFE, message="safe")
    client = client_for(ini, url, tmp_path / "instance")
    assert above_info(client, rev) == []


def test_an_unreachable_database_still_gives_findings_without_rows(tmp_path):
    ini = copy_sample_project(tmp_path / "project")
    rev = add_revision(ini, "ee03drop", 'op.drop_table("users")')
    client = client_for(ini, f"sqlite:///{tmp_path / 'missing.db'}", tmp_path / "instance")
    body = client.get(f"/api/revisions/{rev}").get_json()
    drop = next(f for f in body["findings"] if f["rule"] == "drop_table")
    assert drop["table"] == "users" and drop["rows"] is None
    assert "could not be read" in body["findings_note"]


def test_unparsable_sql_gives_an_info_finding_not_nothing(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    rev = add_revision(ini, "ee04odd", 'op.execute("FROBNICATE THE WIDGETS")')
    client = client_for(ini, url, tmp_path / "instance")
    assert ("could_not_parse", "info", None) in found(client, rev)


# ------------------------------------------------------------------ --lint and confirmation

def lint_cli(ini, url, instance, *extra) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = migrate_db_main(["--lint", "--ini", str(ini), "--url", url, "--instance-dir",
                            str(instance), *extra], environ={}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_lint_exit_codes(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    instance = tmp_path / "instance"
    assert lint_cli(ini, url, instance)[0] == EXIT_OK  # nothing pending
    safe = add_revision(ini, "ee02safe", SAFE, message="safe")
    code, out, _ = lint_cli(ini, url, instance)
    assert code == EXIT_OK and "no findings above info" in out
    add_revision(ini, "ee05drop", 'op.drop_table("chat_session_documents")', down=safe,
                 message="drop")
    code, out, _ = lint_cli(ini, url, instance)
    assert code == EXIT_FAILED and "ERROR drop_table" in out and "chat_session_documents" in out
    code, out, _ = lint_cli(ini, url, instance, "--json")
    assert code == EXIT_FAILED
    import json
    body = json.loads(out)
    assert body["errors"] == 1 and body["findings"][0]["revision"] in ("ee02safe", "ee05drop")
    from dashboard.cli import main

    out = io.StringIO()
    assert main(["lint", str(ini), "--url", url, "--instance-dir", str(instance), "--json"],
                environ={}, out=out, err=io.StringIO()) == EXIT_FAILED
    assert json.loads(out.getvalue())["pending"] == ["ee02safe", "ee05drop"]


def test_lint_says_when_the_sql_cannot_be_generated(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    add_revision(ini, "ee06boom", 'raise RuntimeError("offline SQL is not possible here")')
    code, _, err = lint_cli(ini, url, tmp_path / "instance")
    assert code == EXIT_NO_SQL and "could not be generated" in err


def test_an_upgrade_that_loses_data_needs_a_typed_confirmation(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    add_revision(ini, "ee05drop", 'op.drop_table("chat_session_documents")', message="drop")
    client = client_for(ini, url, tmp_path / "instance")
    refused = client.post("/actions", data={"action": "upgrade", "target": "heads"})
    assert refused.status_code == 303 and "/actions/preview" in refused.headers["Location"]
    page = client.get(refused.headers["Location"]).get_data(as_text=True)
    assert 'name="confirm_risk"' in page and "drop table" in page
    assert "chat_session_documents" in page
    wrong = client.post("/actions", data={"action": "upgrade", "target": "heads",
                                          "confirm_risk": "yes"})
    assert wrong.status_code == 303 and "/actions/preview" in wrong.headers["Location"]
    api = client.post("/api/runs", json={"action": "upgrade", "target": "heads"})
    assert api.status_code == 409
    assert "drop_table on chat_session_documents" in api.get_json()["error"]["message"]
    assert client.post("/api/runs", json={"action": "upgrade", "target": "heads",
                                          "confirm": "yes"}).status_code == 400
    started = client.post("/actions", data={"action": "upgrade", "target": "heads",
                                            "confirm_risk": " Upgrade "})
    assert started.status_code == 303 and "/runs/" in started.headers["Location"]


def test_pages_show_badges_and_findings(sqlite_sample, tmp_path):
    ini, url = sqlite_sample
    rev = add_revision(ini, "ee05drop", 'op.drop_table("chat_session_documents")', message="drop")
    client = client_for(ini, url, tmp_path / "instance")
    first = client.get("/").get_data(as_text=True)
    assert 'hx-get="/lint"' in first  # not generated yet: the list fetches its badges
    fragment = client.get("/lint", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "<html" not in fragment and "risk-error" in fragment
    again = client.get("/").get_data(as_text=True)
    assert "risk-error" in again and 'hx-get="/lint"' not in again
    sql = client.get(f"/revisions/{rev}/sql").get_data(as_text=True)
    assert 'id="findings-upgrade"' in sql and "drop table" in sql


# ------------------------------------------------------------------ servers

PG_RISKY = """
op.drop_column("users", "display_name")
op.drop_table("chat_session_documents")
op.execute("TRUNCATE chat_messages CASCADE")
op.alter_column("users", "email", type_=sa.String(20), existing_type=sa.String(255))
op.alter_column("user_settings", "max_tokens", type_=sa.BigInteger())
op.create_index("ix_sessions_title", "chat_sessions", ["title"])
op.create_index("ix_sessions_model", "chat_sessions", ["model"], postgresql_concurrently=True)
op.add_column("users", sa.Column("age", sa.Integer(), nullable=False))
op.add_column("users", sa.Column("token", sa.Text(),
                                 server_default=sa.text("gen_random_uuid()::text")))
op.alter_column("chat_sessions", "title", nullable=True)
op.alter_column("documents", "filename", nullable=False)
op.create_check_constraint("ck_users_id", "users", "id > 0")
op.execute("REINDEX TABLE chat_sessions")
op.execute("VACUUM FULL user_login_sessions")
"""

PG_SAFE = """
op.execute("SET lock_timeout = '5s'")
""" + SAFE + """
with op.get_context().autocommit_block():
    op.create_index("ix_users_nickname", "users", ["nickname"], postgresql_concurrently=True)
"""

MARIADB_RISKY = """
op.drop_column("users", "display_name")
op.drop_table("chat_session_documents")
op.execute("TRUNCATE TABLE user_login_sessions")
op.alter_column("users", "email", type_=sa.String(20), existing_type=sa.String(255),
                existing_nullable=False)
op.alter_column("user_settings", "max_tokens", type_=sa.BigInteger(),
                existing_type=sa.Integer())
op.create_foreign_key("fk_docs_user", "documents", "users", ["user_id"], ["id"])
op.alter_column("users", "mood", type_=sa.Enum("calm", "angry", "busy"))
"""


@pytest.fixture(params=["postgresql", "mariadb"])
def server_sample(request, tmp_path):
    server = require(SERVERS[request.param])
    with scratch_database(server, prefix="md_ilint") as name:
        ini = copy_sample_project(tmp_path / "project")
        url = server.url(name)
        load_sample(ini, url)
        yield server, ini, url


def test_server_risky_revision_findings(server_sample, tmp_path):
    server, ini, url = server_sample
    if not server.postgres:  # a live ENUM column the revision inserts a value into
        server.execute("ALTER TABLE users ADD COLUMN mood ENUM('calm', 'busy')",
                       database=url.rsplit("/", 1)[1])
    rev = add_revision(ini, "ee01risky", PG_RISKY if server.postgres else MARIADB_RISKY)
    client = client_for(ini, url, tmp_path / "instance")
    rules = found(client, rev)
    expected = {("drop_column", "error", "users"), ("narrowing_type", "error", "users"),
                ("drop_table", "error", "chat_session_documents")}
    if server.postgres:
        expected |= {("truncate", "error", "chat_messages"),
                     ("type_rewrite", "warning", "user_settings"),
                     ("index_not_concurrently", "warning", "chat_sessions"),
                     ("concurrently_in_transaction", "warning", "chat_sessions"),
                     ("not_null_without_default", "warning", "users"),
                     ("volatile_default_rewrite", "warning", "users"),
                     ("set_not_null", "warning", "documents"),
                     ("constraint_not_valid", "warning", "users"),
                     ("no_lock_timeout", "warning", "users"),
                     ("reindex_not_concurrently", "warning", "chat_sessions"),
                     ("table_rewrite", "warning", "user_login_sessions")}
    else:
        expected |= {("truncate", "error", "user_login_sessions"),
                     ("algorithm_copy", "warning", "user_settings"),
                     ("algorithm_copy", "warning", "documents"),
                     ("algorithm_copy", "warning", "users")}
    assert expected <= rules, expected - rules
    assert not any(rule == "could_not_parse" for rule, _, _ in rules), rules
    listed = client.get("/api/lint").get_json()["findings"]
    if not server.postgres:
        assert any("ENUM" in f["message"] for f in listed
                   if f["rule"] == "algorithm_copy" and f["table"] == "users"), listed
    users = next(f for f in listed if f["rule"] == "drop_column")
    assert users["rows"] == 3 and "3 rows" in users["message"] and users["size_bytes"] > 0


def test_server_safe_revision_has_nothing_above_info(server_sample, tmp_path):
    server, ini, url = server_sample
    rev = add_revision(ini, "ee02safe", PG_SAFE if server.postgres else SAFE, message="safe")
    client = client_for(ini, url, tmp_path / "instance")
    assert above_info(client, rev) == []


# ------------------------------------------------------------------ the parsers

@pytest.mark.parametrize("url", ["sqlite:///{tmp}/none.db",
                                 "postgresql+psycopg://nobody@127.0.0.1:1/none",
                                 "mysql+pymysql://nobody@127.0.0.1:1/none"])
def test_the_parsers_read_every_statement_of_the_sample_history(tmp_path, url):
    """Each dialect's offline SQL of every sample revision, both ways: every statement
    parsed (no could_not_parse), and the drops found with no database to read."""
    from dashboard.automigrate import dashboard_for
    from dashboard.services.findings import revision_findings

    ini = copy_sample_project(tmp_path / "project")
    target = dashboard_for(str(ini), url.format(tmp=tmp_path), str(tmp_path / "i"), {})
    project = target.project()
    history = target.history(project)
    scripts = list(history.revisions.values())
    target.upgrade_sql(project, scripts)
    target.downgrade_sql(project, scripts)
    rules = project.engine.risk_rules()
    statements, unparsed, drops = 0, [], set()
    for script in scripts:
        offline = target.offline_sql(project, script)
        assert offline.upgrade_sql and offline.downgrade_sql, offline
        statements += len(rules.statements(offline.upgrade_sql + offline.downgrade_sql))
        lint = revision_findings(project, script.revision, offline)
        unparsed += [f.statement for f in lint.findings if f.rule == "could_not_parse"]
        drops |= {f.table for f in lint.findings if f.rule == "drop_table"}
    assert statements > 50 and unparsed == []
    assert {"users", "chat_messages", "documents", "user_settings"} <= drops


def test_a_rule_about_rows_is_info_on_an_empty_table(tmp_path):
    """PostgreSQL adds a NOT NULL column without a default to an empty table; SQLite
    refuses it whatever the table holds."""
    server = require(SERVERS["postgresql"])
    add_note = ('op.add_column("chat_session_documents", '
                'sa.Column("note", sa.Text(), nullable=False))')
    with scratch_database(server, prefix="md_ilint") as name:
        ini = copy_sample_project(tmp_path / "project")
        url = server.url(name)
        load_sample(ini, url)
        server.execute("DELETE FROM chat_session_documents", database=name)
        rev = add_revision(ini, "ee07empty", add_note)
        client = client_for(ini, url, tmp_path / "instance")
        finding = next(f for f in client.get("/api/lint").get_json()["findings"]
                       if f["rule"] == "not_null_without_default")
        assert finding["severity"] == "info" and finding["rows"] == 0, finding
        assert "empty now" in finding["message"] and finding["revision"] == rev
        server.execute("INSERT INTO chat_session_documents VALUES (1, 1, now())",
                       database=name)
        finding = next(f for f in client.get("/api/lint").get_json()["findings"]
                       if f["rule"] == "not_null_without_default")
        assert finding["severity"] == "warning" and finding["rows"] == 1, finding


@pytest.mark.parametrize("version, rewrites", [((10, 23), True), ((15, 4), False),
                                               (None, False)])
def test_postgresql_before_11_rewrites_for_a_column_default(version, rewrites):
    """The version-aware rule, from the version the catalog read (None: unknown, so the
    newest is assumed)."""
    from dashboard.engines.risk import Catalog, PlanState
    from dashboard.engines.risk_postgresql import RULES

    catalog = Catalog(version is not None, version)
    found = RULES.risks("ALTER TABLE events ADD COLUMN kind VARCHAR(10) DEFAULT 'a';",
                        PlanState(catalog, lock_timeout=True))
    assert [r.rule for r in found] == (["default_rewrite"] if rewrites else [])


def test_lint_of_a_named_target(sqlite_sample, tmp_path):
    """/api/targets/<name>/lint lints that target's pending upgrade; the other target's
    database (up to date) has nothing pending; an unknown target is a 404."""
    from dashboard import create_app

    ini, url = sqlite_sample
    rev = add_revision(ini, "ee05drop", 'op.drop_table("chat_session_documents")',
                       message="drop")
    other = tmp_path / "other.db"
    config = tmp_path / "targets.toml"
    config.write_text(f'[targets.live]\nalembic_ini = "{ini}"\ndatabase_url = "{url}"\n'
                      f'[targets.empty]\nalembic_ini = "{ini}"\n'
                      f'database_url = "sqlite:///{other}"\n')
    client = create_app({"TESTING": True, "DASHBOARD_SECRET_KEY": "t",
                         "DASHBOARD_TARGETS_FILE": str(config),
                         "DASHBOARD_INSTANCE_DIR": str(tmp_path / "inst")}).test_client()
    live = client.get("/api/targets/live/lint").get_json()
    assert live["pending"] == [rev] and live["errors"] == 1
    assert live["findings"][0]["table"] == "chat_session_documents"
    page = client.get("/targets/live/lint").get_data(as_text=True)
    assert f'id="r-{rev}"' in page and "drop table" in page
    assert client.get("/api/targets/nowhere/lint").status_code == 404


def test_hostile_sql_is_an_info_finding_not_a_failed_page(sqlite_sample, tmp_path):
    """A statement nested past the parser's depth: an info finding, the rest checked."""
    ini, url = sqlite_sample
    deep = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    rev = add_revision(ini, "ee08deep", f'op.execute("{deep}")\n'
                       'op.drop_table("chat_session_documents")')
    client = client_for(ini, url, tmp_path / "instance")
    response = client.get(f"/api/revisions/{rev}")
    assert response.status_code == 200
    rules = {f["rule"]: f for f in response.get_json()["findings"]
             if f["direction"] == "upgrade"}
    assert rules["could_not_parse"]["severity"] == "info"
    assert "nested too deeply" in rules["could_not_parse"]["message"]
    assert rules["drop_table"]["severity"] == "error"
    assert client.get(f"/revisions/{rev}?sql=now").status_code == 200
    assert client.get("/lint").status_code == 200


@pytest.mark.parametrize("version_text, copies", [("10.2.44-MariaDB", True),
                                                  ("10.11.6-MariaDB", False),
                                                  ("8.0.11", True), ("8.0.36", False)])
def test_an_old_mariadb_or_mysql_copies_the_table_to_add_a_column(version_text, copies):
    from dashboard.engines.base import version_numbers
    from dashboard.engines.risk import Catalog, PlanState
    from dashboard.engines.risk_mariadb import RULES

    catalog = Catalog(True, version_numbers(version_text), version_text)
    found = RULES.risks("ALTER TABLE events ADD COLUMN kind VARCHAR(10);", PlanState(catalog))
    assert [r.rule for r in found] == (["algorithm_copy"] if copies else [])


def test_a_long_pending_list_links_to_its_findings_instead_of_checking_them(tmp_path):
    """More pending revisions than the overview checks by itself: a link to /lint, no
    fetch (their SQL would take a while to generate)."""
    from dashboard.services.findings import BADGE_LIMIT
    from tests.history_factory import linear, make_project

    ini = make_project(tmp_path / "project", linear(BADGE_LIMIT + 1))
    client = client_for(ini, f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "instance")
    page = client.get("/").get_data(as_text=True)
    assert f"Check the {BADGE_LIMIT + 1} pending revisions for risks" in page
    assert 'hx-get="/lint"' not in page
