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
from pathology.models import ConsultCase, Slide
from tests.pathology.helpers import SlideClient, open_case

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


def _all_at_once(jobs: list[Callable[[requests.Session], requests.Response]]) -> list[requests.Response]:
    start = threading.Barrier(len(jobs))

    def run(job: Callable[[requests.Session], requests.Response]) -> requests.Response:
        with requests.Session() as http:
            start.wait()
            return job(http)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def test_annotations_and_cases_saved_at_once_are_all_kept(
    app: Flask, live_server: Any, tmp_path: Path, slides_as: Callable[..., SlideClient]
) -> None:
    district = slides_as("doctor", "DIST")
    case = open_case(district)
    slide_id = case["slides"][0]["id"]
    pathologists = [slides_as("pathologist", "CENT") for _ in range(UPLOADERS)]

    def annotate(client: SlideClient, n: int) -> Callable[[requests.Session], requests.Response]:
        body = {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [1.0 + n / 10, 2.0]},
            "properties": {"kind": "point", "label": f"mitosis {n}"},
        }
        return lambda http: http.post(
            f"{live_server.url}/api/v1/slides/{slide_id}/annotations",
            json=body,
            headers=client.headers,
            timeout=60,
        )

    # District doctors each send their own slide in a new case at the same moment.
    senders = []
    for n, data in enumerate(small_slides(tmp_path, UPLOADERS)):
        doctor = slides_as("doctor", "DIST")
        uploaded = doctor.upload(data, f"slide-{n}.tiff")
        assert uploaded.status_code == 201, uploaded.get_json()
        senders.append((doctor, uploaded.get_json()["id"]))

    def send_case(client: SlideClient, slide: str) -> Callable[[requests.Session], requests.Response]:
        body = {
            "patient_id": case["patient_id"],
            "receiving_site": "CENT",
            "clinical_question": "U hay viêm?",
            "specimen_type": "Sinh thiết",
            "slide_ids": [slide],
        }
        return lambda http: http.post(
            f"{live_server.url}/api/v1/cases", json=body, headers=client.headers, timeout=60
        )

    jobs = [annotate(client, n) for n, client in enumerate(pathologists)]
    jobs += [send_case(client, slide) for client, slide in senders]
    answers = _all_at_once(jobs)

    assert [a.status_code for a in answers] == [201] * len(jobs), [
        a.text[:300] for a in answers if a.status_code != 201
    ]
    labels = {
        f["properties"]["label"]
        for f in district.get(f"/api/v1/slides/{slide_id}/annotations").get_json()["features"]
    }
    assert labels == {f"mitosis {n}" for n in range(UPLOADERS)}
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ConsultCase)) == 1 + UPLOADERS
