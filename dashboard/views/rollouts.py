"""Rollout pages: the list, one rollout live, the form that starts one, Cancel.

A rollout spans targets, so these URLs are not under ``/targets/<name>/``. The
rollout page and its fragment (``_rollout.html``, polling itself while the
rollout runs) read the rollout and its rows in two queries whatever the
number of targets.
"""

from __future__ import annotations

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for

from dashboard.errors import BadRequest
from dashboard.services import findings, rollouts
from dashboard.services.audit import current_user
from dashboard.services.planning import ACTIONS
from dashboard.views import registry, rollouts_listing

bp = Blueprint("rollouts", __name__)


def _root() -> str:
    return str(registry().settings["DASHBOARD_INSTANCE_DIR"])


@bp.get("/rollouts")
def rollouts_page():
    query = rollouts_listing()
    found = rollouts.find_rollouts(_root(), query.where, query.page, query.per_page)
    return render_template("rollouts.html", found=found, query=query,
                           statuses=rollouts.STATUSES)


@bp.get("/rollouts/new")
def new_rollout():
    return render_template("new_rollout.html", **_form_choices(), form={})


def _form_choices() -> dict:
    reg = registry()
    labels = sorted({label for t in reg.targets.values() for label in t.labels})
    return {"labels": labels, "targets": list(reg.targets.values()), "errors": reg.errors,
            "actions": ACTIONS, "defaults": {"canary": rollouts.DEFAULT_CANARY,
                                             "parallel": rollouts.DEFAULT_PARALLEL}}


@bp.post("/rollouts")
def start_rollout():
    """Start a rollout from the form; a risky upgrade shows its typed confirmation."""
    form = request.form
    chosen = form.get("select", "label")
    if chosen not in ("label", "targets"):
        raise BadRequest("'select' must be 'label' or 'targets'.")
    label = form.get("label", "").strip() if chosen == "label" else None
    names = form.getlist("targets") if chosen == "targets" else None
    typed = form.get("confirm_risk", "").strip().lower()
    try:
        rollout = rollouts.request_rollout(
            registry(), label=label, names=names, action=form.get("action", "upgrade"),
            destination=form.get("target", "heads"),
            canary=form.get("canary", str(rollouts.DEFAULT_CANARY)),
            parallel=form.get("parallel", str(rollouts.DEFAULT_PARALLEL)),
            on_error=form.get("on_error", rollouts.HALT),
            confirmed=typed == findings.CONFIRM_WORD, user=current_user())
    except findings.RiskNotConfirmed as exc:
        if typed:
            flash(f"Type '{findings.CONFIRM_WORD}' to confirm.", "bad")
        return render_template("new_rollout.html", **_form_choices(), form=form,
                               risk=exc.message, confirm_word=findings.CONFIRM_WORD), 409
    return redirect(url_for("rollouts.rollout_page", rollout_id=rollout.id), code=303)


@bp.get("/rollouts/<rollout_id>")
def rollout_page(rollout_id: str):
    if request.headers.get("HX-Request"):  # the refresh: the rollout alone
        page = render_template("_rollout.html",
                               rollout=rollouts.read_rollout(registry().settings, rollout_id))
    else:
        rollout, events = rollouts.read_rollout_with_events(registry().settings, rollout_id)
        page = render_template("rollout.html", rollout=rollout, events=events)
    response = make_response(page)
    response.headers["Vary"] = "HX-Request"
    return response


@bp.post("/rollouts/<rollout_id>/cancel")
def cancel_rollout(rollout_id: str):
    """Without the confirmation's answer, the page that asks (the way without
    JavaScript); htmx sends it with ``hx-vals`` after ``hx-confirm``."""
    if request.form.get("confirm") != "yes":
        rollout = rollouts.get_rollout(_root(), rollout_id)
        return render_template("cancel_rollout.html", rollout=rollout)
    rollouts.request_cancel(_root(), rollout_id, current_user())
    return redirect(url_for("rollouts.rollout_page", rollout_id=rollout_id), code=303)
