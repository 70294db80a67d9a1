"""After ``vetinh demo`` the central pathologist has a consult to read, with a slide that serves tiles."""

from __future__ import annotations

import io
import re

import numpy as np
from flask import Flask
from PIL import Image
from sqlalchemy import func, select

from his.cli import main
from his.db import get_database
from his.models import Site
from pathology.demo import load_demo
from pathology.models import ConsultCase, Slide
from tests.conftest import login

PASSWORD = "demo-pass-123"


def test_the_demo_gives_the_central_pathologist_a_case_with_a_slide(
    app: Flask, test_database: object
) -> None:
    result = app.test_cli_runner().invoke(main, ["demo", "--if-empty", "--password", PASSWORD])
    assert result.exit_code == 0, result.output

    pathologist = app.test_client()
    assert login(pathologist, "central.pathologist", PASSWORD).status_code == 302
    worklist = pathologist.get("/pathology/worklist").get_data(as_text=True)
    assert "Không có ca nào" not in worklist
    assert "Polyp đại tràng sigma" in worklist
    assert "Bệnh viện Đa khoa huyện Vệ Tinh" in worklist

    case_url = re.search(r'href="(/pathology/cases/[0-9a-f]{32})"', worklist)
    assert case_url is not None
    case_page = pathologist.get(case_url.group(1)).get_data(as_text=True)
    slide_id = re.search(r"/pathology/slides/([0-9a-f]{32})", case_page)
    assert slide_id is not None
    viewer = pathologist.get(f"/pathology/slides/{slide_id.group(1)}")
    assert viewer.status_code == 200
    dzi = pathologist.get(f"/slides/{slide_id.group(1)}.dzi")
    assert dzi.status_code == 200
    assert 'Width="2048"' in dzi.get_data(as_text=True)
    tile = pathologist.get(f"/slides/{slide_id.group(1)}_files/11/3_3.jpeg")
    assert tile.status_code == 200
    pixels = np.asarray(Image.open(io.BytesIO(tile.data)).convert("RGB"), dtype=np.int16)
    assert pixels.std() > 10  # tissue with nuclei, not blank glass

    # Loading the pathology demo again adds nothing.
    with app.app_context(), get_database(app).session_scope() as session:
        sites = {site.code: site for site in session.scalars(select(Site))}
        load_demo(session, sites)
        session.flush()
        assert session.scalar(select(func.count()).select_from(ConsultCase)) == 1
        assert session.scalar(select(func.count()).select_from(Slide)) == 1
