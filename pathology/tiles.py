"""Serve Deep Zoom tiles of stored slides: the slide's own JPEG tiles where they fit, rendered ones otherwise.

Open slides are kept in a bounded LRU behind a lock (opening a slide reads its whole
directory structure, so it must not happen per tile) and share one bounded OpenSlide
cache; rendered tiles are kept in a bounded cache measured in bytes. All are shared by
the threads of one process. Tiles that must be rendered are rendered by a small pool of
lower-priority threads, so that the request threads sending stored or cached tiles are
never queued behind a render, and a tile several viewers ask for at once is rendered once.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import openslide
from flask import Flask, current_app
from openslide.deepzoom import DeepZoomGenerator

from his.errors import N_, NotFound
from pathology.store import slide_store
from pathology.tiff import (
    COMPRESSION_JPEG,
    PHOTOMETRIC_RGB,
    PHOTOMETRIC_YCBCR,
    TAG_COMPRESSION,
    TAG_PHOTOMETRIC,
    TAG_PLANAR_CONFIG,
    TAG_SAMPLES_PER_PIXEL,
    TAG_TILE_BYTE_COUNTS,
    TAG_TILE_OFFSETS,
    TiffStructureError,
    is_tiff_header,
    read_structure,
)

TILE_FORMAT_VERSION = 1
RENDERED_TILE_SIZE = 254
RENDERED_OVERLAP = 1
DEFAULT_OPEN_SLIDES = 16
DEFAULT_TILE_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_TILE_QUALITY = 85
DEFAULT_OPENSLIDE_CACHE_BYTES = 32 * 1024 * 1024
# What one cached tile costs beyond its bytes: the key, the bytes object and the LRU's node.
TILE_ENTRY_OVERHEAD = 256
# Render threads run this much nicer than request threads (Linux applies it per thread).
RENDER_NICENESS = 5
TileSource = Literal["native", "cache", "rendered"]
# An Adobe APP14 segment saying "no colour transform": JPEG tiles stored as RGB (Aperio)
# would otherwise be read by browsers as YCbCr and shown in false colours.
ADOBE_RGB_MARKER = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class TileNotFound(NotFound):
    code = "TILE_NOT_FOUND"
    message = N_("There is no such tile in this slide.")


@dataclass(frozen=True)
class NativeLevel:
    """Where the tiles of one Deep Zoom level are stored as JPEG in the slide file."""

    offsets: tuple[int, ...]
    byte_counts: tuple[int, ...]
    tiles_across: int
    full_cols: int
    full_rows: int
    prefix: bytes


@dataclass
class SlideHandle:
    """An open slide with its Deep Zoom geometry and, where usable, its native JPEG tiles."""

    slide: openslide.OpenSlide
    deepzoom: DeepZoomGenerator
    tile_size: int
    overlap: int
    native: dict[int, NativeLevel] = field(default_factory=dict)
    file_descriptor: int | None = None

    def native_tile(self, level: int, col: int, row: int) -> bytes | None:
        """Return the stored JPEG of a tile when it has exactly the requested geometry."""
        native = self.native.get(level)
        if native is None or self.file_descriptor is None:
            return None
        if col >= native.full_cols or row >= native.full_rows:
            return None
        index = row * native.tiles_across + col
        length = native.byte_counts[index]
        if length < 4:
            return None
        data = os.pread(self.file_descriptor, length, native.offsets[index])
        if len(data) != length or data[:2] != b"\xff\xd8":
            return None
        return native.prefix + data[2:]


def deepzoom_geometry(slide: openslide.OpenSlide) -> tuple[int, int, bool]:
    """Choose the tile size, overlap and bounds: the slide's own square tiles when they are a sensible size."""
    props = slide.properties
    width = props.get("openslide.level[0].tile-width")
    height = props.get("openslide.level[0].tile-height")
    has_bounds = openslide.PROPERTY_NAME_BOUNDS_WIDTH in props
    if width and width == height and 128 <= int(width) <= 1024 and not has_bounds:
        return int(width), 0, False
    return RENDERED_TILE_SIZE, RENDERED_OVERLAP, True


