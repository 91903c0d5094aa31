"""Images kept in S3-compatible object storage (``GENAI_IMAGE_STORE_URL=s3://bucket/prefix``), against a real S3 API
over HTTP: moto's standalone server on a free loopback port, which the tests stop, hang and start again. Images
come from the ``openai`` provider and the image server of tests/image_server.py; the platform is configured as for
MinIO (an endpoint URL, credentials from environment variables the settings name).

Generate (url and b64_json), download by signed URL and with the key (the bytes in the bucket), list, delete (the
object goes), another app's image; S3 down or hanging: 503 naming the image store on generate, download and delete,
with a usage record and no rows; /readyz; recovery after a restart; a transaction that fails removes its objects."""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select, text

from chains.local_model_process import free_port
from chains.model_routes import ModelRoute
from server.settings import Settings
from storage import Database, TurnRecord
from storage.images import ImageStore, NewImage
from storage.object_store import S3ObjectStore, StoreUnavailable
from storage.tables import Image, Usage
from tests.image_server import image_route, serve_image_server
from tests.test_errors import assert_error

BUCKET = "genai-images"
PREFIX = "tenants/images"
KEY_ENV, SECRET_ENV = "GENAI_TEST_S3_ACCESS_KEY", "GENAI_TEST_S3_SECRET"


