"""What every engine's risk rules share: the finding, the live facts, the plan's state.

Each engine reads its own dialect's offline SQL with a real parser
(``risk_postgresql`` with pglast, PostgreSQL's own grammar; ``risk_mariadb``
and ``risk_sqlite`` with sqlglot) and knows its own lock levels and rewrites
(see the README's "Risk findings"). What they produce is a ``Risk``: the rule,
its severity and the table it touches; the findings service puts the live
table's size into the message once it has read the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR = "error"  # data loss
WARNING = "warning"  # a lock for the table's size, a rewrite, something that fails on data
INFO = "info"
SEVERITIES = (ERROR, WARNING, INFO)

# Tables Alembic itself writes: never a finding.
VERSION_TABLE_DEFAULT = "alembic_version"


@dataclass(frozen=True)
class ColumnType:
    """A column's type, as far as a narrowing or a rewrite can be told from it."""

    family: str  # "integer", "string", "numeric", "enum", or the type's own name
    size: int | None = None  # integer bytes, string length (None: unbounded)
    scale: int | None = None  # numeric scale
    values: tuple[str, ...] = ()  # an ENUM's, in order


INTEGER_BYTES = {"smallint": 2, "int2": 2, "tinyint": 1, "mediumint": 3, "integer": 4,
                 "int": 4, "int4": 4, "bigint": 8, "int8": 8, "serial": 4, "bigserial": 8,
                 # MariaDB's BOOL is TINYINT(1): reflected as one, written as the other
                 "boolean": 1, "bool": 1}
STRING_NAMES = ("varchar", "character varying", "char", "character", "bpchar", "nvarchar",
                "nchar", "text", "tinytext", "mediumtext", "longtext", "string", "clob")
NUMERIC_NAMES = ("numeric", "decimal")


def column_type(name: str, size: int | None = None, scale: int | None = None,
                values: tuple[str, ...] = ()) -> ColumnType:
    """A type from its name and parameters, as a parser or SQLAlchemy spells them."""
    name = name.lower()
    if name == "enum":
        return ColumnType("enum", values=tuple(values))
    if name in INTEGER_BYTES:
        return ColumnType("integer", INTEGER_BYTES[name])
    if name in STRING_NAMES:
        unbounded = name in ("text", "string", "clob") or name.endswith("text")
        return ColumnType("string", None if unbounded else size)
    if name in NUMERIC_NAMES:
        return ColumnType("numeric", size, scale)
    return ColumnType(name, size, scale)


SAME, WIDER, NARROWER, OTHER = "same", "wider", "narrower", "other"


def compare_types(old: ColumnType | None, new: ColumnType) -> str | None:
    """How ``new`` relates to ``old``: the same, wider, narrower (values may not fit),
    another type; None when the old type is not known."""
    if old is None:
        return None
    if old == new:
        return SAME
    if old.family != new.family:
        return OTHER
    if old.family == "enum":
        if not set(old.values) <= set(new.values):
            return NARROWER  # a value removed: rows holding it cannot keep it
        return WIDER if new.values[:len(old.values)] == old.values else OTHER
    if old.family == "numeric":
        if (new.size or 0) < (old.size or 0) or (new.scale or 0) < (old.scale or 0):
            return NARROWER
        return WIDER if new.scale == old.scale else OTHER
    if old.size is None:
        return NARROWER  # unbounded to bounded
    if new.size is None or new.size > old.size:
        return WIDER
    return NARROWER


@dataclass(frozen=True)
class Risk:
    """One thing a statement does, as a rule of its engine sees it. ``why`` names
    the table as ``{table}``: the service puts its size there."""

    rule: str
    severity: str
    statement: str
    why: str
    safer: str
    table: str | None = None
    column: str | None = None  # the column a drop or a type change is about
    # A rule about data that is there: none on a table known to be empty.
    needs_rows: bool = False


@dataclass(frozen=True)
class TableFacts:
    rows: int | None  # an estimate from the catalog (exact when small)
    size_bytes: int | None
    columns: dict[str, ColumnType] = field(default_factory=dict)


