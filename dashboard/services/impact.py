"""What a downgrade destroys, read from its offline SQL, for the confirmation page."""

from __future__ import annotations

import re

_DROP_TABLE = re.compile(r"\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?[`\"\[]?([\w.]+)", re.I)
_DROP_COLUMN = re.compile(
    r"\bALTER\s+TABLE\s+[`\"\[]?([\w.]+)[`\"\]]?\s+DROP\s+(?:COLUMN\s+)?[`\"\[]?(\w+)", re.I
)
_CREATE_TMP = re.compile(r"CREATE\s+TABLE\s+_alembic_tmp_(\w+)\s*\((.*?)\n\)", re.I | re.S)
_COLUMN_LINE = re.compile(r"^\s*[`\"\[]?(\w+)[`\"\]]?\s+[A-Za-z]", re.M)
_CONSTRAINT_WORDS = {"constraint", "primary", "foreign", "unique", "check", "key", "index"}


def dropped_objects(sql: str, live_columns: dict[str, list[str]]) -> list[str]:
    """Tables and columns the SQL drops, as 'table t' / 'column t.c' strings.

    SQLite's batch mode drops a column by copying the table to
    ``_alembic_tmp_<t>`` without it; the live table's columns tell which."""
    found: list[str] = []
    recreated: set[str] = set()
    for table, body in _CREATE_TMP.findall(sql):
        recreated.add(table.lower())
        kept = {c.lower() for c in _COLUMN_LINE.findall(body)} - _CONSTRAINT_WORDS
        for column in live_columns.get(table, []):
            if column.lower() not in kept:
                found.append(f"column {table}.{column}")
    for table in _DROP_TABLE.findall(sql):
        if table.lower() not in recreated and not table.startswith("_alembic_tmp_"):
            found.append(f"table {table}")
    for table, column in _DROP_COLUMN.findall(sql):
        if column.upper() not in ("CONSTRAINT", "INDEX", "FOREIGN", "PRIMARY"):
            found.append(f"column {table}.{column}")
    return list(dict.fromkeys(found))


def live_columns(project) -> dict[str, list[str]]:
    """Tables and their columns as the database has them now (read-only)."""
    from sqlalchemy import inspect

    from dashboard.services.status import DatabaseUnreachable, open_engine

    try:
        engine = open_engine(project)
    except DatabaseUnreachable:
        return {}
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            return {t: [c["name"] for c in inspector.get_columns(t)]
                    for t in inspector.get_table_names()}
    except Exception:
        return {}
    finally:
        engine.dispose()


def preview_action(dashboard, project, history, status, action: str, target: str,
                   sql: str = "now"):
    """The plan of an action and, for downgrades, what each step drops: read now
    (``sql="now"``), or only if every step's SQL is already generated ("cached";
    ``drops`` is None otherwise, for the page to fetch it in a fragment)."""
    from dashboard.services.planning import plan_action, resulting_revisions

    plan = plan_action(history, tuple(status.current), action, target, status.state)
    drops: dict[str, list[str]] | None = {}
    sql_errors: dict[str, str] = {}
    if action == "downgrade":
        revisions = [history.revisions[step.revision] for step in plan.steps]
        found = (dashboard.downgrade_sql(project, revisions) if sql == "now"
                 else dashboard.cached_downgrade_sql(project, revisions))
        if found is None:
            return plan, None, sql_errors, resulting_revisions(history, plan)
        columns = live_columns(project)
        for step in plan.steps:
            sql = found[step.revision]
            if sql.sql is None:
                sql_errors[step.revision] = sql.error or "no SQL"
            else:
                drops[step.revision] = dropped_objects(sql.sql, columns)
    return plan, drops, sql_errors, resulting_revisions(history, plan)
