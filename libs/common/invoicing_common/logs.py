"""JSON-lines logging shared by every service.

Each record carries the service name, and the invoice id and trace ids when
the caller passes them (``extra={"invoice_id": ...}``) or a span is active.
Document content must never be logged: pass ids, not payloads.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

_CONTEXT_FIELDS = ("invoice_id", "event_id", "topic", "partition", "offset")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        for field in _CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def logging_config(service: str, level: str = "INFO") -> dict[str, Any]:
    """A dictConfig that mode workers accept as ``logging_config``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # aiokafka reports every transient coordinator move at INFO/ERROR.
            "aiokafka": {"level": "WARNING"},
            "mode": {"level": "WARNING"},
        },
    }


def configure_logging(service: str, level: str = "INFO") -> None:
    import logging.config

    logging.config.dictConfig(logging_config(service, level))
