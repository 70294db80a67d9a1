"""Shared pieces of the pathology tests: the slide files, an API client, and files that must be refused."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

WSI = Path(__file__).resolve().parent.parent / "data" / "wsi"
SINGLE_FILES = ("CMU-1-Small-Region.svs", "bone-marrow-jpeg.dcm", "boxes.tiff", "small.svs")


@dataclass
class SlideClient:
    """Call the slide API and the tile URLs with one user's bearer token."""

    client: FlaskClient
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def upload(self, data: bytes, filename: str, **form: str) -> TestResponse:
        fields: dict[str, Any] = {"file": FileStorage(io.BytesIO(data), filename=filename), **form}
        # Encoded in memory: the test client spools large bodies to a file it never closes.
        boundary, body = encode_multipart(fields)
        return self.client.post(
            "/api/v1/slides",
            data=body,
            headers=self.headers,
            content_type=f"multipart/form-data; boundary={boundary}",
        )

    def upload_file(self, name: str, **form: str) -> TestResponse:
        return self.upload((WSI / name).read_bytes(), name, **form)

    def get(self, url: str, **headers: str) -> TestResponse:
        return self.client.get(url, headers={**self.headers, **headers})


def stored_files(app: Flask) -> list[Path]:
    """List every file under the slide store (uploads in progress included)."""
    root = Path(app.extensions["vetinh.settings"].data_dir) / "slides"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def decode(data: bytes) -> np.ndarray:
    """Decode a JPEG into an RGB array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def dicom_series_zip() -> bytes:
    """Zip the two-file DICOM WSI series the way a scanner's export would."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name in ("boxes_0.dcm", "boxes_1.dcm"):
            bundle.write(WSI / name, f"export/series-1/{name}")
        bundle.writestr("export/README.txt", "scanner export")
    return buffer.getvalue()


def register_patient(client: SlideClient, name: str = "Trần Thị Bình") -> str:
    """Register a patient at the client's site through the API; return the Patient id."""
    response = client.client.post(
        "/api/v1/patients",
        json={"full_name": name, "birth_date": "1968-04-02", "sex": "female"},
        headers=client.headers,
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def open_case(
    client: SlideClient, *slide_names: str, question: str = "Adenocarcinoma? Margins?"
) -> dict[str, Any]:
    """Upload slides as the district and send them to the central site as one consult case."""
    patient_id = register_patient(client)
    slide_ids = []
    for name in slide_names or ("small.svs",):
        uploaded = client.upload_file(name)
        assert uploaded.status_code == 201, uploaded.get_json()
        slide_ids.append(uploaded.get_json()["id"])
    response = client.client.post(
        "/api/v1/cases",
        json={
            "patient_id": patient_id,
            "receiving_site": "CENT",
            "clinical_question": question,
            "specimen_type": "Colon biopsy",
            "body_site": "Sigmoid colon",
            "slide_ids": slide_ids,
        },
        headers=client.headers,
    )
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())
