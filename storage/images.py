"""Generated images: a row in ``images`` and the PNG in an object store under the row's ``storage_key``
(``<app id>/<image id>.png``): by default files under ``<data dir>/images``, or objects in S3-compatible storage
when ``GENAI_IMAGE_STORE_URL`` names a bucket (``storage.object_store``); and the signed, expiring URLs that let a
browser fetch one without the app's key.

Every query is scoped to the caller's app: another app's image id is a 404, exactly like one that does not exist.
A request's images and its usage record are written in one transaction, after their PNGs are stored (on disk:
written to a temporary name and renamed); when storing or the transaction fails, the PNGs are removed again, so
no row ever names a PNG that was not stored. An object store that cannot be reached is a 503 naming the image store.
Deleting an image deletes its PNG, then its row: a store that is down leaves both (503), to be deleted again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, delete, insert, select

from errors import NotFound, PermissionDenied
from storage.engine import Database
from storage.object_store import DiskObjectStore, ObjectMissing, ObjectStore, StoreUnavailable
from storage.pagination import Cursor, Order, Page, fetch_page, new_id
from storage.tables import Image, now
from storage.transcripts import TurnRecord, usage_row

log = logging.getLogger(__name__)


def new_image_id() -> str:
    return new_id("img_")


@dataclass(frozen=True)
class NewImage:
    """An image to store: its PNG and how it was made."""

    png: bytes
    size: str
    revised_prompt: str | None = None


class ImageStore:
    """The rows of the ``images`` table, and their PNGs in ``objects`` (a directory, or an S3 bucket)."""

    def __init__(self, db: Database, objects: ObjectStore | Path) -> None:
        self.db = db
        self.objects = DiskObjectStore(objects) if isinstance(objects, Path) else objects

    async def save(
        self, images: Sequence[NewImage], *, app_id: str, user: str | None, model: str, prompt: str, usage: TurnRecord
    ) -> list[Image]:
        """Store a request's images and its usage record (``usage``, its ``images`` count set here) together."""
        stamp = now()
        rows = []
        for image in images:
            image_id = new_image_id()
            rows.append(
                Image(
                    id=image_id,
                    app_id=app_id,
                    user=user,
                    response_id=usage.response_id,
                    model=model,
                    prompt=prompt,
                    revised_prompt=image.revised_prompt,
                    size=image.size,
                    storage_key=f"{app_id}/{image_id}.png",
                    bytes=len(image.png),
                    created_at=stamp,
                )  # fmt: skip
            )
        # Each PNG's key once its upload has ended, with what went wrong (None: stored).
        outcomes: dict[str, BaseException | None] = {}
        # The uploads run to their end even when the request is cancelled, so that the clean-up comes after them.
        upload = asyncio.ensure_future(self._put_all(rows, [image.png for image in images], outcomes))
        try:
            await asyncio.shield(upload)
            usage.images = len(rows)

            def write(conn: Connection) -> None:
                if rows:
                    conn.execute(insert(Image), [_values(row) for row in rows])

            # Shared with the turns committed meanwhile; the usage record buffered once it is (storage/writer.py).
            await self.db.writer.commit(write, usage=usage_row(usage, stamp))
        except BaseException:
            await asyncio.shield(self._discard(upload, outcomes))
            raise
        return rows

    async def _put_all(self, rows: Sequence[Image], blobs: Sequence[bytes], outcomes: dict) -> None:
        """Every PNG, at once; the first failure once all are done (none still running for the clean-up to miss)."""

        async def put(key: str, data: bytes) -> None:
            try:
                await self.objects.put(key, data, content_type="image/png")
            except BaseException as exc:
                outcomes[key] = exc
                raise
            outcomes[key] = None

        results = await asyncio.gather(
            *(put(row.storage_key, data) for row, data in zip(rows, blobs, strict=True)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _discard(self, upload: asyncio.Future, outcomes: dict[str, BaseException | None]) -> None:
        """Remove what a failed ``save`` stored, once its uploads have ended. Not the PNGs the store itself failed
        to take (it is down: a delete would only wait for it again). A failure here is logged, not raised: the
        request's own error is what the client must see."""
        try:
            await upload
        except BaseException:
            pass
        for key, failure in outcomes.items():
            if isinstance(failure, StoreUnavailable):
                log.warning("the image store may keep %s, whose upload failed: %s", key, failure)
                continue
            try:
                await self.objects.delete(key)
            except Exception as exc:
                log.warning("could not remove %s from the image store after a failed save: %s", key, exc)

    async def get(self, app_id: str, image_id: str, *, param: str = "image_id") -> Image:
        async with self.db.session() as session:
            image = await session.scalar(select(Image).where(Image.id == image_id, Image.app_id == app_id))
        if image is None:
            raise NotFound(f"No image found with id '{image_id}'.", param=param)
        return image

    async def find(self, image_id: str) -> Image:
        """Any app's image (a signed URL names it); 404 when there is none."""
        async with self.db.session() as session:
            image = await session.get(Image, image_id)
        if image is None:
            raise NotFound(f"No image found with id '{image_id}'.", param="image_id")
        return image

    async def list(
        self,
        app_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Image]:
        cursor = None
        if after is not None or before is not None:
            anchor = await self.get(app_id, after or before or "", param="after" if after else "before")
            cursor = Cursor(anchor.created_at, anchor.id, before=after is None)
        query = select(Image).where(Image.app_id == app_id)
        async with self.db.session() as session:
            return await fetch_page(session, query, Image.created_at, Image.id, limit=limit, order=order, cursor=cursor)

    async def read(self, image: Image) -> bytes:
        try:
            return await self.objects.get(image.storage_key)
        except ObjectMissing:
            raise NotFound(f"The content of image {image.id} is gone (it was deleted).", param="image_id") from None

    async def delete(self, app_id: str, image_id: str) -> None:
        """Remove the PNG, then the row (an object store that is down leaves both: 503, and the image can be
        deleted again)."""
        image = await self.get(app_id, image_id)
        await self.objects.delete(image.storage_key)
        async with self.db.session() as session, session.begin():
            result = await session.execute(delete(Image).where(Image.id == image_id, Image.app_id == app_id))
        if result.rowcount == 0:  # deleted by a request running at the same time
            raise NotFound(f"No image found with id '{image_id}'.", param="image_id")


def _values(row: Image) -> dict:
    return {column.key: getattr(row, column.key) for column in Image.__table__.columns}


# ---------------------------------------------------------------- signed URLs


SECRET_FILE = "image_url_secret"


class SignedUrls:
    """Download URLs of images that work without a key until they expire: ``?expires=UNIX&signature=HEX``, the
    signature an HMAC-SHA256 of ``"<image id>:<expires>"`` under the deployment's secret.

    Expiry times are rounded up to the next whole minute, so the URL of an image stays the same for a minute
    and a browser's cache can serve a gallery that is listed again.
    """

    def __init__(self, secret: bytes, ttl_seconds: int = 3600) -> None:
        self.secret = secret
        self.ttl_seconds = ttl_seconds

    @classmethod
    def in_data_dir(cls, data_dir: Path, secret: str | None, ttl_seconds: int) -> SignedUrls:
        """With ``secret`` when set; else the random one in ``data_dir`` (made by the first worker to need it, so
        every worker and replica sharing the data directory signs alike)."""
        return cls(secret.encode() if secret else _shared_secret(data_dir / SECRET_FILE), ttl_seconds)

    def signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self.secret, f"{image_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, image_id: str, moment: float | None = None) -> str:
        expires = math.ceil(((moment or time.time()) + self.ttl_seconds) / 60) * 60
        return f"expires={expires}&signature={self.signature(image_id, expires)}"

    def url(self, base_url: str, image_id: str) -> str:
        return f"{base_url.rstrip('/')}/v1/images/{image_id}/content?{self.query(image_id)}"

    def verify(self, image_id: str, expires: str | None, signature: str | None) -> int:
        """The expiry of a valid, unexpired signature; 403 naming what is wrong otherwise."""
        if not expires or not signature:
            raise PermissionDenied(
                "A signed image URL needs both `expires` and `signature`: use the URL the API returned.",
                param="signature",
                code="invalid_signature",
            )
        try:
            moment = int(expires)
        except ValueError:
            moment = -1
        expected = self.signature(image_id, moment)
        if moment < 0 or not hmac.compare_digest(expected, signature.lower()):
            raise PermissionDenied(
                "This image URL's signature is not valid: use the URL the API returned, unchanged.",
                param="signature",
                code="invalid_signature",
            )
        if moment <= time.time():
            raise PermissionDenied(
                "This image URL has expired: get a fresh one from GET /v1/images/{image_id}, or download the image "
                "with your API key.".replace("{image_id}", image_id),
                param="expires",
                code="url_expired",
            )
        return moment


def _shared_secret(path: Path) -> bytes:
    """The secret in ``path``, made (atomically: a link that fails when another process made it first) when absent."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    try:
        os.link(partial, path)
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
    return path.read_bytes().strip()