def open_handle(path: Path, cache: openslide.OpenSlideCache | None = None) -> SlideHandle:
    """Open a stored slide for tile serving, its decoded regions kept in ``cache`` when given.

    Raises NotFound when the file is missing or OpenSlide can no longer open it.
    """
    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError):
        raise NotFound(N_("The slide's file cannot be opened."), code="SLIDE_FILE_UNREADABLE") from None
    if cache is not None:
        # One cache for every open slide: each slide's own would add 32 MiB per slide.
        slide.set_cache(cache)
    tile_size, overlap, limit_bounds = deepzoom_geometry(slide)
    deepzoom = DeepZoomGenerator(slide, tile_size=tile_size, overlap=overlap, limit_bounds=limit_bounds)
    handle = SlideHandle(slide=slide, deepzoom=deepzoom, tile_size=tile_size, overlap=overlap)
    if overlap == 0 and not limit_bounds:
        _attach_native_tiles(handle, path)
    return handle


def _attach_native_tiles(handle: SlideHandle, path: Path) -> None:
    """Find the Deep Zoom levels whose tiles the slide stores as JPEG with the same geometry."""
    with path.open("rb") as probe:
        if not is_tiff_header(probe.read(4)):
            return
    try:
        structure = read_structure(path)
    except TiffStructureError:
        return
    slide, deepzoom, size = handle.slide, handle.deepzoom, handle.tile_size
    top = deepzoom.level_count - 1
    for dz_level in range(deepzoom.level_count):
        factor = 2 ** (top - dz_level)
        dz_width, dz_height = deepzoom.level_dimensions[dz_level]
        for level, (width, height) in enumerate(slide.level_dimensions):
            if (width, height) != (dz_width, dz_height) or abs(
                slide.level_downsamples[level] - factor
            ) > 1e-6:
                continue
            directory = next(
                (d for d in structure.directories if d.is_tiled and (d.width, d.height) == (width, height)),
                None,
            )
            if directory is None or directory.tile_size != (size, size):
                continue
            photometric = directory.first(TAG_PHOTOMETRIC)
            if (
                directory.first(TAG_COMPRESSION) != COMPRESSION_JPEG
                or photometric not in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR)
                or directory.first(TAG_SAMPLES_PER_PIXEL, 1) != 3
                or directory.first(TAG_PLANAR_CONFIG, 1) != 1
            ):
                continue
            tiles_across = math.ceil(width / size)
            offsets, counts = directory.ints(TAG_TILE_OFFSETS), directory.ints(TAG_TILE_BYTE_COUNTS)
            if len(offsets) != tiles_across * math.ceil(height / size) or len(counts) != len(offsets):
                continue
            prefix = b"\xff\xd8"
            if photometric == PHOTOMETRIC_RGB:
                prefix += ADOBE_RGB_MARKER
            tables = directory.jpeg_tables
            if tables and tables.startswith(b"\xff\xd8") and tables.endswith(b"\xff\xd9"):
                prefix += tables[2:-2]
            handle.native[dz_level] = NativeLevel(
                offsets=offsets,
                byte_counts=counts,
                tiles_across=tiles_across,
                full_cols=width // size,
                full_rows=height // size,
                prefix=prefix,
            )
    if handle.native:
        descriptor = os.open(path, os.O_RDONLY)
        handle.file_descriptor = descriptor
        weakref.finalize(handle, os.close, descriptor)


