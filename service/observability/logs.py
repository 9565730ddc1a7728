"""Structured logs: JSON lines with time, level, logger, message, and the request's ids.

Inside a request, every Paddock log line carries the request id, trace id,
tenant and model of that request (from :data:`CURRENT`, set by the ingress for
the request's duration). The per-request record itself is the governance
audit record (see ``governance/records.py``): one line per request on stdout,
not an access-log line beside it.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

# The Observation (see requests.py) of the request being served in this task, if any.
CURRENT: ContextVar[Any] = ContextVar("paddock_request", default=None)
_TRACEPARENT_LEN = 55


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), if well formed."""
    if traceparent is None or len(traceparent) != _TRACEPARENT_LEN or traceparent[2] != "-":
        return None
    trace_id = traceparent[3:35]
    try:
        return trace_id if int(trace_id, 16) else None
    except ValueError:
        return None


def utc_now(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": utc_now(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        obs = CURRENT.get()
        if obs is not None:
            out.update(request_id=obs.request_id, trace_id=obs.trace_id, tenant=obs.tenant, model=obs.model)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json", logger: str = "service") -> None:
    """Paddock's loggers write to stderr, as JSON lines (``json``) or for people (``text``). Idempotent."""
    root = logging.getLogger(logger)
    if any(getattr(h, "_paddock", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler._paddock = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
