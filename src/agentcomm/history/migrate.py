"""Brings a history database to the newest schema with Alembic, at the hub's start.

Several hubs may start at once against one PostgreSQL: the upgrade runs in one transaction
under an advisory lock, so one migrates and the others find it done (PostgreSQL's DDL is
transactional). SQLite is one file of one machine; its own write lock serialises them.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

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
        await connection.run_sync(_upgrade)


def _upgrade(connection: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
