"""Real PostgreSQL and MariaDB servers for the backup tests: scratch databases, users, snapshots.

Each test gets a database of its own with a unique name, dropped afterwards.
A server that cannot be reached skips its tests, except under CI=true, where
it fails them: CI must never pass by skipping.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine, insert, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from tests.conftest import migrate


@dataclass(frozen=True)
class Server:
    name: str  # "postgresql" or "mariadb"
    admin_url: str  # a superuser on an existing database

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def url(self, database: str, user: str | None = None, password: str | None = None) -> str:
        base = make_url(self.admin_url)
        return base.set(database=database, username=user or base.username,
                        password=password).render_as_string(hide_password=False)

    def admin_engine(self, database: str | None = None) -> Engine:
        url = make_url(self.admin_url)
        if database:
            url = url.set(database=database)
        return create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 5})

    def execute(self, *statements: str, database: str | None = None) -> None:
        engine = self.admin_engine(database)
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.execute(text(statement))
        finally:
            engine.dispose()

    def scalars(self, sql: str, database: str | None = None, **params) -> list:
        engine = self.admin_engine(database)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).scalars())
        finally:
            engine.dispose()

    def quote(self, name: str) -> str:
        return f'"{name}"' if self.postgres else f"`{name}`"

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE {self.quote(name)}")

    def drop_database(self, name: str) -> None:
        force = " WITH (FORCE)" if self.postgres else ""
        self.execute(f"DROP DATABASE IF EXISTS {self.quote(name)}{force}")

    def databases_like(self, prefix: str) -> list[str]:
        sql = "SELECT datname FROM pg_database" if self.postgres else \
            "SELECT schema_name FROM information_schema.schemata"
        return sorted(name for name in self.scalars(sql) if name.startswith(prefix))

    def create_user(self, user: str, password: str, database: str) -> None:
        """A login with a password that owns ``database`` (PostgreSQL) or has every right on
        it (MariaDB), and may create the backup's scratch copies beside it."""
        if self.postgres:
            self.execute(
                f"DROP ROLE IF EXISTS {user}",
                f"CREATE ROLE {user} LOGIN CREATEDB PASSWORD '{password}'",
                f'ALTER DATABASE "{database}" OWNER TO {user}',
            )
        else:
            pattern = database.replace("_", "\\_")
            self.execute(
                f"DROP USER IF EXISTS '{user}'@'%'",
                f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
                f"GRANT ALL PRIVILEGES ON `{pattern}`.* TO '{user}'@'%'",
                f"GRANT ALL PRIVILEGES ON `{pattern}\\_mdverify\\_%`.* TO '{user}'@'%'",
            )

    def drop_user(self, user: str, database: str) -> None:
        if self.postgres:
            admin = self.admin_user
            self.execute(f'ALTER DATABASE "{database}" OWNER TO {admin}')
            self.execute(f"REASSIGN OWNED BY {user} TO {admin}", f"DROP OWNED BY {user}",
                         database=database)
            self.execute(f"DROP OWNED BY {user}", f"DROP ROLE IF EXISTS {user}")
        else:
            self.execute(f"DROP USER IF EXISTS '{user}'@'%'")

    @property
    def admin_user(self) -> str:
        return make_url(self.admin_url).username


SERVERS = {
    "postgresql": Server("postgresql", os.environ.get(
        "MD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")),
    "mariadb": Server("mariadb", os.environ.get(
        "MD_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")),
}


def require(server: Server) -> Server:
    """The server, or a skip (a failure under CI=true) saying why it cannot be used."""
    try:
        server.scalars("SELECT 1")
    except SQLAlchemyError as exc:
        reason = (f"{server.name} server at {make_url(server.admin_url).render_as_string()} "
                  f"is not reachable ({type(exc.orig or exc).__name__}); set "
                  f"MD_TEST_{'POSTGRES' if server.postgres else 'MARIADB'}_URL to use another")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so no skipping: {reason}")
        pytest.skip(reason)
    return server


def require_physical(server: Server) -> Server:
    """The MariaDB server, if this machine can take physical copies of it
    (mariadb-backup and mariadbd of its version, its data directory readable);
    else a skip (a failure under CI=true) saying why."""
    from dashboard.engines import mariadb_physical
    from dashboard.engines.servers import server_address
    from dashboard.errors import BackupError

    require(server)
    try:
        address = server_address(server.url("mysql"), "mysql")
        mariadb_physical.preflight(address, str(server.scalars("SELECT VERSION()")[0]))
    except BackupError as exc:
        reason = f"no physical copies of the MariaDB server here: {exc.message}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so no skipping: {reason}")
        pytest.skip(reason)
    return server


