"""Alembic migrations of the history database, run by `agentcomm.history.migrate`."""
