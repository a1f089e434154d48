"""HTML pages of the read side: overview, history graph, revision pages."""

from __future__ import annotations

from flask import g, render_template

from dashboard.services import guard, inspection, runs
from dashboard.views import TargetBlueprint, current_dashboard, init_target_urls, registry

bp = TargetBlueprint("pages", __name__)
init_target_urls(bp)



@bp.get("/")
def overview():
    if registry().multiple and not g.get("target_name"):
        return render_template("targets.html", targets=inspection.target_summaries(registry()))
    dashboard = current_dashboard()
    project, history, status = dashboard.read_state(ask_env_py=True)
    recent = runs.list_runs(dashboard.instance_dir, limit=1)
    return render_template(
        "overview.html", project=project, history=history, status=status,
        summaries=inspection.revision_summaries(history, status),
        run=recent[0] if recent else None,
        lock_holder=guard.lock_holder(dashboard.pinned(project)),
        messages=inspection.revision_messages(history),
    )


@bp.get("/history")
def history_page():
    project, history, status = current_dashboard().read_state()
    summaries = inspection.revision_summaries(history, status)
    layout = inspection.graph_layout(summaries)
    return render_template(
        "history.html", project=project, history=history, status=status,
        summaries=summaries, layout=layout,
    )


@bp.get("/revisions/<path:revision_id>")
def revision(revision_id: str):
    project, status, detail = current_dashboard().revision_detail(revision_id)
    return render_template("revision.html", project=project, status=status, detail=detail)
