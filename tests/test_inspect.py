"""The read side as a user sees it: every state of the overview and the API."""

from __future__ import annotations

import sqlite3
import threading

from alembic.config import Config
from alembic.script import ScriptDirectory

from dashboard import create_app
from tests.conftest import (
    CHATS,
    DOCUMENT_UPLOADER,
    LOGIN_REVOCATION,
    MERGE,
    UNIFIED_REASONING,
    USERS,
    migrate,
)


def script_order(ini, current=()):
    script = ScriptDirectory.from_config(Config(str(ini)))
    return [s.revision for s in reversed(list(script.iterate_revisions("heads", current)))]


def test_empty_database_is_uninitialized_with_everything_pending(client, db_path, sample_ini):
    sqlite3.connect(db_path).close()
    body = client.get("/api/status").get_json()
    assert body["state"] == "uninitialized"
    assert body["current"] == []
    assert body["heads"] == [UNIFIED_REASONING]
    assert [p["revision"] for p in body["pending"]] == script_order(sample_ini)
    assert body["database"] == {"url": f"sqlite:///{db_path}", "dialect": "sqlite"}
    page = client.get("/")
    assert page.status_code == 200
    assert b"Not initialised" in page.data


def test_tables_without_version_table_are_uninitialized_and_say_so(client, db_path):
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE legacy (id INTEGER PRIMARY KEY)")
    body = client.get("/api/status").get_json()
    assert body["state"] == "uninitialized"
    assert "1 tables but no alembic_version" in body["explanation"]
    assert b"created outside Alembic" in client.get("/").data


