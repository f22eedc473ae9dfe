"""ISO 8601 UTC timestamps, the one format every timestamp on the wire uses."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now_iso() -> str:
    return to_iso(datetime.now(UTC))


def to_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_epoch(seconds: float) -> datetime:
    """Seconds since the epoch (a token's `exp`) as a UTC moment."""
    return datetime.fromtimestamp(seconds, UTC)
