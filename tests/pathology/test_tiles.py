"""Deep Zoom tiles: correct pixels, caching headers, the slide's own tiles, and requests outside the slide."""

from __future__ import annotations

import io
import math
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import requests
from flask import Flask
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image
from sqlalchemy import select, update

from his.db import get_database
from his.models import Site
from pathology.models import Slide
from pathology.services import slide_views
from pathology.store import PathEscapesStore, SlideStore, slide_store
from pathology.tiles import TileCache, tile_server
from tests.pathology.helpers import SINGLE_FILES, WSI, SlideClient, decode

# A served tile must be as close to OpenSlide's rendering as an ordinary JPEG (quality 85)
# of that rendering is, and never needs to beat 30 dB; a neighbouring region or another
# level falls far below either.
MIN_PSNR = 30.0
Geometry = tuple[int, int]


def geometry(dzi: str) -> Geometry:
    size = re.search(r'TileSize="(\d+)"', dzi)
    overlap = re.search(r'Overlap="(\d+)"', dzi)
    assert size
    assert overlap
    return int(size.group(1)), int(overlap.group(1))


def reference_generator(name: str, tiles: Geometry) -> DeepZoomGenerator:
    """Render with OpenSlide's own Deep Zoom generator, straight from the test file."""
    return DeepZoomGenerator(openslide.OpenSlide(str(WSI / name)), tile_size=tiles[0], overlap=tiles[1])


def upload(district: SlideClient, name: str) -> tuple[str, DeepZoomGenerator]:
    slide_id = district.upload_file(name).get_json()["id"]
    dzi = district.get(f"/slides/{slide_id}.dzi")
    assert dzi.status_code == 200
    return slide_id, reference_generator(name, geometry(dzi.get_data(as_text=True)))


