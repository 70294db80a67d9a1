"""Local fakes of the outside services billing talks to, served on loopback by a real HTTP server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

CARD = re.compile(r"^[A-Z]{2}[0-9]{13}$")


@dataclass
class Insured:
    """A person the fake social-insurance office knows."""

    card: str
    cccd: str
    name: str
    birth: str  # dd/mm/yyyy, as the gateway writes it
    facility: str
    valid_from: str
    valid_to: str
    five_years_from: str = ""


@dataclass
class FakeInsuranceGateway:
    """Answer eligibility checks with the gateway's result codes, by card code or CCCD.

    051: not a card code (nor a 12-digit CCCD); 053: benefit digit not 1–5; 052: unknown
    province; 050: nobody with that card or CCCD; 010: the card has expired; 000: valid.
    """

    people: list[Insured]
    expired: set[str] = field(default_factory=set)
    provinces: set[str] = field(default_factory=lambda: {f"{n:02d}" for n in range(1, 97)})
    requests: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        number = str(body.get("maThe") or "")
        self.requests.append(body)
        if re.fullmatch(r"[0-9]{12}", number):
            person = next((p for p in self.people if p.cccd == number), None)
        else:
            if not CARD.fullmatch(number):
                return {"maKetQua": "051", "ghiChu": "Mã thẻ không đúng"}
            if number[2] not in "12345":
                return {"maKetQua": "053", "ghiChu": "Mã mức hưởng không đúng"}
            if number[3:5] not in self.provinces:
                return {"maKetQua": "052", "ghiChu": "Mã tỉnh cấp thẻ không đúng"}
            person = next((p for p in self.people if p.card == number), None)
        if person is None:
            return {"maKetQua": "050", "ghiChu": "Không có thông tin thẻ"}
        card = {
            "maThe": person.card,
            "hoTen": person.name,
            "ngaySinh": person.birth,
            "gioiTinh": "Nam",
            "maDKBD": person.facility,
            "gtTheTu": person.valid_from,
            "gtTheDen": person.valid_to,
            "ngayDu5Nam": person.five_years_from,
        }
        if person.card in self.expired:
            return {"maKetQua": "010", "ghiChu": "Thẻ hết giá trị sử dụng", **card}
        return {"maKetQua": "000", "ghiChu": "Thẻ còn giá trị sử dụng", **card}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.method != "POST":
            return Response(status=405)(environ, start_response)
        answer = self.answer(request.get_json(force=True, silent=True) or {})
        return Response(json.dumps(answer, ensure_ascii=False), mimetype="application/json")(
            environ, start_response
        )


@contextmanager
def serve(wsgi_app: Any) -> Iterator[str]:
    """Serve a WSGI app on a free loopback port; yield its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
