"""The base layout: styles load, navigation depends on the role, every role has a home page."""

from __future__ import annotations

import re

import pytest

from his.models import ROLES
from tests.conftest import login

HOME_HEADINGS = {
    "patient": "Sức khỏe của tôi",
    "receptionist": "Quầy tiếp đón",
    "nurse": "Phòng điều dưỡng",
    "doctor": "Bàn làm việc của bác sĩ",
    "pharmacist": "Nhà thuốc",
    "pathologist": "Giải phẫu bệnh",
    "cashier": "Quầy thu ngân",
    "manager": "Quản lý",
    "admin": "Quản trị hệ thống",
}


def test_every_role_has_its_own_home_page(app, make_user):
    assert set(HOME_HEADINGS) == set(ROLES)
    for role, heading in HOME_HEADINGS.items():
        client = app.test_client()
        make_user(role, username=f"home-{role}")
        login(client, f"home-{role}")
        page = client.get("/").get_data(as_text=True)
        assert f'data-testid="home-heading">{heading}</h1>' in page, role


@pytest.mark.parametrize(("role", "sees_audit"), [("admin", True), ("doctor", False), ("patient", False)])
def test_navigation_depends_on_the_role(app, make_user, role, sees_audit):
    client = app.test_client()
    make_user(role, username="nav")
    login(client, "nav")
    page = client.get("/").get_data(as_text=True)
    nav = page.split('class="mainnav"', 1)[1].split("</nav>", 1)[0]
    assert ('href="/admin/audit"' in nav) is sees_audit


def test_every_link_in_the_navigation_answers(app, make_user):
    client = app.test_client()
    make_user("admin", username="admin")
    login(client, "admin")
    page = client.get("/").get_data(as_text=True)
    links = set(re.findall(r'href="(/[^"#]*)"', page))
    assert links
    for link in links:
        with client.get(link) as response:
            assert response.status_code == 200, link


def test_the_stylesheet_is_served(client):
    page = client.get("/login").get_data(as_text=True)
    href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page).group(1)
    with client.get(href) as css:
        assert css.status_code == 200
        assert b"--brand" in css.data


def test_every_page_links_a_favicon_that_is_served(client):
    page = client.get("/login").get_data(as_text=True)
    href = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page).group(1)
    with client.get(href) as icon:
        assert icon.status_code == 200
        assert icon.mimetype == "image/svg+xml"
        assert b"<svg" in icon.data
    legacy = client.get("/favicon.ico")
    assert legacy.status_code == 301
    assert legacy.headers["Location"].endswith(href)


def test_the_receptionist_home_promises_only_what_has_a_page(app, make_user):
    client = app.test_client()
    make_user("receptionist", username="desk")
    login(client, "desk")
    page = client.get("/").get_data(as_text=True)
    assert "thẻ BHYT" not in page
    assert "Đăng ký bệnh nhân vãng lai và tiếp đón bệnh nhân đã đặt lịch." in page


def test_a_visitor_finds_the_public_price_list_from_the_welcome_page(client):
    page = client.get("/").get_data(as_text=True)
    assert 'href="/prices"' in page
    assert "Bảng giá" in page
