"""The one place errors become HTTP responses, as a page or as JSON."""

from __future__ import annotations

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from dashboard.errors import DashboardError


def wants_json() -> bool:
    return request.path.startswith("/api/") or (
        request.accept_mimetypes.best == "application/json"
    )


def error_response(status: int, title: str, message: str, detail: str | None = None):
    if wants_json():
        body = {"error": {"status": status, "title": title, "message": message}}
        if detail:
            body["error"]["detail"] = detail
        return jsonify(body), status
    return render_template(
        "error.html", status=status, title=title, message=message, detail=detail
    ), status


def init_app(app: Flask) -> None:
    @app.errorhandler(DashboardError)
    def dashboard_error(exc: DashboardError):
        return error_response(exc.status_code, exc.title, exc.message, exc.detail)

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return error_response(400, "Form expired or forged",
                              "The form's security token is missing or invalid. "
                              "Reload the page and try again.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error_response(exc.code or 500, exc.name, exc.description or exc.name)
