"""Accept a whole-slide image only after it proved readable: receive, inspect, then move into the store.

An upload is written to a private folder inside the slide store while its SHA-256 is
computed; it is moved to its final place (one rename) only once OpenSlide, and pydicom
for DICOM, have accepted it. Whatever is refused, or fails halfway, is removed.
"""

from __future__ import annotations

import hashlib
import math
import re
import stat
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO

import openslide
import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from his.errors import N_, PayloadTooLarge, ValidationFailed
from pathology.models import Slide
from pathology.store import SlideStore
from pathology.tiff import TiffStructureError, is_tiff_header, read_structure
from pathology.transactions import take_write_lock

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
CHUNK = 1024 * 1024
MAX_SIDE = 1_000_000
MAX_ARCHIVE_MEMBERS = 5000
DECODE_PROBE = 2048
TIFF_BASED_FORMATS = frozenset({"aperio", "generic-tiff", "leica", "philips", "trestle", "ventana"})
_PLAIN_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
)
_EXTENSION = re.compile(r"^[a-z0-9]{1,8}$")


class SlideRefused(ValidationFailed):
    """A file that is not an acceptable whole-slide image; ``code`` says why."""

    code = "SLIDE_REFUSED"
    message = N_("The file is not a whole-slide image that can be accepted.")


class SlideTooLarge(PayloadTooLarge):
    code = "SLIDE_TOO_LARGE"
    message = N_("The file is larger than the slide size limit.")


@dataclass(frozen=True)
class SlideFacts:
    """What inspection learnt about a readable slide."""

    format: str
    vendor: str | None
    width: int
    height: int
    level_count: int
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    scanned_at: datetime | None


@dataclass(frozen=True)
class IngestResult:
    """The slide an upload ended in, and whether it is new (False: the same file was already there)."""

    slide: Slide
    created: bool


@dataclass(frozen=True)
class ReceivedFile:
    folder: Path
    path: Path
    sha256: str
    size: int


def too_large(max_bytes: int) -> SlideTooLarge:
    """Build the 413 error naming the slide size limit."""
    if max_bytes >= 1024**3:
        shown = f"{max_bytes / 1024**3:.1f} GB"
    elif max_bytes >= 1024**2:
        shown = f"{max_bytes / 1024**2:.0f} MB"
    else:
        shown = f"{max_bytes / 1024:.0f} kB"
    return SlideTooLarge(N_("The file is larger than the slide size limit of {limit}.").format(limit=shown))


def refuse(code: str, message: str) -> SlideRefused:
    """Build the 422 error for a refused slide."""
    return SlideRefused(message, code=code)


def receive(stream: IO[bytes], store: SlideStore, *, max_bytes: int) -> ReceivedFile:
    """Copy an upload into a new private folder of the store, hashing it on the way.

    Raises SlideTooLarge beyond ``max_bytes`` and SlideRefused for an empty file; either
    way nothing stays behind.
    """
    folder = store.new_incoming()
    target = folder / "upload.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise refuse("SLIDE_EMPTY", N_("The file is empty."))
    except BaseException:
        store.discard(folder)
        raise
    return ReceivedFile(folder=folder, path=target, sha256=digest.hexdigest(), size=size)


def ingest(
    session: Session,
    store: SlideStore,
    stream: IO[bytes],
    *,
    filename: str,
    site_id: int,
    site_code: str,
    case_id: str | None,
    uploaded_by: int | None,
    max_bytes: int,
) -> IngestResult:
    """Receive, inspect and store an uploaded slide; a file already in the site's store returns its slide.

    Raises SlideRefused (422) naming why a file is not accepted, SlideTooLarge (413);
    nothing of a refused or failed upload stays in the store.
    """
    received = receive(stream, store, max_bytes=max_bytes)
    return accept_received(
        session,
        store,
        received,
        filename=filename,
        site_id=site_id,
        site_code=site_code,
        case_id=case_id,
        uploaded_by=uploaded_by,
        max_bytes=max_bytes,
    )


