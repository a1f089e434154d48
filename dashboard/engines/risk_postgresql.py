"""PostgreSQL's risk rules, read with pglast (PostgreSQL's own grammar, libpg_query).

Lock levels and rewrites as measured in ``shared/reference/ddl-risk.md``
(PostgreSQL 15; 11 for constant defaults, 12 for SET NOT NULL via a CHECK).
"""

from __future__ import annotations

import pglast
from pglast import ast
from pglast.enums import (
    AlterTableType,
    ConstrType,
    ObjectType,
    ReindexObjectType,
    TransactionStmtKind,
)
from pglast.parser import ParseError, split

from dashboard.engines.risk import (
    ERROR,
    INFO,
    NARROWER,
    OTHER,
    WARNING,
    WIDER,
    ColumnType,
    PlanState,
    Risk,
    checked,
    column_type,
    compare_types,
    could_not_parse,
    drop_column,
    drop_table,
    narrowing,
    short,
    truncate,
)

# Functions whose value differs per row: a default calling one is written into every row.
VOLATILE = {"clock_timestamp", "gen_random_uuid", "random", "uuid_generate_v4",
            "uuid_generate_v1", "timeofday", "nextval", "statement_timestamp"}
LOCK_TIMEOUT_SAFER = ("Start the migration with `SET lock_timeout = '5s'` (e.g. "
                      "`op.execute(\"SET lock_timeout = '5s'\")`) and retry when it times out.")
NOT_NULL_SAFER = ("Add `CHECK (col IS NOT NULL) NOT VALID`, then `VALIDATE CONSTRAINT` (no "
                  "write lock), then SET NOT NULL (PostgreSQL 12+ skips the scan), then drop "
                  "the check.")


def statements(sql: str) -> list[str]:
    """The statements of a script, split by PostgreSQL's own scanner."""
    try:
        return [s for s in split(sql, with_parser=False) if s.strip()]
    except ParseError:
        return [sql]


def risks(sql: str, state: PlanState) -> list[Risk]:
    found: list[Risk] = []
    for text in statements(sql):
        try:
            parsed = pglast.parse_sql(text)
        except ParseError as exc:
            found.append(could_not_parse(short(text), str(exc)))
            continue
        for raw in parsed:
            found += checked(short(text), _statement, raw.stmt, short(text), state)
    return found


def _statement(node, text: str, state: PlanState) -> list[Risk]:
    if isinstance(node, ast.TransactionStmt):
        if node.kind in (TransactionStmtKind.TRANS_STMT_BEGIN,
                         TransactionStmtKind.TRANS_STMT_START):
            state.in_transaction = True
        elif node.kind in (TransactionStmtKind.TRANS_STMT_COMMIT,
                           TransactionStmtKind.TRANS_STMT_ROLLBACK):
            state.in_transaction = False
        return []
    if isinstance(node, ast.VariableSetStmt):
        if (node.name or "").lower() == "lock_timeout":
            state.lock_timeout = True
        return []
    if isinstance(node, ast.CreateStmt):
        table = node.relation.relname
        state.create(table)
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                state.declare(table, element.colname, _type(element.typeName))
        return []
    if isinstance(node, ast.IndexStmt):
        return _index(node, text, state)
    if isinstance(node, ast.DropStmt):
        return _with_timeout(_drop(node, text, state), state)
    if isinstance(node, ast.TruncateStmt):
        return _with_timeout([truncate(text, r.relname) for r in node.relations], state)
    if isinstance(node, (ast.VacuumStmt, ast.ClusterStmt)):
        return _rewrite(node, text, state)
    if isinstance(node, ast.ReindexStmt) and not _option(node.params, "concurrently"):
        table = node.relation.relname if node.kind == ReindexObjectType.REINDEX_OBJECT_TABLE \
            else None
        return [Risk("reindex_not_concurrently", WARNING, text,
                     "REINDEX blocks writes to " + ("{table}" if table else "the index's table")
                     + " (SHARE lock) and reads through the index while it rebuilds.",
                     "REINDEX ... CONCURRENTLY (PostgreSQL 12+) in an autocommit block.",
                     table=table, needs_rows=True)]
    if isinstance(node, ast.AlterTableStmt) and node.objtype == ObjectType.OBJECT_TABLE:
        table = node.relation.relname
        if state.ignored(table):
            return []
        found = []
        for cmd in node.cmds or ():
            found += _alter(cmd, table, text, state)
        if state.is_new(table):
            return [r for r in found if r.severity == ERROR]
        return _with_timeout(found, state) if found else _timeout(table, text, state)
    if isinstance(node, ast.RenameStmt) and node.relation is not None:
        table = node.relation.relname
        if node.renameType == ObjectType.OBJECT_TABLE and table in state.created:
            state.create(node.newname)
        if state.is_new(table) or state.ignored(table):
            return []
        return _timeout(table, text, state) + [Risk(
            "rename", INFO, text, "Renames on {table}: code still using the old name fails "
            "from this moment.", "Deploy code that works with both names first.", table=table)]
    return []


