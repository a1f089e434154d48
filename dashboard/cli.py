"""The command line: ``migration-dashboard`` and the seed's ``migrate_db.py``.

The seed project's ``migrate_db.py`` ran ``alembic upgrade head`` bare. This
one goes through the same services as the dashboard: the same lock (so it
never races a migration started from the web page), a verified backup first,
a restore when a step fails, and an entry in the same audit log. It reads
the same DASHBOARD_* environment variables as the dashboard.

Installed (``pip install .``), ``migration-dashboard`` gives the same verbs
(``upgrade``, ``status``, ``pending``, ``history``, ``lint``: one implementation, two
spellings) and ``serve``, the dashboard itself under waitress, as
``datasette serve`` does; ``migrate_db.py`` stays as the seed's shim.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from waitress.server import create_server

from dashboard import create_app
from dashboard.automigrate import dashboard_for, settings_for
from dashboard.core import Target
from dashboard.errors import DashboardError
from dashboard.services import backups, findings, guard, inspection, planning, rehearsal, runs
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
EXIT_NO_SQL = 4  # --lint: a pending revision's SQL could not be generated

POLL_SECONDS = 0.2

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  success; the database is up to date ({{check}}: the state could be read)
  {EXIT_FAILED}  the migration failed (the output says how the database was put back,
     or what state it is in); {{pending}}: revisions are pending or the database
     is uninitialized; {{rehearse}}: the rehearsal on a copy failed; {{lint}}: a
     pending revision has an error finding (data loss)
  {EXIT_ERROR}  usage or configuration error: alembic.ini missing, database unreachable,
     database at a revision no script defines
  {EXIT_LOCKED}  another migration is already running on this database
  {EXIT_NO_SQL}  {{lint}}: a pending revision's SQL could not be generated, so it
     could not be checked (1 still wins: an error finding in another revision)
"""

CONFIGURATION = """
configuration (the same as the dashboard's):
  DASHBOARD_ALEMBIC_INI    path to alembic.ini ({ini} overrides it)
  DASHBOARD_DATABASE_URL   target database URL (--url overrides it)
  DASHBOARD_INSTANCE_DIR   where the lock, backups, runs and audit log live
                           (--instance-dir overrides it)
  Use the same instance folder as the dashboard, so both share one lock.

A password in --url is visible to every user of this machine in the process
list (ps) and may land in your shell history: prefer DASHBOARD_DATABASE_URL.
"""

EPILOG = (EXIT_CODES.format(check="--check", pending="--check-pending", rehearse="--rehearse",
                              lint="--lint")
          + CONFIGURATION.format(ini="--ini"))
COMMAND_EXIT_CODES = EXIT_CODES.format(check="status", pending="pending", rehearse="rehearse",
                                       lint="lint")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000


@dataclass(frozen=True)
class Verb:
    """One thing the command line does, by its two names."""

    name: str  # migration-dashboard's subcommand
    flag: str | None  # migrate_db.py's option for it (None: the plain run)
    help: str


VERBS = (
    Verb("upgrade", None, "back up, then upgrade to the latest revision(s)"),
    Verb("status", "check", "show the current revision(s), the heads and the state"),
    Verb("pending", "check_pending",
         "list pending revisions in apply order; exit 1 if any (for CI)"),
    Verb("history", "history", "show the revision history, newest first, current marked"),
    Verb("rehearse", "rehearse",
         "run the pending upgrade on a scratch copy of the database made from a fresh "
         "backup, never on the database; exit 1 if it fails (for CI)"),
    Verb("lint", "lint", "check the pending revisions' SQL for risks (locks, rewrites, data "
                         "loss); exit 1 if one has an error finding (for CI)"),
)
ROUNDTRIP_HELP = "with rehearse: also downgrade the same steps and upgrade again, and " \
                 "fail if the schema then differs"