class SlideHandleCache:
    """Keep at most ``capacity`` slides open, the least recently used closed first.

    The open slides share one OpenSlide cache of ``openslide_cache_bytes``.
    """

    def __init__(self, capacity: int, openslide_cache_bytes: int = DEFAULT_OPENSLIDE_CACHE_BYTES) -> None:
        self.capacity = max(1, capacity)
        self._handles: OrderedDict[str, SlideHandle] = OrderedDict()
        self._lock = threading.Lock()
        self._openslide_cache = openslide.OpenSlideCache(max(0, openslide_cache_bytes))

    def get(self, key: str, path: Path) -> SlideHandle:
        """Return the open handle of a slide, opening it on first use.

        Raises NotFound when the slide cannot be opened.
        """
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                return handle
        # Opened outside the lock so that one slow slide does not stall every other viewer.
        opened = open_handle(path, self._openslide_cache)
        with self._lock:
            handle = self._handles.get(key)
            if handle is not None:
                self._handles.move_to_end(key)
                return handle
            self._handles[key] = opened
            while len(self._handles) > self.capacity:
                # Dropped, not closed: a thread may still be reading it, and OpenSlide
                # closes the slide when the last reference goes.
                self._handles.popitem(last=False)
            return opened

    def __len__(self) -> int:
        with self._lock:
            return len(self._handles)


class TileCache:
    """Keep rendered tiles up to ``max_bytes`` in total, the least recently used dropped first.

    Each tile counts its bytes plus ``TILE_ENTRY_OVERHEAD`` for the bookkeeping around it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self.size = 0
        self._tiles: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int, int]) -> bytes | None:
        with self._lock:
            data = self._tiles.get(key)
            if data is not None:
                self._tiles.move_to_end(key)
            return data

    def put(self, key: tuple[str, int, int, int], data: bytes) -> None:
        cost = len(data) + TILE_ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        with self._lock:
            previous = self._tiles.pop(key, None)
            if previous is not None:
                self.size -= len(previous) + TILE_ENTRY_OVERHEAD
            self._tiles[key] = data
            self.size += cost
            while self.size > self.max_bytes:
                _key, dropped = self._tiles.popitem(last=False)
                self.size -= len(dropped) + TILE_ENTRY_OVERHEAD


@dataclass(frozen=True)
class Tile:
    """A tile's JPEG, its ETag, and where it came from: stored in the file, the cache, or just rendered."""

    data: bytes
    etag: str
    source: TileSource


def _lower_priority() -> None:
    """Make the calling thread (a render thread) yield the CPU to request threads."""
    # Not Linux, or not allowed: renders then just compete evenly with requests.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RENDER_NICENESS)


