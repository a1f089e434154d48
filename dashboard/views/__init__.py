"""Flask blueprints: parse input, call a service, render.

Every page and API URL exists twice: as is, for the default target, and
under ``/targets/<name>/`` (``/api/targets/<name>/...``) for a named target.
The target name travels in ``g`` while a request is handled, and ``url_for``
adds it back, so templates and views never pass it around.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g

from dashboard.core import Registry, Target
from dashboard.services import audit as _audit
from dashboard.services import rollouts as _rollouts
from dashboard.services import runs as _runs

TARGET_PREFIX = "/targets/<target>"


class TargetBlueprint(Blueprint):
    def add_url_rule(self, rule, endpoint=None, view_func=None, **options):
        targeted = options.pop("targeted", True)
        super().add_url_rule(rule, endpoint, view_func, **options)
        if targeted:
            endpoint = endpoint or (view_func.__name__ if view_func else None)
            super().add_url_rule(TARGET_PREFIX + rule, endpoint, view_func, **options)


def init_target_urls(bp: Blueprint) -> None:
    @bp.url_value_preprocessor
    def pull_target(endpoint, values):
        g.target_name = values.pop("target", None) if values else None

    @bp.url_defaults
    def push_target(endpoint, values):
        name = g.get("target_name")
        if name and "target" not in values and current_app.url_map.is_endpoint_expecting(
            endpoint, "target"
        ):
            values["target"] = name


def preview_url(action: str, destination: str, **query: str) -> str:
    """The confirmation page of an action. Its revision travels as the query's
    ``target`` by hand: ``url_for(..., target=...)`` names the dashboard's target."""
    from urllib.parse import urlencode

    from flask import url_for

    return url_for("actions.preview") + "?" + urlencode(
        {"action": action, "target": destination, **query})


def registry() -> Registry:
    return current_app.extensions["dashboard_registry"]


def current_dashboard() -> Target:
    return registry().get(g.get("target_name"))


# ------------------------------------------------------------------ listings

MAX_PER_PAGE = 500


class Listing:
    """The filters and page of a listing request (runs, audit, backups), checked:
    a value outside its choices, or a page that is not a positive number, is a 400."""

    def __init__(self, choices: dict[str, tuple[str, ...]], per_page: int = 50,
                 values: dict[str, dict[str, object]] | None = None):
        from flask import request

        from dashboard.errors import BadRequest

        self.shown: dict[str, str] = {}
        self.where: dict[str, object] = {}
        for name, allowed in choices.items():
            value = request.args.get(name, "").strip()
            if not value:
                continue
            if value not in allowed:
                raise BadRequest(f"'{name}' must be one of: {', '.join(allowed)}.")
            self.shown[name] = value
            self.where[name] = (values or {}).get(name, {}).get(value, value)
        self.page = _positive("page", 1)
        self.per_page = _positive("per_page", per_page)
        if self.per_page > MAX_PER_PAGE:
            raise BadRequest(f"'per_page' may be at most {MAX_PER_PAGE}.")
        if "per_page" in request.args:
            self.shown["per_page"] = str(self.per_page)

    def url(self, page: int) -> str:
        from flask import request, url_for

        return url_for(request.endpoint, **self.shown, page=page)

    def next_url(self, found) -> str | None:
        return self.url(self.page + 1) if found.has_next else None


def _positive(name: str, default: int) -> int:
    from flask import request

    from dashboard.errors import BadRequest

    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise BadRequest(f"'{name}' must be a whole number of at least 1.")
    return int(raw)


def runs_listing() -> Listing:
    return Listing({"status": _runs.STATUSES, "action": _runs.ACTIONS})


def audit_listing() -> Listing:
    return Listing({"event": _audit.EVENTS, "outcome": _audit.OUTCOMES})


def backups_listing() -> Listing:
    return Listing({"verified": ("yes", "no")},
                   values={"verified": {"yes": True, "no": False}})


def rollouts_listing() -> Listing:
    return Listing({"status": _rollouts.STATUSES})


def rollout_json(rollout) -> dict:
    """A rollout as the API gives it: each row's run as its API URL."""
    from flask import url_for

    multiple = registry().multiple
    return rollout.as_json(lambda row: url_for("api.run", target=row.name if multiple else None,
                                               run_id=row.run_id) if row.run_id else None)
