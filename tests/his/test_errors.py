"""One error handler: HTML for pages, JSON for the API, OperationOutcome for FHIR."""

from __future__ import annotations

import pytest


def test_unknown_page_is_a_404_html_page(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "Không tìm thấy trang" in page
    assert "Không tìm thấy nội dung nào ở địa chỉ này." in page
    assert "Nothing is found" not in page


def test_unknown_api_url_is_a_404_json_error(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    body = response.get_json()
    assert body["code"] == "NOT_FOUND"
    assert body["path"] == "/api/v1/no-such-thing"
    assert body["message"] == "Nothing is found at this address."
    assert body["fields"] == {}


def test_unknown_fhir_url_is_a_404_operation_outcome(client):
    response = client.get("/fhir/R4/NoSuchType/1/extra/parts")
    assert response.status_code == 404
    assert response.mimetype == "application/fhir+json"
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/healthz", "html"), ("/api/v1/openapi.json", "json")],
)
def test_wrong_method_is_a_405_in_the_right_format(client, path, kind):
    response = client.delete(path)
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    if kind == "json":
        assert response.get_json()["code"] == "METHOD_NOT_ALLOWED"
    else:
        assert response.mimetype == "text/html"
        assert "Địa chỉ này không nhận loại yêu cầu này." in response.get_data(as_text=True)


def test_malformed_json_to_the_api_is_a_clear_400(client):
    response = client.post("/api/v1/auth/token", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == "MALFORMED_JSON"


def test_an_oversized_body_is_413(app, client):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = client.post("/api/v1/auth/token", data=b"x" * (limit + 1), content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["code"] == "PAYLOAD_TOO_LARGE"


def test_a_crash_is_a_500_that_leaks_nothing(app, client):
    @app.get("/api/v1/explode")
    def explode() -> str:
        raise RuntimeError("secret internals")

    response = client.get("/api/v1/explode")
    assert response.status_code == 500
    assert "secret internals" not in response.get_data(as_text=True)
    assert response.get_json()["code"] == "INTERNAL"


def test_a_crash_on_a_page_says_so_in_vietnamese(app, client):
    @app.get("/explode")
    def explode_page() -> str:
        raise RuntimeError("secret internals")

    page = client.get("/explode").get_data(as_text=True)
    assert "Đã xảy ra lỗi ngoài dự kiến. Lỗi đã được ghi lại." in page
    assert "secret internals" not in page


def test_an_expired_form_is_explained_in_vietnamese(client):
    response = client.post("/login", data={"username": "x", "password": "y"})
    assert response.status_code == 400
    assert "Biểu mẫu đã hết hạn" in response.get_data(as_text=True)
