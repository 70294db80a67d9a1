"""Sign FHIR resources with a per-signer X.509 key issued by the site's hospital CA, and verify them.

What is signed is the canonical JSON of a stored resource (its ``meta`` left out, keys
sorted, no whitespace, UTF-8). The signature is a detached JWS (ES256) whose header
carries the signer's certificate and the site CA's certificate (``x5c``), put in a
Provenance as FHIR asks for JSON signatures (``sigFormat`` ``application/jose``). Anyone
holding the hospital CA certificate can check it without our database.

Records (``his/records``) has no signing service yet; this one is small on purpose so
that it can move there and be shared.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from his.db import utcnow
from his.errors import N_, Conflict
from his.models import Site
from pathology.models import SigningKey

CA_YEARS = 20
SIGNER_YEARS = 3
SIGNATURE_TYPE = {
    "system": "urn:iso-astm:E1762-95:2013",
    "code": "1.2.840.10065.1.12.1.1",
    "display": "Author's Signature",
}
CANONICAL_FORMAT = "application/fhir+json;canonicalization=vetinh-sorted-keys"
USER_IDENTIFIER_SYSTEM = "urn:vetinh:user"


class SigningUnavailable(Conflict):
    code = "SIGNING_KEY_UNUSABLE"
    message = N_("The signing key cannot be used; ask an administrator to renew it.")


def canonical_json(resource: Any) -> bytes:
    """Serialise JSON the one way signatures are computed over: sorted keys, no spaces, UTF-8.

    Raises TypeError for a value JSON cannot hold.
    """

    def normalise(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): normalise(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [normalise(v) for v in value]
        if isinstance(value, Decimal):
            # Stored FHIR decimals keep their written precision; an integral one stays an int.
            return (
                int(value) if value == value.to_integral_value() and "E" not in str(value) else float(value)
            )
        return value

    return json.dumps(normalise(resource), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_content(resource: dict[str, Any]) -> bytes:
    """Return the bytes a signature covers: the resource without its ``meta`` (set by the store)."""
    return canonical_json({k: v for k, v in resource.items() if k != "meta"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_password(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"vetinh signing keys").derive(secret)


def _store_key(key: ec.EllipticCurvePrivateKey, secret: bytes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(_key_password(secret)),
    ).decode()


def _load_key(pem: str, secret: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=_key_password(secret))
    except (ValueError, TypeError):
        raise SigningUnavailable() from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningUnavailable()
    return key


@dataclass(frozen=True)
class Signer:
    """A signer's private key, certificate, and the certificate of the CA that issued it."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_certificate: x509.Certificate


def _ca(session: Session, site: Site, secret: bytes) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    row = session.scalar(
        select(SigningKey).where(SigningKey.site_id == site.id, SigningKey.user_id.is_(None))
    )
    if row is not None:
        return _load_key(row.private_key_pem, secret), x509.load_pem_x509_certificate(
            row.certificate_pem.encode()
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, site.name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{site.name} signing CA ({site.code})"),
        ]
    )
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    session.add(
        SigningKey(
            site_id=site.id,
            user_id=None,
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_pem=_store_key(key, secret),
        )
    )
    session.flush()
    return key, certificate


def signer_for(session: Session, site: Site, user_id: int, full_name: str, secret: bytes) -> Signer:
    """Return a user's signing key and certificate, issuing them from the site's CA on first use.

    Raises SigningUnavailable when a stored key cannot be decrypted (the secret changed).
    """
    ca_key, ca_certificate = _ca(session, site, secret)
    row = session.scalar(
        select(SigningKey).where(SigningKey.site_id == site.id, SigningKey.user_id == user_id)
    )
    if row is not None:
        certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        if certificate.not_valid_after_utc > datetime.now(UTC):
            return Signer(_load_key(row.private_key_pem, secret), certificate, ca_certificate)
        session.delete(row)
        session.flush()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, site.name),
                    x509.NameAttribute(NameOID.COMMON_NAME, full_name),
                    x509.NameAttribute(NameOID.USER_ID, str(user_id)),
                ]
            )
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * SIGNER_YEARS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    session.add(
        SigningKey(
            site_id=site.id,
            user_id=user_id,
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_pem=_store_key(key, secret),
        )
    )
    session.flush()
    return Signer(key, certificate, ca_certificate)


