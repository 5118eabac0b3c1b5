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
        self._stamp = (-1, "")  # (second, its text): one tuple, replaced whole

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """Logging's default time text, its strftime done once per second, not per line."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached, text = self._stamp
        if second != cached:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._stamp = (second, text)
        if self.default_msec_format:
            return self.default_msec_format % (text, record.msecs)
        return text

    def format(self, record: logging.LogRecord) -> str:
        """Format the message, then its fields."""
        line = super().format(record)
        extra: dict[str, Any] | None = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{key}={_text(value)}" for key, value in extra.items())
        return line


def _text(value: Any) -> str:
    if isinstance(value, str):
        if value and " " not in value and "=" not in value:
            return value
    elif type(value) is int:
        return str(value)  # what json.dumps writes for an int, without its encoder
    elif value is None:
        return "null"
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
    # What no formatter here prints is not collected per record: the caller's
    # frame, thread and process (the logging HOWTO's "Optimization" settings).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
