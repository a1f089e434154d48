"""Risk findings: what a revision's offline SQL will do to the live database.

Each engine parses its own dialect's SQL with a real parser and knows its own
locks and rewrites (``dashboard/engines/risk_*``); this module runs its rules
over the steps of a plan in order (a table the plan creates is empty, a column
it declares has a known type), then reads the touched tables' rows and size
from the live catalog and says them in each message. An unreachable database
still gives every finding, with ``rows`` null, and the version-aware rules
assume the newest server.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from dashboard.engines.risk import ERROR, INFO, SEVERITIES, Catalog, PlanState, Risk, TableFacts
from dashboard.errors import Conflict, DashboardError

CONFIRM_WORD = "upgrade"  # typed on the confirmation page when an upgrade has an error


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    statement: str
    message: str
    safer: str
    direction: str
    table: str | None
    rows: int | None
    size_bytes: int | None = None
    revision: str | None = None
    column: str | None = None

    def as_json(self) -> dict:
        body = {"rule": self.rule, "severity": self.severity, "statement": self.statement,
                "message": self.message, "safer": self.safer, "direction": self.direction,
                "table": self.table, "column": self.column, "rows": self.rows,
                "size_bytes": self.size_bytes}
        if self.revision is not None:
            body["revision"] = self.revision
        return body


@dataclass(frozen=True)
class Lint:
    """The findings of some steps, the steps whose SQL could not be generated, and
    what the catalog could not tell (``note``)."""

    findings: tuple[Finding, ...] = ()
    sql_errors: dict | None = None  # revision -> why its SQL could not be generated
    note: str = ""

    @cached_property
    def _by_revision(self) -> dict[str | None, list[Finding]]:
        found: dict[str | None, list[Finding]] = {}
        for finding in self.findings:
            found.setdefault(finding.revision, []).append(finding)
        return found

    def of(self, revision: str, direction: str | None = None) -> list[Finding]:
        return [f for f in self._by_revision.get(revision, ())
                if direction is None or f.direction == direction]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    def worst(self, revision: str) -> str | None:
        found = {f.severity for f in self.of(revision)}
        return next((s for s in SEVERITIES if s in found), None)

    def as_json(self) -> dict:
        return {"findings": [f.as_json() for f in self.findings],
                "sql_errors": dict(self.sql_errors or {}), "note": self.note}


def lint_steps(project, steps) -> Lint:
    """Findings of ``steps``: (revision, direction, SQL) in the order they run."""
    return lint_runs(project, [steps])


def lint_runs(project, runs) -> Lint:
    """Findings of several independent runs of steps, on one reading of the catalog:
    each run starts from the live database as it is."""
    engine = project.engine
    rules = engine.risk_rules()
    found: list[Finding] = []
    with engine.catalog(project) as catalog:
        for steps in runs:
            state = PlanState(catalog, version_table=project.version_table)
            for revision, direction, sql in steps:
                state.timeout_reported = False  # said once per revision
                if rules is None:
                    found.append(Finding("no_rules", INFO, "", f"No risk rules for "
                                         f"{engine.name} databases: the SQL was not checked.",
                                         "", direction, None, None, revision=revision))
                    continue
                for risk in rules.risks(sql, state):
                    found.append(_finding(risk, catalog, state, direction, revision))
        return Lint(tuple(found), note=_note(catalog))


def _finding(risk: Risk, catalog: Catalog, state: PlanState, direction: str,
             revision: str | None) -> Finding:
    facts = None if state.is_new(risk.table) else catalog.facts(risk.table)
    severity, message = risk.severity, risk.why.replace("{table}", where(risk.table, facts,
                                                                          catalog))
    if risk.needs_rows and facts is not None and facts.rows == 0:
        severity, message = INFO, message + " The table is empty now, so this is quick."
    return Finding(risk.rule, severity, risk.statement, message, risk.safer, direction,
                   risk.table, facts.rows if facts else None,
                   facts.size_bytes if facts else None, revision, risk.column)


def where(table: str | None, facts: TableFacts | None, catalog: Catalog) -> str:
    """"`events` (12 M rows, 3.4 GB)", as far as the catalog tells."""
    if table is None:
        return "the table"
    if facts is None:
        return f"`{table}`" + (" (not in the database now)" if catalog.reachable else "")
    sizes = [s for s in (count_words(facts.rows), size_words(facts.size_bytes)) if s]
    return f"`{table}`" + (f" ({', '.join(sizes)})" if sizes else "")


def count_words(rows: int | None) -> str:
    if rows is None:
        return ""
    if rows < 10_000:
        return f"{rows:,} row{'s' if rows != 1 else ''}"
    for limit, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if rows >= limit:
            return f"{rows / limit:.3g} {unit} rows"
    return f"{rows} rows"


def size_words(size: int | None) -> str:
    if size is None:
        return ""
    for limit, unit in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "kB")):
        if size >= limit:
            return f"{size / limit:.1f} {unit}"
    return f"{size} bytes"


def _note(catalog: Catalog) -> str:
    if catalog.reachable:
        return ""
    return (f"The database could not be read ({catalog.note}): rows and sizes are unknown, "
            "and the rules assume the newest server version.")


# ------------------------------------------------------------------ what pages ask


def revision_findings(project, revision: str, offline) -> Lint:
    """Both directions of one revision, each as if it ran alone on the database."""
    runs, errors = [], {}
    for direction, sql, error in (("upgrade", offline.upgrade_sql, offline.upgrade_error),
                                  ("downgrade", offline.downgrade_sql,
                                   offline.downgrade_error)):
        if sql is None:
            errors[direction] = error or "no SQL"
        else:
            runs.append([(revision, direction, sql)])
    return replace(lint_runs(project, runs), sql_errors=errors)


def plan_findings(target, project, history, revisions, direction: str = "upgrade",
                  sql: str = "now") -> Lint | None:
    """Findings of ``revisions`` run in that order in one direction: their SQL
    generated now (``sql="now"``), or only if it is cached ("cached"; None otherwise)."""
    # A revision with no readable file (a dangling parent) has no SQL to check.
    unreadable = {r: "no readable revision file defines it" for r in revisions
                  if r not in history.revisions}
    revisions = [r for r in revisions if r not in unreadable]
    scripts = [history.revisions[r] for r in revisions]
    if sql == "now":
        found = target.step_sql(project, scripts, direction)
    else:
        found = target.cached_step_sql(project, scripts, direction)
        if found is None:
            return None
    errors = {**unreadable,
              **{r: found[r].error or "no SQL" for r in revisions if found[r].sql is None}}
    lint = lint_steps(project, [(r, direction, found[r].sql) for r in revisions
                                if found[r].sql is not None])
    return replace(lint, sql_errors=errors)


def pending_findings(target, sql: str = "now"):
    """(project, history, status, lint) of the target's pending upgrade; lint is None
    when ``sql="cached"`` and some pending revision's SQL is not generated yet."""
    project, history, status = target.read_state()
    revisions = [p.revision for p in status.pending]
    return project, history, status, plan_findings(target, project, history, revisions,
                                                   sql=sql)


