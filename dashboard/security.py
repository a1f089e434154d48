"""Baseline web security for a page that can change a database.

A localhost admin page is reachable from any web page the operator visits
(DNS rebinding, cross-site forms, framing), so: answer only known Host
names, never be framed, run no inline script.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, abort, request

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)


def allowed_hosts(app: Flask) -> set[str]:
    raw = str(app.config.get("DASHBOARD_ALLOWED_HOSTS", ""))
    return {h.strip().lower() for h in raw.split(",") if h.strip()}


def host_name(host_header: str) -> str:
    """The Host header without its port: 'localhost:5000' -> 'localhost'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if ":" in host else host


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if malformed."""
    scheme = scheme.lower()
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:  # '127.0.0.1:5000.evil.com' has no valid port
        return None
    if not parts.hostname or port is None or parts.username is not None:
        return None
    return scheme, parts.hostname.lower(), port


def same_origin(origin: str, scheme: str, host_header: str) -> bool:
    """Whether an Origin header names this request's own origin: the same scheme,
    host and port as the request came in on (not just the same host name)."""
    parts = urlsplit(origin)
    if parts.path or parts.query or parts.fragment:
        return False
    mine = _origin_key(scheme, host_header)
    return mine is not None and _origin_key(parts.scheme, parts.netloc) == mine


def init_app(app: Flask) -> None:
    hosts = allowed_hosts(app)

    @app.before_request
    def check_host():
        if host_name(request.host) not in hosts:
            abort(400, description=(
                f"Host '{request.host}' is not allowed. The dashboard answers only "
                f"{', '.join(sorted(hosts))}; add it to DASHBOARD_ALLOWED_HOSTS if you mean it."
            ))

    @app.after_request
    def security_headers(response):
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response
