"""What a client is told when something fails that is not an API error of its own: a database that does not answer
is a 503 saying so (the client may retry), anything else a 500 (a bug, logged)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from errors import APIError, InternalError, ServiceUnavailable

# The exceptions of a connection that fails; the app's error handlers map them (``as_api_error``).
CONNECTION_ERRORS = (DBAPIError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError, TimeoutError)

DATABASE_UNAVAILABLE = "The database is unavailable right now; please retry later."


def database_unreachable(exc: BaseException) -> bool:
    """A failure to reach or keep a database connection (the model server's, Redis' and Chroma's are mapped where
    they are called, so a refused or reset connection that gets here is the database's)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | ConnectionError | TimeoutError)


def as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if database_unreachable(exc):
        return ServiceUnavailable(DATABASE_UNAVAILABLE)
    return InternalError("The server had an error while processing your request.")