def accept_received(
    session: Session,
    store: SlideStore,
    received: ReceivedFile,
    *,
    filename: str,
    site_id: int,
    site_code: str,
    case_id: str | None,
    uploaded_by: int | None,
    max_bytes: int,
) -> IngestResult:
    """Inspect and store a file already received into the store (in one request or in chunks).

    Raises SlideRefused (422) naming why a file is not accepted, SlideTooLarge (413);
    the received folder is removed whatever happens, and nothing of a refused file stays.
    """
    accepted: Path | None = None
    try:
        existing = _existing(session, site_id, received.sha256)
        if existing is not None:
            store.discard(received.folder)
            return IngestResult(existing, created=False)
        main = prepare(received, filename, max_bytes=max_bytes)
        facts = inspect_slide(main)
        # The file work is done: only now take the write lock, and look again for the same
        # file, which another request may have stored meanwhile.
        take_write_lock(session)
        existing = _existing(session, site_id, received.sha256)
        if existing is not None:
            store.discard(received.folder)
            return IngestResult(existing, created=False)
        slide_id = uuid.uuid4().hex
        inside = main.relative_to(received.folder)
        accepted = store.accept(received.folder, site_code, slide_id)
        slide = Slide(
            id=slide_id,
            site_id=site_id,
            case_id=case_id,
            uploaded_by=uploaded_by,
            original_filename=_clean_filename(filename),
            stored_path=store.relative(accepted / inside),
            sha256=received.sha256,
            size_bytes=received.size,
            format=facts.format,
            vendor=facts.vendor,
            status="ready",
            width=facts.width,
            height=facts.height,
            level_count=facts.level_count,
            mpp_x=facts.mpp_x,
            mpp_y=facts.mpp_y,
            objective_power=facts.objective_power,
            scanned_at=facts.scanned_at,
        )
        try:
            with session.begin_nested():
                session.add(slide)
        except IntegrityError:
            # The same file finished uploading in another request a moment earlier.
            store.discard(accepted)
            accepted = None
            existing = _existing(session, site_id, received.sha256)
            if existing is None:
                raise
            return IngestResult(existing, created=False)
        return IngestResult(slide, created=True)
    except BaseException:
        store.discard(received.folder)
        if accepted is not None:
            store.discard(accepted)
        raise


def _existing(session: Session, site_id: int, sha256: str) -> Slide | None:
    return session.scalar(select(Slide).where(Slide.site_id == site_id, Slide.sha256 == sha256))


def _clean_filename(filename: str) -> str:
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    return (name or "slide")[:255]


def _extension(filename: str) -> str:
    suffix = PurePosixPath(_clean_filename(filename)).suffix.lower().lstrip(".")
    return suffix if _EXTENSION.match(suffix) else "bin"


