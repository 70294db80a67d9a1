"""Patient self-registration, staff registration, and who may read a patient."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import func, select

from his.db import get_database
from his.models import AuditRecord, User
from tests.conftest import TEST_PASSWORD, csrf_token, login


def _count_users(app) -> int:
    with get_database(app).session_scope() as db:
        return db.scalar(select(func.count()).select_from(User)) or 0


def _register(client, **fields):
    form = {
        "full_name": "Nguyễn Thị Thu",
        "birth_date": "1990-04-12",
        "sex": "female",
        "phone": "0912345678",
        "email": "thu@example.vn",
        "national_id": "001190012345",
        "username": "thu",
        "password": "mat-khau-manh",
    }
    form.update(fields)
    form["csrf_token"] = csrf_token(client, "/register")
    return client.post("/register", data=form)


def test_a_patient_registers_and_lands_on_their_home_page(client, app, sites):
    response = _register(client)
    assert response.status_code == 302
    home = client.get("/").get_data(as_text=True)
    assert "Sức khỏe của tôi" in home
    me = client.get("/api/v1/me").get_json()
    assert me["role"] == "patient"
    patient = client.get(f"/api/v1/patients/{me['patient_id']}").get_json()
    assert patient["full_name"] == "Nguyễn Thị Thu"
    assert patient["national_id"] == "001190012345"
    assert patient["birth_date"] == "1990-04-12"


def test_an_invalid_cccd_is_named_and_nothing_is_written(client, app, sites):
    # 1990 is a 20th-century year, so a female must have gender digit 1, not 3.
    response = _register(client, national_id="001390012345")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'data-field="national_id"' in page
    assert "Mã thế kỷ và năm sinh không khớp với ngày sinh." in page
    assert _count_users(app) == 0


def test_a_future_birth_date_is_named(client, app, sites):
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    response = _register(client, birth_date=tomorrow, national_id="")
    assert response.status_code == 422
    assert 'data-field="birth_date"' in response.get_data(as_text=True)
    assert _count_users(app) == 0


def test_a_taken_username_leaves_no_second_patient_behind(client, app, sites, make_user):
    make_user("patient", username="thu")
    response = _register(client, national_id="")
    assert response.status_code == 409
    assert 'data-field="username"' in response.get_data(as_text=True)
    assert _count_users(app) == 1


def test_a_patient_asking_for_another_patients_data_gets_403_and_is_audited(app, sites):
    first, second = app.test_client(), app.test_client()
    _register(first, username="an", national_id="")
    _register(second, username="binh", national_id="", full_name="Trần Văn Bình", sex="male")
    other_id = second.get("/api/v1/me").get_json()["patient_id"]
    response = first.get(f"/api/v1/patients/{other_id}")
    assert response.status_code == 403
    assert response.get_json()["code"] == "PATIENT_ACCESS_DENIED"
    with get_database(app).session_scope() as db:
        denied = db.scalars(select(AuditRecord).where(AuditRecord.outcome == "denied")).all()
    assert [(r.username, r.patient_id) for r in denied] == [("an", other_id)]


def test_staff_register_patients_through_the_api_and_other_sites_cannot_read_them(
    client, app, make_user, make_token
):
    receptionist = make_user("receptionist", username="desk")
    central_doctor = make_user("doctor", username="central.doctor", site="CENT")
    token = make_token(receptionist)
    created = client.post(
        "/api/v1/patients",
        json={"full_name": "Lê Văn Cường", "birth_date": "1958-11-30", "sex": "male"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201
    patient_id = created.get_json()["id"]
    own_site = client.get(f"/api/v1/patients/{patient_id}", headers={"Authorization": f"Bearer {token}"})
    assert own_site.status_code == 200
    other = client.get(
        f"/api/v1/patients/{patient_id}", headers={"Authorization": f"Bearer {make_token(central_doctor)}"}
    )
    assert other.status_code == 403


def test_staff_registration_names_every_bad_field(client, make_user, make_token):
    token = make_token(make_user("receptionist"))
    response = client.post(
        "/api/v1/patients",
        json={"full_name": "", "birth_date": "2990-01-01", "sex": "x", "national_id": "12"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 422
    assert set(response.get_json()["fields"]) == {"full_name", "birth_date", "sex", "national_id"}


def test_a_cashier_cannot_register_patients(client, make_user, make_token):
    token = make_token(make_user("cashier"))
    response = client.post(
        "/api/v1/patients",
        json={"full_name": "A B", "birth_date": "2000-01-01", "sex": "male"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403


def test_login_after_registration_works_with_the_chosen_password(app, sites):
    client = app.test_client()
    _register(client, national_id="")
    other = app.test_client()
    assert login(other, "thu", "mat-khau-manh").status_code == 302
    assert login(app.test_client(), "thu", TEST_PASSWORD).status_code == 401
