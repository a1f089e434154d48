"""A database's schema as plain data, and what changed between two of them.

One pass of SQLAlchemy's inspector in the dashboard's own process: tables,
columns (type, nullable, default), primary keys, indexes, unique and foreign
keys, and check constraints where the dialect reports them. A run keeps the
schema before and after it; a rehearsal compares the schema after its
down-and-up with the one after its upgrade. The snapshot is JSON as it is,
so it is stored with the run and compared on reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import inspect

if TYPE_CHECKING:
    from dashboard.services.project import Project


@dataclass(frozen=True)
class SchemaSnapshot:
    """The schema as read, or why it could not be (``tables`` None then)."""

    tables: dict | None
    reason: str | None = None


def snapshot(project: Project) -> SchemaSnapshot:
    """The schema of ``project``'s database now; never raises (a reason instead)."""
    try:
        engine = project.engine.open_engine(project.database_url, read_only=True)
    except Exception as exc:
        return SchemaSnapshot(None, _reason(project, exc))
    try:
        with engine.connect() as conn:
            return SchemaSnapshot(read_tables(conn))
    except Exception as exc:
        return SchemaSnapshot(None, _reason(project, exc))
    finally:
        engine.dispose()


def _reason(project: Project, exc: Exception) -> str:
    return project.scrub(f"the schema could not be read: {type(exc).__name__}: {exc}")[:500]


def read_tables(conn) -> dict:
    """Every table of the connection's default schema, as JSON-ready data."""
    inspector = inspect(conn)
    dialect = conn.dialect
    tables = {}
    for name in sorted(inspector.get_table_names()):
        columns = {}
        for column in inspector.get_columns(name):
            default = column.get("default")
            columns[column["name"]] = {
                "type": _type_name(column["type"], dialect),
                "nullable": bool(column.get("nullable", True)),
                "default": None if default is None else str(default),
            }
        pk = inspector.get_pk_constraint(name) or {}
        indexes = {
            (ix.get("name") or _columns(ix.get("column_names"))): {
                "columns": [str(c) for c in ix.get("column_names") or () if c is not None],
                "unique": bool(ix.get("unique")),
            } for ix in inspector.get_indexes(name)}
        uniques = {
            (uq.get("name") or _columns(uq["column_names"])): list(uq["column_names"])
            for uq in inspector.get_unique_constraints(name)}
        # MariaDB and MySQL report a unique constraint as a unique index too: kept once.
        for key in set(uniques) & set(indexes):
            if indexes[key]["unique"]:
                del indexes[key]
        foreign = {}
        for fk in inspector.get_foreign_keys(name):
            described = (f"({', '.join(fk['constrained_columns'])}) references "
                         f"{fk['referred_table']} ({', '.join(fk['referred_columns'])})")
            options = fk.get("options") or {}
            if options.get("ondelete"):
                described += f" on delete {options['ondelete'].lower()}"
            foreign[fk.get("name") or described] = described
        try:
            checks = {(ck.get("name") or ck["sqltext"]): " ".join(str(ck["sqltext"]).split())
                      for ck in inspector.get_check_constraints(name)}
        except NotImplementedError:
            checks = {}
        tables[name] = {"columns": columns,
                        "primary_key": list(pk.get("constrained_columns") or ()),
                        "indexes": indexes, "unique": uniques, "foreign_keys": foreign,
                        "checks": checks}
    return tables


def _type_name(kind, dialect) -> str:
    try:
        return kind.compile(dialect=dialect)
    except Exception:
        return repr(kind)


def _columns(names) -> str:
    return "(" + ", ".join(str(n) for n in names or () if n is not None) + ")"


def describe_column(column: dict) -> str:
    said = column["type"] + ("" if column["nullable"] else " NOT NULL")
    if column["default"] is not None:
        said += f" DEFAULT {column['default']}"
    return said


def differences(before: dict | None, after: dict | None) -> list[str]:
    """What changed from ``before`` to ``after``, one readable line each, in order:
    tables added and dropped, then each table's columns, keys, indexes and checks."""
    if before is None or after is None:
        return []
    said: list[str] = []
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table), after.get(table)
        if old is None:
            columns = ", ".join(f"{c} {describe_column(v)}" for c, v in new["columns"].items())
            said.append(f"added table {table} ({columns})")
            continue
        if new is None:
            said.append(f"dropped table {table}")
            continue
        said.extend(_table_differences(table, old, new))
    return said


def _table_differences(table: str, old: dict, new: dict) -> list[str]:
    said = []
    for name in _ordered(old["columns"], new["columns"]):
        was, now = old["columns"].get(name), new["columns"].get(name)
        if was is None:
            said.append(f"added column {table}.{name} {describe_column(now)}")
        elif now is None:
            said.append(f"dropped column {table}.{name}")
        else:
            for part, label in (("type", "type"), ("nullable", "nullable"),
                                ("default", "default")):
                if was[part] != now[part]:
                    said.append(f"changed column {table}.{name}: {label} {was[part]} -> "
                                f"{now[part]}")
    if old["primary_key"] != new["primary_key"]:
        said.append(f"changed primary key of {table}: ({', '.join(old['primary_key'])}) -> "
                    f"({', '.join(new['primary_key'])})")

    def show_index(ix: dict) -> str:
        return ("unique " if ix["unique"] else "") + f"({', '.join(ix['columns'])})"

    for kind, label, show in (
            ("indexes", "index", show_index),
            ("unique", "unique constraint", lambda cols: f"({', '.join(cols)})"),
            ("foreign_keys", "foreign key", str),
            ("checks", "check constraint", str)):
        was_all, now_all = old.get(kind, {}), new.get(kind, {})
        for name in sorted(set(was_all) | set(now_all)):
            was, now = was_all.get(name), now_all.get(name)
            if was == now:
                continue
            if was is None:
                said.append(f"added {label} {name} on {table} {show(now)}")
            elif now is None:
                said.append(f"dropped {label} {name} on {table}")
            else:
                said.append(f"changed {label} {name} on {table}: {show(was)} -> {show(now)}")
    return said


def _ordered(old: dict, new: dict) -> list[str]:
    return list(old) + [name for name in new if name not in old]
