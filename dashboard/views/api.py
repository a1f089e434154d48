"""The JSON API: the same data as the pages, for scripts and CI."""

from __future__ import annotations

import json

from flask import jsonify, request, url_for
from werkzeug.exceptions import Forbidden, UnsupportedMediaType

from dashboard import security
from dashboard.errors import BadRequest, NotFound
from dashboard.services import (
    audit,
    backups,
    findings,
    guard,
    inspection,
    rehearsal,
    rollouts,
    runs,
)
from dashboard.services.audit import current_user
from dashboard.views import (
    TargetBlueprint,
    audit_listing,
    backups_listing,
    current_dashboard,
    init_target_urls,
    registry,
    rollout_json,
    rollouts_listing,
    runs_listing,
)

bp = TargetBlueprint("api", __name__, url_prefix="/api")
init_target_urls(bp)



@bp.get("/targets", targeted=False)
def targets():
    return jsonify({
        "default": registry().default,
        "targets": [dict(t.as_json(), url=url_for("api.status", target=t.name))
                    for t in inspection.target_summaries(registry())],
    })


@bp.get("/status")
def status():
    _, history, state = current_dashboard().read_state(ask_env_py=True)
    return jsonify(inspection.status_json(history, state))


@bp.get("/drift")
def drift():
    """The database against the project's models, compared now."""
    dashboard = current_dashboard()
    project, _, state = dashboard.read_state()
    return jsonify(dashboard.drift(project, state, "fresh").as_json())


@bp.get("/sql/pending")
def pending_sql():
    name, script = inspection.pending_sql_script(current_dashboard())
    return jsonify({"filename": name, "sql": script})


@bp.get("/revisions")
def revisions():
    _, history, state = current_dashboard().read_state()
    return jsonify(
        {"revisions": [s.as_json() for s in inspection.revision_summaries(history, state)]}
    )


@bp.get("/lint")
def lint():
    """The findings of the target's pending upgrade, each with its revision."""
    _, _, status, found = findings.pending_findings(current_dashboard())
    return jsonify(findings.pending_json(status, found))


@bp.get("/revisions/<path:revision_id>")
def revision(revision_id: str):
    _, _, detail = current_dashboard().revision_detail(revision_id)
    return jsonify(detail.as_json())


# ------------------------------------------------------------------ changes

def _json_body() -> dict:
    """API POSTs are JSON: a cross-site HTML form cannot send that content type."""
    if not request.is_json:
        raise UnsupportedMediaType("API requests that change something must be "
                                   "Content-Type: application/json.")
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:
        # The parser recurses once per level: a hostile body must not be a 500.
        raise BadRequest("The JSON body is nested too deeply.") from None
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


@bp.before_request
def refuse_foreign_origin():
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    origin = request.headers.get("Origin")
    if origin == "null":
        raise Forbidden("Requests from an opaque origin are refused.")
    if origin and not security.same_origin(origin, request.scheme, request.host):
        raise Forbidden(f"Requests from origin {origin} are refused: only pages of "
                        f"{request.scheme}://{request.host} itself may send them.")
    return None


def _run_created(run):
    body = run.as_json()
    body["url"] = url_for("api.run", run_id=run.id)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = body["url"]
    return response


@bp.post("/runs")
def create_run():
    body = _json_body()
    action, target = body.get("action"), body.get("target")
    if not isinstance(action, str) or not isinstance(target, str):
        raise BadRequest('Send {"action": "upgrade"|"downgrade"|"stamp", "target": "..."}.')
    confirm = body.get("confirm", False)
    if not isinstance(confirm, bool):
        raise BadRequest('"confirm" must be true or false.')
    dashboard = current_dashboard()
    project, history, state = dashboard.read_state()
    if action == "upgrade":
        findings.confirm_upgrade(dashboard, project, history, state, target, confirm)
    run = guard.start_action(dashboard.pinned(project), history, state.state,
                                  action, target, current_user())
    return _run_created(run)


@bp.get("/runs")
def list_runs():
    query = runs_listing()
    found = runs.find_runs(current_dashboard().instance_dir, query.where, query.page,
                           query.per_page)
    return jsonify({"runs": [r.as_json() for r in found.items], **_paging(query, found)})


@bp.get("/runs/<run_id>")
def run(run_id: str):
    record = runs.get_run(current_dashboard().instance_dir, run_id)
    if record is None:
        raise NotFound(f"No run '{run_id}'.")
    return jsonify(record.as_json())


@bp.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str):
    _json_body()
    dashboard = current_dashboard()
    record = guard.cancel_run(dashboard, run_id, current_user())
    return jsonify(record.as_json()), 202


