"""The pages around a call: my calls, opening a call from it, the call page itself."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.conftest import csrf_token, login
from tests.telehealth.conftest import CallPeople, call_headers


def test_a_doctor_opens_a_call_from_their_list_with_a_fresh_link(
    client: FlaskClient, visit_room: dict[str, Any], people: CallPeople
) -> None:
    old_link = next(link["token"] for link in visit_room["links"] if link["role"] == "host")
    login(client, people.doctor.username)

    listing = client.get("/telehealth/")
    opened = client.post(
        f"/telehealth/rooms/{visit_room['id']}/enter", data={"csrf_token": csrf_token(client, "/telehealth/")}
    )
    location = opened.headers["Location"]
    fresh = location.split("#", 1)[1]
    token = csrf_token(client, "/telehealth/call")
    joined = client.post(
        "/api/v1/telehealth/call/join", headers={**call_headers(fresh), "X-CSRFToken": token}
    )
    old = client.post(
        "/api/v1/telehealth/call/join", headers={**call_headers(old_link), "X-CSRFToken": token}
    )

    assert listing.status_code == 200
    assert f"/telehealth/rooms/{visit_room['id']}/enter" in listing.get_data(as_text=True)
    assert opened.status_code == 302
    assert location.startswith("/telehealth/call#")
    assert joined.status_code == 200
    assert joined.get_json()["host"] is True
    assert old.status_code == 403


def test_someone_not_invited_cannot_open_the_call(
    client: FlaskClient, visit_room: dict[str, Any], people: CallPeople
) -> None:
    login(client, people.specialist.username)

    listing = client.get("/telehealth/")
    opened = client.post(
        f"/telehealth/rooms/{visit_room['id']}/enter", data={"csrf_token": csrf_token(client, "/telehealth/")}
    )

    assert visit_room["id"] not in listing.get_data(as_text=True)
    assert opened.status_code == 403
