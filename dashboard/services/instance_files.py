"""Small JSON files the dashboard keeps in its instance folder to start faster
(the parsed revision headers, what the revision map answered, env.py's last
answer): each written whole, so a reader sees the old file or the new one,
never half of one; one that is missing or damaged is worked out again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

log = logging.getLogger(__name__)


def read_json_object(path: str) -> dict:
    """A JSON object kept by ``write_json_object``, or {} when it is missing or
    damaged (the caller checks its fields)."""
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return body if isinstance(body, dict) else {}


def write_json_object(path: str, body: dict, what: str) -> None:
    """``body`` as JSON in ``path``, replacing it at once (a temporary file renamed)."""
    folder = os.path.dirname(path) or "."
    stem = os.path.splitext(os.path.basename(path))[0]
    temporary = None
    try:
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{stem}-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # dumps, not dump: only the one-shot encoder is the C one (5x faster here).
            handle.write(json.dumps(body, separators=(",", ":")))
        os.replace(temporary, path)
        temporary = None
    except OSError as exc:  # a read-only or full instance folder: work it out again next start
        log.info("cannot keep %s in %s: %s", what, path, exc)
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass
