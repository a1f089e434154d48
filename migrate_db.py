"""Migrate the database from the command line, behind the dashboard's guard.

The seed project's ``migrate_db.py`` ran ``alembic upgrade head`` bare. This
one goes through the same services as the dashboard: the same lock (so it
never races a migration started from the web page), a verified backup first,
a restore when a step fails, and an entry in the same audit log. It reads
the same DASHBOARD_* environment variables as the dashboard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from dashboard.automigrate import dashboard_for
from dashboard.core import Target
from dashboard.errors import DashboardError
from dashboard.services import backups, guard, inspection, planning, runs
from dashboard.services.audit import current_user
from dashboard.services.locking import LockHeld
from dashboard.services.status import (
    PENDING,
    UNINITIALIZED,
    UNKNOWN_REVISION,
    UNREACHABLE,
    UP_TO_DATE,
    MigrationStatus,
)

EXIT_OK = 0
EXIT_FAILED = 1  # a migration failed, or --check-pending found something to apply
EXIT_ERROR = 2  # usage or configuration: missing ini, unreachable database...
EXIT_LOCKED = 3  # another migration is running on this database

POLL_SECONDS = 0.2

EPILOG = f"""\
exit codes:
  {EXIT_OK}  success; the database is up to date (--check: the state could be read)
  {EXIT_FAILED}  the migration failed (the output says how the database was put back,
     or what state it is in); --check-pending: revisions are pending or the database
     is uninitialized
  {EXIT_ERROR}  usage or configuration error: alembic.ini missing, database unreachable,
     database at a revision no script defines
  {EXIT_LOCKED}  another migration is already running on this database

