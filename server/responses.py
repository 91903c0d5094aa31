"""JSON responses serialised with orjson: several times faster than the standard library's ``json`` on the request
path's bodies (FastAPI's own ``ORJSONResponse`` is deprecated; routes with a response model are serialised by
Pydantic, which is as fast)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
