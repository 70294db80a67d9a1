"""Register billing's background jobs: sending e-invoices and insurance claims that wait in the outbox."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from billing.claims import ClaimGateway
from billing.einvoice import EInvoiceProvider, Party
from billing.invoices import Facility
from billing.outbox import EInvoiceSettings, send_einvoices, submit_claims
from billing.rules import FacilityLevel
from billing.xmlsign import load_signing_material
from his.db import get_session
from his.jobs import register_job
from his.models import Site


def _home_facility(app: Flask) -> Facility:
    """Describe this deployment's own hospital (the site named by ``site_code``)."""
    settings = app.extensions["vetinh.settings"]
    site = get_session().scalars(select(Site).where(Site.code == settings.site_code)).first()
    level = (
        FacilityLevel.SPECIALIZED if site is not None and site.kind == "central" else FacilityLevel.PRIMARY
    )
    return Facility(code=(site.facility_code or "") if site else "", level=level)


def send_pending_einvoices(app: Flask) -> int:
    """Send the pending e-invoices to the configured provider."""
    config = app.config
    settings = EInvoiceSettings(
        seller=Party(
            name=str(config.get("VETINH_EINVOICE_SELLER_NAME") or ""),
            address=str(config.get("VETINH_EINVOICE_SELLER_ADDRESS") or ""),
            tax_code=str(config.get("VETINH_EINVOICE_SELLER_TAX_CODE") or ""),
        ),
        template=str(config.get("VETINH_EINVOICE_TEMPLATE") or "2"),
        series=str(config.get("VETINH_EINVOICE_SERIES") or "C26TBV"),
    )
    provider = EInvoiceProvider(config.get("VETINH_EINVOICE_PROVIDER_URL"))
    return send_einvoices(get_session(), provider, settings)


def submit_pending_claims(app: Flask) -> int:
    """Send the pending insurance claims, signed with the facility's key when one is configured."""
    config = app.config
    signing = load_signing_material(
        config.get("VETINH_CLAIM_SIGNING_KEY"), config.get("VETINH_CLAIM_SIGNING_CERT")
    )
    gateway = ClaimGateway(config.get("VETINH_BHYT_CLAIM_GATEWAY_URL"))
    return submit_claims(get_session(), gateway, _home_facility(app), signing=signing)


register_job("billing.send_einvoices", send_pending_einvoices, "interval", minutes=10)
register_job("billing.submit_claims", submit_pending_claims, "interval", minutes=60)
