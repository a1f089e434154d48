"""The seed project's command line, kept: ``python migrate_db.py [--check ...]``.

The command itself lives in the package (``dashboard/cli.py``), where the
installed ``migration-dashboard`` command runs the same code as its
``upgrade``, ``status``, ``pending`` and ``history`` verbs.
"""

from dashboard.cli import migrate_db_main as main

if __name__ == "__main__":
    raise SystemExit(main())
