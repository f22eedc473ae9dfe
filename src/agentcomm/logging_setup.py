"""Process-wide logging from Settings: plain text for people, JSON lines for collectors."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

from agentcomm.config import Settings
from agentcomm.telemetry.logs import trace_fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line; inside a trace it carries `trace_id`, `span_id` and the
    `message_id` being handled, and a `message_id` given as `extra` always."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(trace_fields())
        message_id = getattr(record, "message_id", None)
        if message_id:
            entry["message_id"] = message_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class _NoLibraryTracebacks(logging.Filter):
    """aio-pika and aiormq log a full traceback for every broken connection; the one line they
    log with it says what happened, and the bus reports what it means for agentcomm."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("aiormq", "aio_pika")) and record.exc_info:
            record.msg = f"{record.getMessage()} ({record.exc_info[1]!r})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    handler.addFilter(_NoLibraryTracebacks())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # aio-pika/aiormq are chatty about reconnect internals, httpx and a2a-sdk log every request
    # (and every agent card whole) at INFO; their warnings are enough.
    for noisy in ("aio_pika", "aiormq", "httpx", "a2a"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def configure_logging_unless_configured(settings: Settings) -> None:
    """`configure_logging`, for a process whose logging nobody set up yet: an agent's script
    logs what it does with timestamps, as the hub does. A program that set up logging itself
    (root handlers, or a `logging.basicConfig`) keeps its own."""
    if not logging.getLogger().handlers:
        configure_logging(settings)
