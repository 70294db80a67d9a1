"""Load the pathology demo: a consult from the district to the central hospital with one slide.

The slide is drawn here (a small pyramidal tiled TIFF of tissue-like pixels) and goes
through pathology's own services, as an upload and a consult request would: the
central pathologist's worklist then shows the case and the viewer shows its slide.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import g
from sqlalchemy import select
from sqlalchemy.orm import Session

from his.demo import register_demo_loader
from his.models import Site, User
from his.policy import grant_site_access
from his.security import principal_for_user
from pathology.cases import CaseRequest, create_case
from pathology.demo_slide import write_demo_slide
from pathology.ingest import ingest
from pathology.store import slide_store

DEMO_FILENAME = "sinh-thiet-dai-trang-demo.tiff"
DEMO_MAX_BYTES = 64 * 1024 * 1024


def load_demo(session: Session, sites: dict[str, Site]) -> None:
    """Send a colon biopsy slide of the demo patient from the district doctor to the central site.

    Runs again without harm: the same drawn slide is found by its checksum, and a slide
    already in a case is left as it is.
    """
    district, central = sites.get("DIST"), sites.get("CENT")
    doctor = session.scalar(select(User).where(User.username == "doctor"))
    patient = session.scalar(select(User).where(User.username == "patient"))
    if district is None or central is None or doctor is None or patient is None or not patient.patient_id:
        return
    with tempfile.TemporaryDirectory() as folder:
        drawn = write_demo_slide(Path(folder) / DEMO_FILENAME)
        with drawn.open("rb") as stream:
            result = ingest(
                session,
                slide_store(),
                stream,
                filename=DEMO_FILENAME,
                site_id=district.id,
                site_code=district.code,
                case_id=None,
                uploaded_by=doctor.id,
                max_bytes=DEMO_MAX_BYTES,
            )
    if result.slide.case_id is not None:
        return
    case = create_case(
        session,
        principal_for_user(doctor),
        CaseRequest(
            patient_id=patient.patient_id,
            receiving_site=central.code,
            clinical_question="Polyp đại tràng sigma 2 cm, sinh thiết nội soi. U tuyến hay ung thư biểu mô tuyến? Đánh giá mức độ loạn sản.",
            specimen_type="Sinh thiết đại tràng",
            body_site="Đại tràng sigma",
            slide_ids=(result.slide.id,),
        ),
    )
    # The policy service writes through the unit of work of the app context: make it this one.
    previous = g.get("_vetinh_session")
    g._vetinh_session = session
    try:
        grant_site_access(case.patient_id, central.id, reason="consult")
    finally:
        if previous is None:
            g.pop("_vetinh_session", None)
        else:
            g._vetinh_session = previous


register_demo_loader(load_demo, order=80)