def psnr(got: np.ndarray, want: np.ndarray) -> float:
    """Return the peak signal-to-noise ratio of two same-sized RGB arrays, in dB."""
    mse = float(((got.astype(np.float64) - want) ** 2).mean())
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def jpeg_tolerance(want: np.ndarray) -> float:
    """Return the PSNR an ordinary quality-85 JPEG of this picture reaches, capped, less 1 dB."""
    buffer = io.BytesIO()
    Image.fromarray(want.astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return min(MIN_PSNR, psnr(decode(buffer.getvalue()), want)) - 1.0


def same_picture(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and psnr(got, want) >= jpeg_tolerance(want)


def assert_same_picture(served: bytes, expected: Any) -> None:
    got = decode(served)
    want = np.asarray(expected.convert("RGB"), dtype=np.int16)
    assert got.shape == want.shape
    assert psnr(got, want) >= jpeg_tolerance(want)


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_tiles_match_openslide_at_several_levels(district: SlideClient, name: str) -> None:
    slide_id, reference = upload(district, name)
    top = reference.level_count - 1
    for level in sorted({top, top - 1, top - 3, max(0, top - 6)}):
        cols, rows = reference.level_tiles[level]
        for col, row in {(0, 0), (cols - 1, rows - 1), (cols // 2, rows // 2)}:
            response = district.get(f"/slides/{slide_id}_files/{level}/{col}_{row}.jpeg")
            assert response.status_code == 200, (level, col, row)
            assert response.mimetype == "image/jpeg"
            assert_same_picture(response.data, reference.get_tile(level, (col, row)))


def test_the_svs_own_jpeg_tiles_are_sent_as_stored(district: SlideClient) -> None:
    slide_id, reference = upload(district, "CMU-1-Small-Region.svs")
    top = reference.level_count - 1
    slide = openslide.OpenSlide(str(WSI / "CMU-1-Small-Region.svs"))

    inner = district.get(f"/slides/{slide_id}_files/{top}/3_4.jpeg")
    edge = district.get(f"/slides/{slide_id}_files/{top}/9_12.jpeg")

    assert inner.headers["X-Tile-Source"] == "native"
    stored = decode(inner.data)
    expected = np.asarray(slide.read_region((3 * 240, 4 * 240), 0, (240, 240)).convert("RGB"), dtype=np.int16)
    assert stored.shape == (240, 240, 3)
    assert psnr(stored, expected) > 45
    neighbour = np.asarray(
        slide.read_region((4 * 240, 4 * 240), 0, (240, 240)).convert("RGB"), dtype=np.int16
    )
    assert not same_picture(stored, neighbour)
    assert edge.headers["X-Tile-Source"] == "rendered"
    assert decode(edge.data).shape == (2967 - 12 * 240, 2220 - 9 * 240, 3)


def test_each_tile_says_whether_it_was_stored_cached_or_rendered(district: SlideClient) -> None:
    slide_id, reference = upload(district, "CMU-1-Small-Region.svs")
    top = reference.level_count - 1
    cols, rows = reference.level_tiles[top]

    native = district.get(f"/slides/{slide_id}_files/{top}/3_4.jpeg")
    first = district.get(f"/slides/{slide_id}_files/{top - 2}/1_1.jpeg")
    again = district.get(f"/slides/{slide_id}_files/{top - 2}/1_1.jpeg")
    outside = district.get(f"/slides/{slide_id}_files/{top}/{cols}_{rows - 1}.jpeg")

    assert native.headers["X-Tile-Source"] == "native"
    assert first.headers["X-Tile-Source"] == "rendered"
    assert again.headers["X-Tile-Source"] == "cache"
    assert again.data == first.data
    assert again.headers["ETag"] == first.headers["ETag"]
    assert_same_picture(again.data, reference.get_tile(top - 2, (1, 1)))
    assert outside.status_code == 404
    assert "X-Tile-Source" not in outside.headers
    for response in (native, first, again):
        assert response.headers["X-Tile-Source"] in ("native", "cache", "rendered")
        assert slide_id not in response.headers["X-Tile-Source"]


def test_every_tile_request_is_access_checked_even_when_the_slide_is_remembered(
    district: SlideClient, slides_as: Any
) -> None:
    slide_id, reference = upload(district, "boxes.tiff")
    url = f"/slides/{slide_id}_files/{reference.level_count - 1}/0_0.jpeg"
    assert district.get(url).status_code == 200
    other_site = slides_as("doctor", "CENT")
    nurse_elsewhere = slides_as("nurse", "CENT")

    assert other_site.get(url).status_code == 403
    assert nurse_elsewhere.get(url, **{"If-None-Match": district.get(url).headers["ETag"]}).status_code == 403
    assert district.get(url).status_code == 200


def test_a_slide_taken_away_from_a_site_stops_serving_its_tiles_within_the_cache_time(
    app: Flask, district: SlideClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide_id, reference = upload(district, "boxes.tiff")
    url = f"/slides/{slide_id}_files/{reference.level_count - 1}/0_0.jpeg"
    monkeypatch.setattr(slide_views(app), "ttl", 0.3)
    assert district.get(url).status_code == 200
    with get_database(app).session_scope() as session:
        central = session.scalar(select(Site.id).where(Site.code == "CENT"))
        session.execute(update(Slide).where(Slide.id == slide_id).values(site_id=central))

    time.sleep(0.4)

    assert district.get(url).status_code == 403


def test_tiles_carry_an_etag_and_are_immutable(district: SlideClient) -> None:
    slide_id, reference = upload(district, "boxes.tiff")
    top = reference.level_count - 1
    url = f"/slides/{slide_id}_files/{top}/0_0.jpeg"

    first = district.get(url)
    other = district.get(f"/slides/{slide_id}_files/{top}/1_0.jpeg")
    revalidated = district.get(url, **{"If-None-Match": first.headers["ETag"]})

    assert "immutable" in first.headers["Cache-Control"]
    assert "private" in first.headers["Cache-Control"]
    assert first.headers["ETag"] != other.headers["ETag"]
    assert revalidated.status_code == 304
    assert revalidated.data == b""
    dzi = district.get(f"/slides/{slide_id}.dzi")
    assert dzi.headers["ETag"]
    assert "immutable" in dzi.headers["Cache-Control"]


def test_tiles_outside_the_slide_are_not_found(district: SlideClient) -> None:
    slide_id, reference = upload(district, "boxes.tiff")
    top = reference.level_count - 1
    cols, rows = reference.level_tiles[top]

    for path in (
        f"{top + 1}/0_0",
        f"{top}/{cols}_0",
        f"{top}/0_{rows}",
        f"{top}/-1_0",
        "99999999999999999999/0_0",
    ):
        assert district.get(f"/slides/{slide_id}_files/{path}.jpeg").status_code == 404, path


@pytest.mark.parametrize(
    "url",
    [
        "/slides/../../../etc/passwd.dzi",
        "/slides/..%2F..%2F..%2Fetc%2Fpasswd.dzi",
        "/slides/%2e%2e.dzi",
        "/slides/..%2F..%2Fsecret_files/0/0_0.jpeg",
        "/slides/....dzi",
    ],
)
def test_paths_that_climb_out_are_not_found(district: SlideClient, url: str) -> None:
    response = district.get(url)

    assert response.status_code == 404
    assert b"root:" not in response.data


def test_a_stored_path_leading_out_of_the_store_is_never_opened(app: Flask, district: SlideClient) -> None:
    slide_id = district.upload_file("small.svs").get_json()["id"]
    outside = Path(app.extensions["vetinh.settings"].data_dir).parent / "outside.svs"
    outside.write_bytes((WSI / "small.svs").read_bytes())
    with get_database(app).session_scope() as session:
        session.execute(update(Slide).where(Slide.id == slide_id).values(stored_path="../outside.svs"))

    response = district.get(f"/slides/{slide_id}.dzi")

    assert response.status_code == 404
    assert response.headers.get("ETag") is None


def test_the_store_refuses_escaping_paths_and_symlinks(tmp_path: Path) -> None:
    store = SlideStore(tmp_path / "slides")
    (tmp_path / "slides" / "DIST").mkdir(parents=True)
    (tmp_path / "secret.svs").write_bytes(b"x")
    (tmp_path / "slides" / "DIST" / "link.svs").symlink_to(tmp_path / "secret.svs")

    for bad in ("../secret.svs", "/etc/passwd", "DIST/../../secret.svs", "DIST/link.svs", "", "."):
        with pytest.raises(PathEscapesStore):
            store.resolve(bad)
    assert store.resolve("DIST/slide.svs") == (tmp_path / "slides" / "DIST" / "slide.svs").resolve()


def test_the_tile_cache_stays_within_its_size() -> None:
    cache = TileCache(max_bytes=10_000)
    for index in range(50):
        cache.put(("s", 0, index, 0), bytes(1_000))

    assert cache.size <= 10_000
    assert cache.get(("s", 0, 49, 0)) is not None
    assert cache.get(("s", 0, 0, 0)) is None


def test_eight_viewers_reading_two_slides_at_once_get_correct_tiles(
    app: Flask, live_server: Any, district: SlideClient
) -> None:
    slides = {name: upload(district, name) for name in ("CMU-1-Small-Region.svs", "bone-marrow-jpeg.dcm")}
    rng = random.Random(9)
    requests_to_make: list[tuple[str, int, int, int]] = []
    for name, (_slide_id, reference) in slides.items():
        for level in range(reference.level_count - 4, reference.level_count):
            cols, rows = reference.level_tiles[level]
            requests_to_make += [(name, level, rng.randrange(cols), rng.randrange(rows)) for _ in range(12)]
    expected = {
        key: np.asarray(slides[key[0]][1].get_tile(key[1], (key[2], key[3])).convert("RGB"), dtype=np.int16)
        for key in set(requests_to_make)
    }
    errors: list[str] = []
    served = [0]
    lock = threading.Lock()

    def viewer(seed: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = district.headers["Authorization"]
        order = random.Random(seed).sample(requests_to_make, len(requests_to_make))
        for name, level, col, row in order:
            slide_id = slides[name][0]
            response = session.get(
                f"{live_server.url}/slides/{slide_id}_files/{level}/{col}_{row}.jpeg", timeout=30
            )
            if response.status_code != 200:
                errors.append(f"{name} {level}/{col}_{row}: {response.status_code}")
                continue
            got = decode(response.content)
            want = expected[(name, level, col, row)]
            if not same_picture(got, want):
                errors.append(f"{name} {level}/{col}_{row}: wrong picture")
            with lock:
                served[0] += 1

    threads = [threading.Thread(target=viewer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert served[0] == 8 * len(requests_to_make)


def test_open_slides_are_kept_in_a_bounded_cache(app: Flask, district: SlideClient) -> None:
    server = tile_server(app)
    for name in SINGLE_FILES:
        upload(district, name)

    assert 0 < len(server.handles) <= server.handles.capacity
    assert slide_store(app).root.is_dir()


def test_evicted_slides_are_reopened_transparently(
    app: Flask, district: SlideClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tile_server(app)
    monkeypatch.setattr(server.handles, "capacity", 1)
    opened: dict[str, tuple[str, DeepZoomGenerator]] = {name: upload(district, name) for name in SINGLE_FILES}

    for slide_id, reference in opened.values():
        top = reference.level_count - 1
        response = district.get(f"/slides/{slide_id}_files/{top}/0_0.jpeg")
        assert response.status_code == 200
        assert_same_picture(response.data, reference.get_tile(top, (0, 0)))
    assert len(server.handles) == 1