@bp.post("/rehearsals")
def create_rehearsal():
    body = _json_body()
    destination, roundtrip = body.get("target", "heads"), body.get("roundtrip", False)
    if not isinstance(destination, str) or not isinstance(roundtrip, bool):
        raise BadRequest('Send {"target": "heads" (or another revision), "roundtrip": '
                         'true|false}.')
    dashboard = current_dashboard()
    project, history, _ = dashboard.read_state()
    record = rehearsal.start_rehearsal(dashboard.pinned(project), history, destination,
                                       roundtrip, current_user())
    url = url_for("api.rehearsal_detail", rehearsal_id=record.id)
    response = jsonify({**record.as_json(), "url": url})
    response.status_code = 202
    response.headers["Location"] = url
    return response


@bp.get("/rehearsals/<rehearsal_id>")
def rehearsal_detail(rehearsal_id: str):
    return jsonify(rehearsal.find_rehearsal(current_dashboard().instance_dir,
                                            rehearsal_id).as_json())


@bp.get("/backups")
def list_backups():
    query = backups_listing()
    found = backups.find_backups(current_dashboard().instance_dir, query.where, query.page,
                                 query.per_page)
    return jsonify({"backups": [r.as_json() for r in found.items], **_paging(query, found)})


@bp.post("/backups")
def create_backup():
    _json_body()
    dashboard = current_dashboard()
    record = guard.backup_now(dashboard, current_user())
    return jsonify(record.as_json()), 201


@bp.get("/backups/<backup_id>")
def backup(backup_id: str):
    return jsonify(backups.get_backup(current_dashboard().instance_dir, backup_id).as_json())


@bp.post("/backups/<backup_id>/verify")
def verify_backup(backup_id: str):
    _json_body()
    dashboard = current_dashboard()
    return jsonify(guard.verify_backup(dashboard, backup_id, current_user()).as_json())


@bp.post("/backups/<backup_id>/restore")
def restore_backup(backup_id: str):
    _json_body()
    dashboard = current_dashboard()
    return _run_created(guard.start_restore(dashboard, backup_id, current_user()))


@bp.delete("/backups/<backup_id>")
def delete_backup(backup_id: str):
    dashboard = current_dashboard()
    guard.delete_backup(dashboard, backup_id, current_user())
    return "", 204


@bp.get("/audit")
def audit_log():
    query = audit_listing()
    found = audit.find_entries(current_dashboard().instance_dir, query.where, query.page,
                               query.per_page)
    return jsonify({"entries": [e.as_json() for e in found.items], **_paging(query, found)})


# ------------------------------------------------------------------ rollouts
# Untargeted: a rollout spans targets. Kept in the root instance folder's store.


@bp.post("/rollouts", targeted=False)
def create_rollout():
    body = _json_body()
    if "label" in body and "targets" in body:
        raise BadRequest('Send "label" or "targets", not both.')
    confirm = body.get("confirm", False)
    if not isinstance(confirm, bool):
        raise BadRequest('"confirm" must be true or false.')
    known = {"label", "targets", "action", "target", "canary", "parallel", "on_error",
             "confirm"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"Unknown fields {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    rollout = rollouts.request_rollout(
        registry(), label=body.get("label"), names=body.get("targets"),
        action=body.get("action", "upgrade"), destination=body.get("target", "heads"),
        canary=body.get("canary", rollouts.DEFAULT_CANARY),
        parallel=body.get("parallel", rollouts.DEFAULT_PARALLEL),
        on_error=body.get("on_error", rollouts.HALT), confirmed=confirm, user=current_user())
    url = url_for("api.rollout", rollout_id=rollout.id)
    response = jsonify({"id": rollout.id, "url": url, "status": rollout.status})
    response.status_code = 202
    response.headers["Location"] = url
    return response


@bp.get("/rollouts", targeted=False)
def list_rollouts():
    query = rollouts_listing()
    found = rollouts.find_rollouts(_root(), query.where, query.page, query.per_page)
    listed = []
    for rollout, counts in found.items:
        body = rollout.as_json()
        del body["targets"]  # one rollout's URL gives them
        listed.append({**body, "counts": counts,
                       "url": url_for("api.rollout", rollout_id=rollout.id)})
    return jsonify({"rollouts": listed, **_paging(query, found)})


@bp.get("/rollouts/<rollout_id>", targeted=False)
def rollout(rollout_id: str):
    return jsonify(rollout_json(rollouts.read_rollout(registry().settings, rollout_id)))


@bp.post("/rollouts/<rollout_id>/cancel", targeted=False)
def cancel_rollout(rollout_id: str):
    _json_body()
    found = rollouts.request_cancel(_root(), rollout_id, current_user())
    return jsonify(rollout_json(found)), 202


def _root() -> str:
    return str(registry().settings["DASHBOARD_INSTANCE_DIR"])


def _paging(query, found) -> dict:
    return {"total": found.total, "page": found.page, "per_page": found.per_page,
            "next": query.next_url(found)}