class S3Server:
    """moto's S3 server on a fixed loopback port: ``stop`` (connections refused), ``hang`` (connections accepted,
    never answered), ``start`` again (moto keeps its buckets in this process, so they come back)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.moto: ThreadedMotoServer | None = None
        self.silent: socket.socket | None = None
        self.client = boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
        )

    def start(self) -> None:
        if self.silent is not None:
            self.stop()
        if self.moto is None:
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.moto.start()

    def hang(self) -> None:
        """Stop answering, the port still open: a socket that listens and never accepts (the kernel completes the
        connections), so requests wait for their read timeout."""
        self.stop()
        self.silent = socket.create_server(("127.0.0.1", self.port))

    def stop(self) -> None:
        if self.moto is not None:
            self.moto.stop()  # werkzeug closes the listening socket; moto answers each request on its own connection
            self.moto = None
        if self.silent is not None:
            self.silent.close()
            self.silent = None

    def objects(self) -> dict[str, bytes]:
        listed = self.client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        return {item["Key"]: self.client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listed}

    def clear(self) -> None:
        for key in self.objects():
            self.client.delete_object(Bucket=BUCKET, Key=key)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    server = S3Server()
    server.start()
    server.client.create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def image_upstream():
    with serve_image_server() as base_url:
        yield base_url


@pytest.fixture(autouse=True)
def _fresh(s3, image_upstream, monkeypatch):
    s3.start()
    s3.clear()
    image_upstream.control.mode = "ok"
    image_upstream.control.requests.clear()
    monkeypatch.setenv(KEY_ENV, "minio-user")
    monkeypatch.setenv(SECRET_ENV, "minio-secret")


def s3_settings(s3: S3Server, **overrides) -> dict:
    return {
        "image_store_url": f"s3://{BUCKET}/{PREFIX}/",
        "s3_endpoint_url": s3.url,
        "s3_region": "us-east-1",
        "s3_access_key_id_env": KEY_ENV,
        "s3_secret_access_key_env": SECRET_ENV,
        "s3_connect_timeout_seconds": 1.0,
        "s3_read_timeout_seconds": 1.0,
        "s3_max_attempts": 2,
        **overrides,
    }


@pytest.fixture
def s3_server(live_server, mock_upstream, image_upstream, s3):
    routes = [ModelRoute(name="mock", base_url=mock_upstream, max_retries=0), image_route("dall-e-3", image_upstream)]
    return live_server(model_routes=routes, **s3_settings(s3))


def generate(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/images/generations", json={"prompt": "A red fox in the snow", **body})


def object_key(server, image_id: str) -> str:
    [row] = [row for row in server.rows(Image.__table__) if row["id"] == image_id]
    assert row["storage_key"] == f"{row['app_id']}/{image_id}.png"  # the same key as on disk, under the prefix
    return f"{PREFIX}/{row['storage_key']}"


# ---------------------------------------------------------------- the round trip


def test_generate_download_list_delete(s3_server, s3):
    client = s3_server.openai()
    [item] = client.images.generate(model="dall-e-3", prompt="A lighthouse", size="512x512").data
    image_id = item.model_extra["id"]
    stored = s3.objects()
    key = object_key(s3_server, image_id)
    assert list(stored) == [key]
    head = s3.client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(stored[key])
    # The URL is the platform's signed download route: it streams the object from the bucket.
    assert item.url.startswith(f"{s3_server.url}/v1/images/{image_id}/content?")
    signed = httpx.get(item.url)
    assert signed.status_code == 200 and signed.headers["content-type"] == "image/png"
    assert signed.content == stored[key]
    with s3_server.http() as http:
        assert http.get(f"/v1/images/{image_id}/content").content == stored[key]
        # b64_json: the same bytes as in the bucket.
        two = generate(http, n=2, response_format="b64_json").json()["data"]
        stored = s3.objects()
        assert len(stored) == 3
        for made in two:
            assert base64.b64decode(made["b64_json"]) == stored[object_key(s3_server, made["id"])]
        # An object removed behind the platform's back: its content is gone (404), as a file on disk would be.
        s3.client.delete_object(Bucket=BUCKET, Key=object_key(s3_server, two[1]["id"]))
        assert "is gone" in assert_error(http.get(f"/v1/images/{two[1]['id']}/content"), 404)["message"]
        # Nothing on disk.
        assert not list((s3_server.settings.data_dir / "images").rglob("*.png"))
        # List, newest first, with fresh signed URLs that work.
        page = http.get("/v1/images").json()
        assert [image["id"] for image in page["data"]][-1] == image_id and len(page["data"]) == 3
        assert httpx.get(page["data"][-1]["url"]).content == signed.content
        # Delete: the row and the object go; its links are 404.
        assert http.delete(f"/v1/images/{image_id}").json()["deleted"] is True
        assert key not in s3.objects() and len(s3.objects()) == 1
        assert_error(http.get(f"/v1/images/{image_id}/content"), 404)
        assert_error(httpx.get(item.url), 404)
        assert_error(http.delete(f"/v1/images/{image_id}"), 404)
        assert len(http.get("/v1/images").json()["data"]) == 2
        # /readyz asks the bucket.
        assert http.get("/readyz").json()["checks"]["image_store"] == "ok"
    records = sorted(s3_server.rows(Usage.__table__), key=lambda row: row["id"])
    assert [(r["status"], r["images"]) for r in records] == [("ok", 1), ("ok", 2)]


def test_another_apps_image_is_404(s3_server, s3):
    with s3_server.http() as http:
        image_id = generate(http).json()["data"][0]["id"]
    with s3_server.http(key=s3_server.create_key("other")) as other:
        assert other.get("/v1/images").json()["data"] == []
        assert_error(other.get(f"/v1/images/{image_id}"), 404)
        assert_error(other.get(f"/v1/images/{image_id}/content"), 404)
        assert_error(other.delete(f"/v1/images/{image_id}"), 404)
    assert list(s3.objects()) == [object_key(s3_server, image_id)]  # still there


# ---------------------------------------------------------------- S3 down


def test_s3_down_then_back(s3_server, s3):
    with s3_server.http() as http:
        made = generate(http).json()["data"][0]
        s3.stop()
        started = time.monotonic()
        error = assert_error(generate(http), 503, code="service_unavailable")
        assert time.monotonic() - started < 5
        assert "image store" in error["message"] and "could not be stored" in error["message"]
        assert s3.url not in error["message"] and BUCKET not in error["message"]  # nothing of the configuration
        # Downloads (with the key, and signed) and deletes: 503 too; the image is still listed.
        error = assert_error(http.get(f"/v1/images/{made['id']}/content"), 503, code="service_unavailable")
        assert "image store" in error["message"] and "could not be read" in error["message"]
        assert_error(httpx.get(made["url"]), 503, code="service_unavailable")
        assert_error(http.delete(f"/v1/images/{made['id']}"), 503, code="service_unavailable")
        assert [image["id"] for image in http.get("/v1/images").json()["data"]] == [made["id"]]
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["image_store"].startswith("StoreUnavailable:")
        # The failed request has its usage record; no image row.
        records = sorted(s3_server.rows(Usage.__table__), key=lambda row: row["id"])
        assert [(r["status"], r["images"], r["model"]) for r in records] == [
            ("ok", 1, "dall-e-3"),
            ("service_unavailable", 0, "dall-e-3"),
        ]
        assert [row["id"] for row in s3_server.rows(Image.__table__)] == [made["id"]]
        metrics = httpx.get(f"{s3_server.url}/metrics").text
        assert 'genai_image_errors_total{code="service_unavailable",model="dall-e-3"} 1.0' in metrics
        # Back: everything works again, with the same client and the same server.
        s3.start()
        assert http.get("/readyz").json()["checks"]["image_store"] == "ok"
        first = http.get(f"/v1/images/{made['id']}/content")
        assert first.status_code == 200 and first.content == s3.objects()[object_key(s3_server, made["id"])]
        again = generate(http, response_format="b64_json").json()["data"][0]
        assert base64.b64decode(again["b64_json"]) == s3.objects()[object_key(s3_server, again["id"])]
        assert http.delete(f"/v1/images/{made['id']}").status_code == 200
    assert list(s3.objects()) == [object_key(s3_server, again["id"])]


def test_s3_that_hangs(s3_server, s3):
    """An endpoint that takes connections and never answers: 503 once the read timeout and retries are spent."""
    with s3_server.http() as http:
        s3.hang()
        try:
            started = time.monotonic()
            error = assert_error(generate(http), 503, code="service_unavailable")
            assert "image store" in error["message"] and "ReadTimeoutError" in error["message"]
            # 2 attempts, each up to 1 s for a "100 Continue" then the 1 s read timeout, and a backoff below 1 s.
            assert time.monotonic() - started < 8
            assert_error(http.get("/v1/images", params={"limit": 0}), 400)  # the rest of the API answers meanwhile
            ready = http.get("/readyz").json()["checks"]["image_store"]
            assert ready.startswith("StoreUnavailable:") and BUCKET in ready
        finally:
            s3.start()
        assert generate(http).status_code == 200
    assert [row["status"] for row in sorted(s3_server.rows(Usage.__table__), key=lambda row: row["id"])] == [
        "service_unavailable",
        "ok",
    ]


async def test_a_failed_transaction_removes_its_objects(tmp_path, s3):
    """Upload first, then the rows: when the rows cannot be written, the objects go again (no orphans either way)."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'genai.db'}")
    await db.upgrade_schema()
    objects = S3ObjectStore(
        BUCKET, "orphans", endpoint_url=s3.url, region="us-east-1", access_key_id="a", secret_access_key="b"
    )
    store = ImageStore(db, objects)
    usage = TurnRecord(
        response_id="imggen-1", app_id="app", key_prefix=None, user=None, model="m",
        prompt_tokens=0, completion_tokens=0, latency_ms=1.0,
    )  # fmt: skip
    try:
        [row] = await store.save([NewImage(b"png", "1x1")], app_id="app", user=None, model="m", prompt="p", usage=usage)
        assert await store.read(row) == b"png" and s3.objects() == {f"orphans/app/{row.id}.png": b"png"}
        async with db.engine.begin() as conn:  # the next transaction fails, at its image rows
            await conn.execute(text("ALTER TABLE images RENAME TO images_away"))
        with pytest.raises(Exception) as failed:
            await store.save(
                [NewImage(b"a", "1x1"), NewImage(b"b", "1x1")], app_id="app", user=None, model="m", prompt="p",
                usage=usage,
            )  # fmt: skip
        assert "images" in str(failed.value) and not isinstance(failed.value, StoreUnavailable)
        assert s3.objects() == {f"orphans/app/{row.id}.png": b"png"}  # the two uploads went again
        async with db.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE images_away RENAME TO images"))
        async with db.session() as session:  # and their rows were never written
            assert (await session.scalars(select(Image.id))).all() == [row.id]
    finally:
        await objects.aclose()
        await db.close()


