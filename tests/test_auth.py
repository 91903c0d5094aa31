"""Authentication on every route: no key, a malformed header, an unknown, revoked or expired key is a 401
in OpenAI's shape; admin keys cannot chat and app keys cannot administer (403); keys are stored only as hashes.

Routes are enumerated from the app itself, so a route added later is covered without touching this file.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import update

from server.gateway.auth import KEY_COOKIE, app_caller, require_admin, require_app, require_chat_app, require_key
from server.routes.images import image_reader
from storage.engine import Database
from storage.tables import ApiKey, Base
from tests.conftest import ADMIN_KEY
from tests.test_errors import assert_error

# Open on purpose: liveness/readiness, the API docs, /metrics (open unless GENAI_METRICS_REQUIRE_ADMIN), and the web
# UI's page (static; it calls the API with the key a person enters).
OPEN_PATHS = {"/healthz", "/readyz", "/docs", "/openapi.json", "/redoc", "/metrics", "/"}
PATH_VALUES = {
    "conversation_id": "conv_0000000000000000",
    "app": "tests",
    "key": "sk-unknown00",
    "model_id": "gemma-3-270m",
    "config_hash": "e30",
    "file_path": "index.html",
}
# app_caller authenticates an app key whose admission the route makes itself (LangServe counts batch inputs);
# image_reader takes an app key, or a signed URL instead (an image's content: tests/test_images.py).
AUTH_DEPENDENCIES = {
    require_app: "app", require_chat_app: "app", app_caller: "app", require_key: "any", require_admin: "admin",
    image_reader: "app",
}  # fmt: skip
QUESTION = {"messages": [{"type": "human", "content": "What is the capital of France?"}]}
USER = {"role": "user", "content": "What is the capital of France?"}


# ---------------------------------------------------------------------------------------------------------------
# The app's routes


def _flatten(routes) -> list:
    """Every route, looking into included routers (FastAPI wraps them in objects of their own)."""
    flat = []
    for route in routes:
        if hasattr(route, "effective_candidates"):
            flat.extend(_flatten(route.effective_candidates()))
        elif hasattr(route, "original_router") and not hasattr(route, "path"):
            flat.extend(_flatten(route.original_router.routes))
        else:
            flat.append(route)
    return flat


def _auth_kind(dependant) -> str | None:
    """Which authentication dependency a route's dependency tree holds: "app", "any", "admin" or None."""
    if dependant is None:
        return None
    if dependant.call in AUTH_DEPENDENCIES:
        return AUTH_DEPENDENCIES[dependant.call]
    for sub in dependant.dependencies:
        if kind := _auth_kind(sub):
            return kind
    return None


def all_routes(app) -> dict[tuple[str, str], str | None]:
    """(method, path template) -> its auth dependency kind ("open" for the paths open on purpose), for every route."""
    found: dict[tuple[str, str], str | None] = {}
    for route in _flatten(app.routes):
        path = getattr(route, "path", None)
        if path is None:
            continue
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("HEAD", "OPTIONS"):
                continue
            kind = "open" if path in OPEN_PATHS else _auth_kind(getattr(route, "dependant", None))
            found[(method, path)] = found.get((method, path)) or kind
    # Paths in the OpenAPI schema too, in case a route hides from app.routes.
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            found.setdefault((method.upper(), path), "open" if path in OPEN_PATHS else None)
    return found


def app_routes(app) -> dict[tuple[str, str], str | None]:
    """``all_routes`` without the ones open on purpose."""
    return {route: kind for route, kind in all_routes(app).items() if kind != "open"}


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)