def _option(options, name: str) -> bool:
    return any(isinstance(o, ast.DefElem) and o.defname == name for o in options or ())


def _rewrite(node, text: str, state: PlanState) -> list[Risk]:
    """VACUUM FULL and CLUSTER: the table rewritten under an ACCESS EXCLUSIVE lock."""
    if isinstance(node, ast.VacuumStmt):
        if not _option(node.options, "full"):
            return []
        tables = [r.relation.relname for r in node.rels or () if r.relation is not None]
    else:
        tables = [node.relation.relname] if node.relation is not None else []
    return _with_timeout([Risk(
        "table_rewrite", WARNING, text,
        "Rewrites {table} under an ACCESS EXCLUSIVE lock: reads and writes wait until "
        "it ends.", "Run it outside the migration, in a maintenance window (or use "
        "pg_repack).", table=table, needs_rows=True) for table in tables
        if not state.is_new(table)], state)


def _type(type_name) -> ColumnType | None:
    if type_name is None:
        return None
    name = type_name.names[-1].sval
    mods = [m.val.ival for m in (type_name.typmods or ())
            if isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)]
    return column_type(name, mods[0] if mods else None, mods[1] if len(mods) > 1 else None)


def _index(node: ast.IndexStmt, text: str, state: PlanState) -> list[Risk]:
    table = node.relation.relname
    if node.concurrent and state.in_transaction:
        return [Risk("concurrently_in_transaction", WARNING, text,
                     "CREATE INDEX CONCURRENTLY cannot run inside a transaction block, and "
                     "Alembic runs each migration in one: this statement fails.",
                     "Wrap it in `with op.get_context().autocommit_block():`.", table=table)]
    if node.concurrent or state.is_new(table) or state.ignored(table):
        return []
    return [Risk("index_not_concurrently", WARNING, text,
                 "Builds an index on {table} under a SHARE lock: writes to it wait until "
                 "the build ends.",
                 "`op.create_index(..., postgresql_concurrently=True)` inside "
                 "`with op.get_context().autocommit_block():`.", table=table)]


def _drop(node: ast.DropStmt, text: str, state: PlanState) -> list[Risk]:
    found = []
    for names in node.objects or ():
        name = names[-1].sval if isinstance(names, tuple) else getattr(names, "sval", None)
        if node.removeType == ObjectType.OBJECT_TABLE and not state.ignored(name):
            found.append(drop_table(text, name))
        elif node.removeType == ObjectType.OBJECT_INDEX and not node.concurrent:
            found.append(Risk("drop_index_not_concurrently", INFO, text,
                              f"Drops index {name} under an ACCESS EXCLUSIVE lock on its table.",
                              "`op.drop_index(..., postgresql_concurrently=True)` in an "
                              "autocommit block."))
    return found


def _alter(cmd: ast.AlterTableCmd, table: str, text: str, state: PlanState) -> list[Risk]:
    kind = cmd.subtype
    if kind == AlterTableType.AT_DropColumn:
        return [drop_column(text, table, cmd.name)]
    if kind == AlterTableType.AT_AddColumn:
        return _add_column(cmd.def_, table, text, state)
    if kind == AlterTableType.AT_AlterColumnType:
        new = _type(cmd.def_.typeName)
        change = compare_types(state.old_type(table, cmd.name), new)
        state.declare(table, cmd.name, new)
        if change == NARROWER:
            return [narrowing(text, table, cmd.name)]
        if change == WIDER and new.family in ("string", "numeric"):
            return []  # metadata only (varchar widened, to text, precision widened)
        return [Risk("type_rewrite", WARNING, text,
                     f"Changes the type of `{cmd.name}`: rewrites {{table}} under an ACCESS "
                     "EXCLUSIVE lock (reads and writes wait)"
                     + ("." if change == OTHER or change == WIDER else
                        "; the old type is not known, so it may only be a widening that "
                        "does not rewrite."),
                     "Add a new column, backfill it in batches, switch the code, then drop "
                     "the old one.", table=table)]
    if kind == AlterTableType.AT_SetNotNull:
        return [Risk("set_not_null", WARNING, text,
                     f"SET NOT NULL on `{cmd.name}` scans {{table}} under an ACCESS EXCLUSIVE "
                     "lock (reads and writes wait).", NOT_NULL_SAFER, table=table,
                     needs_rows=True)]
    if kind == AlterTableType.AT_AddConstraint:
        return _add_constraint(cmd.def_, table, text)
    return []


