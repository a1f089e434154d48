"""Keeping the database password out of everything the dashboard shows or stores.

One ``scrub`` for every text that came near a URL or a tool: the password is
removed in every form it travels in (as typed, percent-encoded as a URL
holds it, with ``+`` for spaces, in lower-case hex, backslash-escaped as in a
libpq conninfo), so no log, page, run, audit entry or file name keeps it.
"""

from __future__ import annotations

import re
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***; never raises."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        # Not a URL SQLAlchemy understands: show only its scheme.
        return str(url).split(":", 1)[0] + ":<unparseable URL>"


def password_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError, TypeError):
        return _raw_password(str(url))
    return str(password) if password else None


def _raw_password(url: str) -> str | None:
    """The password of a URL SQLAlchemy cannot parse, as written in it."""
    match = re.match(r"^[^:/]+://[^:/@]*:([^@]*)@", url)
    return match.group(1) if match and match.group(1) else None


def secret_forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` that a URL, a driver or a tool may print."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             quote(secret, safe="+"),
             secret.replace("\\", "\\\\").replace("'", "\\'"),
             secret.replace("'", "''")}
    try:
        forms.add(make_url("x://u:p@h/").set(password=secret).render_as_string(
            hide_password=False).split(":", 2)[2].rsplit("@", 1)[0])
    except (ArgumentError, ValueError):
        pass
    lowered = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    return {f for f in forms | lowered if f}


def scrub(text: str | None, url: str | None = None, *, secret: str | None = None) -> str:
    """``text`` without the password of ``url`` (or ``secret``), in any of its forms."""
    return scrub_secrets(text, [secret or password_of(url)])


def scrub_secrets(text: str | None, secrets) -> str:
    """``text`` without any of ``secrets``, in any of their forms."""
    if not text:
        return text or ""
    forms = set().union(*(secret_forms(s) for s in secrets if s))
    # Longest first, so an encoded form is not half-replaced by a shorter one.
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


# Shorter values ("1", "on") cannot be hidden without garbling every text they occur in.
SHORTEST_SECRET = 4


def secrets_in_values(values) -> set[str]:
    """What to hide of variables given to a project's process: of a URL its
    password (the rest names the database, which pages show masked); any other
    value whole, since the dashboard cannot tell a key or token from a word."""
    found = set()
    for value in values:
        if "://" in value:
            password = password_of(value)
            if password:
                found.add(password)
        elif len(value) >= SHORTEST_SECRET:
            found.add(value)
    return found