def site_ca_certificate(session: Session, site_id: int) -> x509.Certificate | None:
    """Return the site's CA certificate (the trust anchor for its signatures), if it has one."""
    pem = session.scalar(
        select(SigningKey.certificate_pem).where(SigningKey.site_id == site_id, SigningKey.user_id.is_(None))
    )
    return x509.load_pem_x509_certificate(pem.encode()) if pem else None


def sign_jws(content: bytes, signer: Signer) -> str:
    """Return a detached compact JWS (ES256) over ``content``, with the certificate chain in ``x5c``."""
    header = {
        "alg": "ES256",
        "kid": signer.certificate.fingerprint(hashes.SHA256()).hex(),
        "x5c": [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
            for cert in (signer.certificate, signer.ca_certificate)
        ],
        "sigT": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    protected = _b64url(canonical_json(header))
    signing_input = f"{protected}.{_b64url(content)}".encode()
    r, s = decode_dss_signature(signer.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{protected}..{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def provenance(
    target_reference: str,
    content: bytes,
    signer: Signer,
    *,
    user_id: int,
    full_name: str,
    site: Site,
    patient_id: str | None = None,
) -> dict[str, Any]:
    """Build the Provenance that carries a signature over ``content`` for ``target_reference``."""
    now = utcnow().isoformat(timespec="seconds")
    who = {
        "identifier": {"system": USER_IDENTIFIER_SYSTEM, "value": str(user_id)},
        "display": full_name,
    }
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": target_reference}],
        "recorded": now,
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": who,
                "onBehalfOf": {
                    "identifier": {"system": "urn:vetinh:site", "value": site.code},
                    "display": site.name,
                },
            }
        ],
        "signature": [
            {
                "type": [SIGNATURE_TYPE],
                "when": now,
                "who": who,
                "targetFormat": CANONICAL_FORMAT,
                "sigFormat": "application/jose",
                "data": base64.b64encode(sign_jws(content, signer).encode()).decode(),
            }
        ],
    }
    if patient_id:
        resource["entity"] = [
            {"role": "source", "what": {"reference": f"Patient/{patient_id}"}},
        ]
    return resource


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a signature: whether it holds, why not, and who signed."""

    valid: bool
    reason: str
    signer: str = ""
    certificate_sha256: str = ""


def verify_jws(jws: str, content: bytes, trusted_ca: x509.Certificate) -> Verification:
    """Check a detached JWS over ``content`` and its certificate chain up to the trusted CA; never raises."""
    try:
        protected, payload, signature = jws.split(".")
        header = json.loads(_unb64url(protected))
        chain = [x509.load_der_x509_certificate(base64.b64decode(item)) for item in header["x5c"]]
        raw = _unb64url(signature)
    except (ValueError, KeyError, TypeError):
        return Verification(False, N_("The signature is malformed."))
    if payload or header.get("alg") != "ES256" or len(raw) != 64 or not chain:
        return Verification(False, N_("The signature is malformed."))
    certificate = chain[0]
    name = ", ".join(a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))  # type: ignore[misc]
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    try:
        certificate.verify_directly_issued_by(trusted_ca)
    except (ValueError, TypeError, InvalidSignature):
        return Verification(False, N_("The signer's certificate was not issued by the hospital's CA."), name)
    signed_at = header.get("sigT", "")
    try:
        moment = datetime.strptime(signed_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return Verification(False, N_("The signature is malformed."), name)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        return Verification(False, N_("The signer's certificate was not valid when it signed."), name)
    public_key = certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return Verification(False, N_("The signature is malformed."), name)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public_key.verify(der, f"{protected}.{_b64url(content)}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return Verification(False, N_("The signed content was changed after signing."), name, fingerprint)
    return Verification(True, N_("The signature is valid."), name, fingerprint)


def verify_provenance(
    provenance_resource: dict[str, Any], content: bytes, trusted_ca: x509.Certificate
) -> Verification:
    """Check the first signature of a Provenance against ``content``; never raises."""
    try:
        data = provenance_resource["signature"][0]["data"]
        jws = base64.b64decode(data).decode()
    except (KeyError, IndexError, TypeError, ValueError):
        return Verification(False, N_("The signature is malformed."))
    return verify_jws(jws, content, trusted_ca)


def key_secret(secret_key: str) -> bytes:
    """Turn the app's secret key into the secret that protects stored private keys."""
    return hashlib.sha256(b"vetinh-signing:" + secret_key.encode()).digest()
