"""Render a slide's small pictures: the thumbnail shown in case lists and the label image (patient identifiers)."""

from __future__ import annotations

import io
from pathlib import Path

import openslide
from PIL import Image

from his.errors import N_, NotFound
from pathology.tiles import TileServer

THUMBNAIL_SIZE = (240, 240)
THUMBNAIL_LEVEL = -1
LABEL_LEVEL = -2


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def thumbnail(server: TileServer, slide_id: str, path: Path) -> bytes:
    """Return a JPEG thumbnail of the whole slide, kept in the tile cache.

    Raises NotFound when the slide's file cannot be opened or read.
    """
    key = (slide_id, THUMBNAIL_LEVEL, 0, 0)
    cached = server.tiles.get(key)
    if cached is not None:
        return cached
    handle = server.handle(slide_id, path)
    try:
        data = _jpeg(handle.slide.get_thumbnail(THUMBNAIL_SIZE))
    except openslide.OpenSlideError:
        raise NotFound(N_("The slide's file cannot be read."), code="SLIDE_FILE_UNREADABLE") from None
    server.tiles.put(key, data)
    return data


def label_image(server: TileServer, slide_id: str, path: Path) -> bytes:
    """Return the slide's label image as JPEG.

    Raises NotFound when the slide has no label image or cannot be read.
    """
    handle = server.handle(slide_id, path)
    try:
        image = handle.slide.associated_images.get("label")
    except openslide.OpenSlideError:
        image = None
    if image is None:
        raise NotFound(N_("This slide has no label image."), code="SLIDE_NO_LABEL")
    return _jpeg(image)


def has_label(server: TileServer, slide_id: str, path: Path) -> bool:
    """Tell whether the slide carries a label image. Raises NotFound when it cannot be opened."""
    return "label" in server.handle(slide_id, path).slide.associated_images
