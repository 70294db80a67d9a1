"""What a call leaves in the record: the consult request, the Encounter, the note, chat and files;
and the ICE servers a participant is given."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fhir import services as store
from his import events
from his.db import get_database
from tests.telehealth.conftest import CallPeople, bearer, call_headers, link_of


def read(app: Flask, rtype: str, rid: str) -> dict[str, Any]:
    with app.app_context(), get_database(app).session_scope() as session:
        return store.read(session, rtype, rid).resource


def test_a_consult_request_goes_to_the_central_site_and_is_announced(
    app: Flask, client: FlaskClient, people: CallPeople
) -> None:
    before = client.get(f"/api/v1/patients/{people.patient_id}", headers=bearer(people.coordinator_token))
    with app.app_context(), events.subscribe("telehealth.consult.*") as told:
        response = client.post(
            "/api/v1/telehealth/consults",
            json={
                "patient_id": people.patient_id,
                "reason": "Nghi nhồi máu cơ tim",
                "summary": "ECG bất thường",
            },
            headers=bearer(people.doctor_token),
        )
        event = told.get(2.0)
    request = read(app, "ServiceRequest", response.get_json()["id"])
    after = client.get(f"/api/v1/patients/{people.patient_id}", headers=bearer(people.coordinator_token))

    # The consulted site now sees the patient, and only since the request.
    assert before.status_code == 403
    assert after.status_code == 200
    assert response.status_code == 201
    assert request["category"][0]["coding"][0]["code"] == "teleconsultation"
    assert request["subject"] == {"reference": f"Patient/{people.patient_id}"}
    assert request["performer"][0]["display"] == "Bệnh viện trung ương"
    assert request["reasonCode"] == [{"text": "Nghi nhồi máu cơ tim"}]
    assert event is not None
    assert event.data["to_site"] == "CENT"


def test_a_call_opens_a_virtual_encounter_and_ending_it_finishes_it(
    app: Flask, client: FlaskClient, consult_room: dict[str, Any]
) -> None:
    host = link_of(consult_room, "host")
    joined = client.post("/api/v1/telehealth/call/join", headers=call_headers(host)).get_json()
    encounter_id = joined["room"]["encounter_id"]
    during = read(app, "Encounter", encounter_id)
    client.post("/api/v1/telehealth/call/end", headers=call_headers(host))
    after = read(app, "Encounter", encounter_id)

    assert during["status"] == "in-progress"
    assert during["class"]["code"] == "VR"
    assert during["basedOn"] == [{"reference": f"ServiceRequest/{consult_room['service_request_id']}"}]
    assert after["status"] == "finished"
    assert "end" in after["period"]


def test_the_specialists_note_is_a_composition_and_completes_the_request(
    app: Flask, client: FlaskClient, consult_room: dict[str, Any], people: CallPeople, make_token: Any
) -> None:
    client.post("/api/v1/telehealth/call/join", headers=call_headers(link_of(consult_room, "specialist")))
    specialist_token = make_token(people.specialist)

    by_coordinator = client.post(
        f"/api/v1/telehealth/rooms/{consult_room['id']}/note",
        json={"title": "Kết luận hội chẩn", "text": "Chuyển tuyến."},
        headers=bearer(people.coordinator_token),
    )
    with app.app_context(), events.subscribe("telehealth.consult.completed") as told:
        written = client.post(
            f"/api/v1/telehealth/rooms/{consult_room['id']}/note",
            json={"title": "Kết luận hội chẩn", "text": "Hội chứng vành cấp.\nChuyển tuyến trung ương."},
            headers=bearer(specialist_token),
        )
        event = told.get(2.0)
    note = read(app, "Composition", written.get_json()["id"])
    request = read(app, "ServiceRequest", consult_room["service_request_id"])

    assert by_coordinator.status_code == 403
    assert written.status_code == 201
    assert note["type"]["coding"][0]["code"] == "11488-4"
    assert note["encounter"] == {"reference": f"Encounter/{written.get_json()['encounter_id']}"}
    assert note["author"] == [{"display": "Phạm Văn Hùng"}]
    assert "Chuyển tuyến trung ương." in note["section"][0]["text"]["div"]
    assert request["status"] == "completed"
    assert event is not None
    assert event.data["composition_id"] == note["id"]


def test_chat_and_shared_files_land_in_the_record(
    app: Flask, client: FlaskClient, consult_room: dict[str, Any]
) -> None:
    host, specialist = link_of(consult_room, "host"), link_of(consult_room, "specialist")
    client.post("/api/v1/telehealth/call/join", headers=call_headers(host))
    client.post("/api/v1/telehealth/call/join", headers=call_headers(specialist))
    ecg = b"%PDF-1.4 ECG 12 chuyen dao"

    said = client.post(
        "/api/v1/telehealth/call/chat", json={"text": "Xin chào anh Hùng"}, headers=call_headers(host)
    )
    shared = client.post(
        "/api/v1/telehealth/call/files",
        data={"file": (__import__("io").BytesIO(ecg), "điện tim.pdf", "application/pdf")},
        headers=call_headers(host),
        content_type="multipart/form-data",
    )
    history = client.get("/api/v1/telehealth/call/chat", headers=call_headers(specialist)).get_json()[
        "messages"
    ]
    download = client.get(
        f"/api/v1/telehealth/call/files/{shared.get_json()['id']}", headers=call_headers(specialist)
    )
    document = read(app, "DocumentReference", shared.get_json()["file"]["document"])
    empty = client.post("/api/v1/telehealth/call/chat", json={"text": "   "}, headers=call_headers(host))

    assert said.status_code == 201
    assert [(m["name"], m["text"]) for m in history] == [
        ("Trần Thị Lan", "Xin chào anh Hùng"),
        ("Trần Thị Lan", ""),
    ]
    assert history[1]["file"]["name"] == "điện tim.pdf"
    assert download.data == ecg
    assert download.mimetype == "application/pdf"
    assert base64.b64decode(document["content"][0]["attachment"]["data"]) == ecg
    assert document["context"]["encounter"][0]["reference"].startswith("Encounter/")
    assert empty.status_code == 422


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {
        **settings_overrides,
        "ice_servers": "stun:stun.vetinh.test:3478, turn:turn.vetinh.test:3478?transport=udp",
        "turn_secret": "coturn-static-auth-secret",
    }


def test_participants_get_short_lived_turn_credentials_coturn_accepts(
    client: FlaskClient, consult_room: dict[str, Any]
) -> None:
    joined = client.post(
        "/api/v1/telehealth/call/join", headers=call_headers(link_of(consult_room, "host"))
    ).get_json()
    stun, turn = joined["ice_servers"]
    expiry, _, user = turn["username"].partition(":")
    expected = base64.b64encode(
        hmac.new(b"coturn-static-auth-secret", turn["username"].encode(), hashlib.sha1).digest()
    ).decode()

    assert stun == {"urls": ["stun:stun.vetinh.test:3478"]}
    assert turn["urls"] == ["turn:turn.vetinh.test:3478?transport=udp"]
    assert turn["credential"] == expected
    assert user == f"vetinh-{joined['participant']['id']}"
    # Valid until the call's hard end, not a day: a leaked credential dies with the call.
    from datetime import datetime

    assert int(expiry) == int(
        datetime.fromisoformat(joined["room"]["hard_end"].replace("Z", "+00:00")).timestamp()
    )


def test_the_api_document_describes_the_call_endpoints(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").get_json()

    assert "/api/v1/telehealth/call/signal" in document["paths"]
    assert "/api/v1/telehealth/consults/{service_request_id}/schedule" in document["paths"]
    signal = document["paths"]["/api/v1/telehealth/call/signal"]["post"]
    assert signal["parameters"][0]["name"] == "X-Call-Token"
    assert "422" in signal["responses"]
