"""Generated images: a row in ``images`` and the PNG under ``<data dir>/images/<app id>/<image id>.png``; and the
signed, expiring URLs that let a browser fetch one without the app's key.

Every query is scoped to the caller's app: another app's image id is a 404, exactly like one that does not exist.
A request's images and its usage record are written in one transaction, after their PNGs (written to a temporary
name and renamed); when the transaction fails, the PNGs are removed again.
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

from sqlalchemy import delete, insert, select

from errors import NotFound, PermissionDenied
from storage.engine import Database
from storage.pagination import Cursor, Order, Page, fetch_page, new_id
from storage.tables import Image, Usage, now
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
    def __init__(self, db: Database, root: Path) -> None:
        self.db = db
        self.root = root

    def path_of(self, image: Image) -> Path:
        return self.root / image.storage_key

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
        paths = [self.path_of(row) for row in rows]
        try:
            await asyncio.to_thread(_write_all, paths, [image.png for image in images])
            usage.images = len(rows)
            async with self.db.engine.begin() as conn:
                if rows:
                    await conn.execute(insert(Image), [_values(row) for row in rows])
                await conn.execute(insert(Usage).values(**usage_row(usage, stamp)))
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_unlink_all, paths))
            raise
        return rows

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
            return await asyncio.to_thread(self.path_of(image).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"The content of image {image.id} is gone (it was deleted).", param="image_id") from None

    async def delete(self, app_id: str, image_id: str) -> None:
        """Remove the row, then the PNG."""
        image = await self.get(app_id, image_id)
        async with self.db.session() as session, session.begin():
            result = await session.execute(delete(Image).where(Image.id == image_id, Image.app_id == app_id))
        if result.rowcount == 0:  # deleted by a request running at the same time
            raise NotFound(f"No image found with id '{image_id}'.", param="image_id")
        await asyncio.to_thread(_unlink_all, [self.path_of(image)])


def _values(row: Image) -> dict:
    return {column.key: getattr(row, column.key) for column in Image.__table__.columns}


def _write_all(paths: Sequence[Path], blobs: Sequence[bytes]) -> None:
    for path, data in zip(paths, blobs, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)


def _unlink_all(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".partial").unlink(missing_ok=True)


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
