"""The web app: ``create_app``, the one place a Flask app is built.

Reached through ``dashboard.create_app``, which imports this module only when
called, so the processes that carry out runs and rollouts (the runner, the
conductor, Celery workers) never import Flask.
"""

from __future__ import annotations

import logging
import os
import secrets
import time

from flask import Flask
from flask_wtf.csrf import CSRFProtect
from markupsafe import Markup, escape

from dashboard.core import Registry
from dashboard.settings import settings_from_environ

csrf = CSRFProtect()
log = logging.getLogger(__name__)


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    app.config.update(settings_from_environ())
    if test_config:
        app.config.update(test_config)
    instance_dir = str(app.config["DASHBOARD_INSTANCE_DIR"])
    try:
        os.makedirs(instance_dir, exist_ok=True)
    except OSError as exc:  # every page that needs it says so (503) until it exists
        log.warning("cannot create the instance folder %s: %s", instance_dir, exc)
    app.instance_path = instance_dir
    app.config["SECRET_KEY"] = app.config.get("DASHBOARD_SECRET_KEY") or _instance_secret(
        instance_dir
    )
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)

    registry = Registry({k: v for k, v in app.config.items() if k.startswith("DASHBOARD_")})
    app.extensions["dashboard_registry"] = registry
    dashboard = registry.targets[registry.default]
    app.extensions["dashboard"] = dashboard
    csrf.init_app(app)

    from dashboard import security
    from dashboard.views import actions, api, errors, pages, rollouts

    security.init_app(app)
    errors.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(actions.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(rollouts.bp)
    # The API is JSON-only and refuses foreign origins (see views/api.py), which
    # is what CSRF protection is for; HTML forms keep their CSRF token.
    csrf.exempt(api.bp)

    @app.template_filter("datetime")
    def format_datetime(epoch: float | None) -> Markup:
        """A moment, written in UTC (and saying so): static/dashboard.js shows it
        in the reader's own zone, with the UTC time in its title."""
        if epoch is None:
            return Markup("")
        utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
        return Markup('<time datetime="{}" title="{} UTC">{} UTC</time>').format(iso, utc, utc)

    @app.template_filter("breakable")
    def breakable(text: str) -> Markup:
        """Let long paths and URLs wrap after a slash, not mid-word."""
        return Markup("/<wbr>").join(escape(part) for part in str(text).split("/"))

    app.jinja_env.globals["now"] = time.time

    from dashboard.views import preview_url

    app.add_template_global(preview_url)

    @app.context_processor
    def target_context():
        from flask import g

        name = g.get("target_name")
        current = registry.targets.get(name or registry.default)
        return {"registry": registry, "target_name": name,
                "read_only": bool(current and current.read_only)}

    dashboard.ensure_sample_database()
    for each in registry.targets.values():
        if each.name not in registry.errors:
            each.settle_store()
    _resume_rollouts(registry)
    return app


def _resume_rollouts(registry: Registry) -> None:
    """A rollout whose conductor died with the machine (or was killed) gets a new one,
    which goes on from its rows; a store that cannot be used is said by its pages."""
    from dashboard.errors import DashboardError
    from dashboard.services.rollouts import resume_orphans

    try:
        for rollout_id in resume_orphans(registry.settings):
            log.warning("rollout %s had lost its conductor: a new one goes on with it",
                        rollout_id)
    except DashboardError as exc:
        log.warning("rollouts: %s", exc.message)


def _instance_secret(instance_dir: str) -> str:
    """A random key kept in the instance folder, so sessions survive restarts."""
    path = os.path.join(instance_dir, "secret_key")
    try:
        with open(path, encoding="ascii") as handle:
            key = handle.read().strip()
            if key:
                return key
    except OSError:
        pass
    key = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key)
    except OSError as exc:
        # A read-only or full instance folder must not stop the dashboard from
        # starting (it answers 503 until the folder is usable): forms signed with
        # this key last until the next start.
        log.warning("cannot keep the secret key in %s (%s): using one for this run only",
                    path, exc.strerror)
    return key
