"""Vệ Tinh's platform and clinical core; ``create_app`` builds the one Flask application."""

from __future__ import annotations

import dataclasses
import gc
import logging
from typing import Any

from flask import Flask

from his.settings import Settings


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the application: settings, logging, extensions, blueprints, errors, jobs.

    ``overrides`` are Settings fields (``database_url=...``) applied over the environment.
    """
    if settings is None:
        settings = Settings.from_env(**overrides)
    app = Flask(__name__, static_folder=None)
    app.extensions["vetinh.settings"] = settings
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        SESSION_COOKIE_NAME="vetinh_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_CHECK_DEFAULT=False,
        TESTING=settings.testing,
        JSON_SORT_KEYS=False,
    )
    # Every setting is also readable as app.config["VETINH_<NAME>"]; ``extra`` adds free keys.
    app.config.update(
        {
            "VETINH_" + f.name.upper(): getattr(settings, f.name)
            for f in dataclasses.fields(settings)
            if f.name != "extra"
        }
    )
    app.config.update({k.upper(): v for k, v in settings.extra.items()})

    logging.basicConfig(level=logging.INFO if not settings.testing else logging.WARNING)

    from his import audit, db, events, extensions, i18n, jobs, security
    from his.sessions import DatabaseSessionInterface

    database = db.Database(
        settings.database_url, pool_size=settings.db_pool_size, pool_timeout=settings.db_pool_timeout
    )
    db.init_app(app, database)
    app.session_interface = DatabaseSessionInterface(settings.session_ttl_seconds)
    audit.init_app(app, database, settings.audit_flush_seconds)
    extensions.init_app(app)
    i18n.init_app(app)
    events.init_app(app)
    security.init_app(app, settings.token_cache_seconds)

    from billing.views import bp as billing_bp
    from booking.views import bp as booking_bp
    from fhir.views import bp as fhir_bp
    from his.api import bp as api_bp
    from his.records.views import bp as records_bp
    from his.views import bp as his_bp
    from pathology.views import bp as pathology_bp
    from telehealth.views import bp as telehealth_bp

    for blueprint in (
        his_bp,
        api_bp,
        fhir_bp,
        records_bp,
        booking_bp,
        billing_bp,
        telehealth_bp,
        pathology_bp,
    ):
        app.register_blueprint(blueprint)

    from his import errorhandlers

    errorhandlers.init_app(app)

    # Every context's models are imported by now: relate them here, once, rather than in
    # the first request that touches the ORM (half a second of a new worker's time).
    from sqlalchemy.orm import configure_mappers

    configure_mappers()
    if not settings.testing:
        # What the app built lives as long as the process: keep its ~300,000 objects out of
        # the collector's full passes, each of which held the GIL for about 0.17 s.
        gc.freeze()

    jobs.init_app(app)
    return app