def call(client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
    if method in ("POST", "PUT", "PATCH") and "content" not in kwargs and "json" not in kwargs:
        kwargs["json"] = {}
    return client.request(method, concrete(path), **kwargs)


def wrong_answers(client: httpx.Client, routes, status: int, code: str, **fields) -> list[str]:
    """Call each of ``routes`` ((method, path template) pairs); every one that does not answer ``status`` with an
    OpenAI-shaped error of ``code`` (and these other error ``fields``), with what it answered instead."""
    failures = []
    for method, path in sorted(routes):
        response = call(client, method, path)
        try:
            error = assert_error(response, status, code=code)
            assert {field: error[field] for field in fields} == fields
        except (AssertionError, ValueError, KeyError):
            failures.append(f"{method} {path}: {response.status_code} {response.text[:120]}")
    return failures


def test_route_enumeration_sees_every_kind_of_route(server):
    routes = app_routes(server.app)
    for expected in [
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id:path}"),
        ("POST", "/v1/conversations"),
        ("GET", "/v1/conversations"),
        ("GET", "/v1/conversations/{conversation_id}"),
        ("DELETE", "/v1/conversations/{conversation_id}"),
        ("GET", "/v1/usage"),
        ("POST", "/admin/apps"),
        ("PATCH", "/admin/apps/{app}"),
        ("POST", "/admin/keys/{key}/revoke"),
        ("POST", "/chat/invoke"),
        ("POST", "/chat/stream"),
        ("POST", "/chat/batch"),
        ("POST", "/chat/c/{config_hash}/invoke"),
    ]:
        assert expected in routes, expected
    # Exactly these are open, and the enumeration that the 401/403 tests walk leaves out nothing else.
    everything = all_routes(server.app)
    assert sorted(route for route, kind in everything.items() if kind == "open") == sorted(
        ("GET", path) for path in OPEN_PATHS
    )
    assert set(routes) == {route for route, kind in everything.items() if kind != "open"}


def test_every_route_declares_an_authentication_dependency(server):
    """A route without one of the auth dependencies would be open: each route must say who may call it."""
    undeclared = sorted(route for route, kind in app_routes(server.app).items() if kind is None)
    # Routes only in the OpenAPI schema map onto a declared route with a path converter, e.g. {model_id}.
    declared_paths = {re.sub(r":\w+\}", "}", path) for (_, path), kind in app_routes(server.app).items() if kind}
    assert [route for route in undeclared if route[1] not in declared_paths] == []


# ---------------------------------------------------------------------------------------------------------------
# 401 on every route


def _revoked_key(server) -> str:
    key = server.create_key("tests")
    with server.http(key=ADMIN_KEY) as admin:
        admin.post(f"/admin/keys/{key[:12]}/revoke").raise_for_status()
    return key


def _expired_key(server) -> str:
    """A key that lived for about 4 seconds: accepted at first, refused once it has expired."""
    key = server.create_key("tests", expires_in_days=0.00004)  # 3.456 s, rounded up to whole seconds
    with server.http(key=key) as client:
        assert client.get("/v1/models").status_code == 200
    expires_at = _key_row(server, key)["expires_at"]
    assert expires_at is not None
    time.sleep(max(expires_at - time.time(), 0) + 1.1)
    return key


CREDENTIALS = {
    "no key": lambda server: {},
    "basic scheme": lambda server: {"Authorization": "Basic dGVzdHM6c2VjcmV0"},
    "bearer without token": lambda server: {"Authorization": "Bearer"},
    "token without scheme": lambda server: {"Authorization": server.key},
    "unknown key": lambda server: {"Authorization": "Bearer sk-" + "x" * 43},
    "revoked key": lambda server: {"Authorization": f"Bearer {_revoked_key(server)}"},
    "expired key": lambda server: {"Authorization": f"Bearer {_expired_key(server)}"},
}


@pytest.mark.parametrize("credential", list(CREDENTIALS))
def test_every_route_is_401_without_a_valid_key(server, credential):
    headers = CREDENTIALS[credential](server)
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        failures = wrong_answers(client, app_routes(server.app), 401, "invalid_api_key", type="invalid_request_error")
    assert failures == []


def test_bearer_with_blank_token_is_401(server):
    """``Authorization: Bearer `` (nothing after the scheme), sent raw: httpx refuses trailing blanks."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer    \r\nConnection: close\r\n\r\n"
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    assert b" 401 " in status_line + b" ", raw[:300]
    assert b'"invalid_api_key"' in rest


def test_401_message_redacts_the_key(server):
    unknown = "sk-" + "q" * 40 + "WXYZ"
    with server.http(key=unknown) as client:
        error = assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
    assert unknown not in error["message"]
    assert "WXYZ" in error["message"]


def test_open_routes_need_no_key(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/").status_code == 200


def test_unknown_urls_are_404_not_401(server):
    """An unknown URL is not a route: OpenAI's 404 shape, with or without a key."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert_error(client.get("/v1/nothing-here"), 404, code="unknown_url")


