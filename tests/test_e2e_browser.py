"""The dashboard in a real browser: the real server, htmx polling, downloads, and the CSP.

Needs Debian's Chromium at /usr/bin/chromium and the playwright package. Without
them the module is skipped, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import os
import sqlite3

import pytest

from app_models.seed import DEMO_USERS, SAMPLE_START_REVISION
from tests.e2e_server import CHROMIUM, VIEWPORT, launch_chromium, running_dashboard, wait_for_run

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

if sync_playwright is None:
    MISSING = "the playwright package is not installed"
elif not CHROMIUM.exists():
    MISSING = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
else:
    MISSING = None

if sync_playwright is not None:
    # Fragments (a revision's SQL, a preview's drops) run env.py in a subprocess:
    # seconds on a busy machine, more than the 5 s an expectation waits by default.
    expect.set_options(timeout=30_000)

if MISSING and os.environ.get("CI") != "true":
    pytest.skip(f"browser tests need a browser: {MISSING}", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    if MISSING:
        pytest.fail(f"CI=true, so browser tests may not be skipped: {MISSING}")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path):
    with running_dashboard(tmp_path) as server:
        yield server


@pytest.fixture
def browser_errors() -> list[str]:
    """Console errors (CSP violations among them) and uncaught exceptions of `page`."""
    return []


@pytest.fixture
def page(browser, browser_errors):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)

    def on_console(message):
        if message.type == "error":
            browser_errors.append(f"console: {message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: browser_errors.append(f"pageerror: {error}"))
    yield page
    context.close()


def test_upgrade_all_heads_then_download_the_backup(server, page, browser_errors, tmp_path):
    page.goto(server.url + "/")
    expect(page.locator("#state h2")).to_have_text("Migrations pending")
    expect(page.locator("#upgrade-target")).to_have_value("heads")

    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")

    page.click("#upgrade-button")
    page.wait_for_url("**/runs/*")
    page.evaluate("window.stillThisPage = true")
    wait_for_run(page)
    # The live region announced the outcome, and the page was not reloaded for it.
    expect(page.locator("#run-announcer[role=status]")).to_have_text("Succeeded")
    assert page.evaluate("window.stillThisPage === true"), "the run page reloaded itself"
    steps = page.locator("#run-panel table.steps tbody tr")
    expect(steps).not_to_have_count(0)
    statuses = steps.locator("td.step-status").all_inner_texts()
    assert statuses == ["succeeded"] * len(statuses)

    with page.expect_download() as download_info:
        page.click("#run-panel a.download")
    backup = tmp_path / "downloaded-backup.sqlite3"
    download_info.value.save_as(backup)

    page.goto(server.url + "/")
    expect(page.locator("#state h2")).to_have_text("Up to date")

    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (SAMPLE_START_REVISION,)
        ]
        emails = {row[0] for row in conn.execute("SELECT email FROM users")}
    conn.close()
    assert emails == {user["email"] for user in DEMO_USERS}
    assert browser_errors == []


def test_downgrade_through_the_preview_page(server, page, browser_errors):
    page.goto(server.url + "/")
    downgrade = page.locator("form.action-form", has=page.locator("input[value=downgrade]"))
    downgrade.locator("input[name=target]").fill("-1")
    downgrade.get_by_role("button", name="Preview downgrade…").click()

    expect(page.locator("h1")).to_contain_text("downgrade")
    drops = page.locator("ol.plan .drops")
    expect(drops).to_contain_text("chat_sessions")
    expect(drops).to_contain_text("chat_messages")

    page.click("#confirm-button")
    page.wait_for_url("**/runs/*")
    wait_for_run(page)

    with sqlite3.connect(server.database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "chat_sessions" not in tables and "users" in tables
    assert browser_errors == []


def test_deleting_a_backup_asks_in_a_dialog_first(server, page, browser_errors):
    page.goto(server.url + "/backups")
    page.click("#backup-now")
    rows = page.locator("table.backups tbody tr[id^=b-]")
    expect(rows).to_have_count(1)
    backup_files = list((server.instance_dir / "backups").iterdir())
    assert len(backup_files) == 2, backup_files  # the file and its manifest

    asked = []

    def answer(dialog, accept):
        asked.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))
    rows.get_by_role("button", name="Delete").click()
    page.wait_for_timeout(500)
    expect(rows).to_have_count(1)
    assert all(path.exists() for path in backup_files)

    page.once("dialog", lambda dialog: answer(dialog, True))
    rows.get_by_role("button", name="Delete").click()
    expect(rows).to_have_count(0)
    assert not any(path.exists() for path in backup_files)
    assert len(asked) == 2 and "Delete backup" in asked[0], asked
    assert "/backups" in page.url and "/delete" not in page.url
    assert browser_errors == []


def test_cancelling_a_run_asks_in_a_dialog_first(server, page, browser_errors, tmp_path):
    from tests.conftest import UNIFIED_REASONING
    from tests.test_guard_sqlite import write_revision

    write_revision(tmp_path / "project" / "alembic.ini", "9a1d0000e2e1", UNIFIED_REASONING,
                   table="slow_step", sleep=30)
    page.goto(server.url + "/")
    page.click("#upgrade-button")
    page.wait_for_url("**/runs/*")
    expect(page.locator("#run-panel .progress-text")).to_contain_text("9a1d0000e2e1",
                                                                      timeout=30_000)
    asked = []

    def accept(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#cancel-button")
    wait_for_run(page, "cancelled")
    assert asked and "Stop this migration" in asked[0], asked
    with sqlite3.connect(server.database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "slow_step" not in tables
    assert browser_errors == []


def test_times_read_in_the_readers_zone_and_ids_copy(server, browser, browser_errors):
    """A reader in Tokyo sees run times in Tokyo time (UTC in the title), and the
    run id's Copy button puts the id on the clipboard."""
    context = browser.new_context(viewport=VIEWPORT, timezone_id="Asia/Tokyo",
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.on("pageerror", lambda error: browser_errors.append(f"pageerror: {error}"))
    page.goto(server.url + "/backups")
    page.click("#backup-now")
    taken = page.locator("table.backups tbody tr time").first
    expect(taken).to_have_attribute("data-local", "Asia/Tokyo")
    utc = taken.get_attribute("datetime")  # 2026-11-30T05:55:59Z
    shown = taken.inner_text()
    hours = (int(utc[11:13]) + 9) % 24
    assert shown[11:13] == f"{hours:02d}", (utc, shown)
    assert "UTC" in taken.get_attribute("title")

    backup_id = page.locator("code[data-copy]").first.inner_text()
    page.get_by_role("button", name="Copy backup id").first.click()
    expect(page.get_by_role("button", name="Copy backup id").first).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == backup_id
    context.close()
    assert browser_errors == []


def test_a_revision_page_fetches_its_sql_after_showing(server, page, browser_errors):
    page.goto(server.url + "/history")
    page.locator("a[href*='/revisions/']").first.click()
    expect(page.locator("#sql-upgrade pre.sql")).to_contain_text("CREATE", timeout=30_000)
    expect(page.locator("#sql-downgrade pre.sql")).not_to_be_empty()
    expect(page.get_by_role("button", name="Copy upgrade SQL")).to_be_visible()
    expect(page.get_by_role("button", name="Copy downgrade SQL")).to_be_visible()
    assert browser_errors == []


def test_a_failed_run_shows_the_file_and_line_to_fix_and_retries(server, page, browser_errors,
                                                                 tmp_path):
    from tests.conftest import UNIFIED_REASONING
    from tests.test_runs import add_failing_revision

    add_failing_revision(tmp_path / "project" / "alembic.ini", UNIFIED_REASONING)
    page.goto(server.url + "/")
    page.click("#upgrade-button")
    page.wait_for_url("**/runs/*")
    wait_for_run(page, "restored")
    error = page.locator("#run-panel .run-error")
    expect(error).to_contain_text("bad0000000001_explodes.py, line ")
    expect(page.locator("#what-next")).to_contain_text("then retry")
    undone = page.locator("#run-panel td.step-status", has_text="undone by the restore")
    expect(undone).not_to_have_count(0)
    page.click("#retry-button")
    page.wait_for_url("**/runs/*")
    wait_for_run(page, "restored")
    assert browser_errors == []


def test_stamp_destination_suggests_revisions_as_you_type(server, page, browser_errors):
    """The datalist starts with the heads and the current revision; typing a
    prefix fetches the revisions that match (htmx), and the form still takes
    whatever is typed."""
    documents = "987a8e514080"  # neither a head nor the seeded current revision
    page.goto(server.url + "/history")
    options = page.locator(f"#stamp-suggestions option[value='{documents}']")
    expect(options).to_have_count(0)
    page.locator("#stamp-target").press_sequentially("987a", delay=30)
    expect(options).to_have_count(1)
    stamp = page.locator("form.action-form", has=page.locator("input[value=stamp]"))
    stamp.locator("input[name=target]").fill(documents)
    stamp.get_by_role("button", name="Preview stamp…").click()
    expect(page.locator("h1")).to_contain_text("stamp")
    assert browser_errors == []
