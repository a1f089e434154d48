"""Flask blueprints: parse input, call a service, render.

Every page and API URL exists twice: as is, for the default target, and
under ``/targets/<name>/`` (``/api/targets/<name>/...``) for a named target.
The target name travels in ``g`` while a request is handled, and ``url_for``
adds it back, so templates and views never pass it around.
"""

from __future__ import annotations

from flask import Blueprint, current_app, g

from dashboard.core import Registry, Target

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


def registry() -> Registry:
    return current_app.extensions["dashboard_registry"]


def current_dashboard() -> Target:
    return registry().get(g.get("target_name"))
