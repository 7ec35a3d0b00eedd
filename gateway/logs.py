"""Structured logging: one JSON object per line, carrying the request id of the current request."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

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
    """The W3C trace id (32 hex digits) of the span or the request being served, if any."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return trace.format_trace_id(context.trace_id)
    request = _request_trace.get()
    return None if request is None else trace.format_trace_id(request.trace_id())


class RequestTrace:
    """The trace a request runs in when spans are not exported: the caller's (its W3C trace
    headers) or a new one, worked out only when a log line asks for it.

    Most requests write no log line at WARNING; making a span and entering its context for each
    of them was pure cost. Shared by reference with the tasks the request starts, so that all
    of them name the same trace.
    """

    __slots__ = ("_carrier", "_trace_id")

    def __init__(self, carrier: dict[str, str]) -> None:
        self._carrier = carrier
        self._trace_id: int | None = None

    def trace_id(self) -> int:
        if self._trace_id is None:
            parent = None
            if self._carrier:
                parent = trace.get_current_span(extract(self._carrier)).get_span_context()
            valid = parent is not None and parent.is_valid
            self._trace_id = parent.trace_id if valid else _IDS.generate_trace_id()
        return self._trace_id


_IDS = RandomIdGenerator()
_request_trace: ContextVar[RequestTrace | None] = ContextVar("request_trace", default=None)


def enter_request_trace(carrier: dict[str, str]) -> Token[RequestTrace | None]:
    """The rest of the request runs in the trace its W3C headers (`carrier`) name, or a new one."""
    return _request_trace.set(RequestTrace(carrier))


def leave_request_trace(token: Token[RequestTrace | None]) -> None:
    _request_trace.reset(token)


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
