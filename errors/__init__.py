"""The API's error types, in OpenAI's shape.

Every layer raises these; the server turns them into
``{"error": {"message", "type", "param", "code"}}`` with the status they carry.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error a client sees, with OpenAI's status, type and code."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status_code = 400


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ContentPolicyViolation(InvalidRequest):
    """A request the safety checks refuse; ``safety`` holds their verdicts, for the request's usage record."""

    code = "content_policy_violation"

    def __init__(self, message: str, *, safety: dict[str, Any] | None = None, param: str | None = "messages") -> None:
        super().__init__(message, param=param)
        self.safety = safety


class AuthenticationFailed(APIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    code = "permission_denied"


class NotFound(APIError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(APIError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(APIError):
    status_code = 413
    code = "request_too_large"


class RateLimited(APIError):
    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamError(APIError):
    """The model server answered with an error we cannot blame on the client."""

    status_code = 502
    type = "server_error"
    code = "upstream_error"


class ServiceUnavailable(APIError):
    status_code = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamTimeout(APIError):
    status_code = 504
    type = "server_error"
    code = "timeout"


class InternalError(APIError):
    status_code = 500
    type = "server_error"
    code = "internal_error"