def test_malformed_body_without_a_key_is_401(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    assert_error(response, 401, code="invalid_api_key")


# ---------------------------------------------------------------------------------------------------------------
# The openai SDK sees the same errors


def test_openai_sdk_raises_authentication_error(server):
    for key in ["sk-" + "x" * 43, _revoked_key(server)]:
        client = server.openai(key=key)
        with pytest.raises(openai.AuthenticationError) as raised:
            client.chat.completions.create(model="gemma-3-270m", messages=[USER], max_tokens=4)
        assert raised.value.status_code == 401
        assert raised.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        with pytest.raises(openai.AuthenticationError):
            client.models.retrieve("gemma-3-270m")


def test_openai_sdk_raises_permission_denied_for_the_admin_key(server):
    client = server.openai(key=ADMIN_KEY)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        client.chat.completions.create(model="gemma-3-270m", messages=[USER], max_tokens=4)
    assert raised.value.status_code == 403
    assert raised.value.code == "permission_denied"
    # Listing models is for any key; the admin key sees every route, and the embedding model.
    assert [m.id for m in client.models.list()] == ["gemma-3-270m", "all-MiniLM-L6-v2"]


# ---------------------------------------------------------------------------------------------------------------
# 403: the wrong kind of key


def test_admin_key_is_403_on_every_app_route(server):
    routes = [route for route, kind in app_routes(server.app).items() if kind == "app"]
    assert ("POST", "/v1/chat/completions") in routes and ("POST", "/chat/invoke") in routes
    assert ("GET", "/v1/conversations/{conversation_id}") in routes
    with server.http(key=ADMIN_KEY) as admin:
        assert wrong_answers(admin, routes, 403, "permission_denied") == []


def test_app_key_is_403_on_every_admin_route(server):
    routes = [route for route, kind in app_routes(server.app).items() if kind == "admin"]
    assert {path for _, path in routes} >= {"/admin/apps", "/admin/apps/{app}", "/admin/keys", "/admin/keys/{key}"}
    assert all(path.startswith("/admin/") for _, path in routes)
    with server.http() as app_client:
        assert wrong_answers(app_client, routes, 403, "permission_denied") == []
        # An app key cannot mint itself a new key or lift its limits.
        assert_error(app_client.post("/admin/keys", json={"app": "tests"}), 403)
        assert_error(app_client.patch(f"/admin/keys/{server.key[:12]}", json={"rpm": 10_000}), 403)
    with server.http(key=ADMIN_KEY) as admin:
        assert len(admin.get("/admin/keys", params={"app": "tests"}).json()["data"]) == 1


def test_any_key_routes_take_both_kinds_of_key(server):
    routes = sorted(route for route, kind in app_routes(server.app).items() if kind == "any")
    assert ("GET", "/v1/models") in routes and ("GET", "/v1/usage") in routes
    for key in (server.key, ADMIN_KEY):
        with server.http(key=key) as client:
            for method, path in routes:
                assert call(client, method, path).status_code == 200, (key[:12], method, path)


# ---------------------------------------------------------------------------------------------------------------
# Keys: hashed at rest, revocable at once, expiring


def _key_row(server, secret: str) -> dict:
    rows = [row for row in server.rows(ApiKey.__table__) if row["prefix"] == secret[:12]]
    assert len(rows) == 1
    return rows[0]


def test_keys_are_stored_only_as_sha256_with_a_short_prefix(server):
    secret = server.create_key("tests", expires_in_days=30)
    with server.http(key=secret) as client:  # use it, so any log or cache that could keep it has the chance
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/conversations").status_code == 200
    row = _key_row(server, secret)
    assert row["hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["prefix"] == secret[:12] and len(row["prefix"]) == 12
    assert not any(secret in str(value) for value in row.values())
    # No table holds the secret anywhere, nor any file the server wrote (database, WAL, logs).
    for table in Base.metadata.sorted_tables:
        for stored in server.rows(table):
            assert not any(secret in str(value) for value in stored.values()), table.name
    for path in Path(server.settings.data_dir).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert secret.encode() not in path.read_bytes(), path
    # The admin key from the settings is hashed the same way.
    admin_rows = [r for r in server.rows(ApiKey.__table__) if r["is_admin"]]
    assert [r["hash"] for r in admin_rows] == [hashlib.sha256(ADMIN_KEY.encode()).hexdigest()]


def test_revocation_takes_effect_immediately(server):
    key = server.create_key("tests")
    with server.http(key=key) as client:
        assert client.get("/v1/models").status_code == 200  # now resolved and cached by the server
        with server.http(key=ADMIN_KEY) as admin:
            revoked = admin.post(f"/admin/keys/{key[:12]}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
        assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
        assert_error(client.post("/v1/conversations", json={}), 401, code="invalid_api_key")
    # Other keys of the same app keep working.
    with server.http() as other:
        assert other.get("/v1/models").status_code == 200


def test_key_expires_after_its_lifetime(server):
    asked_at = time.time()
    key = server.create_key("tests", expires_in_days=0.00004)  # 3.456 s
    answered_at = time.time()
    with server.http(key=key) as client:
        assert client.get("/v1/models").status_code == 200
        expires_at = _key_row(server, key)["expires_at"]
        # At least the lifetime asked for (rounded up to a whole second), counted from the creation.
        assert asked_at + 3.456 <= expires_at <= answered_at + 3.456 + 1
        time.sleep(max(expires_at - time.time(), 0) + 1.1)
        assert_error(client.get("/v1/models"), 401, code="invalid_api_key")


def test_key_written_as_expired_is_refused(server):
    """A key whose expiry is in the past in the database is refused even when freshly resolved."""
    key = server.create_key("tests", expires_in_days=1)

    async def expire() -> None:
        db = Database(server.services.db.url)
        try:
            async with db.engine.begin() as conn:
                table = ApiKey.__table__
                await conn.execute(
                    update(table).where(table.c.prefix == key[:12]).values(expires_at=int(time.time()) - 5)
                )
        finally:
            await db.close()

    asyncio.run(expire())
    with server.http(key=key) as client:
        assert_error(client.get("/v1/models"), 401, code="invalid_api_key")


# ---------------------------------------------------------------------------------------------------------------
# LangServe: header or cookie


@pytest.mark.slow
def test_cookie_authenticates_langserve(server):
    with httpx.Client(base_url=server.url, timeout=60, cookies={KEY_COOKIE: server.key}) as browser:
        response = browser.post("/chat/invoke", json={"input": QUESTION})
        assert response.status_code == 200, response.text
        assert response.json()["output"]["content"]
        assert browser.get("/chat/playground/").status_code == 200
    with httpx.Client(base_url=server.url, timeout=60, cookies={KEY_COOKIE: "sk-" + "z" * 43}) as stranger:
        assert_error(stranger.post("/chat/invoke", json={"input": QUESTION}), 401, code="invalid_api_key")
    with httpx.Client(base_url=server.url, timeout=60, cookies={KEY_COOKIE: ADMIN_KEY}) as admin:
        assert_error(admin.post("/chat/invoke", json={"input": QUESTION}), 403, code="permission_denied")


def test_a_malformed_header_is_not_rescued_by_the_cookie(server):
    """The cookie stands in for a missing header only; a wrong header is still a 401."""
    with httpx.Client(base_url=server.url, timeout=30, cookies={KEY_COOKIE: server.key}) as client:
        response = client.post("/chat/invoke", json={"input": QUESTION}, headers={"Authorization": "Basic x"})
    assert_error(response, 401, code="invalid_api_key")


def test_admin_key_cannot_use_langserve(server):
    with server.http(key=ADMIN_KEY) as admin:
        assert_error(admin.post("/chat/invoke", json={"input": QUESTION}), 403, code="permission_denied")
        assert_error(admin.post("/chat/stream", json={"input": QUESTION}), 403, code="permission_denied")