def prepare(received: ReceivedFile, filename: str, *, max_bytes: int) -> Path:
    """Lay the upload out as OpenSlide expects it; return the file OpenSlide must open.

    A zip (a DICOM WSI series or a MIRAX slide) is unpacked; any other file is named
    ``slide.<its extension>``, since some formats are recognised by their extension.
    Raises SlideRefused for an unsafe, damaged or slide-less archive.
    """
    with received.path.open("rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":
        try:
            return unpack_archive(received.path, received.folder, max_bytes=max_bytes)
        finally:
            received.path.unlink(missing_ok=True)
    main = received.folder / f"slide.{_extension(filename)}"
    received.path.rename(main)
    return main


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """Return a member's path parts; raise SlideRefused for a path that could leave the folder."""
    name = info.filename.replace("\\", "/")
    pure = PurePosixPath(name)
    mode = info.external_attr >> 16
    if pure.is_absolute() or ".." in pure.parts or ":" in name or stat.S_ISLNK(mode):
        raise refuse(
            "SLIDE_ARCHIVE_UNSAFE",
            N_("The zip archive contains a path that leads outside it: {name}.").format(name=name[:200]),
        )
    return tuple(part for part in pure.parts if part not in ("", "."))


def unpack_archive(archive: Path, folder: Path, *, max_bytes: int) -> Path:
    """Unpack a DICOM WSI series or a MIRAX slide from a zip; return the file OpenSlide opens.

    Raises SlideRefused for a damaged or unsafe archive, one without a slide, a DICOM
    file that is not a whole-slide image, or several series in one archive.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if not info.is_dir()]
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise refuse("SLIDE_ARCHIVE_TOO_MANY_FILES", N_("The zip archive holds too many files."))
            named = [(info, _member_parts(info)) for info in members]
            named = [(info, parts) for info, parts in named if parts and not parts[-1].startswith("__MACOSX")]
            mirax = [(info, parts) for info, parts in named if parts[-1].lower().endswith(".mrxs")]
            budget = [max_bytes]
            if len(mirax) > 1:
                raise refuse("SLIDE_ARCHIVE_SEVERAL", N_("The zip archive holds more than one MIRAX slide."))
            if mirax:
                return _unpack_mirax(bundle, named, mirax[0], folder, budget)
            return _unpack_dicom_series(bundle, named, folder, budget)
    except zipfile.BadZipFile:
        raise refuse(
            "SLIDE_ARCHIVE_DAMAGED", N_("The zip archive is damaged or truncated; upload it again.")
        ) from None


def _extract(bundle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: list[int]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with bundle.open(info) as source, target.open("wb") as out:
        while chunk := source.read(CHUNK):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise SlideTooLarge(N_("The unpacked archive is larger than the slide size limit."))
            out.write(chunk)


def _unpack_mirax(
    bundle: zipfile.ZipFile,
    named: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    index: tuple[zipfile.ZipInfo, tuple[str, ...]],
    folder: Path,
    budget: list[int],
) -> Path:
    info, parts = index
    stem = parts[-1][: -len(".mrxs")]
    prefix = parts[:-1]
    data_prefix = (*prefix, stem)
    main = folder / "slide.mrxs"
    _extract(bundle, info, main, budget)
    for member, member_parts in named:
        if member_parts[: len(data_prefix)] == data_prefix and len(member_parts) == len(data_prefix) + 1:
            _extract(bundle, member, folder / "slide" / member_parts[-1], budget)
    return main


def _unpack_dicom_series(
    bundle: zipfile.ZipFile,
    named: list[tuple[zipfile.ZipInfo, tuple[str, ...]]],
    folder: Path,
    budget: list[int],
) -> Path:
    series_folder = folder / "series"
    series_uids: set[str] = set()
    volumes: list[tuple[int, Path]] = []
    others: list[Path] = []
    count = 0
    for info, _parts in named:
        with bundle.open(info) as source:
            head = source.read(132)
        if head[128:132] != b"DICM":
            continue
        count += 1
        target = series_folder / f"{count:04d}.dcm"
        _extract(bundle, info, target, budget)
        dataset = check_dicom(target, shown_name=info.filename)
        series_uids.add(str(dataset.get("SeriesInstanceUID", "")))
        image_type = [str(v).upper() for v in (dataset.get("ImageType") or [])]
        if "VOLUME" in image_type:
            volumes.append((int(dataset.get("TotalPixelMatrixColumns") or 0), target))
        else:
            others.append(target)
    if count == 0:
        raise refuse(
            "SLIDE_ARCHIVE_EMPTY",
            N_(
                "The zip archive holds no slide: put a DICOM WSI series or a MIRAX slide (.mrxs with its folder) in it."
            ),
        )
    if len(series_uids) > 1:
        raise refuse(
            "SLIDE_ARCHIVE_SEVERAL",
            N_("The zip archive holds more than one DICOM series; upload one slide per archive."),
        )
    if volumes:
        return max(volumes, key=lambda item: item[0])[1]
    return others[0]


def check_dicom(path: Path, *, shown_name: str | None = None) -> pydicom.Dataset:
    """Read a DICOM file's header and insist that it is a whole-slide microscopy image.

    Raises SlideRefused for an unreadable DICOM file or one of another kind (a CT image, …).
    """
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError):
        raise refuse(
            "SLIDE_DICOM_UNREADABLE", N_("The DICOM file cannot be read; it is damaged or truncated.")
        ) from None
    sop_class = dataset.get("SOPClassUID") or getattr(
        dataset.get("file_meta"), "MediaStorageSOPClassUID", None
    )
    if str(sop_class or "") != WSI_SOP_CLASS:
        kind = getattr(sop_class, "name", None) or str(sop_class or "unknown")
        message = N_(
            "This DICOM file is a {kind} object, not a whole-slide microscopy image "
            "(VL Whole Slide Microscopy Image Storage)."
        ).format(kind=kind)
        if shown_name:
            message = f"{shown_name}: {message}"
        raise refuse("SLIDE_NOT_WSI_DICOM", message)
    return dataset


def inspect_slide(path: Path) -> SlideFacts:
    """Open a slide with OpenSlide and check that it is tiled, plausible and decodable.

    Raises SlideRefused saying why a file is refused: a plain photograph, a DICOM object
    of another kind, a TIFF without tiles, a truncated or damaged file, a format
    OpenSlide does not read, a compression it cannot decode, implausible metadata.
    """
    size = path.stat().st_size
    if size == 0:
        raise refuse("SLIDE_EMPTY", N_("The file is empty."))
    with path.open("rb") as handle:
        head = handle.read(132)
    for magic, kind in _PLAIN_IMAGES:
        if head.startswith(magic):
            raise refuse(
                "SLIDE_PLAIN_IMAGE",
                N_(
                    "This is a plain {kind} picture, not a whole-slide image. Upload the "
                    "scanner's file (SVS, NDPI, MRXS, SCN, tiled TIFF or DICOM WSI)."
                ).format(kind=kind),
            )
    if head[128:132] == b"DICM":
        check_dicom(path)
    detected = openslide.OpenSlide.detect_format(str(path))
    if detected is None:
        raise _explain_unreadable(path, head)
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError:
        raise _explain_unreadable(path, head) from None
    try:
        if detected in TIFF_BASED_FORMATS and is_tiff_header(head):
            _check_tiff_complete(path)
        facts = _facts(slide, detected)
        _probe_decoding(slide)
        return facts
    finally:
        slide.close()


def _explain_unreadable(path: Path, head: bytes) -> SlideRefused:
    """Say as precisely as possible why OpenSlide could not open a file."""
    if is_tiff_header(head):
        try:
            structure = read_structure(path)
        except TiffStructureError as error:
            if error.truncated:
                return _truncated()
            return refuse(
                "SLIDE_DAMAGED", N_("The TIFF file is damaged: {detail}.").format(detail=str(error))
            )
        if not any(directory.is_tiled for directory in structure.directories):
            return refuse(
                "SLIDE_UNTILED_TIFF",
                N_(
                    "This TIFF stores its image in strips, not tiles. A whole-slide image must be "
                    "a tiled (pyramidal) TIFF; export it from the scanner software as one."
                ),
            )
        if structure.data_beyond_end():
            return _truncated()
    return refuse(
        "SLIDE_UNSUPPORTED_FORMAT",
        N_(
            "OpenSlide cannot read this file: it is not a whole-slide format it supports "
            "(SVS, NDPI, MRXS, SCN, Philips or generic tiled TIFF, DICOM WSI)."
        ),
    )


def _truncated() -> SlideRefused:
    return refuse(
        "SLIDE_TRUNCATED",
        N_("The file is truncated: it ends before the image data it declares. Upload it again."),
    )


def _check_tiff_complete(path: Path) -> None:
    try:
        structure = read_structure(path)
    except TiffStructureError as error:
        if error.truncated:
            raise _truncated() from None
        raise refuse(
            "SLIDE_DAMAGED", N_("The TIFF file is damaged: {detail}.").format(detail=str(error))
        ) from None
    if structure.data_beyond_end():
        raise _truncated()


def _number(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _implausible(what: str) -> SlideRefused:
    return refuse(
        "SLIDE_IMPLAUSIBLE_METADATA",
        N_("The slide's metadata are not plausible: {what}.").format(what=what),
    )


def _facts(slide: openslide.OpenSlide, detected: str) -> SlideFacts:
    props = slide.properties
    if slide.level_count < 1:
        raise refuse("SLIDE_NO_LEVELS", N_("The slide has no image levels."))
    previous = 0.0
    for (width, height), downsample in zip(slide.level_dimensions, slide.level_downsamples, strict=True):
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            raise _implausible(f"level size {width}×{height} px")
        if not math.isfinite(downsample) or downsample < previous:
            raise _implausible("level downsamples that do not grow")
        previous = downsample
    mpp_x = _number(props.get(openslide.PROPERTY_NAME_MPP_X))
    mpp_y = _number(props.get(openslide.PROPERTY_NAME_MPP_Y))
    for mpp in (mpp_x, mpp_y):
        if mpp is not None and not 0.01 <= mpp <= 1000:
            raise _implausible(f"{mpp} µm per pixel")
    power = _number(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))
    if power is not None and not 0 < power <= 200:
        raise _implausible(f"objective power {power}×")
    width, height = slide.dimensions
    return SlideFacts(
        format=detected,
        vendor=props.get(openslide.PROPERTY_NAME_VENDOR),
        width=width,
        height=height,
        level_count=slide.level_count,
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        objective_power=power,
        scanned_at=scan_date(dict(props)),
    )


def _probe_decoding(slide: openslide.OpenSlide) -> None:
    """Decode the lowest level (or its middle) and the last corner of every level.

    Raises SlideRefused when OpenSlide cannot decode the slide's image data.
    """
    try:
        lowest = slide.level_count - 1
        width, height = slide.level_dimensions[lowest]
        factor = slide.level_downsamples[lowest]
        probe_w, probe_h = min(width, DECODE_PROBE), min(height, DECODE_PROBE)
        left = int(((width - probe_w) // 2) * factor)
        top = int(((height - probe_h) // 2) * factor)
        slide.read_region((left, top), lowest, (probe_w, probe_h))
        for level, (level_w, level_h) in enumerate(slide.level_dimensions):
            factor = slide.level_downsamples[level]
            corner_w, corner_h = min(level_w, 64), min(level_h, 64)
            origin = (int((level_w - corner_w) * factor), int((level_h - corner_h) * factor))
            slide.read_region(origin, level, (corner_w, corner_h))
    except openslide.OpenSlideError as error:
        raise refuse(
            "SLIDE_UNDECODABLE",
            N_(
                "The slide's image data cannot be decoded (a damaged file or a compression "
                "OpenSlide does not support): {detail}"
            ).format(detail=str(error)[:300]),
        ) from None


_DATE_READERS: tuple[tuple[str, str | None, Callable[[str], datetime]], ...] = (
    ("dicom.AcquisitionDateTime", None, lambda v: datetime.strptime(v[:14], "%Y%m%d%H%M%S")),
    ("dicom.ContentDate", "dicom.ContentTime", lambda v: datetime.strptime(v[:14], "%Y%m%d%H%M%S")),
    ("dicom.StudyDate", "dicom.StudyTime", lambda v: datetime.strptime(v[:14], "%Y%m%d%H%M%S")),
    ("aperio.Date", "aperio.Time", lambda v: datetime.strptime(v, "%m/%d/%y%H:%M:%S")),
    ("philips.DICOM_ACQUISITION_DATETIME", None, lambda v: datetime.strptime(v[:14], "%Y%m%d%H%M%S")),
    ("tiff.DateTime", None, lambda v: datetime.strptime(v[:19], "%Y:%m:%d %H:%M:%S")),
)


def scan_date(props: dict[str, str]) -> datetime | None:
    """Return when the slide was scanned, from the vendor's properties (UTC when no zone is given)."""
    for date_key, time_key, parse in _DATE_READERS:
        date_value = props.get(date_key, "").strip()
        if not date_value:
            continue
        time_value = props.get(time_key, "").strip() if time_key else ""
        if time_key and not time_value:
            time_value = "000000" if date_key.startswith("dicom.") else "00:00:00"
        try:
            return parse(date_value + time_value.split(".")[0]).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None