@contextmanager
def scratch_database(server: Server, prefix: str = "md_test") -> Iterator[str]:
    """A new, uniquely named database, dropped afterwards (with any verify/restore copies)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    server.create_database(name)
    try:
        yield name
    finally:
        for leftover in server.databases_like(f"{name}_"):
            server.drop_database(leftover)
        server.drop_database(name)


# ---------------------------------------------------------------- the sample app's data


def load_sample(ini: Path, url: str) -> None:
    """The sample history at its heads, and a few rows in every table."""
    migrate(ini, url, "heads")
    engine = create_engine(url, poolclass=NullPool)
    try:
        meta = MetaData()
        meta.reflect(engine)
        t = meta.tables
        now = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
        with engine.begin() as conn:
            conn.execute(insert(t["users"]), [
                {"id": i, "email": f"user{i}@example.com", "display_name": f"User {i}",
                 "password_hash": f"hash-{i}", "is_active": i != 3, "created_at": now}
                for i in (1, 2, 3)])
            conn.execute(insert(t["user_settings"]), [
                {"id": i, "user_id": i, "temperature": 0.5 + i / 10, "theme": "dark",
                 "system_prompt": "Be brief. ünïcödé ✓", "updated_at": now} for i in (1, 2)])
            conn.execute(insert(t["user_login_sessions"]), [
                {"id": 1, "user_id": 1, "token_hash": "a" * 64, "created_at": now,
                 "expires_at": now + dt.timedelta(days=1), "ip_address": "::1"}])
            conn.execute(insert(t["chat_sessions"]), [
                {"id": i, "user_id": 1 + i % 2, "title": f"Chat {i}", "model": "m",
                 "created_at": now, "updated_at": now} for i in (1, 2)])
            conn.execute(insert(t["chat_messages"]), [
                {"id": i, "chat_session_id": 1 + i % 2, "role": "user",
                 "content": f"message {i} with 'quotes' and \\ backslash\nand a newline",
                 "created_at": now} for i in range(1, 7)])
            conn.execute(insert(t["documents"]), [
                {"id": 1, "user_id": 1, "filename": "a.pdf", "content_type": "application/pdf",
                 "size_bytes": 10 ** 12, "uploaded_at": now,
                 "uploaded_by_login_session_id": 1}])
            conn.execute(insert(t["chat_session_documents"]), [
                {"chat_session_id": 1, "document_id": 1, "attached_at": now}])
    finally:
        engine.dispose()


def snapshot(url: str) -> dict:
    """Schema (tables, columns, keys, indexes, checks) and every row of every table."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            schema, rows = {}, {}
            for table in sorted(inspector.get_table_names()):
                schema[table] = {
                    "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                                for c in inspector.get_columns(table)],
                    "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
                    "foreign_keys": sorted(
                        (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
                         tuple(fk["referred_columns"]))
                        for fk in inspector.get_foreign_keys(table)),
                    "indexes": sorted((ix["name"], tuple(ix["column_names"]), ix["unique"])
                                      for ix in inspector.get_indexes(table)),
                    "checks": sorted((ck["name"], _normal_check(ck["sqltext"]))
                                     for ck in inspector.get_check_constraints(table)),
                }
                meta = MetaData()
                meta.reflect(conn, only=[table])
                rows[table] = sorted(
                    (tuple(row) for row in conn.execute(select(meta.tables[table]))), key=repr)
            views = sorted(inspector.get_view_names())
        return {"schema": schema, "rows": rows, "views": views}
    finally:
        engine.dispose()


def _normal_check(sql: str) -> str:
    # PostgreSQL re-deparses a restored CHECK with its casts spelled differently.
    return " ".join(re.sub(r"::[a-z ]+(\[\])?|[()]", "", sql).split())


class PostgresRoles:
    """Roles with unique names on a PostgreSQL server, dropped (with what they own)
    by ``drop_all``: give tests the ``roles`` fixture of ``postgres_roles``."""

    def __init__(self, server: Server):
        self.server = server
        self.prefix = f"md_r{secrets.token_hex(3)}"
        self.names: list[str] = []

    def create(self, suffix: str, options: str = "LOGIN", password: str | None = None,
               createdb: bool = False) -> str:
        name = f"{self.prefix}_{suffix}"
        if createdb:
            options += " CREATEDB"
        if password is not None:
            options += " PASSWORD '{}'".format(password.replace("'", "''"))
        self.server.execute(f"CREATE ROLE {name} {options}")
        self.names.append(name)
        return name

    def drop_all(self) -> None:
        admin = self.server.admin_user
        failures = []
        for name in reversed(self.names):
            try:
                self.server.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE usename = '{name}'",
                    f"REASSIGN OWNED BY {name} TO {admin}", f"DROP OWNED BY {name}",
                    f"DROP ROLE IF EXISTS {name}")
            except Exception as exc:  # try the others, then say which was left
                failures.append(f"{name}: {exc}")
        assert not failures, f"roles left behind: {failures}"


@contextmanager
def postgres_roles(server: Server) -> Iterator[PostgresRoles]:
    made = PostgresRoles(server)
    try:
        yield made
    finally:
        made.drop_all()
