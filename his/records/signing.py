"""Sign and verify records: a hospital CA, per-signer keys and X.509 certificates, JWS signatures.

Each site has its own certification authority; each doctor and pharmacist gets a P-256
key with a certificate issued by it (or imports a PKCS#12 file from a real CA). Private
keys are stored encrypted with AES-GCM under a key derived (HKDF-SHA256) from the app's
secret. A signature is a JWS with a detached payload (RFC 7515, RFC 7797 style): the
payload is the RFC 8785 canonical JSON of exactly the signed resources, and the header
carries the certificate chain (``x5c``), so anyone holding the CA certificate can check it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session

from his.db import as_utc, utcnow
from his.errors import N_, BadRequest, Conflict, ValidationFailed
from his.models import Site, User
from his.records.models import SigningKey

CA_YEARS = 10
SIGNER_YEARS = 2
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def storage_key(secret: str) -> bytes:
    """Derive the AES key that protects private keys at rest from the app's secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"vetinh records signing keys").derive(
        secret.encode("utf-8")
    )


def _seal(private_key: PrivateKey, secret: str, fingerprint: str) -> tuple[bytes, bytes]:
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = os.urandom(12)
    return AESGCM(storage_key(secret)).encrypt(nonce, der, fingerprint.encode()), nonce


def private_key_of(row: SigningKey, secret: str) -> PrivateKey:
    """Decrypt a stored private key.

    Raises ValidationFailed when the secret is not the one the key was stored with.
    """
    try:
        der = AESGCM(storage_key(secret)).decrypt(row.nonce, row.encrypted_key, row.fingerprint.encode())
    except Exception as exc:
        raise ValidationFailed(
            N_("The signing key cannot be opened with this server's secret."), code="SIGNING_KEY_LOCKED"
        ) from exc
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValidationFailed(N_("Unsupported key type."), code="SIGNING_KEY_TYPE")
    return key


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _store(
    session: Session,
    *,
    site_id: int,
    user_id: int | None,
    kind: str,
    source: str,
    cert: x509.Certificate,
    chain: list[x509.Certificate],
    key: PrivateKey,
    secret: str,
) -> SigningKey:
    fingerprint = _fingerprint(cert)
    sealed, nonce = _seal(key, secret, fingerprint)
    row = SigningKey(
        site_id=site_id,
        user_id=user_id,
        kind=kind,
        source=source,
        subject=cert.subject.rfc4514_string(),
        fingerprint=fingerprint,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        chain_pem="".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain),
        encrypted_key=sealed,
        nonce=nonce,
        not_after=cert.not_valid_after_utc,
    )
    session.add(row)
    session.flush()
    return row


def site_ca(session: Session, site: Site, secret: str) -> SigningKey:
    """Return the site's CA, creating its key and self-signed certificate the first time."""
    row = session.scalar(
        select(SigningKey).where(
            SigningKey.site_id == site.id, SigningKey.kind == "ca", SigningKey.active.is_(True)
        )
    )
    if row is not None:
        return row
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{site.name} CA", site.name)
    now = datetime.now(UTC)
    cert = (
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
    return _store(
        session,
        site_id=site.id,
        user_id=None,
        kind="ca",
        source="issued",
        cert=cert,
        chain=[],
        key=key,
        secret=secret,
    )


def signer_key(session: Session, user: User, secret: str) -> SigningKey:
    """Return the user's active signing key, issuing one from the site's CA the first time.

    Raises Conflict for a user without a site (there is no CA to issue from).
    """
    row = session.scalar(
        select(SigningKey)
        .where(SigningKey.user_id == user.id, SigningKey.kind == "signer", SigningKey.active.is_(True))
        .order_by(SigningKey.id.desc())
    )
    if row is not None and as_utc(row.not_after) > utcnow():
        return row
    site = session.get(Site, user.site_id) if user.site_id else None
    if site is None:
        raise Conflict(N_("Only staff of a site can sign."), code="SIGNER_WITHOUT_SITE")
    ca_row = site_ca(session, site, secret)
    ca_key = private_key_of(ca_row, secret)
    ca_cert = x509.load_pem_x509_certificate(ca_row.certificate_pem.encode())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{user.full_name} ({user.username})", site.name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=365 * SIGNER_YEARS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _store(
        session,
        site_id=site.id,
        user_id=user.id,
        kind="signer",
        source="issued",
        cert=cert,
        chain=[ca_cert],
        key=key,
        secret=secret,
    )


def import_pkcs12(session: Session, user: User, data: bytes, password: str | None, secret: str) -> SigningKey:
    """Replace the user's signing key with one from a PKCS#12 file issued by a real CA.

    Raises BadRequest when the file or its password is wrong or it holds no key and certificate.
    """
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except ValueError as exc:
        raise BadRequest(N_("The PKCS#12 file or its password is not valid."), code="PKCS12_INVALID") from exc
    if cert is None or not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise BadRequest(
            N_("The PKCS#12 file must hold an RSA or EC key and its certificate."), code="PKCS12_INVALID"
        )
    if user.site_id is None:
        raise Conflict(N_("Only staff of a site can sign."), code="SIGNER_WITHOUT_SITE")
    for old in session.scalars(
        select(SigningKey).where(SigningKey.user_id == user.id, SigningKey.kind == "signer")
    ):
        old.active = False
    return _store(
        session,
        site_id=user.site_id,
        user_id=user.id,
        kind="signer",
        source="pkcs12",
        cert=cert,
        chain=list(extra),
        key=key,
        secret=secret,
    )


