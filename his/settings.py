"""Read the one typed settings object from ``VETINH_*`` environment variables."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from his.errors import ConfigurationError

PREFIX = "VETINH_"
ROOT = Path(__file__).resolve().parent.parent


def _default_instance_dir() -> Path:
    return Path(os.environ.get(PREFIX + "INSTANCE_DIR", ROOT / "instance"))


@dataclass(frozen=True)
class Settings:
    """Everything the app can be configured with; every field maps to ``VETINH_<NAME>``."""

    env: str = "development"
    secret_key: str = ""
    database_url: str = ""
    redis_url: str = ""
    data_dir: str = ""
    site_code: str = "DIST"
    default_locale: str = "vi"
    timezone: str = "Asia/Ho_Chi_Minh"
    event_backend: str = ""
    scheduler_enabled: bool = True
    token_ttl_seconds: int = 3600
    token_cache_seconds: float = 5.0
    session_ttl_seconds: int = 8 * 3600
    login_max_failures: int = 5
    login_window_seconds: int = 900
    audit_flush_seconds: float = 0.5
    max_request_bytes: int = 16 * 1024 * 1024
    smtp_host: str = ""
    smtp_port: int = 25
    mail_sender: str = "no-reply@vetinh.local"
    ice_servers: str = "stun:127.0.0.1:3478"
    turn_secret: str = ""
    vendor_dir: str = ""
    redis_prefix: str = "vetinh:"
    db_pool_size: int = 20
    db_pool_timeout: int = 30
    booking_webhook_url: str = ""
    telehealth_media: str = "embedded"
    records_national_url: str = ""
    records_national_token: str = ""
    telehealth_sse_keepalive: float = 5.0
    facility_level: str = ""
    bank_bin: str = ""
    bank_account: str = ""
    bank_webhook_secret: str = ""
    bhyt_gateway_url: str = ""
    bhyt_claim_gateway_url: str = ""
    claim_signing_key: str = ""
    claim_signing_cert: str = ""
    einvoice_provider_url: str = ""
    einvoice_seller_name: str = ""
    einvoice_seller_address: str = ""
    einvoice_seller_tax_code: str = ""
    einvoice_template: str = "2"
    einvoice_series: str = "C26TBV"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def testing(self) -> bool:
        return self.env == "testing"

    @property
    def events(self) -> str:
        """Name the event bus backend: an explicit choice, else Redis when a URL is set."""
        if self.event_backend:
            return self.event_backend
        return "redis" if self.redis_url else "memory"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``VETINH_*`` variables, then apply ``overrides``.

        Raises ConfigurationError for a value of the wrong type, or for production
        mode without a secret key.
        """
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, raw, hints[f.name])
        values.update(overrides)
        settings = cls(**values)
        return settings._completed()

    def _completed(self) -> Settings:
        if self.production and not self.secret_key:
            raise ConfigurationError(
                "VETINH_SECRET_KEY must be set in production mode (VETINH_ENV=production)."
            )
        if self.production and len(self.secret_key) < 32:
            raise ConfigurationError("VETINH_SECRET_KEY must be at least 32 characters.")
        instance = _default_instance_dir()
        changes: dict[str, Any] = {}
        if not self.secret_key:
            # Development only: a fresh random key per process, never a fixed fallback.
            changes["secret_key"] = _development_secret(instance)
        if not self.database_url:
            changes["database_url"] = f"sqlite:///{instance / 'vetinh.sqlite3'}"
        if not self.data_dir:
            changes["data_dir"] = str(instance / "data")
        if not self.vendor_dir:
            changes["vendor_dir"] = str(ROOT / "node_modules")
        return dataclasses.replace(self, **changes) if changes else self


def _development_secret(instance: Path) -> str:
    """Keep one random development key in the instance folder so sessions survive restarts."""
    path = instance / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        instance.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.write_text(key)
        path.chmod(0o600)
        return key


def _coerce(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool or kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind is int or kind == "int":
            return int(raw)
        if kind is float or kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{PREFIX}{name.upper()} has an invalid value: {raw!r}") from exc
    return raw
