"""Flask blueprints: parse input, call a service, render."""

from flask import current_app

from dashboard.core import Dashboard


def current_dashboard() -> Dashboard:
    return current_app.extensions["dashboard"]
