"""Keep the annotations drawn on slides as GeoJSON Features in slide micrometres.

Coordinates are micrometres from the top-left corner of the slide's full-resolution
image (x to the right, y downwards), so an annotation survives a rebuilt pyramid. A
slide without a known pixel size is annotated at 1 µm per pixel and its features say
``"calibrated": false``. Lengths and areas are computed here, never trusted from the
browser.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from his.db import as_utc
from his.errors import N_, Conflict, Forbidden, NotFound, ValidationFailed
from his.security import Principal
from pathology.models import Annotation, ConsultCase, Slide

KINDS = {
    "point": "Point",
    "text": "Point",
    "line": "LineString",
    "measurement": "LineString",
    "rectangle": "Polygon",
    "polygon": "Polygon",
}
MAX_POSITIONS = 5000
MAX_LABEL = 200
MAX_ANNOTATIONS_PER_SLIDE = 2000


class AnnotationNotFound(NotFound):
    code = "ANNOTATION_NOT_FOUND"
    message = N_("There is no such annotation on this slide.")


def _invalid(message: str) -> ValidationFailed:
    return ValidationFailed(
        N_("The annotation is not valid GeoJSON for this slide."), fields={"geometry": message}
    )


def slide_extent_um(slide: Slide) -> tuple[float, float, bool]:
    """Return the slide's width and height in micrometres, and whether its pixel size is known."""
    calibrated = bool(slide.mpp_x and slide.mpp_y)
    mpp_x = slide.mpp_x if slide.mpp_x else 1.0
    mpp_y = slide.mpp_y if slide.mpp_y else 1.0
    return slide.width * mpp_x, slide.height * mpp_y, calibrated


def _position(value: Any, width: float, height: float) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2):
        raise _invalid(N_("A position is a pair of numbers [x, y] in micrometres."))
    x, y = value
    if (
        isinstance(x, bool)
        or isinstance(y, bool)
        or not isinstance(x, int | float)
        or not isinstance(y, int | float)
    ):
        raise _invalid(N_("A position is a pair of numbers [x, y] in micrometres."))
    if not (math.isfinite(x) and math.isfinite(y)):
        raise _invalid(N_("A position is a pair of numbers [x, y] in micrometres."))
    # A little slack: a shape drawn to the slide's very edge may end a fraction beyond it.
    slack = 0.01 * max(width, height)
    if not (-slack <= x <= width + slack and -slack <= y <= height + slack):
        raise _invalid(N_("A position lies outside the slide."))
    return round(float(x), 3), round(float(y), 3)


def length_um(line: list[tuple[float, float]]) -> float:
    """Return the length of a polyline in micrometres."""
    return sum(math.dist(a, b) for a, b in itertools.pairwise(line))


def area_um2(ring: list[tuple[float, float]]) -> float:
    """Return the area enclosed by a closed ring (shoelace formula) in square micrometres."""
    total = 0.0
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        total += x1 * y2 - x2 * y1
    return abs(total) / 2


