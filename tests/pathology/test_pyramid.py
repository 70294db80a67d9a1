"""A single-level slide gets a pyramid built by a job: processing → ready, event slide.ready, native tiles."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import openslide
import pytest
from flask import Flask
from PIL import Image

from his import events, jobs
from his.models import User
from tests.conftest import login
from tests.pathology.helpers import WSI, SlideClient, stored_files


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Treat slides longer than 1024 px on a side as needing a pyramid, so CMU-1 (2220×2967) does."""
    return {**settings_overrides, "extra": {"pathology_pyramid_min_side": 1024}}


def test_a_single_level_slide_is_viewable_once_its_pyramid_is_built(
    app: Flask, make_user: Callable[..., User], make_token: Callable[..., str]
) -> None:
    doctor = make_user("doctor", site="DIST")
    district = SlideClient(app.test_client(), make_token(doctor))
    uploaded = district.upload_file("CMU-1-Small-Region.svs").get_json()
    slide_id = uploaded["id"]
    browser = app.test_client()
    login(browser, doctor.username)
    page = browser.get(f"/pathology/slides/{slide_id}").get_data(as_text=True)
    assert 'data-testid="slide-processing"' in page
    assert "đã xong 0%" in page
    assert "viewer.js" not in page
    assert (uploaded["status"], uploaded["level_count"], uploaded["progress"]) == ("processing", 1, 0.0)
    waiting = district.get(f"/slides/{slide_id}.dzi")
    assert waiting.status_code == 409
    assert "Tiêu bản đang được chuẩn bị để xem; tiêu bản sẽ mở được khi sẵn sàng." in waiting.get_data(
        as_text=True
    )
    assert district.get(f"/slides/{slide_id}/thumbnail.jpeg").status_code == 200

    with events.get_bus(app).subscribe(["slide.ready"], 5) as subscription:
        assert jobs.run_now(app, "pathology.build_pyramids") is True
        event = subscription.get(timeout=5)

    assert event is not None
    assert event.data["slide_id"] == slide_id
    ready = district.get(f"/api/v1/slides/{slide_id}").get_json()
    assert (ready["status"], ready["level_count"], ready["progress"]) == ("ready", 5, 1.0)
    assert (ready["width"], ready["height"], ready["mpp_x"]) == (2220, 2967, 0.499)
    dzi = district.get(f"/slides/{slide_id}.dzi").get_data(as_text=True)
    assert 'TileSize="256"' in dzi
    assert 'Overlap="0"' in dzi

    top = 12  # ceil(log2(2967))
    tile = district.get(f"/slides/{slide_id}_files/{top}/2_3.jpeg")
    assert tile.status_code == 200
    assert tile.headers["X-Tile-Source"] == "native"
    served = np.asarray(Image.open(io.BytesIO(tile.data)).convert("RGB"), dtype=np.int16)
    original = openslide.OpenSlide(str(WSI / "CMU-1-Small-Region.svs"))
    expected = np.asarray(original.read_region((512, 768), 0, (256, 256)).convert("RGB"), dtype=np.int16)
    assert served.shape == expected.shape
    assert np.abs(served - expected).mean() < 3.0
    lower = district.get(f"/slides/{slide_id}_files/{top - 3}/0_0.jpeg")
    assert lower.status_code == 200
    assert Image.open(io.BytesIO(lower.data)).size == (256, 256)

    files = stored_files(app)
    assert jobs.run_now(app, "pathology.build_pyramids") is True
    assert stored_files(app) == files
    assert 'src="/static/pathology/viewer.js' in browser.get(f"/pathology/slides/{slide_id}").get_data(
        as_text=True
    )
    assert [f.name for f in files if f.suffix == ".part"] == []