# More pending revisions than this: the overview links to /lint instead of checking
# them itself (their SQL takes a subprocess per batch to generate).
BADGE_LIMIT = 50


def overview_findings(target, project, history, status) -> Lint | None:
    """The pending revisions' findings for the overview's badges, if their SQL is
    already generated and they are few enough; None otherwise."""
    if not status.pending or len(status.pending) > BADGE_LIMIT:
        return None
    return plan_findings(target, project, history, [p.revision for p in status.pending],
                         sql="cached")


def pending_json(status, lint: Lint) -> dict:
    """The body of GET /api/lint (and of ``migrate_db.py --lint --json``)."""
    body = lint.as_json()
    body.update(state=status.state, pending=[p.revision for p in status.pending],
                errors=len(lint.errors))
    return body


class RiskNotConfirmed(Conflict):
    title = "Confirmation needed"


def confirm_upgrade(target, project, history, status, destination: str,
                    confirmed: bool) -> None:
    """Raise RiskNotConfirmed when the planned upgrade has an `error` finding (data
    loss) and the request did not confirm it."""
    from dashboard.services.guard import lock_holder
    from dashboard.services.planning import plan_for_status

    if confirmed or lock_holder(target.pinned(project)):
        return  # another action runs: the guard refuses this one at once (409)
    try:
        plan = plan_for_status(history, status, "upgrade", destination)
    except DashboardError:
        return  # the guard refuses it, saying why, as it does without findings
    lint = plan_findings(target, project, history, [s.revision for s in plan.steps])
    if lint.errors:
        named = "; ".join(f"{f.revision}: {f.rule} on {f.table}" for f in lint.errors[:5])
        raise RiskNotConfirmed(
            f"This upgrade loses data ({named}). Confirm it: type '{CONFIRM_WORD}' on the "
            f"confirmation page, or send \"confirm\": true to the API.")
