"""Slide upload: what is accepted, what is refused and why, and what stays in the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openslide
import pytest
from flask import Flask
from sqlalchemy import func, select

from his.db import get_database
from his.models import AuditRecord
from pathology.models import Slide
from tests.pathology import refusals
from tests.pathology.helpers import SINGLE_FILES, WSI, SlideClient, dicom_series_zip, stored_files


@pytest.mark.parametrize("name", SINGLE_FILES)
def test_every_slide_file_is_accepted_with_what_openslide_reads(
    app: Flask, district: SlideClient, name: str
) -> None:
    reference = openslide.OpenSlide(str(WSI / name))
    response = district.upload_file(name)

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["duplicate"] is False
    assert (body["width"], body["height"]) == reference.dimensions
    assert body["level_count"] == reference.level_count
    assert body["vendor"] == reference.properties["openslide.vendor"]
    assert response.headers["Location"] == f"/api/v1/slides/{body['id']}"

    again = district.get(f"/api/v1/slides/{body['id']}")
    assert again.status_code == 200
    assert again.get_json()["sha256"] == body["sha256"]
    files = stored_files(app)
    assert files
    assert all(".incoming" not in f.parts for f in files)


def test_aperio_metadata_are_shown(district: SlideClient) -> None:
    body = district.upload_file("CMU-1-Small-Region.svs", case_id="GPB-2026-0042").get_json()

    assert body["format"] == "aperio"
    assert (body["mpp_x"], body["mpp_y"]) == (0.499, 0.499)
    assert body["objective_power"] == 20
    assert body["scanned_at"] == "2009-12-29T09:59:15+00:00"
    assert body["case_id"] == "GPB-2026-0042"
    assert body["filename"] == "CMU-1-Small-Region.svs"


def test_a_slide_without_a_case_waits_in_the_site_inbox(district: SlideClient) -> None:
    body = district.upload_file("small.svs").get_json()
    assert body["case_id"] is None


def test_a_dicom_wsi_series_is_accepted_as_a_zip(app: Flask, district: SlideClient) -> None:
    response = district.upload(dicom_series_zip(), "scan-export.zip")

    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["format"], body["width"], body["height"]) == ("dicom", 16, 16)
    assert body["mpp_x"] == pytest.approx(0.499)
    tile = district.get(f"/slides/{body['id']}_files/4/0_0.jpeg")
    assert tile.status_code == 200
    names = sorted(f.name for f in stored_files(app))
    assert names == ["0001.dcm", "0002.dcm"]


REFUSED: list[tuple[str, Callable[[], bytes], str, str, str]] = [
    ("ct.dcm", refusals.ct_image, "SLIDE_NOT_WSI_DICOM", "CT Image Storage", "not a whole-slide"),
    ("photo.jpg", refusals.plain_jpeg, "SLIDE_PLAIN_IMAGE", "plain JPEG", "not a whole-slide"),
    ("scan.tif", refusals.striped_tiff, "SLIDE_UNTILED_TIFF", "strips, not tiles", "tiled"),
    ("cut.svs", refusals.truncated_svs, "SLIDE_TRUNCATED", "truncated", "Upload it again"),
    (
        "notes.svs",
        lambda: b"patient notes, not a slide\n" * 40,
        "SLIDE_UNSUPPORTED_FORMAT",
        "OpenSlide cannot read",
        "SVS",
    ),
    ("escape.zip", refusals.zip_escaping_the_folder, "SLIDE_ARCHIVE_UNSAFE", "outside", "../../outside.dcm"),
    ("mixed.zip", refusals.zip_with_ct, "SLIDE_NOT_WSI_DICOM", "CT Image Storage", "a/2.dcm"),
    ("broken.zip", refusals.damaged_zip, "SLIDE_ARCHIVE_DAMAGED", "damaged or truncated", "zip"),
    (
        "readme.zip",
        lambda: refusals.zip_with({"readme.txt": b"hello"}),
        "SLIDE_ARCHIVE_EMPTY",
        "no slide",
        "DICOM",
    ),
    ("empty.svs", lambda: b"", "SLIDE_EMPTY", "empty", "file"),
]


@pytest.mark.parametrize(
    ("filename", "build", "code", "says", "also_says"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_a_refused_file_gets_a_clear_422_and_leaves_nothing_behind(
    app: Flask,
    district: SlideClient,
    filename: str,
    build: Callable[[], bytes],
    code: str,
    says: str,
    also_says: str,
) -> None:
    response = district.upload(build(), filename)

    assert response.status_code == 422, response.get_json()
    body = response.get_json()
    assert body["code"] == code
    assert says in body["message"]
    assert also_says in body["message"]
    assert stored_files(app) == []
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Slide)) == 0
    assert not (Path(app.extensions["vetinh.settings"].data_dir).parent / "outside.dcm").exists()


def test_an_upload_without_a_file_names_the_field(district: SlideClient) -> None:
    response = district.client.post("/api/v1/slides", data={"case_id": "X1"}, headers=district.headers)

    assert response.status_code == 422
    assert response.get_json()["fields"] == {"file": "required"}


def test_a_malformed_case_id_is_refused(app: Flask, district: SlideClient) -> None:
    response = district.upload_file("small.svs", case_id="../../etc")

    assert response.status_code == 422
    assert "case_id" in response.get_json()["fields"]
    assert stored_files(app) == []


def test_the_same_file_twice_returns_the_first_slide(app: Flask, district: SlideClient) -> None:
    first = district.upload_file("boxes.tiff").get_json()
    files_after_first = stored_files(app)

    second = district.upload_file("boxes.tiff")

    assert second.status_code == 200
    assert second.get_json()["id"] == first["id"]
    assert second.get_json()["duplicate"] is True
    assert stored_files(app) == files_after_first


def test_another_site_uploading_the_same_file_gets_its_own_slide(
    slides_as: Callable[..., SlideClient], district: SlideClient
) -> None:
    central = slides_as("pathologist", "CENT")
    mine = district.upload_file("small.svs").get_json()
    theirs = central.upload_file("small.svs")

    assert theirs.status_code == 201
    assert theirs.get_json()["id"] != mine["id"]


def test_staff_of_another_site_are_refused_and_audited(
    app: Flask, slides_as: Callable[..., SlideClient], district: SlideClient
) -> None:
    slide_id = district.upload_file("small.svs").get_json()["id"]
    central = slides_as("pathologist", "CENT")

    for url in (
        f"/api/v1/slides/{slide_id}",
        f"/slides/{slide_id}.dzi",
        f"/slides/{slide_id}_files/4/0_0.jpeg",
    ):
        assert central.get(url).status_code == 403, url
    assert central.get(f"/api/v1/slides/{slide_id}").get_json()["code"] == "SLIDE_ACCESS_DENIED"
    with get_database(app).session_scope() as session:
        denied = session.scalars(
            select(AuditRecord.role).where(AuditRecord.entity_id == slide_id, AuditRecord.outcome == "denied")
        ).all()
    assert denied == ["pathologist"] * 4


@pytest.mark.parametrize("role", ["receptionist", "cashier", "admin"])
def test_roles_without_clinical_need_neither_upload_nor_view(
    slides_as: Callable[..., SlideClient], district: SlideClient, role: str
) -> None:
    slide_id = district.upload_file("small.svs").get_json()["id"]
    other = slides_as(role, "DIST")

    assert other.upload_file("boxes.tiff").status_code == 403
    assert other.get(f"/api/v1/slides/{slide_id}").status_code == 403


def test_a_read_only_token_cannot_upload(slides_as: Callable[..., SlideClient]) -> None:
    reader = slides_as("doctor", "DIST", scope="user/*.read")
    response = reader.upload_file("small.svs")

    assert response.status_code == 403
    assert response.get_json()["code"] == "SLIDE_UPLOAD_DENIED"


def test_anonymous_callers_must_log_in(app: Flask, district: SlideClient) -> None:
    slide_id = district.upload_file("small.svs").get_json()["id"]
    anonymous = app.test_client()

    assert anonymous.get(f"/api/v1/slides/{slide_id}").status_code == 401
    assert anonymous.get(f"/slides/{slide_id}.dzi").status_code in (302, 401)


def test_an_unknown_slide_is_not_found(district: SlideClient) -> None:
    assert district.get("/api/v1/slides/" + "0" * 32).status_code == 404
    assert district.get("/api/v1/slides/not-a-slide").get_json()["code"] == "SLIDE_NOT_FOUND"


def test_the_upload_is_described_in_the_openapi_document(client: object) -> None:
    document = client.get("/api/v1/openapi.json").get_json()  # type: ignore[attr-defined]
    upload = document["paths"]["/api/v1/slides"]["post"]

    assert "multipart/form-data" in upload["requestBody"]["content"]
    assert {"201", "200", "422", "403"} <= set(upload["responses"])
    assert "get" in document["paths"]["/api/v1/slides/{slide_id}"]
