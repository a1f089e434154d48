"""Real SQLite files and real file systems for the backup tests."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from dashboard.services.project import Project


def project_for(url: str, version_table: str = "alembic_version") -> Project:
    return Project(
        ini_path="", script_location="", version_locations=(),
        recursive_version_locations=False, database_url=url,
        version_table=version_table, python="python3",
    )


def make_database(path: Path, rows: int = 50, revisions: tuple[str, ...] = ("aaa111",),
                  journal_mode: str = "delete", payload: int = 100) -> Path:
    """A database like an application's: tables, an index, a view, alembic_version."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        with conn:
            conn.executescript("""
                CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, bio BLOB);
                CREATE INDEX ix_users_name ON users (name);
                CREATE TABLE notes (id INTEGER PRIMARY KEY,
                                    user_id INTEGER REFERENCES users (id), body TEXT);
                CREATE VIEW user_notes AS
                    SELECT users.name, notes.body FROM users JOIN notes ON notes.user_id = users.id;
                CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY);
            """)
            conn.executemany(
                "INSERT INTO users (name, bio) VALUES (?, ?)",
                ((f"user {i}", os.urandom(payload)) for i in range(rows)),
            )
            conn.executemany(
                "INSERT INTO notes (user_id, body) VALUES (?, ?)",
                ((i % max(rows, 1) + 1, f"note {i}") for i in range(rows * 2)),
            )
            conn.executemany("INSERT INTO alembic_version VALUES (?)", ((r,) for r in revisions))
    return path


def snapshot(path: Path | str) -> dict:
    """Schema and every row of every table, for comparing two databases."""
    uri = f"{Path(path).as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        schema = sorted(conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall(), key=repr)
        tables = [row[1] for row in schema if row[0] == "table"]
        rows = {table: sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
                for table in tables}
    return {"schema": schema, "rows": rows}


def integrity(path: Path | str) -> list[str]:
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def flip_bytes(path: Path | str, offset: int, count: int = 64) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(count)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


@contextmanager
def mounted_tmpfs(where: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) file system; skips the test where mount is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                capture_output=True, text=True)
        error = result.stderr.strip() if result.returncode else ""
    except FileNotFoundError as exc:
        error = str(exc)
    if error:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {error}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
