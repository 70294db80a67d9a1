"""Build a tiled, pyramidal TIFF for a slide that has a single large level, so every zoom is cheap to serve.

The pyramid is written next to the original as a BigTIFF of 256×256 JPEG tiles (YCbCr,
4:4:4), one directory per level, each half the size of the one before, with the pixel
size in the resolution tags; OpenSlide reads it as a generic tiled TIFF and the tile
server sends its tiles as stored. Level 0 is read from the original tile by tile; each
further level is made from the four tiles below it, so memory stays at a few tiles
whatever the slide's size.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openslide
from PIL import Image

TILE = 256
JPEG_QUALITY = 90
DEFAULT_MIN_SIDE = 4096
PYRAMID_NAME = "pyramid.tiff"

_SHORT, _LONG, _RATIONAL, _LONG8 = 3, 4, 5, 16


def needs_pyramid(level_count: int, width: int, height: int, min_side: int = DEFAULT_MIN_SIDE) -> bool:
    """Tell whether a slide should get a pyramid: one level only, and too large to downsample per request."""
    return level_count == 1 and max(width, height) > min_side


@dataclass
class _Level:
    width: int
    height: int
    offsets: list[int]
    counts: list[int]

    @property
    def across(self) -> int:
        return math.ceil(self.width / TILE)

    @property
    def down(self) -> int:
        return math.ceil(self.height / TILE)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # 4:4:4, as the TIFF's YCbCrSubsampling says: stain colours are diagnostic.
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _padded(image: Image.Image) -> Image.Image:
    """Return a full 256×256 tile; TIFF edge tiles are padded (here in white, the glass)."""
    if image.size == (TILE, TILE):
        return image
    canvas = Image.new("RGB", (TILE, TILE), (255, 255, 255))
    canvas.paste(image, (0, 0))
    return canvas


def _entry(tag: int, kind: int, values: list[int] | bytes) -> tuple[int, int, int, bytes]:
    if kind == _SHORT:
        data = struct.pack(f"<{len(values)}H", *values)
    elif kind == _LONG:
        data = struct.pack(f"<{len(values)}I", *values)
    elif kind == _LONG8:
        data = struct.pack(f"<{len(values)}Q", *values)
    else:
        data = struct.pack(f"<{len(values)}I", *values)
    count = len(values) // 2 if kind == _RATIONAL else len(values)
    return tag, kind, count, data


def _write_directory(
    out: io.BufferedRandom, level: _Level, reduced: bool, mpp: tuple[float, float] | None
) -> int:
    """Write one level's directory (and its out-of-line values); return the directory's offset."""
    entries = [
        _entry(254, _LONG, [1 if reduced else 0]),
        _entry(256, _LONG, [level.width]),
        _entry(257, _LONG, [level.height]),
        _entry(258, _SHORT, [8, 8, 8]),
        _entry(259, _SHORT, [7]),
        _entry(262, _SHORT, [6]),
        _entry(277, _SHORT, [3]),
        _entry(284, _SHORT, [1]),
        _entry(322, _LONG, [TILE]),
        _entry(323, _LONG, [TILE]),
        _entry(324, _LONG8, level.offsets),
        _entry(325, _LONG8, level.counts),
        _entry(530, _SHORT, [1, 1]),
    ]
    if mpp is not None:
        # Pixels per centimetre, as rationals with a denominator fine enough for 0.001 µm.
        per_cm = [round(10_000 / value * 1000) for value in mpp]
        entries += [
            _entry(282, _RATIONAL, [per_cm[0], 1000]),
            _entry(283, _RATIONAL, [per_cm[1], 1000]),
            _entry(296, _SHORT, [3]),
        ]
    entries.sort(key=lambda item: item[0])
    resolved: list[tuple[int, int, int, bytes]] = []
    for tag, kind, count, data in entries:
        if len(data) > 8:
            offset = out.seek(0, os.SEEK_END)
            out.write(data)
            data = struct.pack("<Q", offset)
        resolved.append((tag, kind, count, data.ljust(8, b"\0")))
    if out.tell() % 2:
        out.write(b"\0")
    start = out.seek(0, os.SEEK_END)
    out.write(struct.pack("<Q", len(resolved)))
    for tag, kind, count, data in resolved:
        out.write(struct.pack("<HHQ", tag, kind, count) + data)
    out.write(struct.pack("<Q", 0))
    return start


def build_pyramid(
    source: Path,
    target: Path,
    *,
    mpp: tuple[float, float] | None,
    progress: Callable[[float], None] | None = None,
) -> int:
    """Write a pyramidal tiled TIFF of ``source`` to ``target``; return its number of levels.

    Raises openslide.OpenSlideError when the source cannot be read, OSError when the
    target cannot be written (a partial target is removed).
    """
    slide = openslide.OpenSlide(str(source))
    try:

        def read(left: int, top: int, width: int, height: int) -> Image.Image:
            return slide.read_region((left, top), 0, (width, height)).convert("RGB")

        return write_pyramid(read, slide.dimensions, target, mpp=mpp, progress=progress)
    finally:
        slide.close()


def write_pyramid(
    read: Callable[[int, int, int, int], Image.Image],
    size: tuple[int, int],
    target: Path,
    *,
    mpp: tuple[float, float] | None,
    progress: Callable[[float], None] | None = None,
) -> int:
    """Write a pyramidal tiled TIFF of an image of ``size`` px to ``target``; return its number of levels.

    ``read(left, top, width, height)`` gives the full-resolution pixels of one region.
    Raises OSError when the target cannot be written (a partial target is removed).
    """
    partial = target.with_suffix(".part")
    try:
        width, height = size
        sizes = [(width, height)]
        while max(sizes[-1]) > TILE:
            w, h = sizes[-1]
            sizes.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
        total = sum(math.ceil(w / TILE) * math.ceil(h / TILE) for w, h in sizes)
        done = 0
        levels: list[_Level] = []
        with partial.open("w+b") as out:
            out.write(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
            for index, (w, h) in enumerate(sizes):
                level = _Level(w, h, [], [])
                for row in range(level.down):
                    for col in range(level.across):
                        tile = _padded(_render(read, out, levels, index, col, row, w, h))
                        data = _jpeg(tile)
                        level.offsets.append(out.seek(0, os.SEEK_END))
                        level.counts.append(len(data))
                        out.write(data)
                        done += 1
                        if progress is not None and done % 64 == 0:
                            progress(done / total)
                levels.append(level)
            previous_link = 8
            for index, level in enumerate(levels):
                level_mpp = None if mpp is None else (mpp[0] * 2**index, mpp[1] * 2**index)
                offset = _write_directory(out, level, index > 0, level_mpp)
                end = out.tell()
                out.seek(previous_link)
                out.write(struct.pack("<Q", offset))
                previous_link = offset + 8 + 20 * _entry_count(out, offset)
                out.seek(end)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(1.0)
    return len(levels)


def _entry_count(out: io.BufferedRandom, offset: int) -> int:
    out.seek(offset)
    return int(struct.unpack("<Q", out.read(8))[0])


def _render(
    read: Callable[[int, int, int, int], Image.Image],
    out: io.BufferedRandom,
    levels: list[_Level],
    index: int,
    col: int,
    row: int,
    width: int,
    height: int,
) -> Image.Image:
    """Return the pixels of one tile: read from the slide at level 0, from the four tiles below otherwise."""
    tile_w = min(TILE, width - col * TILE)
    tile_h = min(TILE, height - row * TILE)
    if index == 0:
        return read(col * TILE, row * TILE, tile_w, tile_h)
    below = levels[index - 1]
    canvas = Image.new("RGB", (2 * TILE, 2 * TILE), (255, 255, 255))
    for dy in (0, 1):
        for dx in (0, 1):
            c, r = 2 * col + dx, 2 * row + dy
            if c >= below.across or r >= below.down:
                continue
            position = r * below.across + c
            out.seek(below.offsets[position])
            with Image.open(io.BytesIO(out.read(below.counts[position]))) as part:
                canvas.paste(part.convert("RGB"), (dx * TILE, dy * TILE))
    out.seek(0, os.SEEK_END)
    return canvas.resize((TILE, TILE), Image.Resampling.LANCZOS).crop((0, 0, tile_w, tile_h))
