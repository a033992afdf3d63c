"""Logging: one human-readable line per event, or one JSON object per line.

Code logs events with ``emit(logger, "event_name", "human text", **fields)``. The text
formatter prints ``time LEVEL text``; the JSON formatter prints ``ts``, ``level``,
``event``, ``msg`` and every field. Third-party loggers (libp2p is noisy) are held at
WARNING unless ``--log-level debug`` and go through the same handler, as do warnings.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
_NOISY = ("libp2p", "multiaddr", "async_service", "trio", "zeroconf")
# Expected while peers come and go; our reconnect loop reports dial failures itself.
_SILENCED = ("libp2p.transport", "libp2p.network.swarm")
# gossipsub parks messages for a connected peer that has not subscribed (every
# publish-only client) and warns once per message once its small queue is full.
_PARKED_QUEUE_WARNING = "pending message queue for peer"


def emit(logger: logging.Logger, event: str, message: str, level: int = logging.INFO, /, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": event, "fields": fields})


def _ts(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _DropLibraryChatter(logging.Filter):
    """Some libp2p modules log through the root logger, bypassing the levels set on
    theirs: keep their records below WARNING out of our output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "libp2p.pubsub.gossipsub" and str(record.msg).startswith(_PARKED_QUEUE_WARNING):
            return False
        return record.levelno >= logging.WARNING or f"{os.sep}libp2p{os.sep}" not in record.pathname


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_ts(record)} {record.levelname:<7} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Call after libp2p has been imported: its import resets its own logger."""
    if fmt not in ("text", "json"):
        raise ValueError(f"--log-format must be text or json, got {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_DropLibraryChatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our own debug lines are wanted at debug; libp2p's own debug flood never is.
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Some libp2p modules pin their own logger at INFO: hold them all at WARNING too.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(logger, logging.Logger) and 0 < logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for name in _SILENCED:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # libp2p detaches its logger at import (propagate=False, no handler), which sends
    # its records to Python's bare last-resort handler: route them through ours.
    logging.getLogger("libp2p").propagate = True
    logging.captureWarnings(True)
