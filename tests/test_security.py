"""Baseline web security: Host allowlist, headers, no inline script, no mutating GET."""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from tests.conftest import CHATS, migrate


@pytest.mark.parametrize("host", ["localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000"])
def test_allowed_hosts_are_answered(client, host):
    assert client.get("/api/revisions", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:5000", "127.0.0.1.nip.io", "[::2]"])
def test_foreign_host_header_is_refused(client, host):
    response = client.get("/api/status", headers={"Host": host})
    assert response.status_code == 400
    assert "not allowed" in response.get_json()["error"]["message"]
    page = client.get("/", headers={"Host": host})
    assert page.status_code == 400 and b"DASHBOARD_ALLOWED_HOSTS" in page.data


def test_allowed_hosts_are_configurable(app_config):
    from dashboard import create_app

    app_config["DASHBOARD_ALLOWED_HOSTS"] = "dash.internal"
    client = create_app(app_config).test_client()
    assert client.get("/api/revisions", headers={"Host": "dash.internal:8080"}).status_code == 200
    assert client.get("/api/revisions", headers={"Host": "localhost"}).status_code == 400


def test_pages_cannot_be_framed_and_run_no_inline_script(client):
    for url in ("/", "/history", "/api/status", "/nope"):
        response = client.get(url)
        assert response.headers["X-Frame-Options"] == "DENY"
        csp = response.headers["Content-Security-Policy"]
        script_src = re.search(r"script-src ([^;]+)", csp).group(1)
        assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
        assert "frame-ancestors 'none'" in csp
    for url in ("/", "/history", "/revisions/c6736c07319a"):
        html = client.get(url).get_data(as_text=True)
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"inline script on {url}"
        assert not re.search(r"\son[a-z]+=", html), f"inline event handler on {url}"


def _snapshot(*paths):
    digest = {}
    for base in paths:
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            digest[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


def test_no_get_changes_anything(app, client, sample_ini, db_url, db_path, instance_dir):
    migrate(sample_ini, db_url, CHATS)
    client.get("/")  # first request may create the instance folder's own files
    # ... and asks env.py in the background, keeping its answer when it comes.
    deadline = time.monotonic() + 60
    while not (instance_dir / "env-py-answer.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    before = _snapshot(db_path.parent / "project", instance_dir) | _snapshot_file(db_path)
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods:
            continue
        args = {name: CHATS for name in rule.arguments}
        if rule.endpoint == "static":
            args = {"filename": "dashboard.css"}
        urls.append(rule.build(args, append_unknown=False)[1])
    assert "/" in urls and "/api/status" in urls
    for url in urls:
        response = client.get(url)
        assert response.status_code < 500, url
        response.close()
    after = _snapshot(db_path.parent / "project", instance_dir) | _snapshot_file(db_path)
    changed = {k for k in before.keys() | after.keys()
               if before.get(k) != after.get(k) and "__pycache__" not in k
               and not k.endswith(("-wal", "-shm"))}
    assert not changed, f"GET requests changed {changed}"


def _snapshot_file(path):
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}


def test_post_to_a_read_url_is_refused(client):
    assert client.post("/api/status").status_code in (400, 405)


BAD_GETS = [
    "/revisions/..%2F..%2Fetc%2Fpasswd", "/revisions/" + "a" * 5000, "/revisions/%00",
    "/revisions/heads", "/revisions/base", "/api/revisions/head@", "/api/revisions/+1",
    "/actions/preview", "/actions/preview?action=upgrade&target=%27%3B--",
    "/actions/preview?action=drop&target=heads", "/actions/preview?action=downgrade&target=-99",
    "/runs/..", "/runs/%00", "/api/runs/nope", "/backups/nope/download",
    "/backups/20990101T000000Z-deadbeef/download", "/backups/x/restore", "/targets/x/",
    "/api/targets/x/status",
]


@pytest.mark.parametrize("url", BAD_GETS)
def test_bad_input_is_a_clear_4xx_never_a_500(client, sample_ini, db_url, url):
    migrate(sample_ini, db_url, CHATS)
    response = client.get(url)
    assert 400 <= response.status_code < 500, (url, response.status_code)
    response.close()


BAD_POSTS = [
    ("/actions", {}), ("/actions", {"action": "upgrade"}),
    ("/actions", {"action": "upgrade", "target": "x" * 300}),
    ("/actions", {"action": "stamp", "target": "nope,heads"}),
    ("/backups/nope/restore", {}), ("/backups/nope/verify", {}), ("/backups/nope/delete", {}),
    ("/runs/nope/cancel", {}),
]


@pytest.mark.parametrize("url, form", BAD_POSTS)
def test_bad_forms_are_a_clear_4xx_never_a_500(client, sample_ini, db_url, url, form):
    migrate(sample_ini, db_url, CHATS)
    response = client.post(url, data=form)
    assert 400 <= response.status_code < 500, (url, response.status_code)
    assert b"<h1>" in response.data
