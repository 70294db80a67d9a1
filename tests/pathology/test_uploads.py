"""Large slides upload in resumable chunks with checksums; a dropped connection resumes where it stopped."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask
from sqlalchemy import func, select

from his.db import get_database
from pathology.models import SlideUpload
from tests.pathology.helpers import WSI, SlideClient, stored_files

CHUNK = 256 * 1024


def start(client: SlideClient, data: bytes, sha256: str | None = None) -> dict[str, Any]:
    response = client.client.post(
        "/api/v1/slides/uploads",
        json={
            "filename": "CMU-1.svs",
            "size": len(data),
            "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        },
        headers=client.headers,
    )
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def put(
    client: SlideClient, upload: dict[str, Any], data: bytes, start_at: int, end: int, **extra: str
) -> Any:
    chunk = data[start_at:end]
    headers = {
        **client.headers,
        "Content-Range": f"bytes {start_at}-{end - 1}/{len(data)}",
        "X-Chunk-SHA256": hashlib.sha256(chunk).hexdigest(),
        **extra,
    }
    return client.client.put(
        upload["url"], data=chunk, headers=headers, content_type="application/octet-stream"
    )


def test_a_slide_uploaded_in_chunks_resumes_after_a_dropped_connection(
    app: Flask, live_server: Any, district: SlideClient
) -> None:
    data = (WSI / "CMU-1-Small-Region.svs").read_bytes()
    upload = start(district, data)
    assert upload["offset"] == 0
    assert put(district, upload, data, 0, CHUNK).get_json()["offset"] == CHUNK

    # The connection drops halfway through the second chunk.
    address = urlsplit(live_server.url)
    second = data[CHUNK : 2 * CHUNK]
    with socket.create_connection((address.hostname, address.port), timeout=10) as raw:
        head = (
            f"PUT {upload['url']} HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Authorization: Bearer {district.token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {CHUNK}-{2 * CHUNK - 1}/{len(data)}\r\n"
            f"X-Chunk-SHA256: {hashlib.sha256(second).hexdigest()}\r\nContent-Length: {len(second)}\r\n\r\n"
        )
        raw.sendall(head.encode() + second[: len(second) // 2])
    state = district.get(upload["url"])
    assert state.get_json()["offset"] == CHUNK

    skipped = put(district, upload, data, 2 * CHUNK, 3 * CHUNK)
    assert skipped.status_code == 409
    assert skipped.get_json()["offset"] == CHUNK
    assert put(district, upload, data, 0, CHUNK).get_json()["offset"] == CHUNK  # a retried chunk is harmless
    early = district.client.post(upload["url"] + "/complete", headers=district.headers)
    assert early.status_code == 409
    assert early.get_json()["code"] == "UPLOAD_INCOMPLETE"

    offset = state.get_json()["offset"]
    while offset < len(data):
        offset = put(district, upload, data, offset, min(offset + CHUNK, len(data))).get_json()["offset"]
    done = district.client.post(upload["url"] + "/complete", headers=district.headers)

    assert done.status_code == 201, done.get_json()
    slide = done.get_json()
    assert (slide["status"], slide["width"], slide["height"]) == ("ready", 2220, 2967)
    assert slide["sha256"] == hashlib.sha256(data).hexdigest()
    assert district.get(f"/slides/{slide['id']}_files/12/0_0.jpeg").status_code == 200
    assert all(".incoming" not in f.parts for f in stored_files(app))
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(SlideUpload)) == 0


def test_a_chunk_or_a_file_that_does_not_match_its_checksum_is_refused(
    app: Flask, district: SlideClient, slides_as: Callable[..., SlideClient]
) -> None:
    data = (WSI / "small.svs").read_bytes()
    upload = start(district, data, sha256="0" * 64)

    corrupted = put(district, upload, data, 0, len(data), **{"X-Chunk-SHA256": "f" * 64})
    assert corrupted.status_code == 422
    assert corrupted.get_json()["code"] == "UPLOAD_CHUNK_CHECKSUM"
    assert district.get(upload["url"]).get_json()["offset"] == 0
    other = slides_as("doctor", "DIST")
    assert other.get(upload["url"]).status_code == 403

    assert put(district, upload, data, 0, len(data)).status_code == 200
    wrong_file = district.client.post(upload["url"] + "/complete", headers=district.headers)
    assert wrong_file.status_code == 422
    assert wrong_file.get_json()["code"] == "UPLOAD_CHECKSUM"
    assert district.get("/api/v1/slides/uploads/" + "a" * 32).status_code == 404
