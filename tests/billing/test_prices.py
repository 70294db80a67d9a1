"""The dated price list: imported from CSV, looked up by date, public at /prices and /prices.csv."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billing.copay import PriceMissing
from billing.models import PriceEntry
from billing.services import (
    DEMO_PRICE_LIST,
    PriceImportFailed,
    import_prices,
    price_on,
    read_price_csv,
    search_prices,
)
from his.db import get_database
from his.models import AuditRecord
from tests.conftest import csrf_token, login

PRICE_LIST = """code,name,kind,unit,price,insurance_price,valid_from,valid_to,xml_group
KB01,Khám bệnh nội khoa,visit,lần,50600,,2024-01-01,,13
KB01,Khám bệnh nội khoa,visit,lần,50600,,2025-01-01,,13
SA01,Siêu âm ổ bụng,service,lần,250000,200000,2024-01-01,,2
XN01,Tổng phân tích tế bào máu,service,lần,46200,,2024-01-01,2025-06-30,1
TH01,Paracetamol 500mg,drug,viên,1234.5,,2024-01-01,,4
"""


@pytest.fixture
def price_list(app):
    with get_database(app).session_scope() as session:
        import_prices(session, read_price_csv(PRICE_LIST.encode("utf-8")))
        # A price rise for the ultrasound from the first of July 2025.
        import_prices(
            session,
            read_price_csv(
                "code,name,kind,unit,price,insurance_price,valid_from\n"
                "SA01,Siêu âm ổ bụng,service,lần,280000,200000,2025-07-01\n"
            ),
        )


def test_price_is_the_one_in_force_on_the_day(app, price_list):
    with get_database(app).session_scope() as session:
        assert price_on(session, "SA01", date(2025, 6, 30)).price == Decimal("250000.000")
        rise = price_on(session, "SA01", date(2025, 7, 1))
        assert (rise.price, rise.insurance_price) == (Decimal("280000.000"), Decimal("200000.000"))
        assert price_on(session, "TH01", date(2025, 1, 1)).price == Decimal("1234.500")


@pytest.mark.parametrize(
    ("code", "day"),
    [("SA01", date(2023, 12, 31)), ("XN01", date(2025, 7, 1)), ("NOPE", date(2025, 1, 1))],
)
def test_a_missing_price_is_an_error_not_zero(app, price_list, code, day):
    with get_database(app).session_scope() as session, pytest.raises(PriceMissing) as caught:
        price_on(session, code, day)
    assert caught.value.extra["item_code"] == code


def test_search_ignores_case_and_diacritics(app, price_list):
    with get_database(app).session_scope() as session:
        found = search_prices(session, date(2025, 3, 1), query="sieu AM")
        assert [entry.code for entry in found.entries] == ["SA01"]
        assert search_prices(session, date(2025, 3, 1), query="kham noi").total == 1
        assert search_prices(session, date(2025, 3, 1), query="100%").total == 0
        assert search_prices(session, date(2025, 3, 1), kind="drug").entries[0].code == "TH01"
        # One entry per item: the 2024 and 2025 visit prices are not both listed.
        assert search_prices(session, date(2025, 3, 1)).total == 4
        assert search_prices(session, date(2025, 7, 1)).total == 3  # the blood count ended


def test_importing_the_same_file_twice_changes_nothing(app, price_list):
    with get_database(app).session_scope() as session:
        before = session.scalar(select(func.count()).select_from(PriceEntry))
        stamps = {
            row.id: row.updated_at for row in session.execute(select(PriceEntry.id, PriceEntry.updated_at))
        }
    with get_database(app).session_scope() as session:
        result = import_prices(session, read_price_csv(PRICE_LIST))
        assert (result.created, result.updated, result.unchanged) == (0, 0, 5)
        assert session.scalar(select(func.count()).select_from(PriceEntry)) == before
    with get_database(app).session_scope() as session:
        # Nothing was written: no entry was touched.
        assert {
            row.id: row.updated_at for row in session.execute(select(PriceEntry.id, PriceEntry.updated_at))
        } == stamps


def test_a_reimport_counts_as_updated_only_the_rows_that_changed(app, price_list):
    changed = PRICE_LIST.replace(
        "SA01,Siêu âm ổ bụng,service,lần,250000", "SA01,Siêu âm ổ bụng,service,lần,260000"
    )
    with get_database(app).session_scope() as session:
        result = import_prices(session, read_price_csv(changed))
        assert (result.created, result.updated, result.unchanged) == (0, 1, 4)
        assert price_on(session, "SA01", date(2025, 3, 1)).price == Decimal("260000")


def test_a_manager_reimporting_an_unchanged_list_is_told_nothing_changed(app, client, make_user, price_list):
    login(client, make_user("manager", username="quanly").username)
    with client.session_transaction() as browser_session:
        browser_session["locale"] = "en"
    token = csrf_token(client, "/prices")
    response = client.post(
        "/prices/import",
        data={"csrf_token": token, "file": (io.BytesIO(PRICE_LIST.encode("utf-8")), "gia.csv")},
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert "0 new, 0 updated, 5 unchanged" in response.get_data(as_text=True)


def test_a_bad_file_names_every_bad_line_and_writes_nothing():
    bad = (
        "code;name;kind;unit;price;insurance_price;valid_from\n"
        "KB01;Khám;visit;lần;50.600,5;;2025-01-01\n"
        "KB02;Khám;visit;lần;-1;;2025-01-01\n"
        "KB03;Khám;food;lần;1;;2025-01-01\n"
        "KB04;Khám;visit;lần;1;;01/01/2025\n"
        "KB05;Khám;visit;lần;1;;2025-01-01\n"
        "KB05;Khám;visit;lần;2;;2025-01-01\n"
    )
    with pytest.raises(PriceImportFailed) as caught:
        read_price_csv(bad)
    assert [(row["line"], row["column"]) for row in caught.value.extra["rows"]] == [
        (2, "price"),
        (3, "price"),
        (4, "kind"),
        (5, "valid_from"),
        (7, "code"),
    ]


def test_a_file_without_the_required_columns_says_which():
    with pytest.raises(PriceImportFailed) as caught:
        read_price_csv("code,name\nKB01,Khám\n")
    assert caught.value.extra["missing_columns"] == ["kind", "price", "valid_from"]


def test_the_public_price_page_needs_no_login(client, price_list):
    page = client.get("/prices?day=2025-03-01")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Siêu âm ổ bụng" in html
    assert "250.000\u00a0₫" in html
    assert "200.000\u00a0₫" in html
    assert "Tổng phân tích tế bào máu" in html


def test_the_price_page_searches(client, price_list):
    html = client.get("/prices?q=sieu+am&day=2025-07-01").get_data(as_text=True)
    assert "280.000\u00a0₫" in html
    assert "Paracetamol" not in html
    assert "Khám bệnh nội khoa" not in html


def test_the_csv_download_reads_back_as_the_same_price_list(client, price_list):
    response = client.get("/prices.csv?day=2025-03-01")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "prices-2025-03-01.csv" in response.headers["Content-Disposition"]
    assert response.data.startswith("\ufeff".encode())
    rows = read_price_csv(response.data)
    assert {(row.code, row.price, row.insurance_price, row.valid_from) for row in rows} == {
        ("KB01", Decimal("50600"), None, date(2025, 1, 1)),
        ("SA01", Decimal("250000"), Decimal("200000"), date(2024, 1, 1)),
        ("XN01", Decimal("46200"), None, date(2024, 1, 1)),
        ("TH01", Decimal("1234.5"), None, date(2024, 1, 1)),
    }
    searched = client.get("/prices.csv?q=paracetamol&day=2025-03-01").get_data(as_text=True)
    assert len(searched.strip().splitlines()) == 2


def test_a_manager_imports_a_csv_and_it_is_audited(app, client, make_user):
    make_user("manager", username="quanly")
    login(client, "quanly")
    token = csrf_token(client, "/prices")
    response = client.post(
        "/prices/import",
        data={"csrf_token": token, "file": (io.BytesIO(PRICE_LIST.encode("utf-8")), "gia.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 302
    html = client.get("/prices?day=2025-03-01").get_data(as_text=True)
    assert "Paracetamol 500mg" in html
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(PriceEntry)) == 5
        audit_row = session.scalars(select(AuditRecord).where(AuditRecord.entity_type == "PriceList")).one()
        assert audit_row.username == "quanly"


def test_a_bad_upload_shows_the_lines_and_imports_nothing(app, client, make_user):
    make_user("manager", username="quanly")
    login(client, "quanly")
    token = csrf_token(client, "/prices")
    bad = PRICE_LIST + "XX01,Thiếu giá,service,lần,,,2025-01-01\n"
    response = client.post(
        "/prices/import",
        data={"csrf_token": token, "file": (io.BytesIO(bad.encode("utf-8")), "gia.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert "7" in response.get_data(as_text=True).split('data-testid="import-errors"')[1]
    with get_database(app).session_scope() as session:
        assert session.scalar(select(func.count()).select_from(PriceEntry)) == 0


@pytest.mark.parametrize(("role", "statuses"), [("cashier", {403}), ("patient", {403}), (None, {302, 401})])
def test_only_managers_import_prices(client, make_user, role, statuses):
    if role:
        make_user(role, username="someone")
        login(client, "someone")
    token = csrf_token(client, "/prices")
    response = client.post(
        "/prices/import",
        data={"csrf_token": token, "file": (io.BytesIO(PRICE_LIST.encode("utf-8")), "gia.csv")},
        content_type="multipart/form-data",
    )
    assert response.status_code in statuses
    assert client.get("/prices").get_data(as_text=True).count("Paracetamol") == 0


def test_staff_see_the_price_list_in_the_menu(client, make_user):
    make_user("cashier", username="thungan")
    login(client, "thungan")
    assert 'href="/prices"' in client.get("/prices").get_data(as_text=True)


def test_the_demo_price_list_imports_and_shows(app, client):
    with get_database(app).session_scope() as session:
        result = import_prices(session, read_price_csv(DEMO_PRICE_LIST.read_bytes()))
    assert result.created == len(DEMO_PRICE_LIST.read_text(encoding="utf-8").strip().splitlines()) - 1
    html = client.get("/prices?q=sieu+am&day=2025-01-01").get_data(as_text=True)
    assert "Siêu âm ổ bụng (demo)" in html
    assert "43.900\u00a0₫" in html


def test_the_demo_command_loads_the_demo_price_list(app, sites):
    from billing.demo import load_demo

    with get_database(app).session_scope() as session:
        load_demo(session, sites)
        assert session.scalar(select(func.count()).select_from(PriceEntry)) > 0
    from his.demo import _LOADERS

    assert any(loader is load_demo for _order, loader in _LOADERS)


def test_the_visit_kind_reads_as_medical_examination_in_vietnamese(app, client, price_list):
    html = client.get("/prices?day=2025-03-01").get_data(as_text=True)
    assert '<option value="visit">Khám bệnh</option>' in html
    assert "Các lần khám" not in html
