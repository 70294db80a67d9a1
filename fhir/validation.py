"""Validate resources with fhir.resources' R4B models: the one module that picks the release.

Errors come back as OperationOutcome issues whose ``expression`` names the element
(``Patient.birthDate``, ``Questionnaire.item[0].item[0].linkId``).
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from functools import cache
from typing import Any

from fhir_core.types import FhirBase
from pydantic import ValidationError

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from fhir.resources.R4B.resource import Resource

FHIR_VERSION = "4.0.1"
_ABSTRACT = frozenset({"Resource", "DomainResource"})

_CODES = {
    "missing": "required",
    "model_field_validation.missing": "required",
    "extra_forbidden": "structure",
    "fhir-validation-wrong-resource-type": "invalid",
}


@cache
def is_resource_type(name: str) -> bool:
    """Tell whether ``name`` is a concrete resource type of the release we speak."""
    if not name or not name[:1].isupper() or not name.isalnum() or name in _ABSTRACT:
        return False
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return False
    return issubclass(model, Resource)


@cache
def resource_types() -> tuple[str, ...]:
    """Return every concrete resource type, sorted (imports every model once: about a second)."""
    names = (n[: -len("Type")] for n in dir(fhirtypes) if n.endswith("Type") and n[:1].isupper())
    return tuple(sorted(n for n in names if is_resource_type(n)))


@cache
def summary_elements(resource_type: str) -> frozenset[str]:
    """Return the top-level elements that ``_summary=true`` keeps for ``resource_type``."""
    model = get_fhir_model_class(resource_type)
    names = {"resourceType", "id", "meta"}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("summary_element_property"):
            names.add(field.alias or name)
    return frozenset(names)


def preload_models(resource_types: Iterable[str]) -> int:
    """Import the models of ``resource_types`` and of every element type they contain.

    fhir.resources imports a model, and builds its validator, the first time a resource
    or element of that type is validated, which makes the first writes a process sees
    several times slower than the rest. Returns how many models are loaded; raises
    KeyError for an unknown type. The walk runs once per process for a set of types:
    every app built after the first (a test builds one per test) finds them loaded.
    """
    return _preload(frozenset(resource_types))


@cache
def _preload(resource_types: frozenset[str]) -> int:
    loaded: set[type] = set()
    pending = [get_fhir_model_class(name) for name in sorted(resource_types)]
    while pending:
        model = pending.pop()
        if model in loaded:
            continue
        loaded.add(model)
        for field in model.model_fields.values():
            pending.extend(element.get_model_klass() for element in _element_types(field.annotation))
    return len(loaded)


def _element_types(annotation: Any) -> Iterable[Any]:
    """Yield the fhir.resources lazy element types inside a field annotation."""
    if (
        isinstance(annotation, type)
        and issubclass(annotation, FhirBase)
        and hasattr(annotation, "_model_klass")
    ):
        yield annotation
    for argument in typing.get_args(annotation):
        yield from _element_types(argument)


def validate_resource(
    resource: Any,
    prefix: str | None = None,
    *,
    references: list[tuple[str, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Validate one resource and return OperationOutcome issues (empty when it is valid).

    ``prefix`` replaces the resource type at the start of each expression, so an error
    inside a Bundle entry reads ``Bundle.entry[3].resource.birthDate``. When
    ``references`` is a list, the resource's Reference objects (``contained`` aside) are
    appended to it as ``(expression, object)`` pairs, found on the walk that looks for
    nulls: a transaction needs them next, and one walk costs less than two.
    """
    if not isinstance(resource, dict):
        return [_issue("structure", "A resource must be a JSON object", prefix or "Resource")]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not is_resource_type(rtype):
        return [
            _issue(
                "structure",
                f"Unknown or missing resourceType {rtype!r}",
                f"{prefix}.resourceType" if prefix else "resourceType",
            )
        ]
    nulls: list[str] = []
    _scan(resource, [prefix or rtype], nulls, references)
    if nulls:
        return [
            _issue("structure", f"{path}: null is not allowed in FHIR JSON; leave the element out", path)
            for path in nulls[:10]
        ]
    try:
        get_fhir_model_class(rtype).model_validate(resource)
    except ValidationError as exc:
        return [_issue_from_error(error, prefix or rtype) for error in exc.errors()]
    except (ValueError, TypeError) as exc:
        return [_issue("invalid", str(exc), prefix or rtype)]
    return []


def _scan(
    node: dict[str, Any] | list[Any],
    steps: list[str],
    nulls: list[str],
    references: list[tuple[str, dict[str, Any]]] | None,
) -> None:
    """Note the paths of JSON nulls and, unless ``references`` is None, the Reference objects.

    FHIR forbids nulls, except in an array of primitives, where they line values up with
    their extensions. References inside ``contained`` are the contained resources' own.
    ``steps`` spell the path to ``node``; a path is joined only when something is found.
    This walk visits every element of every resource written, hence its thrift: ``isinstance``
    is given a tuple, which it checks faster than a union type.
    """
    if isinstance(node, dict):
        if references is not None and isinstance(node.get("reference"), str):
            references.append(("".join(steps) + ".reference", node))
        for key, value in node.items():
            if value is None:
                nulls.append("".join(steps) + "." + key)
            elif isinstance(value, (dict, list)):
                steps.append("." + key)
                _scan(value, steps, nulls, None if key == "contained" else references)
                steps.pop()
    else:
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)):
                steps.append(f"[{index}]")
                _scan(item, steps, nulls, references)
                steps.pop()


def _issue_from_error(error: Any, root: str) -> dict[str, Any]:
    path = root
    for part in error.get("loc", ()):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            name = str(part)
            if name == "resource_type":
                name = "resourceType"
            elif name.endswith("__ext"):
                name = "_" + name[: -len("__ext")]
            elif name.endswith("_fhir"):
                name = name[: -len("_fhir")]
            path += f".{name}"
    kind = error.get("type", "")
    message = error.get("msg", "invalid value")
    if kind == "extra_forbidden":
        message = f"Unknown element '{path.rsplit('.', 1)[-1]}'"
    return _issue(_CODES.get(kind, "value"), f"{path}: {message}", path)


def _issue(code: str, diagnostics: str, expression: str) -> dict[str, Any]:
    return {
        "severity": "error",
        "code": code,
        "diagnostics": diagnostics,
        "expression": [expression],
    }
