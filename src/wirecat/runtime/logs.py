"""Logging set-up: human text or one JSON object per line, with connection context."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from ..escape import for_log

__all__ = ["JsonFormatter", "configure_logging", "logger"]

logger = logging.getLogger("wirecat")

_CONTEXT = ("service", "conn_id", "peer", "event", "reason", "user")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (RFC 3339, UTC), level, msg, and context fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _CONTEXT:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """One line per record: peer-controlled values (the message's arguments and the context
    fields) go through :func:`wirecat.escape.for_log`, so a name with a newline or ESC cannot
    forge a line or reach the operator's terminal. The message text itself is ours."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_safe(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _safe(v) for k, v in args.items()}
        try:
            base = super().format(record)
        finally:
            record.args = args
        ctx = [
            f"{k}={for_log(record.__dict__[k])}"
            for k in _CONTEXT
            if record.__dict__.get(k) is not None
        ]
        return f"{base} [{' '.join(ctx)}]" if ctx else base


def _safe(value: object) -> object:
    """Numbers stay numbers (for %d, %.1f); everything else becomes escaped text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return for_log(value)


def configure_logging(fmt: Literal["text", "json"] = "text", verbosity: int = 0) -> None:
    """Send wirecat's logs to stderr; ``verbosity`` 0 = warnings, 1 = info, 2+ = debug."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
