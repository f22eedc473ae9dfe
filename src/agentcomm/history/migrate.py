"""Brings a history database to the newest schema with Alembic, at the hub's start.

Several hubs may start at once against one PostgreSQL: the upgrade runs in one transaction
under an advisory lock, so one migrates and the others find it done (PostgreSQL's DDL is
transactional). SQLite is one file of one machine; its own write lock serialises them.

Alembic is imported here only when a migration runs, and its own INFO lines (the plugins it
sets up, the dialect it found) are kept out of the hub's log: what a newcomer reads at start is
one line of ours, saying which migration the database is at.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant shared by every hub: the key of the advisory lock held while migrating.
_LOCK_KEY = 0x61676E74636F6D6D  # "agntcomm"


async def upgrade(engine: AsyncEngine) -> None:
    """Runs every migration not yet applied."""
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}
            )
        revision = await connection.run_sync(_upgrade)
    log.debug("History schema at migration %s", revision)


def _upgrade(connection: sa.Connection) -> str | None:
    with _quiet("alembic"):
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        return MigrationContext.configure(connection).get_current_revision()


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
