"""What destroys something asks first, with and without JavaScript: deleting a
backup and cancelling a run. A plain POST without ``confirm=yes`` answers a page
naming what would be destroyed, with a form that carries the answer."""

from __future__ import annotations

import os
import time

from tests import test_guard_sqlite
from tests.conftest import UNIFIED_REASONING
from tests.test_guard_sqlite import (
    STEP_ONE,
    finish_quietly,
    post_run,
    rows,
    wait_for_run,
    wait_for_step,
    write_revision,
)

# The sample database at its head with two users, as the guard's tests have it.
seeded, at_head = test_guard_sqlite.seeded, test_guard_sqlite.at_head


def test_deleting_a_backup_from_the_page_asks_for_confirmation(client, at_head):
    backup = client.post("/api/backups", json={}).get_json()
    page = client.post(f"/backups/{backup['id']}/delete", data={})
    assert page.status_code == 200, (
        f"one POST without confirmation answered {page.status_code} "
        f"{page.headers.get('Location')} instead of a confirmation page")
    assert 'name="confirm"' in page.get_data(as_text=True)
    assert client.get(f"/api/backups/{backup['id']}").status_code == 200
    assert os.path.isfile(backup["path"])
    confirmed = client.post(f"/backups/{backup['id']}/delete", data={"confirm": "yes"})
    assert confirmed.status_code in (200, 303)
    assert client.get(f"/api/backups/{backup['id']}").status_code == 404
    assert not os.path.exists(backup["path"])


def test_cancelling_a_run_from_the_page_asks_for_confirmation(client, at_head, sample_ini):
    write_revision(sample_ini, STEP_ONE, UNIFIED_REASONING, table="step_one", sleep=5)
    before = rows(at_head)
    started = post_run(client)
    assert started.status_code == 202, started.get_json()
    run_id = started.get_json()["id"]
    try:
        wait_for_step(client, run_id, 1)
        page = client.post(f"/runs/{run_id}/cancel", data={})
        assert page.status_code == 200, (
            f"one POST without confirmation answered {page.status_code} "
            f"{page.headers.get('Location')} instead of a confirmation page")
        assert 'name="confirm"' in page.get_data(as_text=True)
        time.sleep(0.3)
        run = client.get(f"/api/runs/{run_id}").get_json()
        assert run["status"] == "running", run
        confirmed = client.post(f"/runs/{run_id}/cancel", data={"confirm": "yes"})
        assert confirmed.status_code in (200, 303)
        run = wait_for_run(client, run_id)
        assert run["status"] == "cancelled" and "cancelled" in run["error"], run
        assert rows(at_head) == before
    finally:
        finish_quietly(client, run_id)
