"""Receive large slides in resumable chunks: declare the file, send chunks with checksums, complete.

A client declares the file's name, size and SHA-256, then sends it in order, each chunk
with its own SHA-256 and its place (``Content-Range``). A chunk is written only once it
has arrived whole and matches its checksum, so a dropped connection leaves the upload at
the last whole chunk; the client asks where it stands and resumes there. Completing
checks the whole file's SHA-256 and hands it to ingest, which validates and stores it
like any upload. Uploads left untouched for a day are removed by a job.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO

from sqlalchemy import select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from his.db import utcnow
from his.errors import N_, Conflict, Forbidden, NotFound, ValidationFailed
from his.security import Principal
from pathology.ingest import CHUNK, IngestResult, ReceivedFile, accept_received, too_large
from pathology.models import SlideUpload
from pathology.store import INCOMING, SlideStore
from pathology.transactions import take_write_lock

PART_NAME = "upload.part"
DEFAULT_MAX_CHUNK = 16 * 1024 * 1024
STALE_AFTER = timedelta(days=1)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class UploadNotFound(NotFound):
    code = "UPLOAD_NOT_FOUND"
    message = N_("There is no such upload; start it again.")


@dataclass(frozen=True)
class ChunkRange:
    """Where a chunk goes: its first and last byte, and the file's size."""

    start: int
    end: int
    total: int


def parse_content_range(header: str | None) -> ChunkRange:
    """Read ``Content-Range: bytes start-end/total``.

    Raises ValidationFailed naming the header when it is missing or not of that form.
    """
    match = _RANGE.match((header or "").strip())
    if match is None:
        raise ValidationFailed(
            N_("Say where the chunk goes: Content-Range: bytes start-end/total."),
            code="UPLOAD_RANGE_INVALID",
            fields={"Content-Range": N_("required, as bytes start-end/total")},
        )
    start, end, total = (int(group) for group in match.groups())
    if end < start:
        raise ValidationFailed(fields={"Content-Range": N_("the end comes before the start")})
    return ChunkRange(start, end, total)


def start_upload(
    session: Session,
    store: SlideStore,
    *,
    site_id: int,
    user_id: int | None,
    filename: str,
    size: int,
    sha256: str,
    case_id: str | None,
    max_bytes: int,
) -> SlideUpload:
    """Declare a chunked upload and make room for it in the store.

    Raises ValidationFailed for a missing name, a size of zero or a malformed SHA-256,
    and SlideTooLarge beyond the slide size limit.
    """
    errors: dict[str, str] = {}
    if not filename.strip():
        errors["filename"] = N_("required")
    if size <= 0:
        errors["size"] = N_("Give the file's size in bytes.")
    if not _SHA256.match(sha256):
        errors["sha256"] = N_("Give the file's SHA-256 as 64 hexadecimal digits.")
    if errors:
        raise ValidationFailed(N_("Some fields are not valid."), fields=errors)
    if size > max_bytes:
        raise too_large(max_bytes)
    folder = store.new_incoming()
    (folder / PART_NAME).touch()
    upload = SlideUpload(
        id=uuid.uuid4().hex,
        site_id=site_id,
        user_id=user_id,
        filename=filename.strip()[:255],
        size=size,
        sha256=sha256,
        received=0,
        folder=folder.name,
        case_id=case_id,
    )
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, principal: Principal, upload_id: str, *, lock: bool = False) -> SlideUpload:
    """Return one of the principal's uploads.

    Raises UploadNotFound for an unknown id, and Forbidden for another user's upload.
    """
    # On PostgreSQL the row is locked so two copies of a chunk cannot interleave; SQLite
    # already lets only one writer commit, and a chunk written twice writes the same bytes.
    upload = session.get(SlideUpload, upload_id, with_for_update=lock) if len(upload_id) == 32 else None
    if upload is None:
        raise UploadNotFound()
    if upload.user_id != principal.user_id or upload.site_id != principal.site_id:
        raise Forbidden(N_("This upload was started by someone else."), code="UPLOAD_NOT_YOURS")
    return upload


def _part(store: SlideStore, upload: SlideUpload) -> str:
    path = store.root / INCOMING / upload.folder / PART_NAME
    if not path.exists():
        raise UploadNotFound()
    return str(path)