class MessageWriter:
    """Where human-readable output goes; errors to stderr, the rest to stdout."""

    def __init__(self, out: TextIO, err: TextIO, upgrade_command: str = "python migrate_db.py"):
        self.out = out
        self.err = err
        self.upgrade_command = upgrade_command

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def add_target_options(parser: argparse.ArgumentParser, *, project_argument: bool) -> None:
    """The project, database and instance folder: ``--ini`` for migrate_db.py, an
    optional PROJECT argument for ``migration-dashboard``; both land in ``args.ini``."""
    if project_argument:
        parser.add_argument("ini", nargs="?", metavar="PROJECT",
                            help="the project's alembic.ini, pyproject.toml or folder "
                                 "(default: DASHBOARD_ALEMBIC_INI; installed, the current "
                                 "folder's alembic.ini)")
    else:
        parser.add_argument("--ini", metavar="PATH",
                            help="alembic.ini of the project (default: DASHBOARD_ALEMBIC_INI)")
    parser.add_argument("--url", metavar="URL",
                        help="database URL (default: DASHBOARD_DATABASE_URL, else the ini's "
                             "sqlalchemy.url). WARNING: a password given here is visible in "
                             "the process list; prefer the environment variable")
    parser.add_argument("--instance-dir", metavar="PATH",
                        help="the dashboard's instance folder (default: DASHBOARD_INSTANCE_DIR)")


def add_json_option(parser: argparse.ArgumentParser, *, what: str) -> None:
    parser.add_argument("--json", action="store_true",
                        help=f"{what}print the dashboard API's JSON instead of text")


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
    for verb in VERBS:
        if verb.flag:
            mode.add_argument(f"--{verb.flag.replace('_', '-')}", action="store_true",
                              help=verb.help)
    add_json_option(parser, what="with --check, --check-pending, --history, --lint or "
                                  "--rehearse: ")
    parser.add_argument("--roundtrip", action="store_true", help=ROUNDTRIP_HELP)
    add_target_options(parser, project_argument=False)
    return parser


# ------------------------------------------------------------------ reports

def status_json(history, status: MigrationStatus) -> dict:
    """The body of GET /api/status."""
    return inspection.status_json(history, status)


def revisions_json(history, status: MigrationStatus) -> dict:
    """The body of GET /api/revisions."""
    return {"revisions": [s.as_json() for s in inspection.revision_summaries(history, status)]}


def _revs(revisions) -> str:
    return ", ".join(revisions) or "base (no revision)"


def _warn_unreadable(history, writer: MessageWriter) -> None:
    for unreadable in history.unreadable:
        writer.warn(f"warning: cannot read {unreadable.path}: {unreadable.reason}")
    for problem in history.problems:
        writer.warn(f"warning: {problem}")


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
        writer.say(f"Run `{writer.upgrade_command}` to apply them (a backup is taken first).")
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


def report_lint(args: argparse.Namespace, dashboard: Target, writer: MessageWriter) -> int:
    """The pending upgrade's risk findings (GET /api/lint's JSON with --json)."""
    _, _, status, lint = findings.pending_findings(dashboard)
    if status.state == UNKNOWN_REVISION or (status.state == UNREACHABLE
                                            and not status.pending):
        writer.warn(status.explanation)  # which revisions are pending is not known
        return EXIT_ERROR
    code = (EXIT_FAILED if lint.errors else EXIT_NO_SQL if lint.sql_errors else EXIT_OK)
    if args.json:
        writer.say(json.dumps(findings.pending_json(status, lint), indent=2))
        return code
    if not status.pending:
        writer.say("No pending revisions: nothing to check.")
        return EXIT_OK
    if lint.note:
        writer.warn(lint.note)
    for pending in status.pending:
        error = (lint.sql_errors or {}).get(pending.revision)
        shown = [f for f in lint.of(pending.revision) if f.severity != "info"]
        writer.say(f"{pending.revision}  {pending.message}")
        if error:
            writer.warn(f"  its SQL could not be generated, so it was not checked: {error}")
        for found in shown:
            writer.say(f"  {found.severity.upper()} {found.rule}: {found.message}")
            if found.safer:
                writer.say(f"    safer: {found.safer}")
        if not shown and not error:
            writer.say("  no findings above info")
    writer.say(f"{len(lint.errors)} error(s), "
               f"{sum(f.severity == 'warning' for f in lint.findings)} warning(s) in "
               f"{len(status.pending)} pending revision(s).")
    return code


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


