"""Define the FHIR store's tables: current versions, history, search indexes, compartments.

The shape follows the one HAPI FHIR and Medplum converge on. Every column type works
the same on SQLite and PostgreSQL: index dates are naive UTC ``DateTime`` values and
index numbers are ``Float`` (search ranges are approximate by definition), while the
resource itself is kept as the exact JSON text that was accepted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Float, Index, Integer, String, Table, Text, event
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.pool import Pool

from his.db import Base

TYPE_LEN = 64
ID_LEN = 64
PARAM_LEN = 64


class FhirResource(Base):
    """Hold the current version of every resource (deleted ones stay, flagged)."""

    __tablename__ = "fhir_resource"

    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime)
    last_updated: Mapped[datetime] = mapped_column(DateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_fhir_resource_last_updated", "last_updated"),)


class FhirResourceHistory(Base):
    """Hold every version of every resource, including deletions."""

    __tablename__ = "fhir_resource_history"

    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(DateTime)
    method: Mapped[str] = mapped_column(String(8))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_fhir_resource_history_last_updated", "last_updated"),)


class FhirIndexString(Base):
    """Index string parameters: ``value`` is accent-free lower case, ``exact`` as written."""

    __tablename__ = "fhir_idx_string"

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    res_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(PARAM_LEN))
    value: Mapped[str] = mapped_column(String(255))
    exact: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_fhir_idx_string_resource", "res_type", "res_id", "param"),
        Index("ix_fhir_idx_string_search", "res_type", "param", "value"),
    )


class FhirIndexToken(Base):
    """Index token parameters as (system, code); a missing system is NULL."""

    __tablename__ = "fhir_idx_token"

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    res_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(PARAM_LEN))
    system: Mapped[str | None] = mapped_column(String(255))
    code: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_fhir_idx_token_resource", "res_type", "res_id", "param"),
        Index("ix_fhir_idx_token_search", "res_type", "param", "code", "system"),
    )


class FhirIndexDate(Base):
    """Index date parameters as the inclusive UTC range ``[start, end]`` they stand for."""

    __tablename__ = "fhir_idx_date"

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    res_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(PARAM_LEN))
    start: Mapped[datetime] = mapped_column(DateTime)
    end: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_fhir_idx_date_resource", "res_type", "res_id", "param"),
        Index("ix_fhir_idx_date_search", "res_type", "param", "start", "end"),
    )


class FhirIndexNumber(Base):
    """Index number and quantity parameters; quantities also carry system and code."""

    __tablename__ = "fhir_idx_number"

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    res_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(PARAM_LEN))
    value: Mapped[float] = mapped_column(Float)
    system: Mapped[str | None] = mapped_column(String(255))
    code: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_fhir_idx_number_resource", "res_type", "res_id", "param"),
        Index("ix_fhir_idx_number_search", "res_type", "param", "value"),
    )


class FhirIndexReference(Base):
    """Index references: local ones as (target_type, target_id), others by ``url``."""

    __tablename__ = "fhir_idx_reference"

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    res_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(PARAM_LEN))
    target_type: Mapped[str | None] = mapped_column(String(TYPE_LEN))
    target_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    url: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_fhir_idx_reference_resource", "res_type", "res_id", "param"),
        Index("ix_fhir_idx_reference_target_id", "target_id", "target_type", "param", "res_type"),
    )


class FhirIndexUri(Base):
    """Index uri parameters (canonical URLs, profiles)."""

    __tablename__ = "fhir_idx_uri"

    row_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN))
    res_id: Mapped[str] = mapped_column(String(ID_LEN))
    param: Mapped[str] = mapped_column(String(PARAM_LEN))
    value: Mapped[str] = mapped_column(String(512))

    __table_args__ = (
        Index("ix_fhir_idx_uri_resource", "res_type", "res_id", "param"),
        Index("ix_fhir_idx_uri_search", "res_type", "param", "value"),
    )


class FhirCompartment(Base):
    """Record which resources belong to which patient's compartment."""

    __tablename__ = "fhir_compartment"

    patient_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)

    __table_args__ = (Index("ix_fhir_compartment_resource", "res_type", "res_id"),)


INDEX_TABLES: dict[str, Table] = {
    "string": Base.metadata.tables["fhir_idx_string"],
    "token": Base.metadata.tables["fhir_idx_token"],
    "date": Base.metadata.tables["fhir_idx_date"],
    "number": Base.metadata.tables["fhir_idx_number"],
    "quantity": Base.metadata.tables["fhir_idx_number"],
    "reference": Base.metadata.tables["fhir_idx_reference"],
    "uri": Base.metadata.tables["fhir_idx_uri"],
}


@event.listens_for(Pool, "connect")
def _custom_plans_on_postgresql(dbapi_connection: Any, _record: Any) -> None:
    """Make PostgreSQL plan every search for its own values.

    psycopg prepares a statement after a few runs and PostgreSQL may then keep a
    generic plan made when the index tables were nearly empty (a sequential scan),
    which stays 10-20 times slower than a custom plan once they have grown. This
    belongs in the engine set-up of ``his.db``; it lives here until it moves there.
    """
    if type(dbapi_connection).__module__.startswith("psycopg"):
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_connection.commit()
