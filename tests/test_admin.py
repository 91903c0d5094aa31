"""The admin API: /admin/apps and /admin/keys (admin key only), in OpenAI's error shape."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_KEY
from tests.test_errors import assert_error


@pytest.fixture
def admin(server):
    with server.http(key=ADMIN_KEY) as client:
        yield client


# ---------------------------------------------------------------------------------------------------------------
# Apps


def test_create_list_get_and_patch_an_app(admin):
    created = admin.post(
        "/admin/apps",
        json={
            "name": "billing", "system_prompt": "Be brief.", "allowed_models": ["gemma-3-270m"], "rpm": 60, "tpm": 5000,
        },
    )
    assert created.status_code == 200, created.text
    app = created.json()
    assert app["object"] == "app" and app["id"].startswith("app_")
    assert {k: app[k] for k in ("name", "system_prompt", "allowed_models", "rpm", "tpm")} == {
        "name": "billing",
        "system_prompt": "Be brief.",
        "allowed_models": ["gemma-3-270m"],
        "rpm": 60,
        "tpm": 5000,
    }
    assert isinstance(app["created_at"], int)

    listed = admin.get("/admin/apps").json()
    assert listed["object"] == "list"
    assert {"tests", "billing"} <= {a["name"] for a in listed["data"]}
    assert admin.get("/admin/apps/billing").json() == app
    assert admin.get(f"/admin/apps/{app['id']}").json() == app  # by id too

    patched = admin.patch("/admin/apps/billing", json={"rpm": 10, "allowed_models": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["rpm"] == 10
    assert patched.json()["allowed_models"] is None  # every route again
    assert patched.json()["tpm"] == 5000 and patched.json()["system_prompt"] == "Be brief."  # unset fields unchanged
    assert admin.get("/admin/apps/billing").json() == patched.json()


def test_app_defaults(admin):
    app = admin.post("/admin/apps", json={"name": "plain"}).json()
    assert app["allowed_models"] is None and app["rpm"] is None and app["tpm"] is None and app["system_prompt"] is None


def test_duplicate_app_name_is_409(admin):
    assert admin.post("/admin/apps", json={"name": "twice"}).status_code == 200
    error = assert_error(admin.post("/admin/apps", json={"name": "twice"}), 409, code="app_exists", param="name")
    assert "twice" in error["message"]
    assert [a["name"] for a in admin.get("/admin/apps").json()["data"]].count("twice") == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "has space"}, "name"),
        ({"name": "-leading-dash"}, "name"),
        ({"name": "slash/inside"}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"name": 42}, "name"),
        ({"name": "ok", "allowed_models": ["no-such-model"]}, "allowed_models"),
        ({"name": "ok", "allowed_models": "gemma-3-270m"}, "allowed_models"),
        ({"name": "ok", "rpm": -1}, "rpm"),
        ({"name": "ok", "rpm": 0}, "rpm"),
        ({"name": "ok", "tpm": -5}, "tpm"),
        ({"name": "ok", "rpm": "many"}, "rpm"),
        ({"name": "ok", "unknown_field": 1}, "unknown_field"),
    ],
)
def test_bad_app_bodies_are_400(admin, body, param):
    error = assert_error(admin.post("/admin/apps", json=body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert "ok" not in [a["name"] for a in admin.get("/admin/apps").json()["data"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"allowed_models": ["no-such-model"]}, "allowed_models"),
        ({"rpm": -1}, "rpm"),
        ({"tpm": 0}, "tpm"),
        ({"name": "renamed"}, "name"),  # names are fixed
    ],
)
def test_bad_app_patches_are_400(admin, body, param):
    before = admin.get("/admin/apps/tests").json()
    assert_error(admin.patch("/admin/apps/tests", json=body), 400, param=param)
    assert admin.get("/admin/apps/tests").json() == before


def test_unknown_app_is_404(admin):
    assert_error(admin.get("/admin/apps/nope"), 404, code="not_found", param="app")
    assert_error(admin.patch("/admin/apps/nope", json={"rpm": 5}), 404, code="not_found", param="app")
    assert_error(admin.post("/admin/keys", json={"app": "nope"}), 404, code="not_found", param="app")
    assert_error(admin.get("/admin/keys", params={"app": "nope"}), 404, code="not_found", param="app")


# ---------------------------------------------------------------------------------------------------------------
# Keys


def test_create_key_returns_the_secret_once(server, admin):
    body = {"app": "tests", "name": "ci", "rpm": 100, "tpm": 2000, "expires_in_days": 7}
    created = admin.post("/admin/keys", json=body)
    assert created.status_code == 200, created.text
    body = created.json()
    secret = body["key"]
    assert secret.startswith("sk-") and len(secret) >= 3 + 43
    assert body["prefix"] == secret[:12]
    assert body["object"] == "api_key" and body["id"].startswith("key_")
    assert {k: body[k] for k in ("name", "app", "admin", "rpm", "tpm", "revoked_at")} == {
        "name": "ci", "app": "tests", "admin": False, "rpm": 100, "tpm": 2000, "revoked_at": None,
    }
    # At least the lifetime asked for: created_at rounds down to the second, expires_at up.
    assert 7 * 86400 <= body["expires_at"] - body["created_at"] <= 7 * 86400 + 1
    # The secret works, and it is never shown again: not in the list, not by id, not in a patch or revoke.
    with server.http(key=secret) as client:
        assert client.get("/v1/models").status_code == 200
    listed = admin.get("/admin/keys")
    assert secret not in listed.text and "hash" not in listed.text
    patched = admin.patch(f"/admin/keys/{body['id']}", json={"rpm": 5})
    assert secret not in patched.text and "key" not in patched.json()
    revoked = admin.post(f"/admin/keys/{body['prefix']}/revoke")
    assert secret not in revoked.text and "key" not in revoked.json()


def test_every_key_is_different(admin):
    secrets = {admin.post("/admin/keys", json={"app": "tests"}).json()["key"] for _ in range(5)}
    assert len(secrets) == 5
    assert len({secret[:12] for secret in secrets}) == 5


def test_list_keys(server, admin):
    server.create_key("other-app")
    everything = admin.get("/admin/keys").json()
    assert everything["object"] == "list"
    apps = [k["app"] for k in everything["data"]]
    assert "tests" in apps and "other-app" in apps
    admin_keys = [k for k in everything["data"] if k["admin"]]
    assert len(admin_keys) == 1 and admin_keys[0]["app"] is None and admin_keys[0]["prefix"] == ADMIN_KEY[:12]
    for key in everything["data"]:
        assert set(key) >= {
            "id", "object", "prefix", "name", "app", "admin", "rpm", "tpm", "created_at", "expires_at", "revoked_at",
        }
        assert not set(key) & {"key", "hash", "secret"}
        assert len(key["prefix"]) == 12
    assert ADMIN_KEY not in str(everything) and server.key not in str(everything)
    only_tests = admin.get("/admin/keys", params={"app": "tests"}).json()["data"]
    assert [k["app"] for k in only_tests] == ["tests"]
    assert only_tests[0]["prefix"] == server.key[:12]


def test_patch_key_limits_take_effect(server, admin):
    key = server.create_key("tests")
    prefix = key[:12]
    with server.http(key=key) as client:
        assert client.get("/v1/models").status_code == 200
        patched = admin.patch(f"/admin/keys/{prefix}", json={"rpm": 1, "tpm": 500})
        assert patched.status_code == 200, patched.text
        assert (patched.json()["rpm"], patched.json()["tpm"], patched.json()["app"]) == (1, 500, "tests")
        listed = {k["prefix"]: k for k in admin.get("/admin/keys").json()["data"]}
        assert (listed[prefix]["rpm"], listed[prefix]["tpm"]) == (1, 500)
        assert client.get("/v1/models").status_code == 200
        assert_error(client.get("/v1/models"), 429, code="rate_limit_exceeded")
        # Lifting the limit again (null = the app's default, here none) takes effect at once too.
        assert admin.patch(f"/admin/keys/{prefix}", json={"rpm": None}).json()["rpm"] is None
        assert client.get("/v1/models").status_code == 200
    # Other keys of the app are not limited by this key's limit.
    with server.http() as other:
        assert all(other.get("/v1/models").status_code == 200 for _ in range(3))


def test_app_limits_apply_to_keys_without_their_own(server, admin):
    key = server.create_key("limited-app")
    own = server.create_key("limited-app", rpm=100)
    assert admin.patch("/admin/apps/limited-app", json={"rpm": 1}).status_code == 200
    with server.http(key=key) as client:
        assert client.get("/v1/models").status_code == 200
        assert_error(client.get("/v1/models"), 429, code="rate_limit_exceeded")
    with server.http(key=own) as client:
        assert all(client.get("/v1/models").status_code == 200 for _ in range(3))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": -1}, "rpm"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": "lots"}, "tpm"),
        ({"expires_in_days": 5}, "expires_in_days"),  # expiry is set at creation only
        ({"app": "other"}, "app"),
    ],
)
def test_bad_key_patches_are_400(server, admin, body, param):
    assert_error(admin.patch(f"/admin/keys/{server.key[:12]}", json=body), 400, param=param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "app"),
        ({"app": "tests", "rpm": -1}, "rpm"),
        ({"app": "tests", "tpm": 0}, "tpm"),
        ({"app": "tests", "expires_in_days": 0}, "expires_in_days"),
        ({"app": "tests", "expires_in_days": -1}, "expires_in_days"),
        ({"app": "tests", "admin": True}, "admin"),  # admin keys come from the settings / CLI, not the API
        ({"app": "tests", "key": "sk-chosen-by-the-client-0000000000000000000"}, "key"),
    ],
)
def test_bad_key_bodies_are_400(admin, body, param):
    count = len(admin.get("/admin/keys").json()["data"])
    assert_error(admin.post("/admin/keys", json=body), 400, param=param)
    assert len(admin.get("/admin/keys").json()["data"]) == count


def test_revoke_key(server, admin):
    key = server.create_key("tests")
    keys = {k["prefix"]: k for k in admin.get("/admin/keys").json()["data"]}
    by_id = keys[key[:12]]["id"]
    revoked = admin.post(f"/admin/keys/{by_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    body = revoked.json()
    assert body["revoked_at"] is not None and body["prefix"] == key[:12] and body["app"] == "tests"
    with server.http(key=key) as client:
        assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
    # Revoking again is harmless and keeps the first revocation time; the list shows it revoked.
    again = admin.post(f"/admin/keys/{key[:12]}/revoke").json()
    assert again["revoked_at"] == body["revoked_at"]
    listed = {k["prefix"]: k for k in admin.get("/admin/keys").json()["data"]}
    assert listed[key[:12]]["revoked_at"] == body["revoked_at"]
    assert listed[server.key[:12]]["revoked_at"] is None


def test_unknown_key_is_404(admin):
    assert_error(admin.patch("/admin/keys/sk-nothing00", json={"rpm": 5}), 404, code="not_found", param="key")
    assert_error(admin.post("/admin/keys/key_0000000000000000/revoke"), 404, code="not_found", param="key")
    # A key is found by its prefix or id, never by its secret.
    assert_error(admin.post(f"/admin/keys/{ADMIN_KEY}/revoke"), 404, code="not_found")


def test_key_by_app_id_reports_the_app_name(admin):
    app_id = admin.get("/admin/apps/tests").json()["id"]
    created = admin.post("/admin/keys", json={"app": app_id}).json()
    assert created["app"] == "tests"
