"""How long the risk findings take per revision, SQL generation excluded.

For each dialect whose database is reachable (SQLite always; PostgreSQL and
MariaDB on the servers of tests/servers.py, in a scratch database dropped
afterwards) it lints:

  sample     the sample app's history (alembic/): the whole pending upgrade from
             base as one plan, then each revision's upgrade and downgrade alone (as
             the revision page does, one catalog connection each)
  generated  a generated history of N revisions on four existing tables with rows,
             cycling add column / create index / change type (or a backfill on
             SQLite) / drop index and column: the pending upgrade as one plan

The offline SQL is generated first (the worker, in a subprocess: not timed); the
figure is the lint itself: parsing, the rules, and the catalog reads of the live
database (a connection, the server's version, then rows, size and column types of
each touched table). The parsers are imported and warmed once before timing.

    .venv/bin/python benchmarks/bench_lint.py [--revisions 1000] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TABLES = ("accounts", "events", "orders", "items")
REPEAT = 4  # the first plan lint, then the median of the others

FIRST = '''\
"""create the tables"""
import sqlalchemy as sa
from alembic import op

revision = "g0000"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    for name in {tables!r}:
        op.create_table(name, sa.Column("id", sa.Integer(), primary_key=True),
                        sa.Column("name", sa.String(100)))
        op.bulk_insert(sa.table(name, sa.column("id"), sa.column("name")),
                       [{{"id": i, "name": f"row {{i}}"}} for i in range(1, 501)])


def downgrade():
    pass
'''

STEP = '''\
"""step {i}"""
import sqlalchemy as sa
from alembic import op

revision = "g{i:04d}"
down_revision = "g{parent:04d}"
branch_labels = None
depends_on = None


def upgrade():
{body}


def downgrade():
    pass
'''


def step_body(i: int, dialect: str) -> str:
    table = TABLES[(i // 4) % len(TABLES)]
    column = f"c{i - i % 4}"
    kind = i % 4
    if kind == 0:
        return f'op.add_column("{table}", sa.Column("{column}", sa.Integer()))'
    if kind == 1:
        return f'op.create_index("ix_{table}_{column}", "{table}", ["{column}"])'
    if kind == 2:
        if dialect == "sqlite":
            return f'op.execute("UPDATE {table} SET {column} = 0 WHERE {column} IS NULL")'
        return (f'op.alter_column("{table}", "{column}", type_=sa.BigInteger(), '
                f'existing_type=sa.Integer())')
    return (f'op.drop_index("ix_{table}_{column}", table_name="{table}")\n'
            f'op.drop_column("{table}", "{column}")')


def generated_project(root: Path, revisions: int, dialect: str) -> Path:
    from tests.conftest import copy_sample_project

    ini = copy_sample_project(root)
    versions = root / "alembic" / "versions"
    for path in versions.glob("*.py"):
        path.unlink()
    (versions / "g0000_create.py").write_text(FIRST.format(tables=TABLES))
    for i in range(1, revisions):
        (versions / f"g{i:04d}_step.py").write_text(STEP.format(
            i=i, parent=i - 1, body=textwrap.indent(step_body(i, dialect), "    ")))
    return ini


def databases(stack) -> dict[str, str | None]:
    """A URL per dialect: a SQLite file, scratch server databases where reachable."""
    from sqlalchemy.exc import SQLAlchemyError

    from tests.servers import SERVERS, scratch_database

    found: dict[str, str | None] = {}
    for name, server in SERVERS.items():
        try:
            server.scalars("SELECT 1")
        except SQLAlchemyError as exc:
            print(f"{name}: not reachable ({type(exc).__name__}); skipped")
            found[name] = None
            continue
        found[name] = server.url(stack.enter_context(scratch_database(server, "md_ilint_bench")))
    return found


def lint_times(ini: Path, url: str, instance: Path, label: str, each: bool) -> None:
    from dashboard.automigrate import dashboard_for
    from dashboard.services.findings import plan_findings, revision_findings

    target = dashboard_for(str(ini), url, str(instance), {})
    project = target.project()
    history = target.history(project)
    _, _, status = target.read_state()
    pending = [p.revision for p in status.pending]
    scripts = [history.revisions[r] for r in pending]
    started = time.perf_counter()
    sql = target.upgrade_sql(project, scripts)  # generated once, then cached in the target
    generated = time.perf_counter() - started
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        lint = plan_findings(target, project, history, pending)
        times.append(time.perf_counter() - started)
    first, warm = times[0], statistics.median(times[1:])
    counts = {s: sum(f.severity == s for f in lint.findings) for s in ("error", "warning",
                                                                         "info")}
    per = max(1, len(pending))
    rules = project.engine.risk_rules()
    statements = sum(len(rules.statements(step.sql)) for step in sql.values() if step.sql)
    unparsed = sum(f.rule == "could_not_parse" for f in lint.findings)
    print(f"{label:<30} parsed {statements - unparsed} of {statements} statements")
    print(f"{label:<30} {len(pending):>5} rev  plan: first {first * 1000:7.1f} ms "
          f"({first * 1000 / per:6.2f} ms/rev), warm {warm * 1000:7.1f} ms "
          f"({warm * 1000 / per:6.2f} ms/rev)  [SQL generation {generated:4.1f} s]  {counts}")
    if not each:
        return
    for script in scripts:
        target.offline_sql(project, script)
    started = time.perf_counter()
    for script in scripts:
        revision_findings(project, script.revision, target.offline_sql(project, script))
    elapsed = time.perf_counter() - started
    print(f"{label:<30} {len(scripts):>5} rev  each revision alone, both ways (revision "
          f"page): {elapsed * 1000 / max(1, len(scripts)):6.2f} ms/rev")


def warm_up() -> None:
    """Import the parsers and let each build its grammar tables once (not timed: a
    running dashboard has done so at its first lint)."""
    from dashboard.engines import risk_mariadb, risk_postgresql, risk_sqlite
    from dashboard.engines.risk import Catalog, PlanState

    for rules in (risk_postgresql.RULES, risk_mariadb.RULES, risk_sqlite.RULES):
        rules.risks("ALTER TABLE t ADD COLUMN c INTEGER; CREATE INDEX ix ON t (c);",
                    PlanState(Catalog(False)))


def main() -> None:
    from contextlib import ExitStack

    from tests.conftest import copy_sample_project, migrate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 generated revisions")
    args = parser.parse_args()
    count = 200 if args.quick else args.revisions
    warm_up()
    work = Path(tempfile.mkdtemp(prefix="bench-lint-"))
    try:
        with ExitStack() as stack:
            urls = {"sqlite": f"sqlite:///{work / 'sample.db'}", **databases(stack)}
            for dialect, url in urls.items():
                if url is None:
                    continue
                sample = copy_sample_project(work / f"sample-{dialect}")
                lint_times(sample, url, work / f"instance-sample-{dialect}",
                           f"sample history, {dialect}", each=True)
                name = "mysql" if dialect == "mariadb" else dialect
                generated_url = (f"sqlite:///{work / 'generated.db'}" if dialect == "sqlite"
                                 else url)
                ini = generated_project(work / f"generated-{dialect}", count, name)
                migrate(ini, generated_url, "g0000")
                lint_times(ini, generated_url, work / f"instance-generated-{dialect}",
                           f"generated history, {dialect}", each=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
