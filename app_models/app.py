"""The sample AI-assistant application itself, as a tiny Flask app.

It shows the dashboard's start-up migration in place: ``create_app`` runs
``auto_migrate`` (switched by ``AUTO_MIGRATE``) before serving, so the app
never serves a database older than its models. Run it with
``flask --app app_models.app run --port 5001``.

Only this module needs Flask; ``alembic/env.py`` imports ``app_models``
without it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from flask import Blueprint, Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import selectinload

from app_models.models import Base, User
from dashboard.automigrate import auto_migrate

REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = str(REPO_ROOT / "alembic.ini")
# The same database as alembic.ini's sqlalchemy.url.
DEFAULT_DATABASE_URL = f"sqlite:///{REPO_ROOT / 'instance' / 'sample.db'}"

log = logging.getLogger("app_models.app")
db = SQLAlchemy(model_class=Base)
bp = Blueprint("sample", __name__)


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if test_config:
        app.config.update(test_config)
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    initialize_sample_database(url)
    auto_migrate(alembic_ini=ALEMBIC_INI, database_url=url)
    db.init_app(app)
    app.register_blueprint(bp)
    return app


def initialize_sample_database(url: str) -> None:
    """A missing SQLite file starts as the sample database (early revision, demo rows)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).exists():
        # In a subprocess: alembic's env.py reconfigures logging, which would mute ours.
        subprocess.run(
            [sys.executable, "-m", "app_models.seed", url, "--ini", ALEMBIC_INI],
            cwd=REPO_ROOT, check=True, stdin=subprocess.DEVNULL, capture_output=True,
        )
        log.info("Database initialized successfully")


@bp.get("/users")
def list_users():
    users = db.session.scalars(
        select(User).options(selectinload(User.settings)).order_by(User.id)
    ).all()
    return jsonify({"users": [user_json(user) for user in users]})


@bp.get("/health")
def health():
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return jsonify({"status": "error", "error": type(exc).__name__}), 503
    return jsonify({"status": "ok"})


def user_json(user: User) -> dict:
    settings = user.settings
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "is_active": user.is_active,
        "settings": None if settings is None else {
            "default_model": settings.default_model,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "theme": settings.theme,
            "use_unified_reasoning": settings.use_unified_reasoning,
            "selected_reasoning_mode": settings.selected_reasoning_mode,
        },
    }
