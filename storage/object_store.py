"""Where the platform keeps blobs (generated images): one small interface, ``put``, ``get`` and ``delete`` bytes by
key (and ``check`` for readiness), with two implementations: a directory on disk (``<data dir>/images``, the
default) and a bucket of S3-compatible object storage (AWS S3, MinIO, Ceph, Cloudflare R2, ...) through boto3.

A key is a relative path (``<app id>/<image id>.png``): a file under the directory, an object under the bucket's
prefix. A key that is not there raises ``ObjectMissing``; an object store that cannot be reached, or that refuses
(credentials, a missing bucket), raises ``StoreUnavailable``, a 503 that names the image store and nothing of its
configuration (the details go to the log).

boto3 is an optional extra (``pip install 'genai-platform[s3]'``), imported only when S3 is configured. Its calls
block, so each runs in a thread (``asyncio.to_thread``) on one shared client (boto3 clients are thread-safe), with
the timeouts and retries of the settings.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from errors import ServiceUnavailable

log = logging.getLogger(__name__)

AddressingStyle = Literal["auto", "path", "virtual"]


class ObjectMissing(KeyError):
    """The key is not in the store (never written, or deleted)."""


class StoreUnavailable(ServiceUnavailable):
    """The object store cannot be reached or refused the operation: a 503 naming the image store."""


class ObjectStore:
    """Bytes by key. ``put`` replaces, ``delete`` of a missing key is not an error."""

    # What the store is, for logs and readiness (never shown to API clients, never with credentials).
    description: str = "object store"

    async def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        raise NotImplementedError

    async def get(self, key: str) -> bytes:
        raise NotImplementedError

    async def delete(self, key: str) -> None:
        raise NotImplementedError

    async def check(self) -> None:
        """Raise when the store does not answer (``/readyz``)."""

    async def aclose(self) -> None:
        pass


class DiskObjectStore(ObjectStore):
    """Files under ``root``: written to ``<name>.partial`` and renamed, so a reader never sees half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"directory {root}"

    def path(self, key: str) -> Path:
        return self.root / key

    async def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        try:
            await asyncio.to_thread(_write, self.path(key), data)
        except OSError as exc:  # a full disk, a read-only volume: the request fails with a 503, not a 500
            log.warning("cannot write %s to the image store (%s): %s", key, self.description, exc)
            raise StoreUnavailable(
                "The image store (the data directory) cannot take the image right now; try again later."
            ) from exc

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(_unlink, self.path(key))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".partial").unlink(missing_ok=True)


# ---------------------------------------------------------------- S3-compatible object storage


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"expected s3://BUCKET or s3://BUCKET/PREFIX, not {url!r}")
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise ValueError(
            "s3://BUCKET/PREFIX takes no credentials, port, query or fragment (see GENAI_S3_ENDPOINT_URL and the "
            "GENAI_S3_*_ENV settings)"
        )
    return parts.netloc, parts.path.strip("/")


# What an API client is told the operation was, by the boto3 call.
_ACTIONS = {"put_object": "stored", "get_object": "read", "delete_object": "deleted"}
# Error codes of get_object for a key that is not there.
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3ObjectStore(ObjectStore):
    """Objects under ``prefix`` in ``bucket``, with one boto3 client shared by every request."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: AddressingStyle = "auto",
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # the settings check this first; a clear message all the same
            raise RuntimeError(
                "GENAI_IMAGE_STORE_URL names S3, which needs boto3: pip install 'genai-platform[s3]'"
            ) from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        where = f" at {endpoint_url}" if endpoint_url else ""
        self.description = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "") + where
        if addressing_style == "auto" and endpoint_url:
            addressing_style = "path"  # MinIO, Ceph and friends: bucket.host rarely resolves
        # No region anywhere (argument, AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config): us-east-1, as the AWS CLI.
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        self.client: Any = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=session.region_name or "us-east-1",
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": addressing_style},
                max_pool_connections=32,
            ),
        )

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        await self._call("put_object", key, Body=data, ContentType=content_type)

    async def get(self, key: str) -> bytes:
        return await self._call("get_object", key)

    async def delete(self, key: str) -> None:
        await self._call("delete_object", key)

    async def check(self, timeout: float = 5.0) -> None:
        """``head_bucket``, within ``timeout`` seconds (retries included); raises naming the bucket and the reason."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self._head_bucket), timeout)
        except TimeoutError:
            raise StoreUnavailable(f"bucket {self.bucket!r}: no answer within {timeout:g} s") from None

    def _head_bucket(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "")) or type(exc).__name__
            log.warning("image store %s: head_bucket failed: %s", self.description, exc)
            raise StoreUnavailable(f"bucket {self.bucket!r}: {code}") from exc
        except (BotoCoreError, OSError) as exc:
            log.warning("image store %s: head_bucket failed: %s", self.description, exc)
            raise StoreUnavailable(f"bucket {self.bucket!r}: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        self.client.close()

    async def _call(self, operation: str, key: str, **arguments: Any) -> Any:
        return await asyncio.to_thread(self._call_sync, operation, key, arguments)

    def _call_sync(self, operation: str, key: str, arguments: dict[str, Any]) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = getattr(self.client, operation)(Bucket=self.bucket, Key=self.key(key), **arguments)
            if operation == "get_object":
                with response["Body"] as body:
                    return body.read()
            return response
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if operation == "get_object" and code in _MISSING:
                raise ObjectMissing(key) from None
            raise self._unavailable(operation, key, code or type(exc).__name__, exc) from exc
        except (BotoCoreError, OSError) as exc:  # connect/read timeouts, refused connections, no credentials, ...
            raise self._unavailable(operation, key, type(exc).__name__, exc) from exc

    def _unavailable(self, operation: str, key: str, reason: str, exc: BaseException) -> StoreUnavailable:
        log.warning("image store %s: %s of %s failed: %s", self.description, operation, self.key(key), exc)
        return StoreUnavailable(
            f"The image store (S3-compatible object storage) is unavailable: the image could not be "
            f"{_ACTIONS.get(operation, operation)} ({reason}). Try again shortly."
        )
