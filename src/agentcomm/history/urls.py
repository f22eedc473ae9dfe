"""HISTORY_URL, read: which database keeps conversations, or none.

""                     the default: SQLite, `history.sqlite3` in DATA_DIR
none                   history off
sqlite:///path         SQLite at `path` (sqlite:////abs/path for an absolute one)
postgresql://u@h/db    PostgreSQL (postgres:// too)
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_FILE = "history.sqlite3"
_SQLITE = ("sqlite://", "sqlite+aiosqlite://")
_POSTGRES = ("postgresql://", "postgres://", "postgresql+asyncpg://")


def check_history_url(value: str) -> str:
    """`value` when it is one of the accepted forms; ValueError with what to write instead."""
    value = value.strip()
    lowered = value.lower()
    if not value or lowered == "none" or lowered.startswith(_SQLITE + _POSTGRES):
        return value
    raise ValueError(
        "HISTORY_URL must be empty (SQLite in DATA_DIR), none (no history), "
        f"sqlite:///path or postgresql://user@host/database; got {value.split('://')[0]!r}"
    )


def database_url(history_url: str, data_dir: str) -> str | None:
    """The SQLAlchemy async URL for `history_url` (None: history is off)."""
    value = check_history_url(history_url)
    lowered = value.lower()
    if lowered == "none":
        return None
    if not value:
        return f"sqlite+aiosqlite:///{Path(data_dir) / DEFAULT_FILE}"
    scheme, rest = value.split("://", 1)
    if lowered.startswith(_SQLITE):
        return f"sqlite+aiosqlite://{rest}"
    del scheme
    return f"postgresql+asyncpg://{rest}"
