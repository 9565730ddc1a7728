"""Why governance refuses a request: a protocol error that also names its reason.

A :class:`Refusal` is an :class:`~service.protocol.errors.APIError`, so the
HTTP layer answers it like any other error; its ``reason`` is the audit and
metric label, and ``detail`` (e.g. which limit) goes to the audit record only.
"""

from __future__ import annotations

from typing import Literal

from service.protocol.errors import APIError, model_not_found

Reason = Literal[
    "missing_api_key",
    "invalid_api_key",
    "auth_throttled",
    "tenant_disabled",
    "model_not_found",
    "killed",
    "invalid_parameter",
    "unknown_parameter",
    "rate_limited",
    "insufficient_quota",
    "store_unavailable",
]

# reason -> (status, OpenAI error type, code)
_ERRORS: dict[str, tuple[int, str, str]] = {
    "missing_api_key": (401, "invalid_request_error", "invalid_api_key"),
    "invalid_api_key": (401, "invalid_request_error", "invalid_api_key"),
    "auth_throttled": (429, "rate_limit_error", "rate_limit_exceeded"),
    "tenant_disabled": (403, "permission_error", "tenant_disabled"),
    "model_not_found": (404, "invalid_request_error", "model_not_found"),
    "killed": (503, "server_error", "disabled_by_operator"),
    "invalid_parameter": (400, "invalid_request_error", "invalid_value"),
    "unknown_parameter": (400, "invalid_request_error", "unknown_parameter"),
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "insufficient_quota": (429, "insufficient_quota", "insufficient_quota"),
    "store_unavailable": (503, "server_error", "governance_unavailable"),
}


class Refusal(APIError):
    """A governance decision to refuse, in OpenAI's shape (status, type, code and headers from ``reason``)."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        param: str | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        status, kind, code = _ERRORS[reason]
        sent = dict(headers or {})
        if retry_after_s is not None:
            sent["retry-after"] = str(int(retry_after_s))
        if reason == "killed":
            sent["x-should-retry"] = "false"
        if status == 401:
            sent["www-authenticate"] = 'Bearer realm="paddock"'
        if reason == "model_not_found":  # ``param`` names the model; answered exactly like an unknown one
            unknown = model_not_found(param or "")
            message, param = unknown.message, unknown.param
        super().__init__(status, message, type=kind, code=code, param=param, headers=sent)
        self.reason: Reason = reason
        self.retry_after_s = retry_after_s
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __repr__(self) -> str:
        return f"Refusal({self.reason!r}, {self.message!r}, status={self.status}, detail={self.detail!r})"
