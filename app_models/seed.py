"""Create the sample database a newcomer sees on the dashboard's first start.

The database is migrated only to ``SAMPLE_START_REVISION``, before the
branches, so the page has pending revisions, a branch point and a merge to
show. Demo rows are written against the tables as they are at that revision,
not against the current models, which describe a later schema.

Run as ``python -m app_models.seed <url> [--ini PATH] [--revision REV]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import alembic.command
from alembic.config import Config
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    make_url,
    select,
)

SAMPLE_START_REVISION = "d86069f3a9e2"  # create chat_sessions and chat_messages
DEFAULT_INI_PATH = str(Path(__file__).resolve().parent.parent / "alembic.ini")

DEMO_USERS = (
    {
        "email": "ada@example.com",
        "display_name": "Ada Lovelace",
        "default_model": "llama3.1:8b",
        "temperature": 0.7,
        "theme": "dark",
    },
    {
        "email": "grace@example.com",
        "display_name": "Grace Hopper",
        "default_model": "qwen2.5:14b",
        "temperature": 0.2,
        "theme": "light",
    },
    {
        "email": "alan@example.com",
        "display_name": "Alan Turing",
        "default_model": "mistral:7b",
        "temperature": 1.0,
        "theme": "system",
    },
)

# (owner's email, title, model, [(role, content, token_count), ...])
DEMO_CHATS = (
    (
        "ada@example.com",
        "Summarise the analytical engine notes",
        "llama3.1:8b",
        [
            ("system", "You are a helpful assistant.", 6),
            ("user", "Summarise Note G in two sentences.", 9),
            (
                "assistant",
                (
                    "Note G describes an algorithm for the engine to compute Bernoulli "
                    "numbers. It is often called the first published computer program."
                ),
                27,
            ),
        ],
    ),
    (
        "grace@example.com",
        "Why is it called a bug?",
        "qwen2.5:14b",
        [
            ("user", "Where does the word 'bug' for a computer fault come from?", 14),
            (
                "assistant",
                (
                    "Engineers used it long before computers; a moth found in the "
                    "Mark II in 1947 made the term famous."
                ),
                25,
            ),
            ("user", "Is the moth still around?", 6),
            ("assistant", "Yes, taped into the logbook at the Smithsonian.", 11),
        ],
    ),
)

# Not a real hash: demo accounts cannot log in.
_DEMO_PASSWORD_HASH = "!demo-account-no-login"


def _alembic_config(ini_path: str, url: str) -> Config:
    cfg = Config(ini_path)
    # ConfigParser interpolates %, which URL-encoded passwords contain.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


# The tables as they are at SAMPLE_START_REVISION, not as app_models describes them.
_snapshot = MetaData()
_users = Table(
    "users",
    _snapshot,
    Column("id", Integer, primary_key=True),
    Column("email", String),
    Column("display_name", String),
    Column("password_hash", String),
    Column("is_active", Boolean),
)
_user_settings = Table(
    "user_settings",
    _snapshot,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer),
    Column("default_model", String),
    Column("temperature", Float),
    Column("theme", String),
)
_chat_sessions = Table(
    "chat_sessions",
    _snapshot,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer),
    Column("title", String),
    Column("model", String),
)
_chat_messages = Table(
    "chat_messages",
    _snapshot,
    Column("id", Integer, primary_key=True),
    Column("chat_session_id", Integer),
    Column("role", String),
    Column("content", String),
    Column("token_count", Integer),
)


def _insert_demo_rows(connection: Connection) -> None:
    user_ids: dict[str, int] = {}
    for user in DEMO_USERS:
        result = connection.execute(
            insert(_users).values(
                email=user["email"],
                display_name=user["display_name"],
                password_hash=_DEMO_PASSWORD_HASH,
                is_active=True,
            )
        )
        user_id = result.inserted_primary_key[0]
        user_ids[user["email"]] = user_id
        connection.execute(
            insert(_user_settings).values(
                user_id=user_id,
                default_model=user["default_model"],
                temperature=user["temperature"],
                theme=user["theme"],
            )
        )

    for email, title, model, messages in DEMO_CHATS:
        result = connection.execute(
            insert(_chat_sessions).values(user_id=user_ids[email], title=title, model=model)
        )
        chat_session_id = result.inserted_primary_key[0]
        connection.execute(
            insert(_chat_messages),
            [
                {
                    "chat_session_id": chat_session_id,
                    "role": role,
                    "content": content,
                    "token_count": token_count,
                }
                for role, content, token_count in messages
            ],
        )


def create_sample_database(
    ini_path: str, url: str, revision: str = SAMPLE_START_REVISION
) -> None:
    """Migrate the database at ``url`` to ``revision`` and add demo rows.

    Meant for a new, empty database; demo rows are only added when the
    users table is empty, so a second call changes nothing.
    """
    sqlite_file = _sqlite_file(url)
    created_file = sqlite_file is not None and not sqlite_file.exists()
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    cfg = _alembic_config(ini_path, url)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            # env.py runs on this connection, so schema and rows commit together.
            cfg.attributes["connection"] = connection
            alembic.command.upgrade(cfg, revision)
            if connection.execute(select(func.count()).select_from(_users)).scalar_one() == 0:
                _insert_demo_rows(connection)
    except BaseException:
        engine.dispose()
        # An empty file left behind would look like an existing database next start.
        if created_file and sqlite_file.exists():
            sqlite_file.unlink()
        raise
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app_models.seed", description=create_sample_database.__doc__
    )
    parser.add_argument("url", help="SQLAlchemy URL of the database to create")
    parser.add_argument("--ini", default=DEFAULT_INI_PATH, help="path to alembic.ini")
    parser.add_argument(
        "--revision",
        default=SAMPLE_START_REVISION,
        help="revision to migrate to (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    create_sample_database(args.ini, args.url, args.revision)


if __name__ == "__main__":
    main()