def test_pending_lists_revisions_in_apply_order(client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    body = client.get("/api/status").get_json()
    assert body["state"] == "pending"
    assert body["current"] == [USERS]
    order = script_order(sample_ini, (USERS,))
    assert [p["revision"] for p in body["pending"]] == order
    assert len(order) == 9
    page = client.get("/").get_data(as_text=True)
    pending = page[page.index('id="pending"'):]
    positions = [pending.index(f">{rev}<") for rev in order]
    assert positions == sorted(positions), "the page lists pending revisions in apply order"


def test_up_to_date(client, sample_ini, db_url):
    migrate(sample_ini, db_url, "heads")
    body = client.get("/api/status").get_json()
    assert body["state"] == "up_to_date"
    assert body["current"] == [UNIFIED_REASONING]
    assert body["pending"] == []
    assert b"Up to date" in client.get("/").data


def test_two_current_heads_show_as_two_rows(client, sample_ini, db_url):
    migrate(sample_ini, db_url, LOGIN_REVOCATION)
    migrate(sample_ini, db_url, DOCUMENT_UPLOADER)
    body = client.get("/api/status").get_json()
    assert body["current"] == sorted([LOGIN_REVOCATION, DOCUMENT_UPLOADER])
    assert [p["revision"] for p in body["pending"]] == [MERGE, UNIFIED_REASONING]
    page = client.get("/").get_data(as_text=True)
    start = page.index('id="current"')
    current_table = page[start:page.index("</table>", start)]
    assert current_table.count("<tr>") == 2


def test_unknown_revision_names_it_and_explains(client, sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, CHATS)
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'feedfacecafe'")
    body = client.get("/api/status").get_json()
    assert body["state"] == "unknown_revision"
    assert body["unknown"] == ["feedfacecafe"]
    assert body["pending"] == []
    page = client.get("/")
    assert page.status_code == 200
    assert b"feedfacecafe" in page.data
    assert b"which no script in this project defines" in page.data


def test_missing_database_file_is_unreachable_and_not_created(client, db_path):
    body = client.get("/api/status").get_json()
    assert body["state"] == "unreachable"
    assert "does not exist" in body["explanation"]
    assert client.get("/").status_code == 200
    assert not db_path.exists(), "a status read must never create the database"


def test_locked_database_is_unreachable_with_a_clear_message(client, sample_ini, db_url, db_path):
    migrate(sample_ini, db_url, USERS)
    holder = sqlite3.connect(db_path, check_same_thread=False)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        body = client.get("/api/status").get_json()
    finally:
        holder.rollback()
        holder.close()
    assert body["state"] == "unreachable"
    assert "locked" in body["explanation"]


def test_server_database_that_is_down_is_unreachable(app_config):
    app_config["DASHBOARD_DATABASE_URL"] = "postgresql+psycopg://u:s3cret@127.0.0.1:1/nodb"
    client = create_app(app_config).test_client()
    body = client.get("/api/status").get_json()
    assert body["state"] == "unreachable"
    assert body["database"]["url"] == "postgresql+psycopg://u:***@127.0.0.1:1/nodb"
    page = client.get("/").get_data(as_text=True)
    assert "s3cret" not in page and "s3cret" not in str(body)


def test_missing_script_directory_is_a_clear_error(app_config, sample_ini):
    (sample_ini.parent / "alembic").rename(sample_ini.parent / "moved")
    client = create_app(app_config).test_client()
    page = client.get("/")
    assert page.status_code == 503
    assert b"Script directory not found" in page.data
    body = client.get("/api/status").get_json()
    assert body["error"]["message"].startswith("Script directory not found")


def test_missing_ini_is_a_clear_error(app_config, tmp_path):
    app_config["DASHBOARD_ALEMBIC_INI"] = str(tmp_path / "nope.ini")
    client = create_app(app_config).test_client()
    response = client.get("/api/revisions")
    assert response.status_code == 503
    assert "alembic.ini not found" in response.get_json()["error"]["message"]


def test_unreadable_revision_file_is_listed_and_the_rest_still_works(client, sample_ini, db_url):
    migrate(sample_ini, db_url, USERS)
    bad = sample_ini.parent / "alembic" / "versions" / "0000broken_rev.py"
    bad.write_text(
        '"""broken"""\nimport not_installed_host_app\n'
        "revision = not_installed_host_app.REV\ndown_revision = None\n"
    )
    body = client.get("/api/status").get_json()
    assert body["state"] == "pending"
    assert [u["path"] for u in body["unreadable"]] == [str(bad)]
    assert "not_installed_host_app" in body["unreadable"][0]["reason"]
    page = client.get("/").get_data(as_text=True)
    assert "0000broken_rev.py" in page and "not_installed_host_app" in page


def test_revision_list_matches_alembic(client, sample_ini):
    body = client.get("/api/revisions").get_json()
    script = ScriptDirectory.from_config(Config(str(sample_ini)))
    expected = {s.revision: s for s in script.walk_revisions()}
    assert {r["revision"] for r in body["revisions"]} == set(expected)
    for item in body["revisions"]:
        rev = expected[item["revision"]]
        assert item["down_revisions"] == list(rev._versioned_down_revisions)
        assert item["is_merge"] == rev.is_merge_point
        assert item["is_branch_point"] == rev.is_branch_point
        assert item["is_head"] == rev.is_head
        assert set(item["branch_labels"]) == set(rev.branch_labels)
        assert item["message"] == rev.doc
        assert item["unresolved"] == {} and item["missing"] is False
        assert set(item) == {"revision", "down_revisions", "branch_labels", "depends_on",
                             "message", "is_head", "is_merge", "is_branch_point", "applied",
                             "unresolved", "missing"}


def test_applied_flags_follow_the_database(client, sample_ini, db_url):
    migrate(sample_ini, db_url, CHATS)
    revisions = client.get("/api/revisions").get_json()["revisions"]
    flags = {r["revision"]: r["applied"] for r in revisions}
    assert {rev for rev, applied in flags.items() if applied} == {USERS, "65d34ee9c6d7", CHATS}


def test_revision_page_shows_source_and_offline_sql(client):
    body = client.get(f"/api/revisions/{USERS}").get_json()
    assert body["revision"] == USERS
    assert body["children"] == ["65d34ee9c6d7"]
    assert "def upgrade()" in body["upgrade_source"]
    assert "CREATE TABLE users" in body["upgrade_sql"]
    assert "DROP TABLE users" in body["downgrade_sql"]
    assert body["upgrade_sql_error"] is None
    page = client.get(f"/revisions/{USERS}?sql=now").get_data(as_text=True)
    assert "CREATE TABLE users" in page and "DROP TABLE users" in page
    assert "def downgrade()" in page


def test_offline_sql_failure_is_shown_in_place_of_the_sql(client, sample_ini):
    env_py = sample_ini.parent / "alembic" / "env.py"
    env_py.write_text("raise RuntimeError('env.py exploded on purpose')\n")
    body = client.get(f"/api/revisions/{USERS}").get_json()
    assert body["upgrade_sql"] is None
    assert "env.py exploded on purpose" in body["upgrade_sql_error"]
    page = client.get(f"/revisions/{USERS}/sql")
    assert page.status_code == 200
    assert b"Could not generate the SQL" in page.data
    assert b"env.py exploded on purpose" in page.data


def test_partial_unknown_and_ambiguous_ids(client, sample_ini):
    assert client.get("/api/revisions/c2756").get_json()["revision"] == UNIFIED_REASONING
    script = ScriptDirectory.from_config(Config(str(sample_ini)))
    for spec in ("auth", "auth@head", "c2756f59"):
        expected = script.get_revision(spec).revision
        assert client.get(f"/api/revisions/{spec}").get_json()["revision"] == expected
    missing = client.get("/api/revisions/abcdef123456")
    assert missing.status_code == 404
    assert "abcdef123456" in missing.get_json()["error"]["message"]
    assert client.get("/revisions/abcdef123456").status_code == 404
    twin = sample_ini.parent / "alembic" / "versions" / "c2756f000000_twin.py"
    twin.write_text('"""twin"""\nrevision = "c2756f000000"\n'
                    f'down_revision = "{UNIFIED_REASONING}"\n'
                    "def upgrade():\n    pass\n\ndef downgrade():\n    pass\n")
    ambiguous = client.get("/api/revisions/c2756f")
    assert ambiguous.status_code == 400
    assert "Ambiguous" in ambiguous.get_json()["error"]["message"]
    assert client.get("/revisions/c2756f").status_code == 400


def test_a_new_revision_file_is_noticed_at_once(client, sample_ini, db_url):
    migrate(sample_ini, db_url, "heads")
    assert client.get("/api/status").get_json()["state"] == "up_to_date"
    new = sample_ini.parent / "alembic" / "versions" / "aaaa00000001_new.py"
    new.write_text('"""new one"""\nrevision = "aaaa00000001"\n'
                   f'down_revision = "{UNIFIED_REASONING}"\n')
    body = client.get("/api/status").get_json()
    assert body["state"] == "pending"
    assert body["pending"] == [{"revision": "aaaa00000001", "message": "new one"}]


def test_concurrent_status_requests_agree(app, sample_ini, db_url):
    migrate(sample_ini, db_url, CHATS)
    results = []

    def fetch():
        with app.test_client() as c:
            results.append(c.get("/api/status").get_json()["pending"])

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(r == results[0] for r in results)


def test_a_revision_page_comes_at_once_and_its_sql_in_a_fragment(client, sample_ini):
    """The first visit does not wait for env.py: the page names what is loading and
    fetches the SQL (both directions, one subprocess); once generated it is inline."""
    first = client.get(f"/revisions/{USERS}").get_data(as_text=True)
    assert "CREATE TABLE users" not in first
    assert "Generating the SQL" in first and "def upgrade()" in first
    fragment_url = f"/revisions/{USERS}/sql"
    assert f'hx-get="{fragment_url}"' in first
    assert f'href="/revisions/{USERS}?sql=now"' in first  # without JavaScript
    fragment = client.get(fragment_url, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "CREATE TABLE users" in fragment and "DROP TABLE users" in fragment
    assert 'id="sql-downgrade" hx-swap-oob="true"' in fragment
    again = client.get(f"/revisions/{USERS}").get_data(as_text=True)
    assert "CREATE TABLE users" in again and "Generating the SQL" not in again


def test_without_javascript_the_sql_comes_with_the_page(client, sample_ini):
    page = client.get(f"/revisions/{USERS}?sql=now").get_data(as_text=True)
    assert "CREATE TABLE users" in page and "DROP TABLE users" in page
    assert client.get(f"/revisions/{USERS}?sql=later").status_code == 400
