"""The facility's XML signature on a claim: it verifies, and any change to the envelope breaks it."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from billing.claims import claim_document
from billing.xmlsign import SignatureInvalid, sign_envelope, signed_info_text, verify_envelope

from .test_claims import WORKED_EXAMPLE


def _facility_key(name: str = "Bệnh viện huyện Demo") -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, certificate


@pytest.fixture(scope="module")
def facility_key():
    return _facility_key()


@pytest.fixture(scope="module")
def signed(facility_key):
    key, certificate = facility_key
    return sign_envelope(claim_document(WORKED_EXAMPLE, date(2025, 9, 10)), key, certificate)


def test_the_signed_info_we_sign_is_already_canonical():
    text = signed_info_text("abc=")
    assert ET.canonicalize(text) == text


def test_a_signed_claim_verifies_and_names_its_signer(signed, facility_key):
    assert b"<CHUKYDONVI><Signature" in signed
    assert verify_envelope(signed) == facility_key[1]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda doc: doc.replace(b"<SOLUONGHOSO>1<", b"<SOLUONGHOSO>2<"),
        lambda doc: doc.replace(b"<NOIDUNGFILE>PD", b"<NOIDUNGFILE>QD", 1),
        lambda doc: doc.replace(b"<MACSKCB>01234<", b"<MACSKCB>01235<"),
    ],
    ids=["count", "table", "facility"],
)
def test_a_tampered_envelope_fails_verification(signed, tamper):
    changed = tamper(signed)
    assert changed != signed
    with pytest.raises(SignatureInvalid):
        verify_envelope(changed)


def test_a_signature_by_another_key_fails(signed):
    other_key, _certificate = _facility_key("Kẻ mạo danh")
    start = signed.index(b"<SignatureValue>") + len(b"<SignatureValue>")
    end = signed.index(b"</SignatureValue>")
    forged = other_key.sign(b"anything", padding.PKCS1v15(), hashes.SHA256())
    changed = signed[:start] + base64.b64encode(forged) + signed[end:]
    with pytest.raises(SignatureInvalid):
        verify_envelope(changed)


def test_an_unsigned_envelope_does_not_verify():
    with pytest.raises(SignatureInvalid):
        verify_envelope(claim_document(WORKED_EXAMPLE, date(2025, 9, 10)))


def test_the_claims_of_a_range_download_signed_and_audited(
    app, client, make_user, invoice, facility_key, tmp_path
):
    import io
    import zipfile

    from cryptography.hazmat.primitives import serialization
    from sqlalchemy import select

    from billing.payments import record_desk_payment
    from his.db import get_database
    from his.models import AuditRecord
    from tests.conftest import login

    key, certificate = facility_key
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    app.config["VETINH_CLAIM_SIGNING_KEY"] = str(key_path)
    app.config["VETINH_CLAIM_SIGNING_CERT"] = str(cert_path)
    with app.app_context(), get_database(app).session_scope() as session:
        record_desk_payment(session, invoice.id, channel="cash", amount=192589, cashier="thungan")
    make_user("manager", username="quanly")
    login(client, "quanly")
    response = client.get("/billing/claims.zip?from=2025-09-01&to=2025-09-30")
    assert response.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert archive.namelist() == [f"{invoice.reference}.xml"]
        assert verify_envelope(archive.read(f"{invoice.reference}.xml")) == certificate
    assert client.get("/billing/claims.zip?from=2025-09-01&to=2025-12-31").status_code == 422
    with get_database(app).session_scope() as session:
        exports = session.scalars(select(AuditRecord).where(AuditRecord.action == "export")).all()
        assert [(row.entity_id, row.username) for row in exports] == [(invoice.reference, "quanly")]


def _xmlsec1_verify(tmp_path, envelope: bytes, certificate: x509.Certificate):
    """Run xmlsec1, an independent XML-DSig implementation, on an envelope with the facility's certificate.

    The reference is ``URI=""`` (the whole document), so no id attribute is needed.
    ``--enabled-key-data key-name`` stops xmlsec1 from taking the key out of the
    document's own ``KeyInfo``: only the facility's certificate given here may verify it.
    """
    import shutil
    import subprocess

    from cryptography.hazmat.primitives import serialization

    if shutil.which("xmlsec1") is None:
        pytest.skip(reason="xmlsec1 (Debian package xmlsec1) is not installed")
    (tmp_path / "envelope.xml").write_bytes(envelope)
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        [
            "xmlsec1",
            "--verify",
            "--pubkey-cert-pem",
            str(tmp_path / "cert.pem"),
            "--enabled-key-data",
            "key-name",
            str(tmp_path / "envelope.xml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_xmlsec1_accepts_our_signature(signed, facility_key, tmp_path):
    outcome = _xmlsec1_verify(tmp_path, signed, facility_key[1])
    assert outcome.returncode == 0, outcome.stderr
    assert "SignedInfo References (ok/all): 1/1" in outcome.stderr


@pytest.mark.parametrize(
    "tamper",
    [
        lambda doc: doc.replace(b"<SOLUONGHOSO>1<", b"<SOLUONGHOSO>2<"),
        lambda doc: doc.replace(b"<NOIDUNGFILE>PD", b"<NOIDUNGFILE>QD", 1),
        lambda doc: doc.replace(b"<MACSKCB>01234<", b"<MACSKCB>01235<"),
    ],
    ids=["count", "table", "facility"],
)
def test_xmlsec1_refuses_a_tampered_envelope(signed, facility_key, tmp_path, tamper):
    changed = tamper(signed)
    assert changed != signed
    outcome = _xmlsec1_verify(tmp_path, changed, facility_key[1])
    assert outcome.returncode != 0
    assert "SignedInfo References (ok/all): 0/1" in outcome.stderr


def test_xmlsec1_refuses_an_envelope_signed_by_another_key(facility_key, tmp_path):
    impostor_key, impostor_certificate = _facility_key("Kẻ mạo danh")
    forged = sign_envelope(
        claim_document(WORKED_EXAMPLE, date(2025, 9, 10)), impostor_key, impostor_certificate
    )
    assert _xmlsec1_verify(tmp_path, forged, impostor_certificate).returncode == 0
    assert _xmlsec1_verify(tmp_path, forged, facility_key[1]).returncode != 0
