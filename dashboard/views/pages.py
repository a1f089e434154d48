"""HTML pages of the read side: overview, history graph, revision pages."""

from __future__ import annotations

from flask import Response, g, make_response, render_template, request, url_for

from dashboard.errors import BadRequest
from dashboard.services import findings, guard, inspection, runs
from dashboard.views import TargetBlueprint, current_dashboard, init_target_urls, registry

bp = TargetBlueprint("pages", __name__)
init_target_urls(bp)



@bp.get("/")
def overview():
    if registry().multiple and not g.get("target_name"):
        return render_template("targets.html", targets=inspection.target_summaries(registry()))
    wanted = request.args.get("drift", "cached")
    if wanted not in ("cached", "now"):
        raise BadRequest("'drift' must be 'now' or 'cached'.")
    dashboard = current_dashboard()
    project, history, status = dashboard.read_state(ask_env_py=True)
    recent = runs.list_runs(dashboard.instance_dir, limit=1)
    # The comparison runs env.py in a subprocess: unless asked for (the way without
    # JavaScript), the page shows the last answer, or fetches one in a fragment.
    drift = dashboard.drift(project, status, "fresh" if wanted == "now" else "cached")
    return render_template(
        "overview.html", project=project, history=history, status=status, drift=drift,
        lint=findings.overview_findings(dashboard, project, history, status),
        badge_limit=findings.BADGE_LIMIT,
        summaries=inspection.revision_summaries(history, status),
        run=recent[0] if recent else None,
        lock_holder=guard.lock_holder(dashboard.pinned(project)),
        messages=inspection.revision_messages(history),
        files=inspection.revision_files(project, history),
    )


@bp.get("/drift")
def drift_panel():
    """The overview's drift panel, compared now unless a recent answer holds
    (``?fresh=1``: compared now in any case)."""
    fresh = request.args.get("fresh", "")
    if fresh not in ("", "0", "1"):
        raise BadRequest("'fresh' must be 1 or 0.")
    dashboard = current_dashboard()
    project, _, status = dashboard.read_state()
    drift = dashboard.drift(project, status, "fresh" if fresh == "1" else "now")
    return render_template("_drift.html", drift=drift)


@bp.get("/lint")
def lint_page():
    """The pending upgrade's risk findings: a page, or (htmx) the overview's pending
    list with its badges."""
    project, history, status, lint = findings.pending_findings(current_dashboard())
    fragment = bool(request.headers.get("HX-Request"))
    response = make_response(render_template("_pending.html" if fragment else "lint.html",
                                             project=project, status=status, lint=lint,
                                             badge_limit=findings.BADGE_LIMIT))
    response.headers["Vary"] = "HX-Request"
    return response


@bp.get("/sql/pending")
def pending_sql():
    name, script = inspection.pending_sql_script(current_dashboard())
    response = Response(script, mimetype="application/sql")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


MAX_QUERY = 200


@bp.get("/history")
def history_page():
    start = _whole_number("start", 0, None)
    size = _whole_number("size", 1, inspection.MAX_WINDOW) or inspection.HISTORY_WINDOW
    around = _text("around") or None
    query = _text("q")
    project, history, status = current_dashboard().read_state()
    view = inspection.history_view(history, status, start=start, around=around, size=size,
                                   query=query)
    return render_template(
        "history.html", project=project, history=history, status=status, view=view,
        summaries=inspection.revision_summaries(history, status), page_url=_history_url,
    )


def _history_url(**args) -> str:
    """This page with other window arguments (the search and size are kept)."""
    kept = {name: request.args[name] for name in ("q", "size") if request.args.get(name)}
    anchor = args.pop("_anchor", None)
    return url_for("pages.history_page", **kept, **args, _anchor=anchor)


@bp.get("/history/suggestions")
def revision_suggestions():
    """<option>s for a downgrade or stamp destination being typed (the
    datalist of _actions.html); a fragment, fetched as the user types."""
    action = request.args.get("action", "stamp")
    if action not in ("downgrade", "stamp"):
        raise BadRequest("'action' must be downgrade or stamp.")
    typed = _text("target")
    _, history, status = current_dashboard().read_state()
    found = inspection.revision_suggestions(history, status, typed, action)
    return render_template("_suggestions.html", action=action, suggestions=found)


def _whole_number(name: str, least: int, most: int | None) -> int | None:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    if (not (raw.isascii() and raw.isdigit()) or int(raw) < least
            or (most is not None and int(raw) > most)):
        limits = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise BadRequest(f"'{name}' must be a whole number {limits}.")
    return int(raw)


def _text(name: str) -> str:
    value = request.args.get(name, "").strip()
    if len(value) > MAX_QUERY:
        raise BadRequest(f"'{name}' may be at most {MAX_QUERY} characters.")
    return value


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
