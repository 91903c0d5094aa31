"""Exception handlers: every error leaves the server in OpenAI's shape with its status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from errors import APIError, InternalError, InvalidRequest, NotFound, PayloadTooLarge
from server.failures import CONNECTION_ERRORS, as_api_error
from server.gateway.auth import authenticate
from server.responses import FastJSONResponse

log = logging.getLogger(__name__)

_STATUS_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def error_response(error: APIError) -> FastJSONResponse:
    return FastJSONResponse(error.to_dict(), status_code=error.status_code, headers=error.headers or None)


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem, named the way OpenAI does: a message and the offending parameter."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = errors[0]
    if not isinstance(first, dict):  # LangServe raises it with plain strings
        return InvalidRequest(f"Invalid request: {str(first)[:500]}", code="invalid_value")
    location = [str(part) for part in first.get("loc", ())]
    if location and location[0] in ("body", "query", "path", "header", "cookie"):
        location = location[1:]  # where FastAPI found it, not the parameter's name
    if first.get("type") == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        )
    param = _param_path(location)
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        # A discriminated union (a message's role, a content part's type): name the field that picks the branch.
        tag = str((first.get("ctx") or {}).get("discriminator", "")).strip("'")
        param = f"{param}.{tag}" if tag else param
    message = first.get("msg", "Invalid value")
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    else:
        message = f"Invalid value for '{param}': {message}." if param else f"{message}."
        code = "invalid_value"
    return InvalidRequest(message, param=param or None, code=code)


_UNION_BRANCHES = {"str", "int", "float", "bool", "none", "dict", "list"}
# Tags of the discriminated unions in request bodies: pydantic puts the chosen branch's tag in the location.
_UNION_TAGS = {
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "text",
    "image_url",
    "input_audio",
    "file",
    "refusal",
}


def _param_path(location: list[str]) -> str:
    path = ""
    previous = ""
    for part in location:
        if part.isdigit():
            path += f"[{part}]"
            previous = part
            continue
        if part in _UNION_BRANCHES or "[" in part or part.startswith(("function-", "tagged-union", "constrained-")):
            continue  # pydantic's names for union branches, not the client's field names
        if part in _UNION_TAGS and previous.isdigit():
            continue  # the tag of a discriminated union's branch (a message's role, a part's type)
        path += f".{part}" if path else part
        previous = part
    return path


_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")


def _needs_key(request: Request) -> bool:
    return not request.url.path.startswith(_OPEN_PATHS)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> FastJSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> FastJSONResponse:
        # FastAPI parses the body before the auth dependency runs; a client without a valid
        # key must learn that first, whatever its body looks like.
        if _needs_key(request):
            try:
                await authenticate(request)
            except APIError as error:
                return error_response(error)
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        if exc.status_code == 413:
            error: APIError = PayloadTooLarge("Request body too large for this server.")
        elif exc.status_code == 404:
            error = NotFound(f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
        else:
            error = APIError(str(exc.detail))
            error.status_code = exc.status_code
            error.type = _STATUS_TYPES.get(
                exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error"
            )
        return error_response(error)

    async def _connection(request: Request, exc: Exception) -> FastJSONResponse:
        """A database that does not answer (``server.failures``): handled here, inside Starlette's error
        middleware, which would send a 500 and re-raise for a handler of ``Exception``."""
        return await _unexpected(request, exc)

    for kind in CONNECTION_ERRORS:
        app.add_exception_handler(kind, _connection)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> FastJSONResponse:
        error = as_api_error(exc)
        if isinstance(error, InternalError):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        else:
            log.warning("%s %s: %s (%s: %s)", request.method, request.url.path, error.message, type(exc).__name__, exc)
        return error_response(error)