def rehearse_database(dashboard: Target, writer: MessageWriter, roundtrip: bool,
                      as_json: bool) -> int:
    """Rehearse the pending upgrade on a copy, printing each step as it finishes."""
    project, history, _ = dashboard.read_state()
    try:
        started = rehearsal.start_rehearsal(dashboard.pinned(project), history, "heads",
                                            roundtrip, current_user())
    except planning.NothingToDo as exc:
        writer.say(json.dumps({"status": "nothing_pending", "message": exc.message}, indent=2)
                   if as_json else f"Nothing to rehearse: {exc.message}")
        return EXIT_OK
    say = (lambda _text: None) if as_json else writer.say
    say(f"Rehearsing the upgrade{' and its round trip' if roundtrip else ''} on a copy of "
        f"{project.masked_url} (rehearsal {started.id})...")
    reported: set[int] = set()
    while True:
        record = rehearsal.find_rehearsal(dashboard.instance_dir, started.id)
        for step in record.steps:
            if step.index in reported or step.status not in ("succeeded", "failed"):
                continue
            reported.add(step.index)
            took = f" ({step.duration_s:.3f}s)" if step.duration_s is not None else ""
            say(f"  [{step.index}] {step.phase}: {step.direction} {step.revision}: "
                f"{step.status}{took}")
        if record.finished:
            break
        time.sleep(POLL_SECONDS)
    if as_json:
        writer.say(json.dumps(record.as_json(), indent=2))
    if record.status == rehearsal.PASSED:
        say("Rehearsal passed; the copy was removed and the database was not touched.")
        return EXIT_OK
    if not as_json:
        writer.warn(f"Rehearsal FAILED (rehearsal {record.id}): {record.error}")
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


# ------------------------------------------------------------------ rollouts

ROLLOUT_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  the rollout succeeded: every target succeeded or was already at the
     destination (skipped); --cancel: the cancel was recorded
  {EXIT_FAILED}  the rollout halted, failed or was cancelled (the lines above say which
     target failed and how its database was put back)
  {EXIT_ERROR}  usage or configuration error: unknown label or target, a read-only or
     misconfigured target, a risky upgrade not confirmed with --yes
  {EXIT_LOCKED}  another rollout is running on some of these targets, or a target's
     database was locked by another action
