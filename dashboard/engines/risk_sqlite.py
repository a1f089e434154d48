"""SQLite's risk rules, read with sqlglot's SQLite dialect.

SQLite cannot alter most of a table in place: Alembic's batch mode copies it to
``_alembic_tmp_<table>``, drops the original and renames the copy. That copy is
the rebuild finding; a live column the copy does not declare is a dropped column.
"""

from __future__ import annotations

from sqlglot import exp

from dashboard.engines.risk import INFO, WARNING, PlanState, Risk, drop_column, drop_table
from dashboard.engines.risk_sqlglot import SqlglotRules

BATCH_PREFIX = "_alembic_tmp_"


class SqliteRules(SqlglotRules):
    dialect = "sqlite"

    def create_table(self, tree, text, state: PlanState):
        schema = tree.this
        name = schema.this.name if isinstance(schema, exp.Schema) else schema.name
        if not name.startswith(BATCH_PREFIX):
            return super().create_table(tree, text, state)
        table = name[len(BATCH_PREFIX):]
        facts = state.catalog.facts(table)
        before = set(state.columns.get(table) or ()) | set(facts.columns if facts else ())
        super().create_table(tree, text, state)  # declares the copy's columns
        state.created.discard(name)
        kept = state.columns.pop(name, {})
        state.columns[table] = kept
        state.copies.add(table)
        found = [] if state.is_new(table) else [Risk(
            "batch_rebuild", WARNING, text,
            "Batch mode rebuilds {table}: every row is copied to a new table while the "
            "database is locked for writing.",
            "Keep it to small tables, or run it in a maintenance window; several changes "
            "to one table belong in one `batch_alter_table` block (one copy).",
            table=table, needs_rows=True)]
        found += [drop_column(text, table, column, " (the rebuilt table has no such column)")
                  for column in sorted(before - set(kept))]
        return found

    def statement(self, tree, text, state: PlanState):
        if isinstance(tree, exp.Drop) and tree.kind == "TABLE":
            # The original of a batch rebuild: its copy takes its place.
            return [drop_table(text, t.name) for t in tree.args.get("tables") or ()
                    if not state.ignored(t.name) and t.name not in state.copies]
        if isinstance(tree, exp.Alter) and tree.this.name.startswith(BATCH_PREFIX):
            state.copies.discard(tree.this.name[len(BATCH_PREFIX):])
            return []
        return super().statement(tree, text, state)

    def create_index(self, tree, table, text, state: PlanState):
        return [Risk("index_build", INFO, text,
                     "Builds an index on {table} while the database is locked for writing.",
                     "", table=table)]

    def add_column(self, column, table, text, state: PlanState):
        kinds = self.constraint_kinds(column)
        not_null = any(isinstance(k, exp.NotNullColumnConstraint) for k in kinds)
        default = any(isinstance(k, exp.DefaultColumnConstraint) for k in kinds)
        if not_null and not default:
            return [Risk("not_null_without_default", WARNING, text,
                         f"Adds NOT NULL column `{column.name}` without a default: SQLite "
                         "refuses it on {table}, even when the table is empty.",
                         "Add it nullable, backfill, then make it NOT NULL in a batch "
                         "block; or give it a default.", table=table)]
        return []


RULES = SqliteRules()
