"""Pages that change the database: actions, runs, backups, and the audit log."""

from __future__ import annotations

from flask import (
    Response,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from dashboard.errors import BadRequest, DashboardError, NotFound
from dashboard.services import audit, backups, findings, guard, rehearsal, runs
from dashboard.services.audit import current_user
from dashboard.services.impact import preview_action
from dashboard.services.inspection import revision_files, revision_messages
from dashboard.views import (
    TargetBlueprint,
    audit_listing,
    backups_listing,
    current_dashboard,
    init_target_urls,
    preview_url,
    runs_listing,
)

bp = TargetBlueprint("actions", __name__)
init_target_urls(bp)


def _form_value(name: str) -> str:
    value = request.form.get(name, "").strip()
    if not value:
        raise BadRequest(f"The form is missing '{name}'.")
    return value


@bp.get("/actions/preview")
def preview():
    """The plan at once; for a downgrade whose SQL is not generated yet, what each
    step drops (and the confirmation) in a fragment the page fetches, or with the
    page itself under ``?sql=now`` (the way without JavaScript)."""
    dashboard = current_dashboard()
    action = request.args.get("action", "")
    target = request.args.get("target", "").strip()
    wanted = request.args.get("sql", "cached")
    if wanted not in ("cached", "now"):
        raise BadRequest("'sql' must be 'now' or 'cached'.")
    fragment = bool(request.headers.get("HX-Request")) and wanted == "now"
    project, history, status = dashboard.read_state()
    preview = preview_action(dashboard, project, history, status, action, target, sql=wanted)
    return render_template("_preview_plan.html" if fragment else "preview.html",
                           project=project, status=status, preview=preview,
                           plan=preview.plan, history=history, after=preview.after,
                           confirm_word=findings.CONFIRM_WORD)


@bp.post("/actions")
def start():
    """Start an action. An upgrade with an `error` finding (data loss) runs only when
    the form carries the typed confirmation; otherwise its confirmation page is shown."""
    dashboard = current_dashboard()
    action, target = _form_value("action"), _form_value("target")
    project, history, status = dashboard.read_state()
    if action == "upgrade":
        typed = request.form.get("confirm_risk", "").strip().lower()
        try:
            findings.confirm_upgrade(dashboard, project, history, status, target,
                                     typed == findings.CONFIRM_WORD)
        except findings.RiskNotConfirmed as exc:
            if typed:
                flash(f"Type '{findings.CONFIRM_WORD}' to confirm.", "bad")
            else:
                flash(exc.message, "bad")
            return redirect(preview_url("upgrade", target, sql="now"), code=303)
    run = guard.start_action(dashboard.pinned(project), history, status.state,
                                  action, target, current_user())
    return redirect(url_for("actions.run_page", run_id=run.id), code=303)


@bp.post("/rehearsals")
def rehearse():
    dashboard = current_dashboard()
    destination = _form_value("target")
    project, history, _ = dashboard.read_state()
    record = rehearsal.start_rehearsal(dashboard.pinned(project), history, destination,
                                       request.form.get("roundtrip") == "yes", current_user())
    return redirect(url_for("actions.rehearsal_page", rehearsal_id=record.id), code=303)


@bp.get("/rehearsals/<rehearsal_id>")
def rehearsal_page(rehearsal_id: str):
    dashboard = current_dashboard()
    record = rehearsal.find_rehearsal(dashboard.instance_dir, rehearsal_id)
    messages, _ = _messages(dashboard)
    fragment = bool(request.headers.get("HX-Request"))
    response = make_response(render_template(
        "_rehearsal.html" if fragment else "rehearsal.html", rehearsal=record,
        messages=messages, **({} if fragment else {"project": dashboard.project()})))
    response.headers["Vary"] = "HX-Request"
    return response


@bp.get("/runs")
def runs_page():
    dashboard = current_dashboard()
    query = runs_listing()
    found = runs.find_runs(dashboard.instance_dir, query.where, query.page, query.per_page)
    return render_template("runs.html", runs=found.items, found=found, query=query,
                           statuses=runs.STATUSES, actions=runs.ACTIONS,
                           project=dashboard.project())


@bp.get("/runs/<run_id>")
def run_page(run_id: str):
    dashboard = current_dashboard()
    run = runs.get_run(dashboard.instance_dir, run_id)
    if run is None:
        raise NotFound(f"No run '{run_id}'.")
    messages, files = _messages(dashboard)
    if request.headers.get("HX-Request"):
        response = make_response(render_template("_run.html", run=run, messages=messages,
                                                 files=files))
    else:
        response = make_response(render_template("run.html", run=run, messages=messages,
                                                 files=files,
                                                 project=dashboard.project()))
    response.headers["Vary"] = "HX-Request"
    return response


def _messages(dashboard) -> tuple[dict[str, str], dict[str, str]]:
    """Each revision's message and file, for a run's steps and what to fix."""
    try:
        project = dashboard.project()
        history = dashboard.history(project)
        return revision_messages(history), revision_files(project, history)
    except DashboardError:
        return {}, {}


def _confirmed() -> bool:
    """Whether a POST that destroys something carries the confirmation's answer.

    Without it the view shows what would be destroyed and asks, so the page
    confirms without JavaScript; htmx sends it with ``hx-vals`` after ``hx-confirm``."""
    return request.form.get("confirm") == "yes"


@bp.post("/runs/<run_id>/cancel")
def cancel(run_id: str):
    dashboard = current_dashboard()
    if not _confirmed():
        run, _ = guard.cancellable_run(dashboard, run_id)
        return render_template("cancel_run.html", run=run, project=dashboard.project())
    guard.cancel_run(dashboard, run_id, current_user())
    return redirect(url_for("actions.run_page", run_id=run_id), code=303)


@bp.get("/backups")
def backups_page():
    dashboard = current_dashboard()
    query = backups_listing()
    found = backups.find_backups(dashboard.instance_dir, query.where, query.page,
                                 query.per_page)
    return render_template("backups.html", backups=found.items, found=found, query=query,
                           project=dashboard.project(),
                           retention=dashboard.settings.get("DASHBOARD_BACKUP_RETENTION"))


@bp.post("/backups")
def backup_now():
    dashboard = current_dashboard()
    record = guard.backup_now(dashboard, current_user())
    flash(f"Backup {record.id} taken and verified ({record.verification})." if record.verified
          else f"Backup {record.id} taken, but its verification failed: {record.verification}",
          "ok" if record.verified else "bad")
    return redirect(url_for("actions.backups_page") + f"#b-{record.id}",
                    code=303)


@bp.get("/backups/<backup_id>/download")
def download(backup_id: str):
    record = backups.get_backup(current_dashboard().instance_dir, backup_id)
    response = Response(stream_with_context(backups.iter_backup_file(record)),
                        mimetype="application/vnd.sqlite3")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{backups.download_name(record)}"'
    )
    response.headers["Content-Length"] = str(record.size)
    response.headers["X-Backup-SHA256"] = record.sha256
    return response


