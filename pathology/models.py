"""Tables the pathology context owns: the slide files and what ingest learnt about them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint
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