def _algorithm(key: Any) -> str:
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) else "RS256"


def _raw_sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _raw_verify(public_key: Any, signature: bytes, data: bytes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        size = (public_key.curve.key_size + 7) // 8
        if len(signature) != 2 * size:
            raise InvalidSignature("wrong signature length")
        der = encode_dss_signature(
            int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
        )
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise InvalidSignature("unsupported key")


def certificates_of(row: SigningKey) -> list[x509.Certificate]:
    """Return the key's certificate followed by its chain."""
    leaf = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    chain = x509.load_pem_x509_certificates(row.chain_pem.encode()) if row.chain_pem else []
    return [leaf, *chain]


def sign_detached(row: SigningKey, secret: str, payload: bytes) -> str:
    """Sign ``payload`` and return a JWS compact serialization with the payload left out."""
    key = private_key_of(row, secret)
    header = {
        "alg": _algorithm(key),
        "typ": "JOSE",
        "cty": "application/fhir+json",
        "x5c": [
            base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
            for c in certificates_of(row)
        ],
    }
    protected = _b64url(json.dumps(header, separators=(",", ":")).encode())
    signing_input = f"{protected}.{_b64url(payload)}".encode("ascii")
    return f"{protected}..{_b64url(_raw_sign(key, signing_input))}"


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of checking a detached JWS: valid or not, by whom, and why not."""

    valid: bool
    signer: str = ""
    fingerprint: str = ""
    problem: str = ""


def verify_detached(
    jws: str, payload: bytes, trusted: list[x509.Certificate], at: datetime | None = None
) -> SignatureCheck:
    """Check a detached JWS over ``payload``: the signature, and the certificate chain to a trusted CA."""
    try:
        protected, empty, signature = jws.split(".")
        header = json.loads(_unb64url(protected))
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"]]
        raw = _unb64url(signature)
    except (ValueError, KeyError, TypeError):
        return SignatureCheck(False, problem=N_("The signature is malformed."))
    if empty:
        return SignatureCheck(False, problem=N_("The signature is malformed."))
    leaf = chain[0]
    signer = leaf.subject.rfc4514_string()
    fingerprint = _fingerprint(leaf)
    if header.get("alg") != _algorithm(leaf.public_key()):
        return SignatureCheck(
            False, signer, fingerprint, N_("The signature algorithm does not match the certificate.")
        )
    try:
        _raw_verify(leaf.public_key(), raw, f"{protected}.{_b64url(payload)}".encode("ascii"))
    except InvalidSignature:
        return SignatureCheck(
            False, signer, fingerprint, N_("The signature does not match the signed content.")
        )
    moment = at or datetime.now(UTC)
    if not (leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc):
        return SignatureCheck(
            False, signer, fingerprint, N_("The signer's certificate was not valid at that time.")
        )
    trusted_by_fp = {_fingerprint(c): c for c in trusted}
    issuer = next((c for c in trusted if c.subject == leaf.issuer), None)
    if fingerprint in trusted_by_fp:
        return SignatureCheck(True, signer, fingerprint)
    if issuer is None:
        return SignatureCheck(
            False, signer, fingerprint, N_("The signer's certificate was not issued by a trusted authority.")
        )
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return SignatureCheck(
            False, signer, fingerprint, N_("The signer's certificate was not issued by a trusted authority.")
        )
    return SignatureCheck(True, signer, fingerprint)


def trusted_authorities(session: Session) -> list[x509.Certificate]:
    """Return the CA certificates this hospital trusts: its sites' CAs and imported chains."""
    certs: list[x509.Certificate] = []
    for row in session.scalars(select(SigningKey).where(SigningKey.kind == "ca")):
        certs.append(x509.load_pem_x509_certificate(row.certificate_pem.encode()))
    for row in session.scalars(select(SigningKey).where(SigningKey.source == "pkcs12")):
        if row.chain_pem:
            certs.extend(x509.load_pem_x509_certificates(row.chain_pem.encode()))
    return certs


def digest(payload: bytes) -> str:
    """Return the base64url SHA-256 of a payload (what the QR carries)."""
    return _b64url(hashlib.sha256(payload).digest())


def sign_short(row: SigningKey, secret: str, text: str) -> str:
    """Sign a short text (the QR's content) and return the raw signature base64url-encoded."""
    return _b64url(_raw_sign(private_key_of(row, secret), text.encode("utf-8")))


def verify_short(cert: x509.Certificate, text: str, signature: str) -> bool:
    """Tell whether ``signature`` (base64url) is the certificate's key signing ``text``."""
    try:
        _raw_verify(cert.public_key(), _unb64url(signature), text.encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True
