"""Make PDF documents that print Vietnamese correctly (fpdf2 with the DejaVu fonts from npm)."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from fpdf import FPDF

from his.errors import ConfigurationError

FONT_FAMILY = "DejaVu"
# Page sizes in millimetres (fpdf2 warns about its own A5 table, which changed in 2.8.5).
PAGE_SIZES = {"A4": (210.0, 297.0), "A5": (148.0, 210.0)}
_FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf", "I": "DejaVuSans-Oblique.ttf"}


def font_dir(app: Flask) -> Path:
    """Return the folder of the DejaVu TrueType fonts installed by npm (package.json)."""
    return Path(app.extensions["vetinh.settings"].vendor_dir) / "dejavu-fonts-ttf" / "ttf"


def new_document(app: Flask, *, page_format: str = "A4", title: str = "") -> FPDF:
    """Return an empty PDF whose font ``DejaVu`` (regular, bold, italic) covers Vietnamese.

    Raises ConfigurationError when the fonts are not installed (run ``npm install``).
    """
    folder = font_dir(app)
    missing = [name for name in _FONT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise ConfigurationError(
            f"The PDF fonts are missing ({', '.join(missing)}); install them with `npm install`."
        )
    pdf = FPDF(unit="mm", format=PAGE_SIZES[page_format])
    pdf.set_creator("Vệ Tinh")
    if title:
        pdf.set_title(title)
    for style, name in _FONT_FILES.items():
        pdf.add_font(FONT_FAMILY, style=style, fname=str(folder / name))
    pdf.set_font(FONT_FAMILY, size=10)
    pdf.set_auto_page_break(auto=True, margin=10)
    return pdf
