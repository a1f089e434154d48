"""Rehearsal on a copy on real PostgreSQL and MariaDB servers: the copy is a scratch
database (or schema) restored from a fresh backup, dropped afterwards; the real
database's schema and rows never change."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import CHATS, UNIFIED_REASONING, migrate
from tests.conftest import client_for as _client
from tests.servers import SERVERS, require, scratch_database, snapshot
from tests.test_rehearsal import BAD_DOWN, add_revision, rehearse


@pytest.fixture(params=["postgresql", "mariadb"])
def server(request):
    return require(SERVERS[request.param])


@pytest.fixture
def server_db(server):
    with scratch_database(server, prefix="md_rhs") as name:
        yield server, name


def _with_rows(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO users (id, email, display_name, password_hash, is_active, "
                "created_at) VALUES (1, 'a@example.com', 'A', 'h', true, "
                "'2024-05-01 12:30:00')"))
    finally:
        engine.dispose()


def test_a_roundtrip_rehearsal_passes_on_a_scratch_copy_dropped_afterwards(
        server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    migrate(sample_ini, url, CHATS)
    _with_rows(url)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")
    body = rehearse(client, target="heads", roundtrip=True)
    assert body["status"] == "passed", (body["error"], body["logs"][-5:])
    phases = [s["phase"] for s in body["steps"]]
    assert phases.count("upgrade") == phases.count("downgrade") == \
        phases.count("upgrade again") >= 4
    assert all(s["status"] == "succeeded" for s in body["steps"])
    assert body["schema_diff"]["roundtrip"] == []
    assert any(line.startswith("added table documents (")
               for line in body["schema_diff"]["upgrade"]), body["schema_diff"]["upgrade"]
    assert body["to"] == [UNIFIED_REASONING] and body["from"] == [CHATS]
    assert f"{name}_mdverify_" in body["copy"]
    # The real database: schema and rows as they were, at its revision; no copy left.
    assert snapshot(url) == before
    assert server.databases_like(f"{name}_") == []
    assert body["copy_removed"] is True


def test_a_failing_downgrade_fails_naming_its_step_and_drops_the_copy(
        server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    add_revision(sample_ini, BAD_DOWN, UNIFIED_REASONING,
                 'op.create_table("bad_down", sa.Column("id", sa.Integer, primary_key=True))',
                 'raise RuntimeError("this downgrade fails on purpose")')
    migrate(sample_ini, url, UNIFIED_REASONING)
    _with_rows(url)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")
    body = rehearse(client, roundtrip=True)
    assert body["status"] == "failed"
    assert f"step {BAD_DOWN} (downgrade)" in body["error"]
    assert "this downgrade fails on purpose" in body["error"]
    assert [(s["phase"], s["status"]) for s in body["steps"]] == [
        ("upgrade", "succeeded"), ("downgrade", "failed")]
    assert snapshot(url) == before
    assert server.databases_like(f"{name}_") == []


def test_an_env_py_that_names_the_real_database_is_refused_before_any_step(
        server_db, sample_ini, tmp_path):
    server, name = server_db
    url = server.url(name)
    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace(
        'config.get_section(config.config_ini_section, {})', f'{{"sqlalchemy.url": {url!r}}}'))
    migrate(sample_ini, url, CHATS)
    _with_rows(url)
    before = snapshot(url)
    client = _client(sample_ini, url, tmp_path / "inst")
    body = rehearse(client, roundtrip=True)
    assert body["status"] == "failed"
    assert "not the copy" in body["error"] and body["steps"] == []
    assert snapshot(url) == before
    assert server.databases_like(f"{name}_") == []
