"""Read and write FHIR JSON text without losing what the sender wrote.

Decimals are parsed as ``Decimal`` so ``1.50`` stays ``1.50``; serialization writes
them back verbatim. ``patch_meta`` rewrites only the top-level ``meta`` of a JSON text
and leaves every other byte as it was.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from his.errors import BadRequest

_encode_string = json.encoder.encode_basestring
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def loads(text: str | bytes) -> Any:
    """Parse JSON keeping decimals exact; raise BadRequest naming the position otherwise."""
    try:
        return json.loads(text, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"The body is not valid JSON: {exc}",
            code="FHIR_MALFORMED_JSON",
            extra={
                "issue": [{"severity": "error", "code": "structure", "diagnostics": f"Malformed JSON: {exc}"}]
            },
        ) from exc


def dumps(value: Any) -> str:
    """Serialize compactly, writing ``Decimal`` values exactly as they were read."""
    parts: list[str] = []
    _write(value, parts)
    return "".join(parts)


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_string(key))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, Decimal):
        out.append(str(value))
    elif isinstance(value, int | float):
        out.append(json.dumps(value))
    else:
        raise TypeError(f"cannot serialize {type(value).__name__}")


def stamp(text: str, resource: dict[str, Any], resource_id: str, meta: dict[str, Any]) -> str:
    """Return ``text`` with its top-level ``id`` and ``meta`` replaced, every other byte kept.

    ``resource`` is ``text`` already parsed. A missing member is inserted right after
    ``resourceType``.
    """
    spans = _member_spans(text, ("resourceType", "id", "meta"))
    edits: list[tuple[int, int, str]] = []
    inserts: list[str] = []
    for key, value in (("id", _encode_string(resource_id)), ("meta", dumps(meta))):
        span = spans.get(key)
        if span is not None:
            edits.append((span[0], span[1], value))
        elif key in resource:
            return dumps({**resource, "id": resource_id, "meta": meta})
        else:
            inserts.append(f"{_encode_string(key)}:{value}")
    anchor = spans.get("resourceType")
    if inserts and anchor is not None:
        edits.append((anchor[1], anchor[1], "," + ",".join(inserts)))
    elif inserts:
        brace = text.index("{")
        edits.append((brace + 1, brace + 1, ",".join(inserts) + ","))
    for start, end, value in sorted(edits, reverse=True):
        text = text[:start] + value + text[end:]
    return text


def _member_spans(text: str, keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Find the value spans of the top-level members ``keys`` (strings or objects)."""
    wanted = {_encode_string(k): k for k in keys}
    spans: dict[str, tuple[int, int]] = {}
    depth = 0
    open_key: str | None = None
    open_at = -1
    value_at = -1
    pending: str | None = None
    for match in _TOKEN.finditer(text):
        piece = match.group()
        if piece in ("{", "["):
            depth += 1
            if pending is not None and depth == 2 and match.start() == value_at:
                open_key, open_at, pending = pending, match.start(), None
        elif piece in ("}", "]"):
            depth -= 1
            if open_key is not None and depth == 1:
                spans[open_key] = (open_at, match.end())
                open_key = None
                if len(spans) == len(keys):
                    break
        elif depth == 1 and open_key is None:
            if pending is not None and match.start() == value_at:
                spans[pending] = (match.start(), match.end())
                pending = None
                continue
            if piece in wanted:
                after = text[match.end() : match.end() + 64].lstrip()
                if after.startswith(":"):
                    rest = text[match.end() :]
                    colon = match.end() + (len(rest) - len(rest.lstrip())) + 1
                    value_at = colon + (len(text) - colon - len(text[colon:].lstrip()))
                    pending = wanted[piece]
    return spans
