"""Risk rules read with sqlglot, for the engines whose SQL it parses (MariaDB/MySQL,
SQLite): what the two share. Each engine's module subclasses ``SqlglotRules`` with
what its own storage does (MariaDB's ALGORITHM=COPY, SQLite's batch rebuild)."""

from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from dashboard.engines.risk import (
    ERROR,
    NARROWER,
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

# sqlglot logs each statement it falls back to reading as an opaque Command: we say so
# in a finding instead.
logging.getLogger("sqlglot").setLevel(logging.ERROR)



class SqlglotRules:
    dialect = ""  # sqlglot's name for it

    def statements(self, sql: str) -> list[str]:
        """The statements of a script, split at the dialect's own semicolon tokens."""
        try:
            tokens = sqlglot.Dialect.get_or_raise(self.dialect).tokenize(sql)
        except TokenError:
            return [sql]
        found, start = [], None
        for token in tokens:
            if token.token_type == TokenType.SEMICOLON:
                if start is not None:
                    found.append(sql[start:token.start])
                start = None
            elif start is None:
                start = token.start
        if start is not None:
            found.append(sql[start:])
        return [s for s in found if s.strip()]

    def risks(self, sql: str, state: PlanState) -> list[Risk]:
        found: list[Risk] = []
        for text in self.statements(sql):
            statement = short(text)
            try:
                tree = sqlglot.parse_one(text, read=self.dialect)
            except (ParseError, TokenError) as exc:
                found.append(could_not_parse(statement, str(exc).splitlines()[0]))
                continue
            except RecursionError:
                found.append(could_not_parse(statement, "nested too deeply"))
                continue
            if isinstance(tree, exp.Command):
                found.append(could_not_parse(statement, "syntax sqlglot does not model"))
                continue
            found += checked(statement, self.statement, tree, statement, state)
        return found

    # ------------------------------------------------------------ statements

    def statement(self, tree, text: str, state: PlanState) -> list[Risk]:
        if isinstance(tree, exp.Create) and tree.kind == "TABLE":
            return self.create_table(tree, text, state)
        if isinstance(tree, exp.Create) and tree.kind == "INDEX":
            table = tree.this.args.get("table")
            name = table.name if table is not None else None
            if state.is_new(name) or state.ignored(name):
                return []
            return self.create_index(tree, name, text, state)
        if isinstance(tree, exp.Drop) and tree.kind == "TABLE":
            return [drop_table(text, t.name) for t in tree.args.get("tables") or ()
                    if not state.ignored(t.name)]
        if isinstance(tree, exp.TruncateTable):
            return [truncate(text, t.name) for t in tree.expressions]
        if isinstance(tree, exp.Alter) and tree.args.get("kind") == "TABLE":
            table = tree.this.name
            if state.ignored(table):
                return []
            found = []
            for action in tree.args.get("actions") or ():
                found += self.alter(action, table, text, state)
            return [r for r in found if r.severity == ERROR] if state.is_new(table) else found
        return []

    def create_table(self, tree, text: str, state: PlanState) -> list[Risk]:
        schema = tree.this
        table = schema.this.name if isinstance(schema, exp.Schema) else schema.name
        state.create(table)
        for column in schema.expressions if isinstance(schema, exp.Schema) else ():
            if isinstance(column, exp.ColumnDef):
                state.declare(table, column.name, self.type_of(column.args.get("kind")))
        return []

    def create_index(self, tree, table: str, text: str, state: PlanState) -> list[Risk]:
        return []

    def alter(self, action, table: str, text: str, state: PlanState) -> list[Risk]:
        if isinstance(action, exp.Drop) and action.args.get("kind") == "COLUMN":
            return [drop_column(text, table, c.name) for c in action.args.get("tables") or ()]
        if isinstance(action, exp.ColumnDef):
            state.declare(table, action.name, self.type_of(action.args.get("kind")))
            return self.add_column(action, table, text, state)
        if isinstance(action, exp.ModifyColumn):
            column = action.this
            old_name = action.args.get("rename_from")
            old = state.old_type(table, old_name.name if old_name else column.name)
            new = self.type_of(column.args.get("kind"))
            state.declare(table, column.name, new)
            change = compare_types(old, new) if new else None
            if change == NARROWER:
                return [narrowing(text, table, column.name)]
            return self.modify_column(action, change, table, text, state)
        if isinstance(action, exp.AddConstraint):
            return self.add_constraint(action, table, text, state)
        return []

    def add_column(self, column, table: str, text: str, state: PlanState) -> list[Risk]:
        return []

    def modify_column(self, action, change, table: str, text: str,
                      state: PlanState) -> list[Risk]:
        return []

    def add_constraint(self, action, table: str, text: str, state: PlanState) -> list[Risk]:
        return []

    # ------------------------------------------------------------ helpers

    @staticmethod
    def type_of(kind) -> ColumnType | None:
        if not isinstance(kind, exp.DataType):
            return None
        params = [p.this for p in kind.expressions if isinstance(p, exp.DataTypeParam)]
        numbers = [int(p.name) for p in params if isinstance(p, exp.Literal) and p.is_int]
        values = tuple(v.name for v in kind.expressions
                       if isinstance(v, exp.Literal) and v.is_string)
        name = kind.this.value.lower() if hasattr(kind.this, "value") else str(kind.this)
        return column_type(name, numbers[0] if numbers else None,
                           numbers[1] if len(numbers) > 1 else None, values)

    @staticmethod
    def constraint_kinds(column) -> list:
        return [c.args.get("kind") for c in column.args.get("constraints") or ()]
