"""Tables the pathology context owns: the slide files and what ingest learnt about them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from his.db import Base, utcnow

SLIDE_STATUSES = ("processing", "ready", "failed")


class Slide(Base):
    """A whole-slide image accepted into the slide store, in a case or in its site's inbox.

    ``stored_path`` is relative to the slide store and names the file OpenSlide opens
    (for a DICOM series or a MIRAX slide, one file of a folder holding the others).
    """

    __tablename__ = "pathology_slides"
    __table_args__ = (UniqueConstraint("site_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    case_id: Mapped[str | None] = mapped_column(String(64), index=True)
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    original_filename: Mapped[str] = mapped_column(String(255))
    stored_path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(40))
    vendor: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="processing")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    level_count: Mapped[int] = mapped_column(Integer)
    mpp_x: Mapped[float | None] = mapped_column(Float)
    mpp_y: Mapped[float | None] = mapped_column(Float)
    objective_power: Mapped[float | None] = mapped_column(Float)
    scanned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    imaging_study_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # How far the pyramid-building job got (0 to 1) while the slide is ``processing``.
    pyramid_progress: Mapped[float | None] = mapped_column(Float)


CASE_STATUSES = ("new", "in_progress", "reported")
REPORT_STATUSES = ("draft", "signed")


class ConsultCase(Base):
    """A pathology consult: a district site asks a central site to read slides (the Task of its ServiceRequest).

    The state runs new → in_progress (a pathologist took it) → reported (the report is signed).
    """

    __tablename__ = "pathology_cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requesting_site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    receiving_site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    clinical_question: Mapped[str] = mapped_column(Text)
    specimen_type: Mapped[str] = mapped_column(String(200))
    body_site: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default="new", index=True)
    assigned_to: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    service_request_id: Mapped[str | None] = mapped_column(String(64))
    specimen_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CaseReport(Base):
    """The pathologist's report of a case: a draft until signed, then frozen and mirrored by a DiagnosticReport."""

    __tablename__ = "pathology_reports"

    case_id: Mapped[str] = mapped_column(ForeignKey("pathology_cases.id"), primary_key=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    macroscopic: Mapped[str] = mapped_column(Text, default="")
    microscopic: Mapped[str] = mapped_column(Text, default="")
    conclusion: Mapped[str] = mapped_column(Text, default="")
    diagnosis_code: Mapped[str | None] = mapped_column(String(20))
    diagnosis_display: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="draft")
    diagnostic_report_id: Mapped[str | None] = mapped_column(String(64))
    provenance_id: Mapped[str | None] = mapped_column(String(64))
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Annotation(Base):
    """One GeoJSON Feature drawn on a slide, its coordinates in micrometres from the slide's top-left corner."""

    __tablename__ = "pathology_annotations"

    id: Mapped[int] = mapped_column(primary_key=True)
    slide_id: Mapped[str] = mapped_column(ForeignKey("pathology_slides.id", ondelete="CASCADE"), index=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    author_name: Mapped[str] = mapped_column(String(200), default="")
    feature: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SlideUpload(Base):
    """A slide being uploaded in chunks: what the client declared and how many bytes arrived so far.

    The bytes are in ``<slide store>/.incoming/<folder>/upload.part``; a dropped connection
    resumes at ``received``.
    """

    __tablename__ = "pathology_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    folder: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
