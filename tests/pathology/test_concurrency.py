"""Slides uploaded at the same moment are all stored: none loses a database race (SQLite's "database is locked")."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from sqlalchemy import func, select

from his.db import get_database
from pathology.demo_slide import write_demo_slide
from pathology.models import Slide
from tests.pathology.helpers import SlideClient

UPLOADERS = 8


def small_slides(folder: Path, count: int) -> list[bytes]:
    """Draw ``count`` different small pyramidal TIFF slides."""
    return [write_demo_slide(folder / f"slide-{n}.tiff", side=512, seed=n).read_bytes() for n in range(count)]


def test_slides_uploaded_at_once_are_all_stored(
    app: Flask, live_server: Any, tmp_path: Path, slides_as: Callable[..., SlideClient]
) -> None:
    slides = small_slides(tmp_path, UPLOADERS)
    # Two uploaders send the same file: one stores it, the other is told it is a duplicate.
    slides.append(slides[0])
    clients = [slides_as("doctor", "DIST") for _ in slides]
    start = threading.Barrier(len(slides))

    def send(job: tuple[SlideClient, bytes]) -> requests.Response:
        client, data = job
        with requests.Session() as http:
            start.wait()
            return http.post(
                f"{live_server.url}/api/v1/slides",
                files={"file": ("slide.tiff", data, "image/tiff")},
                headers=client.headers,
                timeout=120,
            )

    with ThreadPoolExecutor(max_workers=len(slides)) as pool:
        answers = list(pool.map(send, zip(clients, slides, strict=True)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] + [201] * UPLOADERS, [a.text[:300] for a in answers if a.status_code >= 300]
    by_hash = {hashlib.sha256(data).hexdigest() for data in slides}
    assert {answer.json()["sha256"] for answer in answers} == by_hash
    duplicate = next(answer.json() for answer in answers if answer.status_code == 200)
    assert duplicate["duplicate"] is True
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Slide)) == UPLOADERS
