"""Annotations are GeoJSON in slide micrometres: stored as drawn, measured by the server, shared on the case."""

from __future__ import annotations

from typing import Any

import pytest

from tests.pathology.helpers import SlideClient, open_case

MPP = 0.499  # CMU-1-Small-Region.svs: 2220 × 2967 px


def feature(kind: str, geometry_type: str, coordinates: Any, label: str = "") -> dict[str, Any]:
    return {
        "type": "Feature",
        "geometry": {"type": geometry_type, "coordinates": coordinates},
        "properties": {"kind": kind, "label": label},
    }


def post(client: SlideClient, slide_id: str, body: Any) -> Any:
    return client.client.post(f"/api/v1/slides/{slide_id}/annotations", json=body, headers=client.headers)


@pytest.fixture
def case(district: SlideClient) -> dict[str, Any]:
    return open_case(district, "CMU-1-Small-Region.svs")


def test_annotations_round_trip_in_micrometres_with_server_side_measures(
    district: SlideClient, central: SlideClient, slides_as: Any, case: dict[str, Any]
) -> None:
    slide_id = case["slides"][0]["id"]
    rectangle = [[[100.0, 200.0], [400.0, 200.0], [400.0, 600.0], [100.0, 600.0], [100.0, 200.0]]]
    drawn = [
        feature("rectangle", "Polygon", rectangle, "tumour front"),
        feature("measurement", "LineString", [[10.0, 20.0], [310.0, 420.0]]),
        feature("point", "Point", [1000.5, 1200.25], "mitosis"),
        feature("polygon", "Polygon", [[[0, 0], [600, 0], [0, 800], [0, 0]]], "necrosis"),
    ]
    for body in drawn:
        response = post(central, slide_id, body)
        assert response.status_code == 201, response.get_json()

    collection = district.get(f"/api/v1/slides/{slide_id}/annotations").get_json()

    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["geometry"] for f in features] == [f["geometry"] for f in drawn]
    assert [f["properties"]["label"] for f in features] == ["tumour front", "", "mitosis", "necrosis"]
    assert features[0]["properties"]["area_mm2"] == pytest.approx(300 * 400 / 1e6)
    assert features[0]["properties"]["perimeter_um"] == pytest.approx(1400)
    assert features[1]["properties"]["length_um"] == pytest.approx(500.0)
    assert features[3]["properties"]["area_mm2"] == pytest.approx(0.24)
    assert all(f["properties"]["calibrated"] is True for f in features)
    assert {f["properties"]["author"] for f in features} == {"Test Pathologist"}

    central_doctor = slides_as("doctor", "CENT")
    assert central_doctor.get(f"/api/v1/slides/{slide_id}/annotations").status_code == 403
    assert post(central_doctor, slide_id, feature("point", "Point", [10, 10])).status_code == 403


def test_an_annotation_outside_the_slide_or_of_the_wrong_shape_is_refused(
    central: SlideClient, case: dict[str, Any]
) -> None:
    slide_id = case["slides"][0]["id"]
    width_um, height_um = 2220 * MPP, 2967 * MPP

    outside = post(central, slide_id, feature("point", "Point", [width_um + 100, 10]))
    wrong = post(central, slide_id, feature("rectangle", "LineString", [[0, 0], [10, 10]]))
    open_ring = post(central, slide_id, feature("polygon", "Polygon", [[[0, 0], [10, 0], [10, 10], [0, 10]]]))
    not_geojson = post(central, slide_id, {"kind": "point", "x": 1, "y": 2})
    inside = post(central, slide_id, feature("point", "Point", [width_um - 1, height_um - 1]))

    assert outside.status_code == 422
    assert outside.get_json()["fields"] == {"geometry": "A position lies outside the slide."}
    assert wrong.status_code == 422
    assert open_ring.status_code == 422
    assert not_geojson.status_code == 422
    assert inside.status_code == 201


def test_only_the_author_deletes_and_a_reported_case_freezes_its_annotations(
    district: SlideClient, central: SlideClient, case: dict[str, Any]
) -> None:
    slide_id = case["slides"][0]["id"]
    mine = post(central, slide_id, feature("point", "Point", [10, 10])).get_json()
    kept = post(central, slide_id, feature("point", "Point", [20, 20], "kept")).get_json()
    url = f"/api/v1/slides/{slide_id}/annotations"

    assert district.client.delete(f"{url}/{mine['id']}", headers=district.headers).status_code == 403
    assert central.client.delete(f"{url}/{mine['id']}", headers=central.headers).status_code == 204

    central.client.post(f"/api/v1/cases/{case['id']}/take", headers=central.headers)
    central.client.put(
        f"/api/v1/cases/{case['id']}/report",
        json={"microscopic": "Normal mucosa.", "conclusion": "No malignancy.", "diagnosis_code": "K63.5"},
        headers=central.headers,
    )
    signed = central.client.post(f"/api/v1/cases/{case['id']}/report/sign", headers=central.headers)
    assert signed.status_code == 200, signed.get_json()

    late = post(central, slide_id, feature("point", "Point", [30, 30]))
    removed = central.client.delete(f"{url}/{kept['id']}", headers=central.headers)
    assert late.status_code == 409
    assert removed.status_code == 409
    assert [f["properties"]["label"] for f in district.get(url).get_json()["features"]] == ["kept"]
