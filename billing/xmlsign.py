"""Sign a claim envelope with the facility's key (XML-DSig, enveloped, RSA-SHA256) and verify it.

The signature goes inside ``CHUKYDONVI``. Its one reference (``URI=""``) covers the
whole document with the signature removed (the enveloped-signature transform), in
canonical XML; the signature covers the canonical ``SignedInfo``. The envelope holds no
namespaces and no comments, where inclusive C14N 1.0 and the standard library's C14N 2.0
write the same bytes. Verification needs only the document: the certificate travels in
``KeyInfo``.
"""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from his.errors import N_, ConfigurationError, ValidationFailed

DSIG = "http://www.w3.org/2000/09/xmldsig#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SIGNATURE_HOLDER = "CHUKYDONVI"


class SignatureInvalid(ValidationFailed):
    code = "BILLING_SIGNATURE_INVALID"
    message = N_("The document's signature does not verify: it was altered or signed by another key.")


def _parse(document: bytes) -> ET.Element:
    # Our own envelopes, or ones we produced and now check; never a DTD or entities.
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise SignatureInvalid(fields={"document": "DTDs are not allowed"})
    return ET.fromstring(document)  # noqa: S314 - DTDs refused above, so no entity expansion


def _canonical(element: ET.Element) -> bytes:
    ET.register_namespace("", DSIG)
    return ET.canonicalize(ET.tostring(element, encoding="unicode")).encode("utf-8")


def _without_signature(document: bytes) -> ET.Element:
    root = _parse(document)
    holder = root.find(f".//{SIGNATURE_HOLDER}")
    if holder is None:
        raise SignatureInvalid(fields={SIGNATURE_HOLDER: "missing"})
    for child in list(holder):
        holder.remove(child)
    holder.text = None
    return root


def signed_info_text(digest: str) -> str:
    """Return the canonical ``SignedInfo`` for a reference digest (what the RSA signature covers)."""
    return (
        f'<SignedInfo xmlns="{DSIG}">'
        f'<CanonicalizationMethod Algorithm="{C14N}"></CanonicalizationMethod>'
        f'<SignatureMethod Algorithm="{RSA_SHA256}"></SignatureMethod>'
        '<Reference URI="">'
        f'<Transforms><Transform Algorithm="{ENVELOPED}"></Transform>'
        f'<Transform Algorithm="{C14N}"></Transform></Transforms>'
        f'<DigestMethod Algorithm="{SHA256}"></DigestMethod>'
        f"<DigestValue>{digest}</DigestValue>"
        "</Reference>"
        "</SignedInfo>"
    )


def sign_envelope(document: bytes, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> bytes:
    """Return the envelope with the facility's signature in ``CHUKYDONVI``.

    Raises SignatureInvalid when the document has no ``CHUKYDONVI`` element.
    """
    digest = base64.b64encode(hashlib.sha256(_canonical(_without_signature(document))).digest()).decode()
    signed_info = signed_info_text(digest)
    value = key.sign(signed_info.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    der = certificate.public_bytes(serialization.Encoding.DER)
    signature = (
        f'<Signature xmlns="{DSIG}">'
        + signed_info.replace(f' xmlns="{DSIG}"', "", 1)
        + f"<SignatureValue>{base64.b64encode(value).decode()}</SignatureValue>"
        + f"<KeyInfo><X509Data><X509Certificate>{base64.b64encode(der).decode()}</X509Certificate>"
        + "</X509Data></KeyInfo></Signature>"
    )
    empty = f"<{SIGNATURE_HOLDER}></{SIGNATURE_HOLDER}>".encode()
    if empty not in document:
        raise SignatureInvalid(fields={SIGNATURE_HOLDER: "missing or not empty"})
    filled = f"<{SIGNATURE_HOLDER}>{signature}</{SIGNATURE_HOLDER}>".encode()
    return document.replace(empty, filled, 1)


def verify_envelope(document: bytes) -> x509.Certificate:
    """Check the envelope's signature and return the certificate that made it.

    Raises SignatureInvalid when the signature is missing, the content's digest does not
    match, or the signature does not verify with the enclosed certificate.
    """
    root = _parse(document)
    signature = root.find(f".//{SIGNATURE_HOLDER}/{{{DSIG}}}Signature")
    if signature is None:
        raise SignatureInvalid(fields={SIGNATURE_HOLDER: "no signature"})
    signed_info = signature.find(f"{{{DSIG}}}SignedInfo")
    value_text = signature.findtext(f"{{{DSIG}}}SignatureValue") or ""
    cert_text = signature.findtext(f".//{{{DSIG}}}X509Certificate") or ""
    if signed_info is None:
        raise SignatureInvalid(fields={"SignedInfo": "missing"})
    digest = signed_info.findtext(f".//{{{DSIG}}}DigestValue") or ""
    actual = base64.b64encode(hashlib.sha256(_canonical(_without_signature(document))).digest()).decode()
    if digest != actual:
        raise SignatureInvalid(fields={"DigestValue": "the content changed"})
    try:
        certificate = x509.load_der_x509_certificate(base64.b64decode(cert_text))
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureInvalid(fields={"X509Certificate": "not an RSA key"})
        public_key.verify(
            base64.b64decode(value_text), _canonical(signed_info), padding.PKCS1v15(), hashes.SHA256()
        )
    except (InvalidSignature, ValueError) as exc:
        raise SignatureInvalid(fields={"SignatureValue": "does not verify"}) from exc
    return certificate


def load_signing_material(
    key_path: str | None, cert_path: str | None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate] | None:
    """Load the facility's RSA key and certificate from PEM files; None when either is not configured.

    Raises ConfigurationError when the key is not an RSA key, and OSError when a file cannot be read.
    """
    if not key_path or not cert_path:
        return None
    with open(key_path, "rb") as key_file, open(cert_path, "rb") as cert_file:
        key = serialization.load_pem_private_key(key_file.read(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_file.read())
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigurationError(N_("The claim-signing key must be an RSA key."))
    return key, certificate