class TileServer:
    """Answer Deep Zoom requests for stored slides.

    At most ``render_threads`` tiles are rendered at once, by their own threads.
    """

    def __init__(
        self, handles: SlideHandleCache, tiles: TileCache, quality: int, render_threads: int = 1
    ) -> None:
        self.handles = handles
        self.tiles = tiles
        self.quality = quality
        self.render_threads = max(1, render_threads)
        self._renderer = ThreadPoolExecutor(
            max_workers=self.render_threads, thread_name_prefix="tile-render", initializer=_lower_priority
        )
        self._rendering: dict[tuple[str, int, int, int], Future[bytes]] = {}
        self._rendering_lock = threading.Lock()

    def handle(self, slide_id: str, path: Path) -> SlideHandle:
        """Return the open slide. Raises NotFound when it cannot be opened."""
        return self.handles.get(slide_id, path)

    def dzi(self, slide_id: str, path: Path) -> str:
        """Return the slide's Deep Zoom descriptor. Raises NotFound when it cannot be opened."""
        return str(self.handle(slide_id, path).deepzoom.get_dzi("jpeg"))

    def etag(self, slide_id: str, sha256: str, path: Path, *parts: int) -> str:
        """Name a tile's (or the descriptor's) content: the file's hash, the geometry and the request."""
        return self._etag(self.handle(slide_id, path), sha256, parts)

    def _etag(self, handle: SlideHandle, sha256: str, parts: tuple[int, ...]) -> str:
        fields = (TILE_FORMAT_VERSION, handle.tile_size, handle.overlap, self.quality, *parts)
        return '"' + sha256[:24] + "-" + "-".join(map(str, fields)) + '"'

    def tile_etag(self, slide_id: str, sha256: str, path: Path, level: int, col: int, row: int) -> str:
        """Return a tile's ETag without reading the tile, for answering a revalidation.

        Raises TileNotFound for a level or a tile outside the slide, NotFound when the
        slide cannot be opened.
        """
        handle = self.handle(slide_id, path)
        self._check_inside(handle, level, col, row)
        return self._etag(handle, sha256, (level, col, row))

    @staticmethod
    def _check_inside(handle: SlideHandle, level: int, col: int, row: int) -> None:
        deepzoom = handle.deepzoom
        if not 0 <= level < deepzoom.level_count:
            raise TileNotFound()
        cols, rows = deepzoom.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileNotFound()

    def tile(self, slide_id: str, sha256: str, path: Path, level: int, col: int, row: int) -> Tile:
        """Return one JPEG tile: as stored in the file, from the cache, or rendered now.

        Raises TileNotFound for a level or a tile outside the slide, NotFound when the
        slide cannot be opened or read.
        """
        # One look-up of the open slide per tile: it takes the handle cache's lock.
        handle = self.handle(slide_id, path)
        self._check_inside(handle, level, col, row)
        etag = self._etag(handle, sha256, (level, col, row))
        native = handle.native_tile(level, col, row)
        if native is not None:
            return Tile(native, etag, "native")
        key = (slide_id, level, col, row)
        cached = self.tiles.get(key)
        if cached is not None:
            return Tile(cached, etag, "cache")
        return Tile(self._rendered(key, handle), etag, "rendered")

    def _rendered(self, key: tuple[str, int, int, int], handle: SlideHandle) -> bytes:
        """Render a tile on the render threads, joining a render of the same tile already under way."""
        with self._rendering_lock:
            future = self._rendering.get(key)
            if future is None:
                future = self._renderer.submit(self._render, key, handle)
                self._rendering[key] = future
        return future.result()

    def _render(self, key: tuple[str, int, int, int], handle: SlideHandle) -> bytes:
        try:
            cached = self.tiles.get(key)  # rendered meanwhile by a render that has just finished
            if cached is not None:
                return cached
            try:
                image = handle.deepzoom.get_tile(key[1], (key[2], key[3]))
            except openslide.OpenSlideError:
                raise NotFound(N_("The slide's file cannot be read."), code="SLIDE_FILE_UNREADABLE") from None
            buffer = io.BytesIO()
            # 4:4:4: stain colours are diagnostic, and chroma subsampling smears them on small tiles.
            image.convert("RGB").save(buffer, "JPEG", quality=self.quality, subsampling=0)
            data = buffer.getvalue()
            self.tiles.put(key, data)
            return data
        finally:
            with self._rendering_lock:
                self._rendering.pop(key, None)


_create_lock = threading.Lock()


def default_render_threads() -> int:
    """Render on as many threads as there are cores (at least two): a viewer opening a slide asks for
    several costly overview tiles at once, and the render threads already yield to request threads."""
    return max(2, os.cpu_count() or 1)


def tile_server(app: Flask | None = None) -> TileServer:
    """Return the app's tile server, built on first use from ``PATHOLOGY_*`` settings."""
    target = app or current_app
    server = target.extensions.get("vetinh.pathology.tiles")
    if server is not None:
        return server
    with _create_lock:
        server = target.extensions.get("vetinh.pathology.tiles")
        if server is None:
            config = target.config
            server = TileServer(
                SlideHandleCache(
                    int(config.get("PATHOLOGY_OPEN_SLIDES", DEFAULT_OPEN_SLIDES)),
                    int(config.get("PATHOLOGY_OPENSLIDE_CACHE_BYTES", DEFAULT_OPENSLIDE_CACHE_BYTES)),
                ),
                TileCache(int(config.get("PATHOLOGY_TILE_CACHE_BYTES", DEFAULT_TILE_CACHE_BYTES))),
                int(config.get("PATHOLOGY_TILE_QUALITY", DEFAULT_TILE_QUALITY)),
                int(config.get("PATHOLOGY_RENDER_THREADS", default_render_threads())),
            )
            target.extensions["vetinh.pathology.tiles"] = server
            slide_store(target)
    return server