# ---------------------------------------------------------------- settings


def test_settings(tmp_path, s3, monkeypatch):
    def settings(**values) -> Settings:
        return Settings(_env_file=None, data_dir=tmp_path, **values)

    assert settings().image_store_url is None  # the data directory, as before
    good = settings(**s3_settings(s3))
    assert good.s3_credentials() == ("minio-user", "minio-secret")
    store = S3ObjectStore(
        BUCKET, "a/b/", endpoint_url=s3.url, access_key_id="minio-user", secret_access_key="minio-secret"
    )
    assert store.key("app/img.png") == "a/b/app/img.png"
    assert store.description == f"s3://{BUCKET}/a/b at {s3.url}"  # for logs: no credentials
    for bad, message in [
        ({"image_store_url": "https://bucket/x"}, "s3://BUCKET"),
        ({"image_store_url": "s3://"}, "s3://BUCKET"),
        ({"image_store_url": "s3://key:secret@bucket/x"}, "no credentials"),
        ({"s3_endpoint_url": "minio:9000"}, "http(s) URL"),
        ({"s3_endpoint_url": "http://user:pw@minio:9000"}, "takes no credentials"),
        ({"s3_access_key_id_env": KEY_ENV, "s3_secret_access_key_env": None}, "set both or neither"),
        ({"s3_secret_access_key_env": "GENAI_TEST_S3_NOT_SET"}, "GENAI_TEST_S3_NOT_SET"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            settings(**{**s3_settings(s3), **bad})
    assert "minio-secret" not in repr(good)  # the settings name the variables, they do not hold the secret
