"""Slide limits set by configuration: the size limit and the number of slides kept open."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from his.events import get_bus
from pathology.tiles import tile_server
from tests.pathology.helpers import SINGLE_FILES, SlideClient, stored_files


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Allow slides of at most 200 kB and keep at most two slides open."""
    return {
        **settings_overrides,
        "extra": {"pathology_max_slide_bytes": 200_000, "pathology_open_slides": 2},
    }


def test_a_slide_over_the_size_limit_is_refused_and_nothing_stays(app: Flask, district: SlideClient) -> None:
    response = district.upload_file("CMU-1-Small-Region.svs")

    assert response.status_code == 413
    body = response.get_json()
    assert body["code"] == "SLIDE_TOO_LARGE"
    assert "limit" in body["message"]
    assert stored_files(app) == []


def test_slides_under_the_limit_are_accepted(district: SlideClient) -> None:
    assert district.upload_file("bone-marrow-jpeg.dcm").status_code == 201


def test_no_more_slides_stay_open_than_configured(app: Flask, district: SlideClient) -> None:
    small = [name for name in SINGLE_FILES if name != "CMU-1-Small-Region.svs"]
    for name in small:
        slide_id = district.upload_file(name).get_json()["id"]
        assert district.get(f"/slides/{slide_id}.dzi").status_code == 200

    assert len(tile_server(app).handles) == 2


def test_an_accepted_slide_is_announced_as_ready(app: Flask, district: SlideClient) -> None:
    with get_bus(app).subscribe(["slide.ready"], 2.0) as subscription:
        slide_id = district.upload_file("small.svs").get_json()["id"]
        event = subscription.get(timeout=2.0)

    assert event is not None
    assert event.data["slide_id"] == slide_id
    assert event.data["site"] == "DIST"


def test_a_stream_crossing_the_limit_is_stopped_while_it_arrives(app: Flask, district: SlideClient) -> None:
    response = district.upload(b"\0" * 250_000, "big.svs")

    assert response.status_code == 413
    assert response.get_json()["message"] == "The file is larger than the slide size limit of 195 kB."
    assert stored_files(app) == []
