"""Migration Dashboard: inspect and run Alembic migrations safely, on localhost.

The web app is built by ``create_app`` (dashboard/app.py), imported only when
it is called: every run starts a runner process that imports this package, and
without Flask and its extensions each one starts about 0.1 s sooner (a rollout
over hundreds of databases starts one per database).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict | None = None) -> Flask:
    """The dashboard's Flask app (see dashboard/app.py)."""
    from dashboard.app import create_app as build

    return build(test_config)
