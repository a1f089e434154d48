"""MariaDB/MySQL's risk rules (InnoDB online DDL), read with sqlglot's MySQL dialect.

Which ALTERs fall back to ALGORITHM=COPY (the table copied, writes blocked) as
measured on MariaDB 10.11 in ``shared/reference/ddl-risk.md``.
"""

from __future__ import annotations

from sqlglot import exp

from dashboard.engines.risk import INFO, OTHER, WARNING, WIDER, PlanState, Risk
from dashboard.engines.risk_sqlglot import SqlglotRules

COPY_SAFER = ("Append `, ALGORITHM=INSTANT` (or NOCOPY/INPLACE, LOCK=NONE) so the server "
              "refuses instead of copying; or use an online schema change tool "
              "(pt-online-schema-change, gh-ost) on a big table.")


def _copy(what: str, table: str, text: str) -> Risk:
    return Risk("algorithm_copy", WARNING, text,
                f"{what}: MariaDB copies {{table}} (ALGORITHM=COPY) and blocks writes to it "
                "until the copy ends.", COPY_SAFER, table=table, needs_rows=True)


def _instant_add_column(state: PlanState) -> bool:
    """MariaDB 10.3 and MySQL 8.0.12 add a column in place; the newest is assumed
    when the server's version is not known."""
    version = state.version
    if version is None:
        return True
    return version >= ((10, 3) if "mariadb" in state.catalog.version_text.lower()
                       else (8, 0, 12))


class MariaDbRules(SqlglotRules):
    dialect = "mysql"

    def add_column(self, column, table, text, state: PlanState):
        kinds = self.constraint_kinds(column)
        if any(isinstance(k, exp.ComputedColumnConstraint) and k.args.get("persisted")
               for k in kinds):
            return [_copy(f"Adds STORED generated column `{column.name}`", table, text)]
        if not _instant_add_column(state):
            return [_copy(f"Adds column `{column.name}` on a server older than MariaDB 10.3 "
                          f"(MySQL 8.0.12), which has no instant ADD COLUMN", table, text)]
        if any(isinstance(k, exp.AutoIncrementColumnConstraint) for k in kinds):
            return [Risk("blocks_writes", WARNING, text,
                         f"Adds AUTO_INCREMENT column `{column.name}`: an in-place rebuild "
                         "of {table} that blocks writes (no LOCK=NONE).",
                         "Add it in a maintenance window, or with an online schema change "
                         "tool.", table=table, needs_rows=True)]
        return []

    def modify_column(self, action, change, table, text, state: PlanState):
        column = action.this
        family = self.type_of(column.args.get("kind")).family
        if change == OTHER and family == "enum":
            return [_copy(f"Inserts or reorders ENUM values of `{column.name}` (only "
                          "appending is instant)", table, text)]
        if change == OTHER or (change == WIDER and family in ("integer", "numeric")):
            return [_copy(f"Changes the type of `{column.name}`", table, text)]
        if change is None:
            return [Risk("type_unknown", INFO, text,
                         f"Redefines `{column.name}` of {{table}}; its current type is not "
                         "known here (the database could not be read), so whether MariaDB "
                         "copies the table cannot be told.", COPY_SAFER, table=table)]
        return []

    def add_constraint(self, action, table, text, state: PlanState):
        found = []
        for item in action.expressions:
            parts = item.expressions if isinstance(item, exp.Constraint) else [item]
            for part in parts:
                if isinstance(part, exp.ForeignKey):
                    found.append(_copy("Adds a foreign key (with foreign_key_checks=1)",
                                       table, text))
                elif isinstance(part, exp.CheckColumnConstraint):
                    found.append(_copy("Adds a CHECK constraint", table, text))
                elif isinstance(part, exp.IndexColumnConstraint) and \
                        str(part.args.get("kind") or "").upper() == "FULLTEXT":
                    found.append(Risk("blocks_writes", WARNING, text,
                                      "Adds a FULLTEXT index: built in place, but writes "
                                      "to {table} are blocked meanwhile.",
                                      "Add it in a maintenance window.", table=table,
                                      needs_rows=True))
        return found


RULES = MariaDbRules()
