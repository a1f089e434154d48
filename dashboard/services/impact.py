"""What a planned action will do, for its confirmation page: the plan, and each
step's risk findings (read from its offline SQL by ``findings``), among them
what a downgrade destroys."""

from __future__ import annotations

from dataclasses import dataclass

from dashboard.services.findings import Lint, plan_findings

DROP_RULES = ("drop_table", "drop_column")


@dataclass(frozen=True)
class Preview:
    plan: object  # planning.ActionPlan
    lint: Lint | None  # None: the steps' SQL is not generated yet (the page fetches it)
    after: list[str]

    @property
    def sql_errors(self) -> dict[str, str]:
        return dict(self.lint.sql_errors or {}) if self.lint else {}

    @property
    def drops(self) -> dict[str, list[str]] | None:
        """What each step drops, as 'table t' / 'column t.c'."""
        if self.lint is None:
            return None
        return {step.revision: list(dict.fromkeys(
            f"column {f.table}.{f.column}" if f.column else f"table {f.table}"
            for f in self.lint.of(step.revision) if f.rule in DROP_RULES))
            for step in self.plan.steps}

    @property
    def needs_typed_confirmation(self) -> bool:
        """An upgrade that loses data is confirmed by typing (see findings.CONFIRM_WORD)."""
        return self.plan.action == "upgrade" and bool(self.lint and self.lint.errors)


def preview_action(dashboard, project, history, status, action: str, target: str,
                   sql: str = "now") -> Preview:
    """The plan of an action and its steps' findings: read now (``sql="now"``), or
    only if every step's SQL is already generated ("cached"; ``lint`` is None
    otherwise, for the page to fetch it in a fragment)."""
    from dashboard.services.planning import plan_for_status, resulting_revisions

    plan = plan_for_status(history, status, action, target)
    lint: Lint | None = Lint()
    if action in ("upgrade", "downgrade"):
        lint = plan_findings(dashboard, project, history, [s.revision for s in plan.steps],
                             direction=action, sql=sql)
    return Preview(plan, lint, resulting_revisions(history, plan))