def _add_column(column: ast.ColumnDef, table: str, text: str, state: PlanState) -> list[Risk]:
    state.declare(table, column.colname, _type(column.typeName))
    constraints = list(column.constraints or ())
    default = next((c.raw_expr for c in constraints if c.contype == ConstrType.CONSTR_DEFAULT),
                   None)
    not_null = any(c.contype in (ConstrType.CONSTR_NOTNULL, ConstrType.CONSTR_PRIMARY)
                   for c in constraints)
    generated = any(c.contype in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED)
                    for c in constraints)
    serial = column.typeName.names[-1].sval in ("serial", "bigserial", "smallserial")
    found = []
    if not_null and default is None and not generated and not serial:
        found.append(Risk("not_null_without_default", WARNING, text,
                          f"Adds NOT NULL column `{column.colname}` without a default: fails "
                          "on {table}, which has rows.",
                          "Add it nullable, backfill, then set NOT NULL (or give a constant "
                          "default).", table=table, needs_rows=True))
    volatile = default is not None and any(
        isinstance(node, ast.FuncCall) and node.funcname[-1].sval in VOLATILE
        for node in _walk(default))
    if volatile or generated or serial:
        found.append(Risk("volatile_default_rewrite", WARNING, text,
                          f"Column `{column.colname}` gets a value computed per row: rewrites "
                          "{table} under an ACCESS EXCLUSIVE lock.",
                          "Add it nullable without a default, backfill in batches, then set "
                          "the default.", table=table, needs_rows=True))
    elif default is not None and state.version is not None and state.version < (11,):
        found.append(Risk("default_rewrite", WARNING, text,
                          f"Before PostgreSQL 11 a column with a default (`{column.colname}`) "
                          "rewrites {table} under an ACCESS EXCLUSIVE lock.",
                          "Add it without a default, set the default, backfill in batches.",
                          table=table, needs_rows=True))
    return found


def _add_constraint(constraint: ast.Constraint, table: str, text: str) -> list[Risk]:
    kind = constraint.contype
    if kind in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN) and \
            not constraint.skip_validation:
        lock = "ACCESS EXCLUSIVE" if kind == ConstrType.CONSTR_CHECK else "SHARE ROW EXCLUSIVE"
        return [Risk("constraint_not_valid", WARNING, text,
                     f"Adds constraint {constraint.conname or ''} and checks every row of "
                     f"{{table}} under a {lock} lock.".replace("  ", " "),
                     "Add it with NOT VALID (`postgresql_not_valid=True`), then "
                     "`VALIDATE CONSTRAINT` in a later migration.", table=table,
                     needs_rows=True)]
    if kind in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not constraint.indexname:
        return [Risk("constraint_builds_index", WARNING, text,
                     "Builds a unique index on {table} under an ACCESS EXCLUSIVE lock.",
                     "CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... "
                     "USING INDEX.", table=table, needs_rows=True)]
    return []


def _timeout(table: str, text: str, state: PlanState) -> list[Risk]:
    """The first ACCESS EXCLUSIVE lock of a step with no lock_timeout set."""
    if state.lock_timeout or state.timeout_reported or state.is_new(table):
        return []
    state.timeout_reported = True
    return [Risk("no_lock_timeout", WARNING, text,
                 "Takes an ACCESS EXCLUSIVE lock on {table} with no lock_timeout: while it "
                 "waits behind a long transaction, every read and write of the table queues "
                 "behind it.", LOCK_TIMEOUT_SAFER, table=table)]


def _with_timeout(found: list[Risk], state: PlanState) -> list[Risk]:
    tables = [r.table for r in found if r.table and r.rule != "index_not_concurrently"]
    return found + (_timeout(tables[0], found[0].statement, state) if tables else [])


def _walk(node):
    """Every node under ``node`` (pglast's own visitor would need a class per use)."""
    yield node
    for name in getattr(node, "__slots__", ()):
        value = getattr(node, name, None)
        if isinstance(value, ast.Node):
            yield from _walk(value)
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, ast.Node):
                    yield from _walk(item)


class PostgresRules:
    """The engine's handle on this module (the sqlglot engines' rules are objects)."""

    statements = staticmethod(statements)
    risks = staticmethod(risks)


RULES = PostgresRules()
