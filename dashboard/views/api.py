"""The JSON API: the same data as the pages, for scripts and CI."""

from __future__ import annotations

from flask import Blueprint, jsonify

from dashboard.services import inspection
from dashboard.services.revisions import resolve_revision
from dashboard.views import current_dashboard

bp = Blueprint("api", __name__, url_prefix="/api")


def _read_state():
    dashboard = current_dashboard()
    return (dashboard, *dashboard.read_state())


@bp.get("/status")
def status():
    _, _, history, state = _read_state()
    body = state.as_json()
    body["unreadable"] = [{"path": u.path, "reason": u.reason} for u in history.unreadable]
    return jsonify(body)


@bp.get("/revisions")
def revisions():
    _, _, history, state = _read_state()
    return jsonify(
        {"revisions": [s.as_json() for s in inspection.revision_summaries(history, state)]}
    )


@bp.get("/revisions/<path:revision_id>")
def revision(revision_id: str):
    dashboard, project, history, state = _read_state()
    script = resolve_revision(history, revision_id)
    detail = inspection.revision_detail(
        project, history, script, state, dashboard.offline_sql(project, script)
    )
    return jsonify(detail.as_json())
