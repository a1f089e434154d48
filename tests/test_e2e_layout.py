"""Every page fits its screen and passes axe-core: at 1280x800 and at 390x844 no
page is wider than the viewport, on a phone the key column of each table
(actions, outcome, status, state) is on screen without scrolling sideways, and
axe-core finds no serious or critical accessibility violation, in the light
and in the dark colour scheme (colour contrast among them).

Needs Debian's Chromium (see test_e2e_browser.py); skipped without it, except
under CI=true.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e_server import CHROMIUM, launch_chromium, running_dashboard, wait_for_run
from tests.test_findings import add_revision

try:
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

MISSING = ("the playwright or axe-playwright-python package is not installed"
           if sync_playwright is None else
           None if CHROMIUM.exists() else f"no Chromium at {CHROMIUM} (apt-get install chromium)")
if MISSING and os.environ.get("CI") != "true":
    pytest.skip(f"browser tests need a browser: {MISSING}", allow_module_level=True)

# Moderate in axe's scale, but asked for by name: one h1 per page, no level skipped.
ORDER_RULES = {"heading-order", "page-has-heading-one", "empty-table-header"}
SCREENS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844},
           "desktop-dark": {"width": 1280, "height": 800}}


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """One dashboard with a finished run and a backup, then a pending revision with
    risk findings; every page's width on both screens."""
    if MISSING:
        pytest.fail(f"CI=true, so browser tests may not be skipped: {MISSING}")
    workdir = tmp_path_factory.mktemp("layout")
    found: dict[tuple[str, str], dict] = {}
    with running_dashboard(workdir) as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        axe = Axe()
        page = browser.new_page(viewport=SCREENS["desktop"])
        page.set_default_timeout(15_000)
        page.goto(server.url + "/")
        page.click("#rehearse-button")
        page.wait_for_url("**/rehearsals/*")
        page.locator('#rehearsal-panel[data-status="passed"]').wait_for(timeout=120_000)
        rehearsal_url = page.url
        page.goto(server.url + "/")
        page.click("#upgrade-button")
        page.wait_for_url("**/runs/*")
        wait_for_run(page)
        run_url = page.url
        # A pending revision with findings: badges, /lint and the typed confirmation.
        add_revision(workdir / "project" / "alembic.ini", "ee99risky",
                     'op.drop_table("chat_session_documents")\n'
                     'op.add_column("users", sa.Column("age", sa.Integer(), nullable=False))')
        page.goto(server.url + "/history")
        revision_url = page.locator("a[href*='/revisions/']").first.get_attribute("href")
        page.close()
        pages = {"overview": "/", "history": "/history", "revision": revision_url,
                 "runs": "/runs", "run": run_url, "backups": "/backups", "audit": "/audit",
                 "preview": "/actions/preview?action=downgrade&target=base",
                 "rehearsal": rehearsal_url,
                 "preview-upgrade": "/actions/preview?action=upgrade&target=heads&sql=now",
                 "lint": "/lint"}
        for screen, viewport in SCREENS.items():
            page = browser.new_page(viewport=viewport, color_scheme="dark" if "dark" in screen
                                    else "light")
            page.set_default_timeout(15_000)
            for name, url in pages.items():
                page.goto(url if url.startswith("http") else server.url + url)
                page.wait_for_load_state("networkidle")
                found[screen, name] = page.evaluate("""() => {
                    const tables = document.querySelectorAll('table.list, table.steps');
                    const cells = [...tables].map(t => {
                        const rows = [...t.querySelectorAll('tbody tr')];
                        const last = rows.length ? rows[0].lastElementChild : null;
                        return last ? last.getBoundingClientRect().right : 0;
                    });
                    const wide = [...document.querySelectorAll('body *')]
                        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
                        .slice(0, 5).map(e => `${e.tagName.toLowerCase()}.${e.className}`);
                    const bg = getComputedStyle(document.body).backgroundColor;
                    return {width: document.documentElement.scrollWidth, lastCells: cells, wide,
                            background: bg.match(/\\d+/g).slice(0, 3).map(Number)};
                }""")
                found[screen, name]["axe"] = [
                    f"{v['id']} ({v['impact']}): {v['help']} at "
                    f"{[n['target'] for n in v['nodes'][:3]]}"
                    for v in axe.run(page).response["violations"]
                    if v["impact"] in ("serious", "critical") or v["id"] in ORDER_RULES]
            page.close()
        browser.close()
    return found


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("name", ["overview", "history", "revision", "runs", "run",
                                  "backups", "audit", "preview", "rehearsal",
                                  "preview-upgrade", "lint"])
def test_no_page_is_wider_than_the_screen(walked, screen, name):
    seen = walked[screen, name]
    assert seen["width"] <= SCREENS[screen]["width"], (
        f"{name} is {seen['width']} px wide on a {SCREENS[screen]['width']} px screen: "
        f"{seen['wide']}")
    for right in seen["lastCells"]:
        assert right <= SCREENS[screen]["width"], (
            f"{name}: a table's last column ends at {right:.0f} px, off a "
            f"{SCREENS[screen]['width']} px screen")


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("name", ["overview", "history", "revision", "runs", "run",
                                  "backups", "audit", "preview", "rehearsal",
                                  "preview-upgrade", "lint"])
def test_no_serious_accessibility_violations(walked, screen, name):
    """axe-core (the engine of Lighthouse's and Deque's checks) finds nothing
    serious or critical on any page, and headings are in order."""
    assert walked[screen, name]["axe"] == []


@pytest.mark.parametrize("name", ["overview", "revision", "run"])
def test_dark_mode_follows_the_system_setting(walked, name):
    light, dark = walked["desktop", name]["background"], walked["desktop-dark", name]["background"]
    assert sum(light) > 600 and sum(dark) < 150, (light, dark)
