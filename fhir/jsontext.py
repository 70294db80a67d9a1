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

_encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]
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


def patch_meta(text: str, resource: dict[str, Any], version_id: str, last_updated: str) -> str:
    """Return ``text`` with its top-level ``meta.versionId``/``meta.lastUpdated`` set.

    ``resource`` is ``text`` already parsed; only the ``meta`` object is rewritten.
    """
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = version_id
    meta["lastUpdated"] = last_updated
    new_meta = dumps(meta)
    span = _find_meta(text) if "meta" in resource else None
    if span is not None:
        return text[: span[0]] + new_meta + text[span[1] :]
    if "meta" in resource:
        return dumps({**resource, "meta": meta})
    brace = text.index("{")
    return text[: brace + 1] + '"meta":' + new_meta + "," + text[brace + 1 :]


def _find_meta(text: str) -> tuple[int, int] | None:
    depth = 0
    start: int | None = None
    value_at = -1
    for match in _TOKEN.finditer(text):
        piece = match.group()
        if piece in ("{", "["):
            depth += 1
            if start is None and depth == 2 and match.start() == value_at:
                start = match.start()
        elif piece in ("}", "]"):
            depth -= 1
            if start is not None and depth == 1:
                return start, match.end()
        elif depth == 1 and start is None and piece == '"meta"':
            rest = text[match.end() :]
            stripped = rest.lstrip()
            if stripped.startswith(":"):
                after = stripped[1:]
                value_at = len(text) - len(after.lstrip())
    return None
