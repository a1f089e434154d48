"""Run the real dashboard in a subprocess over a scratch sample project.

Shared by the browser test and by the README's screenshots, which are taken
with ``python -m tests.e2e_server docs/`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app_models.seed import create_sample_database
from tests.conftest import REPO, copy_sample_project

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 900}
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class DashboardServer:
    url: str
    database: Path
    instance_dir: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_answering(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The dashboard exited with {process.returncode}:\n"
                               f"{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"The dashboard did not answer {url} within {STARTUP_TIMEOUT:.0f} s:\n"
                       f"{log.read_text(errors='replace')}")


def _stop(process: subprocess.Popen) -> None:
    """End the server and anything it started (it leads its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    try:  # a migration worker may outlive a killed server
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def running_dashboard(workdir: Path):
    """The dashboard served by waitress over the sample database at its start revision."""
    ini = copy_sample_project(workdir / "project")
    database = workdir / "target.db"
    url = f"sqlite:///{database}"
    create_sample_database(str(ini), url)
    instance_dir = workdir / "instance"
    log = workdir / "server.log"
    port = _free_port()
    env = {
        **os.environ,
        "DASHBOARD_ALEMBIC_INI": str(ini),
        "DASHBOARD_DATABASE_URL": url,
        "DASHBOARD_INSTANCE_DIR": str(instance_dir),
        "DASHBOARD_SEED_SAMPLE": "false",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "waitress", "--host", "127.0.0.1", "--port", str(port),
             "wsgi:app"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_answering(base_url + "/", process, log)
        yield DashboardServer(base_url, database, instance_dir, log)
    finally:
        _stop(process)


def launch_chromium(playwright):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )


def wait_for_run(page, status: str = "succeeded", timeout_ms: int = 60_000) -> None:
    """Wait for the self-polling run panel to reach ``status``; say where it stopped if not."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        page.locator(f'#run-panel[data-status="{status}"]').wait_for(timeout=timeout_ms)
    except PlaywrightTimeoutError:
        panel = page.locator("#run-panel")
        raise AssertionError(
            f"The run did not reach {status!r} within {timeout_ms / 1000:.0f} s; it is "
            f"{panel.get_attribute('data-status')!r}:\n{panel.inner_text()}"
        ) from None


def take_screenshots(out_dir: Path) -> list[Path]:
    """The README's pictures: overview (pending), history, and a finished run, on a
    desktop screen; the overview and the run on a phone (390x844) too."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = [out_dir / "overview.png", out_dir / "history.png", out_dir / "run.png",
             out_dir / "overview-phone.png", out_dir / "run-phone.png"]
    with tempfile.TemporaryDirectory() as scratch, running_dashboard(Path(scratch)) as server, \
            sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.goto(server.url + "/")
            # The risk badges and the drift panel come in fragments after the page.
            page.locator("#drift[data-state]").wait_for(timeout=60_000)
            page.locator(".sql-loading").first.wait_for(state="detached", timeout=60_000)
            page.screenshot(path=shots[0], full_page=True)
            page.goto(server.url + "/history")
            page.screenshot(path=shots[1], full_page=True)
            page.goto(server.url + "/")
            page.click("#upgrade-button")
            wait_for_run(page)
            page.screenshot(path=shots[2], full_page=True)
            run_url = page.url
            context.close()
            phone = browser.new_context(viewport={"width": 390, "height": 844},
                                        device_scale_factor=2)
            page = phone.new_page()
            page.goto(server.url + "/")
            page.screenshot(path=shots[3])
            page.goto(run_url)
            page.screenshot(path=shots[4])
            phone.close()
        finally:
            browser.close()
    return shots


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e_server",
                                     description=take_screenshots.__doc__)
    parser.add_argument("out_dir", nargs="?", default=str(REPO / "docs"),
                        help="folder for the PNG files (default: %(default)s)")
    args = parser.parse_args(argv)
    for shot in take_screenshots(Path(args.out_dir)):
        print(shot)


if __name__ == "__main__":
    main()
