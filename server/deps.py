"""Route dependencies, as types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from server.gateway.auth import require_admin, require_app, require_chat_app, require_key
from server.services import Services
from storage.tenants import Caller


async def get_services(request: Request) -> Services:
    """Async: FastAPI runs a plain function dependency in its thread pool, a hop per request."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
# An app's key (admitted by its rate limits); admin keys are refused.
AppCaller = Annotated[Caller, Depends(require_app)]
# An app's key for a chat request: admitted by its rate limits and its budgets.
ChatCaller = Annotated[Caller, Depends(require_chat_app)]
# Any valid key, app or admin.
AnyCaller = Annotated[Caller, Depends(require_key)]
AdminCaller = Annotated[Caller, Depends(require_admin)]