configuration (the same as the dashboard's):
  DASHBOARD_ALEMBIC_INI    path to alembic.ini (--ini overrides it)
  DASHBOARD_DATABASE_URL   target database URL (--url overrides it)
  DASHBOARD_INSTANCE_DIR   where the lock, backups, runs and audit log live
                           (--instance-dir overrides it)
  Use the same instance folder as the dashboard, so both share one lock.

A password in --url is visible to every user of this machine in the process
list (ps) and may land in your shell history: prefer DASHBOARD_DATABASE_URL.
"""


class MessageWriter:
    """Where human-readable output goes; errors to stderr, the rest to stdout."""

    def __init__(self, out: TextIO, err: TextIO):
        self.out = out
        self.err = err

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python migrate_db.py",
        description=(
            "Apply pending Alembic migrations behind a verified backup and the dashboard's "
            "lock, or report where the database stands. Without options: back up, then "
            "upgrade to the latest revision(s)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="show the current revision(s), the heads and the state")
    mode.add_argument("--check-pending", action="store_true",
                      help="list pending revisions in apply order; exit 1 if any (for CI)")
    mode.add_argument("--history", action="store_true",
                      help="show the revision history, newest first, current marked")
    parser.add_argument("--json", action="store_true",
                        help="with --check, --check-pending or --history: print the "
                             "dashboard API's JSON instead of text")
    parser.add_argument("--ini", metavar="PATH",
                        help="alembic.ini of the project (default: DASHBOARD_ALEMBIC_INI)")
    parser.add_argument("--url", metavar="URL",
                        help="database URL (default: DASHBOARD_DATABASE_URL, else the ini's "
                             "sqlalchemy.url). WARNING: a password given here is visible in "
                             "the process list; prefer the environment variable")
    parser.add_argument("--instance-dir", metavar="PATH",
                        help="the dashboard's instance folder (default: DASHBOARD_INSTANCE_DIR)")
    return parser


# ------------------------------------------------------------------ reports

def status_json(history, status: MigrationStatus) -> dict:
    """The body of GET /api/status."""
    body = status.as_json()
    body["unreadable"] = [{"path": u.path, "reason": u.reason} for u in history.unreadable]
    return body


def revisions_json(history, status: MigrationStatus) -> dict:
    """The body of GET /api/revisions."""
    return {"revisions": [s.as_json() for s in inspection.revision_summaries(history, status)]}


def _revs(revisions) -> str:
    return ", ".join(revisions) or "base (no revision)"


def _warn_unreadable(history, writer: MessageWriter) -> None:
    for unreadable in history.unreadable:
        writer.warn(f"warning: cannot read {unreadable.path}: {unreadable.reason}")


def check_exit_code(status: MigrationStatus) -> int:
    return EXIT_ERROR if status.state in (UNREACHABLE, UNKNOWN_REVISION) else EXIT_OK


def pending_exit_code(status: MigrationStatus) -> int:
    if status.state in (UNREACHABLE, UNKNOWN_REVISION):
        return EXIT_ERROR
    return EXIT_OK if status.state == UP_TO_DATE else EXIT_FAILED


def report_check(history, status: MigrationStatus, writer: MessageWriter) -> int:
    writer.say(f"Database: {status.database.url}")
    writer.say(f"State:    {status.state}")
    if status.state != UNREACHABLE:
        writer.say(f"Current:  {_revs(status.current)}")
    writer.say(f"Heads:    {_revs(status.heads)}")
    if status.pending:
        writer.say(f"Pending:  {len(status.pending)} revision(s)")
    (writer.warn if check_exit_code(status) else writer.say)(status.explanation)
    _warn_unreadable(history, writer)
    return check_exit_code(status)


def report_pending(history, status: MigrationStatus, writer: MessageWriter) -> int:
    code = pending_exit_code(status)
    if code == EXIT_ERROR:
        writer.warn(status.explanation)
    elif status.state == UP_TO_DATE:
        writer.say(f"No pending migrations: the database is up to date at "
                   f"{_revs(status.current)}.")
    else:
        if status.state == UNINITIALIZED:
            writer.say(status.explanation)
        writer.say(f"{len(status.pending)} pending revision(s), in the order they apply:")
        for pending in status.pending:
            writer.say(f"  {pending.revision}  {pending.message}")
        writer.say("Run `python migrate_db.py` to apply them (a backup is taken first).")
    return code


def report_history(history, status: MigrationStatus, writer: MessageWriter) -> int:
    if status.state == UNREACHABLE:
        writer.warn(f"{status.explanation} Showing the scripts only.")
    reachable = status.state != UNREACHABLE
    for summary in inspection.revision_summaries(history, status):
        marks = []
        if summary.is_head:
            marks.append("head")
        if summary.is_current:
            marks.append("current")
        elif reachable and not summary.applied:
            marks.append("pending")
        if summary.is_merge:
            marks.append("merge of " + ", ".join(summary.down_revisions))
        if summary.is_branch_point:
            marks.append("branch point")
        if summary.is_base:
            marks.append("base")
        if summary.branch_labels:
            marks.append("label " + ", ".join(summary.branch_labels))
        if summary.depends_on:
            marks.append("depends on " + ", ".join(summary.depends_on))
        parents = ", ".join(summary.down_revisions) or "<base>"
        line = f"{parents} -> {summary.revision}"
        if marks:
            line += " " + " ".join(f"({mark})" for mark in marks)
        writer.say(f"{line}, {summary.message}")
    _warn_unreadable(history, writer)
    return EXIT_OK


# ------------------------------------------------------------------ upgrading

def upgrade_database(dashboard: Target, writer: MessageWriter) -> int:
    """Back up, then apply every pending revision, printing steps as they finish."""
    project, history, status = dashboard.read_state()
    writer.say(f"Database: {status.database.url}")
    if status.state == UP_TO_DATE:
        writer.say(f"Database is up to date at {_revs(status.current)}")
        return EXIT_OK
    if status.state not in (PENDING, UNINITIALIZED) and not status.creatable:
        writer.warn(status.explanation)
        return EXIT_ERROR
    writer.say(f"Current revision: {_revs(status.current)}")
    writer.say(f"{len(status.pending)} revision(s) to apply: "
               + ", ".join(p.revision for p in status.pending))
    writer.say("Running database migrations...")
    try:
        run = guard.start_action(dashboard.pinned(project), history, status.state,
                                      "upgrade", "heads", current_user(), background=True)
    except planning.NothingToDo:  # someone else applied them since we looked
        writer.say("Database is up to date: another process applied the migrations.")
        return EXIT_OK
    try:
        run = follow_run(dashboard.instance_dir, run.id, writer)
    except KeyboardInterrupt:
        # The run's own process goes on without us: stop it properly, then wait for the
        # database to be put back (a second Ctrl-C leaves it to finish on its own).
        writer.warn("Interrupted: cancelling the run; the database will be put back.")
        try:
            guard.cancel_run(dashboard, run.id, current_user())
        except DashboardError as exc:
            writer.warn(f"It could not be cancelled: {exc.message}")
        run = follow_run(dashboard.instance_dir, run.id, writer)
    if run.status == runs.SUCCEEDED:
        writer.say(f"Database migrations completed successfully: now at {_revs(run.to_revs)}")
        return EXIT_OK
    writer.warn(f"Database migration FAILED (run {run.id}).")
    if run.error:
        writer.warn(run.error)
    if run.status in (runs.RESTORED, runs.CANCELLED):
        kept = f" (its backup {run.backup_id} is kept)" if run.backup_id else ""
        writer.warn(f"The database is at {_revs(run.to_revs)}, as before the run{kept}.")
    writer.warn("See the run's log in the dashboard, or its audit log.")
    return EXIT_FAILED


def follow_run(instance_dir: str, run_id: str, writer: MessageWriter) -> runs.RunRecord:
    """Poll the run record until it finishes, printing the backup and each finished step."""
    reported: set[int] = set()
    backup_reported = False
    while True:
        run = runs.get_run(instance_dir, run_id)
        if run.backup_id and not backup_reported:
            backup_reported = True
            try:
                backup = backups.get_backup(instance_dir, run.backup_id)
                writer.say(f"Backup {backup.id} taken and verified: {backup.path}")
            except DashboardError:
                writer.say(f"Backup {run.backup_id} taken and verified.")
        for step in run.steps:
            if step.index in reported or step.status not in ("succeeded", "failed"):
                continue
            reported.add(step.index)
            elapsed = f" ({step.elapsed:.2f}s)" if step.elapsed is not None else ""
            writer.say(f"  [{step.index}/{len(run.steps)}] {step.direction} {step.revision}: "
                       f"{step.status}{elapsed}")
        if run.finished:
            return run
        time.sleep(POLL_SECONDS)


# ------------------------------------------------------------------ entry point

def report(args: argparse.Namespace, dashboard: Target, writer: MessageWriter) -> int:
    """--check, --check-pending or --history, as text or as the API's JSON."""
    _, history, status = dashboard.read_state(ask_env_py=args.json)
    if args.json:
        if args.history:
            writer.say(json.dumps(revisions_json(history, status), indent=2))
            return EXIT_OK
        writer.say(json.dumps(status_json(history, status), indent=2))
        return (check_exit_code if args.check else pending_exit_code)(status)
    if args.check:
        return report_check(history, status, writer)
    if args.check_pending:
        return report_pending(history, status, writer)
    return report_history(history, status, writer)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    reporting = args.check or args.check_pending or args.history
    if args.json and not reporting:
        parser.error("--json goes with --check, --check-pending or --history")
    writer = MessageWriter(out or sys.stdout, err or sys.stderr)
    dashboard = dashboard_for(args.ini, args.url, args.instance_dir, environ)
    try:
        if dashboard.ensure_sample_database():
            writer.warn("Created the sample database with demo rows (DASHBOARD_SEED_SAMPLE).")
        if reporting:
            return report(args, dashboard, writer)
        return upgrade_database(dashboard, writer)
    except DashboardError as exc:
        if args.json:
            body = {"status": exc.status_code, "title": exc.title, "message": exc.message}
            if exc.detail:
                body["detail"] = exc.detail
            writer.say(json.dumps({"error": body}, indent=2))
        writer.warn(f"error: {exc.message}")
        if exc.detail:
            writer.warn(exc.detail)
        if isinstance(exc, LockHeld):
            return EXIT_LOCKED
        return EXIT_ERROR
    except KeyboardInterrupt:
        writer.warn("Interrupted. A migration that was running goes on by itself to its end "
                    "(or is put back if it fails); the dashboard's Runs page shows how it "
                    "ended and names its backup.")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
