"""Structured logging: one JSON object per line, carrying the request id of the current request."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
actor_var: ContextVar[str | None] = ContextVar("actor", default=None)

change_log = logging.getLogger("entitlements.changes")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if "request_id" not in line:
            line["request_id"] = request_id_var.get()
        trace_id = current_trace_id()
        if trace_id:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # Compact separators: support greps for `"action":"subscription_updated"` as written.
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        text = " ".join(f"{k}={v}" for k, v in fields.items()) if fields else record.getMessage()
        trace_id = current_trace_id()
        traced = f" trace={trace_id}" if trace_id else ""
        line = f"{record.levelname:<7} {record.name} rid={request_id_var.get()}{traced} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def current_trace_id() -> str | None:
    """The W3C trace id (32 hex digits) of the span being served, if any."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's own access log would duplicate our request line.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def log_fields(logger: logging.Logger, level: int, **fields: Any) -> None:
    """Log one structured line made of `fields`."""
    if logger.isEnabledFor(level):
        logger.log(level, fields.get("event", ""), extra={"fields": fields})


def log_entitlement_changes(changes: list[dict[str, Any]]) -> None:
    for change in changes:
        log_fields(change_log, logging.INFO, event="entitlement_change", **change)