"""


def rollout_command(args: argparse.Namespace, environ: Mapping[str, str] | None,
                    writer: MessageWriter) -> int:
    """Start a rollout (or --cancel, --follow one) and follow it to its end, one line
    per target status change."""
    from dashboard.core import Registry
    from dashboard.services import rollouts

    environ = dict(os.environ if environ is None else environ)
    settings = settings_for(None, None, args.instance_dir, environ)
    root = str(settings["DASHBOARD_INSTANCE_DIR"])
    rollout_id = args.follow
    try:
        if args.cancel:
            rollout = rollouts.request_cancel(root, args.cancel, current_user())
            writer.say(f"Rollout {rollout.id}: cancelled; targets not started will not start, "
                       "runs under way finish.")
            return EXIT_OK
        registry = Registry(settings, environ)
        if not args.follow:
            names = [n.strip() for n in args.targets.split(",") if n.strip()] \
                if args.targets is not None else None
            rollout_id = rollouts.request_rollout(
                registry, label=args.label, names=names, action=args.action,
                destination=args.to, canary=args.canary, parallel=args.parallel,
                on_error=args.on_error, confirmed=args.yes, user=current_user(),
                environ=environ).id
            if not args.json:
                writer.say(f"Rollout {rollout_id} started.")
        rollout = follow_rollout(settings, rollout_id, writer, environ, quiet=args.json)
    except findings.RiskNotConfirmed as exc:
        writer.warn(f"error: {exc.message.split(' Confirm it:')[0]} Pass --yes to confirm.")
        return EXIT_ERROR
    except DashboardError as exc:
        if args.json:
            writer.say(json.dumps({"error": {"status": exc.status_code, "title": exc.title,
                                             "message": exc.message}}, indent=2))
        writer.warn(f"error: {exc.message}")
        # A 409 is an overlapping rollout (or a locked target); cancelling one that has
        # finished is a usage error.
        return EXIT_LOCKED if exc.status_code == 409 and not args.cancel else EXIT_ERROR
    except KeyboardInterrupt:
        if rollout_id is None:
            writer.warn("Interrupted while the rollout was being started: the dashboard's "
                        "Rollouts page (or GET /api/rollouts) says whether it was.")
            return 130
        writer.warn("Interrupted: the rollout goes on by itself. Follow it with "
                    f"`migration-dashboard rollout --follow {rollout_id}`, or cancel it with "
                    f"`migration-dashboard rollout --cancel {rollout_id}`.")
        return 130
    if args.json:
        writer.say(json.dumps(rollout_report(rollout, registry.multiple), indent=2))
    else:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(rollout.counts.items()))
        (writer.say if rollout.status == rollouts.SUCCEEDED else writer.warn)(
            f"Rollout {rollout.id} {rollout.status}: {counts}.")
    if rollout.status == rollouts.SUCCEEDED:
        return EXIT_OK
    if any((row.error or "").startswith(rollouts.LOCKED) for row in rollout.targets):
        return EXIT_LOCKED
    return EXIT_FAILED


def rollout_report(rollout, multiple: bool) -> dict:
    """The body of GET /api/rollouts/<id>."""
    def run_url(row):
        if not row.run_id:
            return None
        return (f"/api/targets/{row.name}/runs/{row.run_id}" if multiple
                else f"/api/runs/{row.run_id}")
    return rollout.as_json(run_url)


def follow_rollout(settings: dict, rollout_id: str, writer: MessageWriter,
                   environ=None, quiet: bool = False):
    """Poll the rollout until it ends, printing each target's status as it changes."""
    from dashboard.services import rollouts

    said: dict[str, str] = {}
    while True:
        rollout = rollouts.read_rollout(settings, rollout_id, environ)
        for row in rollout.targets:
            if said.get(row.name) == row.status or row.status == rollouts.PENDING:
                continue
            said[row.name] = row.status
            if quiet:
                continue
            run = f" (run {row.run_id})" if row.run_id else ""
            canary = " [canary]" if row.canary else ""
            revs = (f": {_revs(row.from_revs)} -> {_revs(row.to_revs)}"
                    if row.status == runs.SUCCEEDED else "")
            error = f": {row.error}" if row.error and row.status not in rollouts.IN_FLIGHT else ""
            writer.say(f"  {row.name}{canary}: {row.status.replace('_', ' ')}{run}{revs}{error}")
        if rollout.finished:
            return rollout
        time.sleep(POLL_SECONDS)


# ------------------------------------------------------------------ serving

LOCAL_NAMES = ("localhost",)
EVERY_ADDRESS = ("0.0.0.0", "::", "")


