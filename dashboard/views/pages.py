"""HTML pages of the read side: overview, history graph, revision pages."""

from __future__ import annotations

from flask import Response, g, render_template, request

from dashboard.errors import BadRequest
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
        files=inspection.revision_files(project, history),
    )


@bp.get("/sql/pending")
def pending_sql():
    name, script = inspection.pending_sql_script(current_dashboard())
    response = Response(script, mimetype="application/sql")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


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
    """The page at once; its SQL, if not generated yet, in a fragment the page fetches
    (``?sql=now`` waits for it: the way without JavaScript)."""
    wanted = request.args.get("sql", "cached")
    if wanted not in ("cached", "now"):
        raise BadRequest("'sql' must be 'now' or 'cached'.")
    project, status, detail = current_dashboard().revision_detail(revision_id, sql=wanted)
    return render_template("revision.html", project=project, status=status, detail=detail)


@bp.get("/revisions/<path:revision_id>/sql")
def revision_sql(revision_id: str):
    """Both directions' SQL of one revision (one subprocess): the upgrade's block in
    place, the downgrade's out of band."""
    project, status, detail = current_dashboard().revision_detail(revision_id, sql="now")
    return render_template("_revision_sql.html", detail=detail, fragment=True)
