"""Read the structure of a TIFF file (directories, tiles, JPEG tables) without decoding pixels.

Ingest uses it to explain why OpenSlide refuses a TIFF (striped, truncated) and to check
that every tile a TIFF declares lies inside the file; the tile server uses it to send a
slide's own JPEG tiles as stored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

TAG_NEW_SUBFILE_TYPE = 254
TAG_IMAGE_WIDTH = 256
TAG_IMAGE_LENGTH = 257
TAG_COMPRESSION = 259
TAG_PHOTOMETRIC = 262
TAG_STRIP_OFFSETS = 273
TAG_SAMPLES_PER_PIXEL = 277
TAG_STRIP_BYTE_COUNTS = 279
TAG_PLANAR_CONFIG = 284
TAG_TILE_WIDTH = 322
TAG_TILE_LENGTH = 323
TAG_TILE_OFFSETS = 324
TAG_TILE_BYTE_COUNTS = 325
TAG_JPEG_TABLES = 347
TAG_YCBCR_SUBSAMPLING = 530

COMPRESSION_JPEG = 7
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6

_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_TYPE_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
_WANTED = {
    TAG_NEW_SUBFILE_TYPE,
    TAG_IMAGE_WIDTH,
    TAG_IMAGE_LENGTH,
    TAG_COMPRESSION,
    TAG_PHOTOMETRIC,
    TAG_STRIP_OFFSETS,
    TAG_SAMPLES_PER_PIXEL,
    TAG_STRIP_BYTE_COUNTS,
    TAG_PLANAR_CONFIG,
    TAG_TILE_WIDTH,
    TAG_TILE_LENGTH,
    TAG_TILE_OFFSETS,
    TAG_TILE_BYTE_COUNTS,
    TAG_JPEG_TABLES,
    TAG_YCBCR_SUBSAMPLING,
}
MAX_DIRECTORIES = 512
MAX_ENTRIES = 4096


class TiffStructureError(Exception):
    """The file is not a TIFF, or its structure is broken; ``truncated`` says whether it ends early."""

    def __init__(self, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


@dataclass
class TiffDirectory:
    """One image file directory: the values of the tags that matter for tiles."""

    offset: int
    values: dict[int, tuple[int, ...] | bytes] = field(default_factory=dict)

    def first(self, tag: int, default: int = 0) -> int:
        value = self.values.get(tag)
        if isinstance(value, tuple) and value:
            return value[0]
        return default

    def ints(self, tag: int) -> tuple[int, ...]:
        value = self.values.get(tag)
        return value if isinstance(value, tuple) else ()

    @property
    def width(self) -> int:
        return self.first(TAG_IMAGE_WIDTH)

    @property
    def height(self) -> int:
        return self.first(TAG_IMAGE_LENGTH)

    @property
    def is_tiled(self) -> bool:
        return TAG_TILE_WIDTH in self.values and TAG_TILE_OFFSETS in self.values

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.first(TAG_TILE_WIDTH), self.first(TAG_TILE_LENGTH)

    @property
    def jpeg_tables(self) -> bytes | None:
        value = self.values.get(TAG_JPEG_TABLES)
        return value if isinstance(value, bytes) else None


@dataclass
class TiffStructure:
    """The directories of a TIFF and the size of the file they were read from."""

    byte_order: str
    big: bool
    file_size: int
    directories: list[TiffDirectory]

    def data_beyond_end(self) -> bool:
        """Tell whether a tile or strip declared by any directory lies past the end of the file."""
        for directory in self.directories:
            for offsets_tag, counts_tag in (
                (TAG_TILE_OFFSETS, TAG_TILE_BYTE_COUNTS),
                (TAG_STRIP_OFFSETS, TAG_STRIP_BYTE_COUNTS),
            ):
                offsets, counts = directory.ints(offsets_tag), directory.ints(counts_tag)
                for start, length in zip(offsets, counts, strict=False):
                    if length and start + length > self.file_size:
                        return True
        return False


def is_tiff_header(head: bytes) -> bool:
    """Tell whether the first bytes of a file are a TIFF or BigTIFF header."""
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_structure(path: Path) -> TiffStructure:
    """Read every directory of a TIFF file.

    Raises TiffStructureError when the file is not a TIFF or its structure is broken
    (with ``truncated`` set when a directory or a value lies past the end of the file).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(16)
        if not is_tiff_header(head):
            raise TiffStructureError("not a TIFF file")
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        if big:
            if len(head) < 16:
                raise TiffStructureError("the header is cut short", truncated=True)
            (offset,) = struct.unpack(order + "Q", head[8:16])
        else:
            if len(head) < 8:
                raise TiffStructureError("the header is cut short", truncated=True)
            (offset,) = struct.unpack(order + "I", head[4:8])
        directories: list[TiffDirectory] = []
        seen: set[int] = set()
        while offset:
            if offset in seen or len(directories) >= MAX_DIRECTORIES:
                raise TiffStructureError("the directory chain loops or is too long")
            if offset >= size:
                raise TiffStructureError("a directory lies past the end of the file", truncated=True)
            seen.add(offset)
            directory, offset = _read_directory(handle, order, big, offset, size)
            directories.append(directory)
    if not directories:
        raise TiffStructureError("the file holds no image directory")
    return TiffStructure(byte_order=order, big=big, file_size=size, directories=directories)


def _read_exact(handle: BinaryIO, offset: int, length: int, size: int) -> bytes:
    if offset + length > size:
        raise TiffStructureError("a value lies past the end of the file", truncated=True)
    handle.seek(offset)
    data = handle.read(length)
    if len(data) != length:
        raise TiffStructureError("a value lies past the end of the file", truncated=True)
    return data


def _read_directory(
    handle: BinaryIO, order: str, big: bool, offset: int, size: int
) -> tuple[TiffDirectory, int]:
    count_format, entry_size, pointer_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size = struct.calcsize(count_format)
    (count,) = struct.unpack(order + count_format, _read_exact(handle, offset, count_size, size))
    if count > MAX_ENTRIES:
        raise TiffStructureError("a directory has too many entries")
    pointer_size = struct.calcsize(pointer_format)
    table = _read_exact(handle, offset + count_size, count * entry_size + pointer_size, size)
    directory = TiffDirectory(offset=offset)
    inline = 8 if big else 4
    for index in range(count):
        entry = table[index * entry_size : (index + 1) * entry_size]
        if big:
            tag, kind, number = struct.unpack(order + "HHQ", entry[:12])
            raw = entry[12:20]
        else:
            tag, kind, number = struct.unpack(order + "HHI", entry[:8])
            raw = entry[8:12]
        if kind not in _TYPE_SIZES:
            continue
        length = _TYPE_SIZES[kind] * number
        if tag not in _WANTED:
            if length > inline:
                (pointer,) = struct.unpack(order + pointer_format, raw)
                if pointer + length > size:
                    raise TiffStructureError("a value lies past the end of the file", truncated=True)
            continue
        if length > inline:
            (pointer,) = struct.unpack(order + pointer_format, raw)
            raw = _read_exact(handle, pointer, length, size)
        else:
            raw = raw[:length]
        if kind in (1, 2, 7) and tag == TAG_JPEG_TABLES:
            directory.values[tag] = bytes(raw)
        elif kind in _TYPE_FORMATS:
            directory.values[tag] = struct.unpack(f"{order}{number}{_TYPE_FORMATS[kind]}", raw)
    (next_offset,) = struct.unpack(order + pointer_format, table[count * entry_size :])
    return directory, next_offset