def is_local_address(host: str) -> bool:
    """Whether binding to ``host`` keeps the dashboard on this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in LOCAL_NAMES


def serve_settings(project: str | None = None, *, host: str = DEFAULT_HOST,
                   database_url: str | None = None, instance_dir: str | None = None,
                   flask_app: str | None = None,
                   environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The dashboard's settings for serving ``project`` on ``host``."""
    settings = settings_for(project and os.path.abspath(project), database_url, instance_dir,
                            environ)
    if project:  # the project asked for on the command line, not a targets file's
        settings["DASHBOARD_TARGETS_FILE"] = None
    if flask_app:
        settings["DASHBOARD_FLASK_APP"] = flask_app
    if not is_local_address(host) and host not in EVERY_ADDRESS:
        # The Host guard answers only the names it knows: the address asked for is one.
        settings["DASHBOARD_ALLOWED_HOSTS"] = f"{settings['DASHBOARD_ALLOWED_HOSTS']},{host}"
    return settings


def serve(project: str | None = None, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          allow_remote: bool = False, database_url: str | None = None,
          instance_dir: str | None = None, flask_app: str | None = None,
          environ: Mapping[str, str] | None = None, writer: MessageWriter | None = None) -> int:
    """Serve the dashboard on ``project`` with waitress until interrupted; an exit code."""
    writer = writer or MessageWriter(sys.stdout, sys.stderr)
    if not is_local_address(host) and not allow_remote:
        writer.warn(f"error: {host} is not a local address. The dashboard has no login: anyone "
                    "who reaches it can run migrations. Pass --allow-remote if you mean it.")
        return EXIT_ERROR
    if project and not os.path.exists(project):
        writer.warn(f"error: {project} not found (give an alembic.ini, a pyproject.toml or "
                    "a project folder).")
        return EXIT_ERROR
    app = create_app(serve_settings(project, host=host, database_url=database_url,
                                    instance_dir=instance_dir, flask_app=flask_app,
                                    environ=environ))
    try:
        server = create_server(app, host=host, port=port)
    except OSError as exc:
        writer.warn(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}")
        return EXIT_ERROR
    shown = f"[{host}]" if ":" in host else host
    on_app = f", Flask app {flask_app}" if flask_app else ""
    writer.say(f"Migration Dashboard on http://{shown}:{server.effective_port}/ "
               f"(project {app.config['DASHBOARD_ALEMBIC_INI']}{on_app}); Ctrl-C to stop.")
    if host in EVERY_ADDRESS:
        writer.warn("Listening on every address: add the names it is reached by to "
                    "DASHBOARD_ALLOWED_HOSTS, or every request gets a 400.")
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return EXIT_OK


# ------------------------------------------------------------------ entry points

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


def run_verb(args: argparse.Namespace, environ: Mapping[str, str] | None,
             writer: MessageWriter) -> int:
    """A report (--check, --check-pending, --history) or the upgrade, on the target the
    arguments and settings name: the one implementation behind both commands."""
    dashboard = dashboard_for(args.ini, args.url, args.instance_dir, environ)
    try:
        if dashboard.ensure_sample_database():
            writer.warn("Created the sample database with demo rows (DASHBOARD_SEED_SAMPLE).")
        if args.lint:
            return report_lint(args, dashboard, writer)
        if args.check or args.check_pending or args.history:
            return report(args, dashboard, writer)
        if args.rehearse:
            return rehearse_database(dashboard, writer, args.roundtrip, args.json)
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


