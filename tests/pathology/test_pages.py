"""The pathology pages through a logged-in browser session: asking for a consult, the worklist, the label image."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from his.models import User
from tests.conftest import csrf_token, login
from tests.pathology.helpers import WSI, SlideClient, open_case, register_patient


def signed_in(app: Flask, user: User) -> FlaskClient:
    client = app.test_client()
    assert login(client, user.username).status_code == 302
    return client


def test_a_district_doctor_asks_for_a_consult_with_a_slide_uploaded_in_the_form(
    app: Flask, make_user: Callable[..., User], make_token: Callable[..., str]
) -> None:
    doctor = make_user("doctor", site="DIST")
    pathologist = make_user("pathologist", site="CENT")
    patient_id = register_patient(SlideClient(app.test_client(), make_token(doctor)))
    browser = signed_in(app, doctor)

    empty = browser.post(
        "/pathology/cases/new",
        data={"csrf_token": csrf_token(browser, "/pathology/cases/new"), "patient_id": patient_id},
    )
    assert empty.status_code == 422
    assert "Hãy viết câu hỏi lâm sàng cho bác sĩ giải phẫu bệnh." in empty.get_data(as_text=True)

    # Encoded in memory: the test client spools large bodies to a file it never closes.
    boundary, body = encode_multipart(
        {
            "csrf_token": csrf_token(browser, "/pathology/cases/new"),
            "patient_id": patient_id,
            "receiving_site": "CENT",
            "clinical_question": "U lympho?",
            "specimen_type": "Hạch cổ",
            "files": FileStorage(io.BytesIO((WSI / "CMU-1-Small-Region.svs").read_bytes()), "CMU-1.svs"),
        }
    )
    sent = browser.post(
        "/pathology/cases/new", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert sent.status_code == 302, sent.get_data(as_text=True)
    case_url = sent.headers["Location"]
    page = browser.get(case_url).get_data(as_text=True)
    assert "U lympho?" in page
    assert "CMU-1.svs" in page

    reader = signed_in(app, pathologist)
    worklist = reader.get("/pathology/worklist").get_data(as_text=True)
    assert "U lympho?" in worklist
    thumbnail_url = re.search(r'src="(/slides/[0-9a-f]{32}/thumbnail\.jpeg)"', worklist)
    assert thumbnail_url is not None
    thumbnail = reader.get(thumbnail_url.group(1))
    assert thumbnail.status_code == 200
    assert max(Image.open(io.BytesIO(thumbnail.data)).size) == 240
    assert reader.get("/pathology/worklist?status=in_progress").get_data(as_text=True).count("U lympho?") == 0


def test_the_label_image_is_shown_only_to_doctors_and_pathologists_of_the_case(
    app: Flask, make_user: Callable[..., User], make_token: Callable[..., str]
) -> None:
    doctor = make_user("doctor", site="DIST")
    nurse = make_user("nurse", site="DIST")
    pathologist = make_user("pathologist", site="CENT")
    uploaded = (
        SlideClient(app.test_client(), make_token(doctor)).upload_file("CMU-1-Small-Region.svs").get_json()
    )
    label_url = f"/slides/{uploaded['id']}/label.jpeg"

    as_doctor = signed_in(app, doctor)
    label = as_doctor.get(label_url)
    assert label.status_code == 200
    assert Image.open(io.BytesIO(label.data)).format == "JPEG"
    assert label_url in as_doctor.get(f"/pathology/slides/{uploaded['id']}").get_data(as_text=True)

    as_nurse = signed_in(app, nurse)
    assert as_nurse.get(label_url).status_code == 403
    viewer = as_nurse.get(f"/pathology/slides/{uploaded['id']}").get_data(as_text=True)
    assert label_url not in viewer
    assert "0.499 × 0.499 µm" in viewer
    assert signed_in(app, pathologist).get(label_url).status_code == 403  # not in a case sent to them


def _case_table_headers(page: str) -> list[str]:
    table = page.split('data-testid="case-table"', 1)[1].split("</thead>", 1)[0]
    return re.findall(r"<th>([^<]*)</th>", table)


def test_case_lists_name_the_hospitals_and_tell_the_slide_columns_apart(
    app: Flask, make_user: Callable[..., User], make_token: Callable[..., str]
) -> None:
    doctor = make_user("doctor", site="DIST")
    pathologist = make_user("pathologist", site="CENT")
    open_case(SlideClient(app.test_client(), make_token(doctor)))

    worklist = _case_table_headers(
        signed_in(app, pathologist).get("/pathology/worklist").get_data(as_text=True)
    )
    sent = _case_table_headers(signed_in(app, doctor).get("/pathology/cases").get_data(as_text=True))

    # The pathologist sees which hospital sent the case; the district doctor where it went.
    assert worklist[:3] == ["Ảnh tiêu bản", "Ca", "Nơi gửi"]
    assert sent[:3] == ["Ảnh tiêu bản", "Ca", "Nơi nhận"]
    for headers in (worklist, sent):
        assert "Số tiêu bản" in headers
        assert len(set(headers)) == len(headers), headers
        assert not {"Từ ngày", "Đến ngày"} & set(headers)