def clean_feature(data: Any, slide: Slide) -> dict[str, Any]:
    """Check a GeoJSON Feature against the slide and return it with its measures computed.

    Raises ValidationFailed naming what is wrong: not a Feature, an unknown kind, a
    geometry that does not fit the kind, a position outside the slide, a label too long.
    """
    if not isinstance(data, dict) or data.get("type") != "Feature":
        raise ValidationFailed(N_("Send one GeoJSON Feature."), fields={"type": N_("must be 'Feature'")})
    properties = data.get("properties") or {}
    geometry = data.get("geometry")
    if not isinstance(properties, dict) or not isinstance(geometry, dict):
        raise _invalid(N_("A Feature needs a geometry and properties objects."))
    kind = properties.get("kind")
    if kind not in KINDS:
        raise ValidationFailed(
            N_("The annotation is not valid GeoJSON for this slide."),
            fields={"properties.kind": N_("Use point, text, line, measurement, rectangle or polygon.")},
        )
    if geometry.get("type") != KINDS[kind]:
        raise _invalid(N_("The geometry's type does not fit the annotation's kind."))
    label = properties.get("label") or ""
    if not isinstance(label, str) or len(label) > MAX_LABEL:
        raise ValidationFailed(
            N_("The annotation is not valid GeoJSON for this slide."),
            fields={"properties.label": N_("A label is text of at most 200 characters.")},
        )
    if kind == "text" and not label.strip():
        raise ValidationFailed(
            N_("The annotation is not valid GeoJSON for this slide."),
            fields={"properties.label": N_("A text annotation needs its text.")},
        )
    width, height, calibrated = slide_extent_um(slide)
    coordinates = geometry.get("coordinates")
    out: dict[str, Any] = {"kind": kind, "label": label.strip(), "calibrated": calibrated}
    if KINDS[kind] == "Point":
        point = _position(coordinates, width, height)
        clean: Any = list(point)
    elif KINDS[kind] == "LineString":
        if not isinstance(coordinates, list) or not 2 <= len(coordinates) <= MAX_POSITIONS:
            raise _invalid(N_("A line needs at least two positions."))
        if kind == "measurement" and len(coordinates) != 2:
            raise _invalid(N_("A measurement is a line between two positions."))
        line = [_position(p, width, height) for p in coordinates]
        clean = [list(p) for p in line]
        out["length_um"] = round(length_um(line), 2)
    else:
        if not isinstance(coordinates, list) or len(coordinates) != 1 or not isinstance(coordinates[0], list):
            raise _invalid(N_("A polygon is one closed ring of positions."))
        ring = [_position(p, width, height) for p in coordinates[0][: MAX_POSITIONS + 1]]
        if len(ring) < 4 or ring[0] != ring[-1]:
            raise _invalid(N_("A polygon's ring needs at least four positions, the last equal to the first."))
        if kind == "rectangle" and len(ring) != 5:
            raise _invalid(N_("A rectangle is a ring of five positions."))
        clean = [[list(p) for p in ring]]
        out["area_mm2"] = round(area_um2(ring) / 1e6, 6)
        out["perimeter_um"] = round(length_um(ring), 2)
    return {"type": "Feature", "geometry": {"type": KINDS[kind], "coordinates": clean}, "properties": out}


def annotations_frozen(session: Session, slide: Slide) -> bool:
    """Tell whether the slide belongs to a reported case, whose annotations stay as they were signed."""
    if not slide.case_id:
        return False
    case = session.get(ConsultCase, slide.case_id)
    return case is not None and case.status == "reported"


def add_annotation(session: Session, principal: Principal, slide: Slide, data: Any) -> Annotation:
    """Store a new annotation on a slide the principal may see.

    Raises ValidationFailed for a feature that does not fit the slide, Conflict when the
    slide's case is reported or the slide holds too many annotations.
    """
    feature = clean_feature(data, slide)
    if annotations_frozen(session, slide):
        raise Conflict(
            N_("The case is reported; its annotations can no longer change."), code="ANNOTATIONS_FROZEN"
        )
    count = len(session.scalars(select(Annotation.id).where(Annotation.slide_id == slide.id)).all())
    if count >= MAX_ANNOTATIONS_PER_SLIDE:
        raise Conflict(N_("This slide has too many annotations."), code="ANNOTATIONS_FULL")
    annotation = Annotation(
        slide_id=slide.id,
        author_id=principal.user_id,
        author_name=principal.full_name or principal.username,
        feature=feature,
    )
    session.add(annotation)
    session.flush()
    return annotation


def remove_annotation(session: Session, principal: Principal, slide: Slide, annotation_id: int) -> None:
    """Delete one's own annotation.

    Raises AnnotationNotFound, Forbidden for another author's annotation, and Conflict when
    the slide's case is reported.
    """
    annotation = session.get(Annotation, annotation_id)
    if annotation is None or annotation.slide_id != slide.id:
        raise AnnotationNotFound()
    if annotation.author_id != principal.user_id:
        raise Forbidden(N_("Only its author can delete an annotation."), code="ANNOTATION_NOT_YOURS")
    if annotations_frozen(session, slide):
        raise Conflict(
            N_("The case is reported; its annotations can no longer change."), code="ANNOTATIONS_FROZEN"
        )
    session.delete(annotation)
    session.flush()


def as_geojson(annotation: Annotation) -> dict[str, Any]:
    """Return an annotation as a Feature with its id, author and time."""
    feature = dict(annotation.feature)
    properties = dict(feature.get("properties") or {})
    properties.update(
        author=annotation.author_name,
        author_id=annotation.author_id,
        created_at=as_utc(annotation.created_at).isoformat(),
    )
    return {"type": "Feature", "id": annotation.id, "geometry": feature["geometry"], "properties": properties}


def slide_annotations(session: Session, slide: Slide) -> dict[str, Any]:
    """Return a slide's annotations as a GeoJSON FeatureCollection, oldest first."""
    rows = session.scalars(
        select(Annotation)
        .where(Annotation.slide_id == slide.id)
        .order_by(Annotation.created_at, Annotation.id)
    )
    return {"type": "FeatureCollection", "features": [as_geojson(row) for row in rows]}
