"""The one settings object, read from VETINH_* variables."""

from __future__ import annotations

import pytest

from his import create_app
from his.errors import ConfigurationError
from his.settings import Settings


def test_settings_come_from_vetinh_variables():
    settings = Settings.from_env(
        {
            "VETINH_DATABASE_URL": "postgresql+psycopg://db/vetinh",
            "VETINH_REDIS_URL": "redis://cache:6379/0",
            "VETINH_DATA_DIR": "/srv/vetinh",
            "VETINH_TOKEN_TTL_SECONDS": "120",
            "VETINH_SCHEDULER_ENABLED": "no",
            "VETINH_SECRET_KEY": "k" * 40,
        }
    )
    assert settings.database_url == "postgresql+psycopg://db/vetinh"
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.events == "redis"
    assert settings.data_dir == "/srv/vetinh"
    assert settings.token_ttl_seconds == 120
    assert settings.scheduler_enabled is False


def test_defaults_are_sqlite_under_instance_and_the_in_process_bus(tmp_path, monkeypatch):
    monkeypatch.setenv("VETINH_INSTANCE_DIR", str(tmp_path))
    settings = Settings.from_env({})
    assert settings.database_url == f"sqlite:///{tmp_path / 'vetinh.sqlite3'}"
    assert settings.events == "memory"
    assert len(settings.secret_key) >= 32
    assert Settings.from_env({}).secret_key == settings.secret_key


def test_production_refuses_to_start_without_a_secret_key():
    with pytest.raises(ConfigurationError, match="VETINH_SECRET_KEY"):
        create_app(Settings.from_env({"VETINH_ENV": "production"}))


def test_a_badly_typed_variable_is_named_in_the_error():
    with pytest.raises(ConfigurationError, match="VETINH_TOKEN_TTL_SECONDS"):
        Settings.from_env({"VETINH_TOKEN_TTL_SECONDS": "soon"})


def test_healthz_reports_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}
