"""Logging set-up: ``text`` (human) or ``json`` (one object per line).

Structured fields travel in ``extra={"fields": {...}}``; both formats print
them.  Callers are responsible for never putting a secret in a field: the
session log carries a key *id*, never the key.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["configure_logging", "fields"]


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a structured log record."""
    return {"fields": values}


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Format the message, then its fields."""
        line = super().format(record)
        extra: dict[str, Any] | None = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{key}={_text(value)}" for key, value in extra.items())
        return line


def _text(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    return json.dumps(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialize the record."""
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra: dict[str, Any] | None = getattr(record, "fields", None)
        if extra:
            data.update(extra)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every log record to stderr in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
