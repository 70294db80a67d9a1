"""After the visit: the satisfaction survey in FHIR, and the manager's report per clinic."""

from __future__ import annotations

import re

from tests.booking.helpers import bearer, local_today
from tests.conftest import csrf_token, login


def _visit(client, session_id, patient_token, desk, doctor):
    booking = client.post(
        "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(patient_token)
    ).get_json()
    client.post("/api/v1/checkins", json={"code": booking["checkin_code"]}, headers=bearer(desk))
    client.post(f"/api/v1/sessions/{session_id}/queue/next", headers=bearer(doctor))
    client.post(f"/api/v1/sessions/{session_id}/queue/done", headers=bearer(doctor))
    return booking


def test_the_patient_answers_the_survey_and_the_manager_sees_the_day(
    client, app, clinic, make_session, patient_user, make_user, make_token
):
    session_id = make_session(clinic.id)
    desk = make_token(make_user("receptionist"), "user/*.*")
    doctor = make_token(make_user("doctor"), "user/*.*")
    patient = patient_user()
    token = make_token(patient, "patient/*.*")
    booking = _visit(client, session_id, token, desk, doctor)

    too_early_patient = make_token(patient_user(), "patient/*.*")
    other = client.post(
        "/api/v1/bookings", json={"session_id": session_id}, headers=bearer(too_early_patient)
    ).get_json()
    early = client.post(
        f"/api/v1/bookings/{other['id']}/survey", json={"overall": 5}, headers=bearer(too_early_patient)
    )
    assert early.status_code == 409
    assert early.get_json()["code"] == "SURVEY_NOT_OPEN"
    bad = client.post(f"/api/v1/bookings/{booking['id']}/survey", json={"overall": 9}, headers=bearer(token))
    assert bad.status_code == 422
    assert "overall" in bad.get_json()["fields"]

    login(client, patient.username)
    page = client.get(f"/booking/bookings/{booking['id']}").get_data(as_text=True)
    assert 'data-testid="survey"' in page
    client.post(
        f"/booking/bookings/{booking['id']}/survey",
        data={
            "csrf_token": csrf_token(client, "/booking/"),
            "overall": "4",
            "waiting": "yes",
            "comment": "Rất nhanh",
        },
    )
    again = client.post(
        f"/api/v1/bookings/{booking['id']}/survey", json={"overall": 1}, headers=bearer(token)
    )
    assert again.get_json()["code"] == "SURVEY_DONE"

    staff = make_token(make_user("doctor"), "user/*.*")
    found = client.get(
        f"/fhir/R4/QuestionnaireResponse?subject=Patient/{patient.patient_id}", headers=bearer(staff)
    ).get_json()
    assert found["total"] == 1
    answers = {i["linkId"]: i["answer"][0] for i in found["entry"][0]["resource"]["item"]}
    assert answers["overall"] == {"valueInteger": 4}
    assert answers["waiting"] == {"valueBoolean": True}
    assert answers["comment"] == {"valueString": "Rất nhanh"}

    client.post("/logout", data={"csrf_token": csrf_token(client, "/booking/")})
    login(client, make_user("manager").username)
    report = client.get(f"/booking/reports?date={local_today().isoformat()}").get_data(as_text=True)
    row = re.search(r"<tr><td>Phòng khám Nhi 3</td>(.*?)</tr>", report, re.S).group(1)
    cells = re.findall(r"<td>([^<]*)", row)
    assert cells[:3] == ["2", "1", "0"]  # two numbers, one seen, no no-show
    assert cells[5].startswith("4")  # satisfaction
    assert "<svg" in report