def migrate_db_main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
                    out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``python migrate_db.py [--check | --check-pending | --history | --lint] [--json] ...``"""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not (args.check or args.check_pending or args.history or args.lint
                          or args.rehearse):
        parser.error("--json goes with --check, --check-pending, --history, --lint or "
                     "--rehearse")
    if args.roundtrip and not args.rehearse:
        parser.error("--roundtrip goes with --rehearse")
    return run_verb(args, environ, MessageWriter(out or sys.stdout, err or sys.stderr))


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def add_rollout_parser(verbs) -> None:
    from dashboard.services import rollouts

    rolling = verbs.add_parser(
        "rollout", help="one action over many targets of DASHBOARD_TARGETS_FILE, canary first",
        description="Run one action over the targets a label (or a list) selects, each behind "
                    "the guard: targets at the destination are skipped, the canaries run "
                    "first, then at most --parallel at once; a failure halts the rest (or, "
                    "with --on-error continue, not). Ctrl-C leaves the rollout running.",
        epilog=ROLLOUT_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rolling.add_argument("--label", help="every target carrying this label")
    rolling.add_argument("--targets", metavar="A,B", help="these targets, by name")
    rolling.add_argument("--cancel", metavar="ID", help="cancel a running rollout")
    rolling.add_argument("--follow", metavar="ID", help="follow a running rollout")
    rolling.add_argument("--action", default="upgrade", choices=planning.ACTIONS)
    rolling.add_argument("--to", default="heads", metavar="REVISION",
                         help="the destination (default heads)")
    rolling.add_argument("--canary", type=int, default=rollouts.DEFAULT_CANARY,
                         help="how many targets run first; the others wait for them to succeed "
                              f"(default {rollouts.DEFAULT_CANARY})")
    rolling.add_argument("--parallel", type=int, default=rollouts.DEFAULT_PARALLEL,
                         help=f"at most this many at once (default {rollouts.DEFAULT_PARALLEL})")
    rolling.add_argument("--on-error", default=rollouts.HALT, choices=rollouts.ON_ERROR,
                         help="after a failure: halt (default) or continue")
    rolling.add_argument("--yes", action="store_true",
                         help="confirm a risky upgrade (one that loses data)")
    rolling.add_argument("--instance-dir", metavar="PATH",
                         help="the dashboard's instance folder (default: DASHBOARD_INSTANCE_DIR)")
    add_json_option(rolling, what="at the end: ")


def build_command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migration-dashboard",
        description="Inspect and run Alembic migrations safely: the web dashboard "
                    "(serve) and the command line (upgrade, status, pending, history, lint, "
                    "rollout).",
        epilog=COMMAND_EXIT_CODES + CONFIGURATION.format(ini="PROJECT"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    serving = verbs.add_parser(
        "serve", help="serve the dashboard (default http://127.0.0.1:5000)",
        description="Serve the dashboard on a project with waitress, on this machine only "
                    "unless --allow-remote.")
    add_target_options(serving, project_argument=True)
    serving.add_argument("--host", default=DEFAULT_HOST,
                         help=f"address to listen on (default {DEFAULT_HOST})")
    serving.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                         help=f"port to listen on (default {DEFAULT_PORT}; 0: any free one)")
    serving.add_argument("--allow-remote", action="store_true",
                         help="allow a --host that is not local. The dashboard has no login: "
                              "whoever reaches it can run migrations")
    add_rollout_parser(verbs)
    for verb in VERBS:
        sub = verbs.add_parser(verb.name, help=verb.help, description=verb.help,
                               epilog=COMMAND_EXIT_CODES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_target_options(sub, project_argument=True)
        if verb.flag:
            add_json_option(sub, what="")
        if verb.name == "rehearse":
            sub.add_argument("--roundtrip", action="store_true", help=ROUNDTRIP_HELP)
        sub.set_defaults(json=False, roundtrip=False,
                         **{v.flag: v is verb for v in VERBS if v.flag})
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``migration-dashboard COMMAND ...``"""
    parser = build_command_parser()
    args = parser.parse_args(argv)
    writer = MessageWriter(out or sys.stdout, err or sys.stderr,
                           upgrade_command="migration-dashboard upgrade")
    if args.verb == "rollout":
        if sum(x is not None for x in (args.label, args.targets, args.cancel, args.follow)) != 1:
            parser.error("rollout: give one of --label, --targets, --cancel or --follow")
        return rollout_command(args, environ, writer)
    if args.verb == "serve":
        return serve(args.ini, host=args.host, port=args.port, allow_remote=args.allow_remote,
                     database_url=args.url, instance_dir=args.instance_dir, environ=environ,
                     writer=writer)
    return run_verb(args, environ, writer)


if __name__ == "__main__":
    raise SystemExit(main())