@bp.post("/backups/<backup_id>/verify")
def verify(backup_id: str):
    dashboard = current_dashboard()
    record = guard.verify_backup(dashboard, backup_id, current_user())
    flash(f"Backup {record.id} checked again: passed ({record.verification})." if record.verified
          else f"Backup {record.id} checked again: failed: {record.verification}",
          "ok" if record.verified else "bad")
    return redirect(url_for("actions.backups_page") + f"#b-{record.id}",
                    code=303)


@bp.get("/backups/<backup_id>/restore")
def restore_preview(backup_id: str):
    dashboard = current_dashboard()
    record = backups.get_backup(dashboard.instance_dir, backup_id)
    project, history, status = dashboard.read_state()
    return render_template("restore.html", backup=record, project=project, status=status)


@bp.post("/backups/<backup_id>/restore")
def restore(backup_id: str):
    dashboard = current_dashboard()
    run = guard.start_restore(dashboard, backup_id, current_user())
    return redirect(url_for("actions.run_page", run_id=run.id), code=303)


@bp.post("/backups/<backup_id>/delete")
def delete(backup_id: str):
    dashboard = current_dashboard()
    if not _confirmed():
        record = guard.deletable_backup(dashboard, backup_id)
        return render_template("delete_backup.html", backup=record, project=dashboard.project())
    guard.delete_backup(dashboard, backup_id, current_user())
    flash(f"Backup {backup_id} deleted, with its manifest.", "ok")
    return redirect(url_for("actions.backups_page"), code=303)


@bp.get("/audit")
def audit_page():
    dashboard = current_dashboard()
    query = audit_listing()
    found = audit.find_entries(dashboard.instance_dir, query.where, query.page, query.per_page)
    return render_template("audit.html", entries=found.items, found=found, query=query,
                           events=audit.EVENTS, outcomes=audit.OUTCOMES,
                           project=dashboard.project())
