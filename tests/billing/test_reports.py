"""The day's takings: by channel, fund versus patients, outstanding invoices and the review queue."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from billing.payments import record_desk_payment, refund, review_count
from billing.reports import daily_report
from his.db import get_database, utcnow
from tests.conftest import login

from .conftest import notice_body, post_notice

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")


def test_the_days_takings_add_up_by_channel_and_go_to_csv(app, client, make_user, invoice):
    today = utcnow().astimezone(HANOI).date()
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(session, invoice.id, channel="card", amount=100000, cashier="thungan")
    post_notice(client, notice_body("FT200", 92589, f"VIENPHI {invoice.reference}"))
    post_notice(client, notice_body("FT201", 5000, "no reference"))
    with app.app_context(), get_database(app).session_scope() as session:
        refund(session, invoice.id, amount=589, channel="cash", reason="Làm tròn", cashier="thungan")
        report = daily_report(session, today, HANOI)
        visit_day = daily_report(session, date(2025, 9, 10), HANOI)
        assert review_count(session) == 1
    assert {k: int(v) for k, v in report.revenue.items()} == {"vietqr": 92589, "card": 100000, "cash": 0}
    assert (int(report.refunds), int(report.net_revenue)) == (589, 192000)
    assert (report.outstanding_count, int(report.outstanding_amount), report.review_queue) == (1, 589, 1)
    assert (visit_day.visits, int(visit_day.fund_share), int(visit_day.patient_share)) == (1, 370356, 192589)
    make_user("manager", username="quanly")
    login(client, "quanly")
    html = client.get(f"/billing/reports?day={today.isoformat()}").get_data(as_text=True)
    assert "192.000\u00a0₫" in html
    assert 'data-testid="refunds">-589\u00a0₫<' in html
    csv_text = client.get(f"/billing/reports.csv?day={today.isoformat()}").get_data(as_text=True)
    rows = dict(line.split(",") for line in csv_text.lstrip("\ufeff").strip().splitlines()[1:])
    assert (rows["revenue_vietqr"], rows["revenue_card"], rows["net_revenue"]) == (
        "92589",
        "100000",
        "192000",
    )
    assert rows["review_queue"] == "1"


def test_a_day_without_refunds_shows_zero_refunds_never_minus_zero(app, client, make_user):
    login(client, make_user("manager", username="quanly").username)
    html = client.get("/billing/reports?day=2025-09-10").get_data(as_text=True)
    assert 'data-testid="refunds">0\u00a0₫<' in html
    assert "-0\u00a0₫" not in html


def test_the_cashier_home_links_the_review_queue_and_takings_without_a_stray_separator(
    app, client, make_user
):
    login(client, make_user("cashier", site="DIST").username)
    html = client.get("/billing").get_data(as_text=True)
    start = html.index('data-testid="cashier-links"')
    links = html[start : html.index("</p>", start)]
    assert "0 giao dịch chờ đối soát</a>" in links
    assert 'href="/billing/reports"' in links
    assert "·" not in links