def write_chunk(
    session: Session,
    store: SlideStore,
    upload: SlideUpload,
    stream: IO[bytes],
    where: ChunkRange,
    chunk_sha256: str,
    *,
    max_chunk: int,
) -> SlideUpload:
    """Write one chunk at its place once it arrived whole and matches its checksum.

    A chunk that was already received (a retry after a lost answer) changes nothing.
    Raises Conflict (with the expected offset) for a chunk out of order, ValidationFailed
    for a size that differs from the declared one, a chunk too large, incomplete or not
    matching its SHA-256.
    """
    length = where.end - where.start + 1
    if where.total != upload.size:
        raise ValidationFailed(fields={"Content-Range": N_("the total differs from the declared size")})
    if where.end >= upload.size:
        raise ValidationFailed(fields={"Content-Range": N_("the chunk ends beyond the declared size")})
    if length > max_chunk:
        raise ValidationFailed(
            N_("The chunk is too large."), code="UPLOAD_CHUNK_TOO_LARGE", extra={"max_chunk": max_chunk}
        )
    if not _SHA256.match(chunk_sha256):
        raise ValidationFailed(
            fields={"X-Chunk-SHA256": N_("Give the chunk's SHA-256 as 64 hexadecimal digits.")}
        )
    if where.end < upload.received:
        return upload
    if where.start != upload.received:
        raise Conflict(
            N_("The chunk does not continue the upload; resume at the offset given."),
            code="UPLOAD_OUT_OF_ORDER",
            extra={"offset": upload.received},
        )
    data = bytearray()
    while len(data) < length:
        piece = stream.read(min(CHUNK, length - len(data)))
        if not piece:
            break
        data += piece
    if len(data) != length or stream.read(1):
        raise ValidationFailed(
            N_("The chunk's size differs from its Content-Range."), code="UPLOAD_CHUNK_INCOMPLETE"
        )
    if hashlib.sha256(data).hexdigest() != chunk_sha256:
        raise ValidationFailed(
            N_("The chunk does not match its SHA-256; send it again."), code="UPLOAD_CHUNK_CHECKSUM"
        )
    descriptor = os.open(_part(store, upload), os.O_WRONLY)
    try:
        os.pwrite(descriptor, data, where.start)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    _lock_and_reload(session, upload)
    if upload.received > where.end:
        return upload  # the same chunk arrived twice at once; the other request recorded it
    if upload.received != where.start:
        raise Conflict(
            N_("The chunk does not continue the upload; resume at the offset given."),
            code="UPLOAD_OUT_OF_ORDER",
            extra={"offset": upload.received},
        )
    upload.received = where.end + 1
    upload.updated_at = utcnow()
    session.flush()
    return upload


def _lock_and_reload(session: Session, upload: SlideUpload) -> None:
    """Take the write lock once the file work is done, and read the upload again under it.

    Raises UploadNotFound when another request finished or removed the upload meanwhile.
    """
    take_write_lock(session)
    try:
        session.refresh(upload)
    except InvalidRequestError:
        raise UploadNotFound() from None


def complete_upload(
    session: Session,
    store: SlideStore,
    upload: SlideUpload,
    *,
    site_code: str,
    max_bytes: int,
) -> IngestResult:
    """Check the whole file against its declared SHA-256 and ingest it; the upload is then gone.

    Raises Conflict while bytes are missing, ValidationFailed when the file does not match
    its SHA-256, and whatever ingest refuses the file for (its bytes are then removed).
    """
    if upload.received != upload.size:
        raise Conflict(
            N_("The upload is not complete yet."), code="UPLOAD_INCOMPLETE", extra={"offset": upload.received}
        )
    folder = store.root / INCOMING / upload.folder
    path = folder / PART_NAME
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    if digest.hexdigest() != upload.sha256:
        # The request rolls back, so the upload stays as it was; the stale-upload job removes it.
        raise ValidationFailed(
            N_("The file that arrived does not match its SHA-256; upload it again."),
            code="UPLOAD_CHECKSUM",
        )
    _lock_and_reload(session, upload)
    session.delete(upload)
    session.flush()
    received = ReceivedFile(folder=folder, path=path, sha256=upload.sha256, size=upload.size)
    return accept_received(
        session,
        store,
        received,
        filename=upload.filename,
        site_id=upload.site_id,
        site_code=site_code,
        case_id=upload.case_id,
        uploaded_by=upload.user_id,
        max_bytes=max_bytes,
    )


def purge_stale_uploads(session: Session, store: SlideStore, now: datetime | None = None) -> int:
    """Remove uploads untouched for a day, rows and bytes; return how many went."""
    cutoff = (now or utcnow()) - STALE_AFTER
    stale = session.scalars(select(SlideUpload).where(SlideUpload.updated_at < cutoff)).all()
    for upload in stale:
        store.discard(store.root / INCOMING / upload.folder)
        session.delete(upload)
    session.flush()
    return len(stale)