class Catalog:
    """What the live database says: its version, and each table's facts, read when
    first asked for (``load``: None for a table it does not have)."""

    def __init__(self, reachable: bool, version: tuple[int, ...] | None = None,
                 version_text: str = "", load=None, note: str = ""):
        self.reachable = reachable
        self.version = version
        self.version_text = version_text
        self.note = note  # why something is unknown, for the user
        self._load = load
        self._facts: dict[str, TableFacts | None] = {}

    def facts(self, table: str | None) -> TableFacts | None:
        if not table or self._load is None:
            return None
        if table not in self._facts:
            self._facts[table] = self._load(table)
        return self._facts[table]


@dataclass
class PlanState:
    """What earlier statements of the planned steps did, as the rules need it:
    tables created by the plan (empty, so no lock lasts), columns declared by it,
    whether a transaction is open, whether ``lock_timeout`` is set."""

    catalog: Catalog
    version_table: str = VERSION_TABLE_DEFAULT
    created: set[str] = field(default_factory=set)
    columns: dict[str, dict[str, ColumnType]] = field(default_factory=dict)
    in_transaction: bool = False
    lock_timeout: bool = False
    timeout_reported: bool = False
    copies: set[str] = field(default_factory=set)  # tables being rebuilt as a copy

    @property
    def version(self) -> tuple[int, ...] | None:
        return self.catalog.version

    def is_new(self, table: str | None) -> bool:
        return table is not None and table in self.created

    def ignored(self, table: str | None) -> bool:
        return table is None or table == self.version_table

    def old_type(self, table: str, column: str) -> ColumnType | None:
        declared = self.columns.get(table, {}).get(column)
        if declared is not None:
            return declared
        facts = self.catalog.facts(table)
        return facts.columns.get(column) if facts else None

    def declare(self, table: str, column: str, kind: ColumnType | None) -> None:
        if kind is not None:
            self.columns.setdefault(table, {})[column] = kind

    def create(self, table: str) -> None:
        self.created.add(table)
        self.columns.setdefault(table, {})


# ------------------------------------------------------------------ data loss, on every engine

def drop_table(statement: str, table: str) -> Risk:
    return Risk("drop_table", ERROR, statement, "Drops {table}: its rows are gone with it.",
                "Keep the table until no code uses it, and drop it in a later release "
                "after a backup; or rename it first.", table=table)


def drop_column(statement: str, table: str, column: str, how: str = "") -> Risk:
    return Risk("drop_column", ERROR, statement,
                f"Drops column `{column}` of {{table}}{how}: its values are gone.",
                "Stop using the column first; drop it in a later release, after a backup.",
                table=table, column=column)


def truncate(statement: str, table: str) -> Risk:
    return Risk("truncate", ERROR, statement, "Empties {table}: every row is deleted.",
                "Keep the rows: copy them to an archive table first, or delete in batches "
                "a later release can undo.", table=table)


def narrowing(statement: str, table: str, column: str) -> Risk:
    return Risk("narrowing_type", ERROR, statement,
                f"Narrows column `{column}` of {{table}}: values that do not fit fail the "
                "statement or are cut.",
                "Check the longest value first; widen instead, or add a new column.",
                table=table, column=column)


def could_not_parse(statement: str, error: str) -> Risk:
    return Risk("could_not_parse", INFO, statement,
                f"The parser could not read this statement ({error}), so no rule was "
                "checked against it: review it by hand.", "")


def checked(statement: str, rules, *args) -> list[Risk]:
    """The risks ``rules(*args)`` finds in a parsed ``statement``; a tree no rule
    expected (or one too deep to walk) is said as an `info`, never a failed page."""
    try:
        return rules(*args)
    except RecursionError:
        return [could_not_parse(statement, "nested too deeply")]
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        return [Risk("could_not_check", INFO, statement,
                     f"The rules could not read this statement's parsed form ({exc}): "
                     "review it by hand.", "")]


def short(statement: str, limit: int = 2000) -> str:
    text = statement.strip()
    return text if len(text) <= limit else text[:limit] + " …"
