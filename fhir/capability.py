"""Build the CapabilityStatement from what the store and the API really support."""

from __future__ import annotations

from functools import cache
from typing import Any

from fhir.searchparams import COMMON, RESOURCE_PARAMS, params_for
from fhir.validation import FHIR_VERSION, resource_types

INTERACTIONS = (
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SEARCH_TYPES = {
    "string": "string",
    "token": "token",
    "date": "date",
    "number": "number",
    "quantity": "quantity",
    "reference": "reference",
    "uri": "uri",
}
RESULT_PARAMETERS = (
    ("_id", "token"),
    ("_lastUpdated", "date"),
    ("_count", "number"),
    ("_sort", "string"),
    ("_total", "token"),
    ("_summary", "token"),
    ("_elements", "string"),
    ("_include", "string"),
    ("_revinclude", "string"),
)


@cache
def _resources() -> tuple[dict[str, Any], ...]:
    entries = []
    for rtype in resource_types():
        params = params_for(rtype) if rtype in RESOURCE_PARAMS else {p.name: p for p in COMMON}
        search = [{"name": name, "type": kind} for name, kind in RESULT_PARAMETERS]
        search += [{"name": p.name, "type": SEARCH_TYPES[p.kind]} for p in params.values()]
        includes = sorted(f"{rtype}:{p.name}" for p in params.values() if p.kind == "reference")
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "not-supported",
            "conditionalUpdate": True,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical", "enforced", "local"],
            "searchInclude": includes,
            "searchParam": search,
        }
        if rtype == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                },
                {
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                },
            ]
        else:
            entry["operation"] = [
                {
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                }
            ]
        entries.append(entry)
    return tuple(entries)


def capability_statement(base_url: str) -> dict[str, Any]:
    """Return the CapabilityStatement of this server, rooted at ``base_url``."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Vệ Tinh",
        "kind": "instance",
        "software": {"name": "Vệ Tinh FHIR store", "version": "0.1.0"},
        "implementation": {"description": "Vệ Tinh hospital information system", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer tokens with SMART scopes (patient/, user/, system/) from /api/v1/auth/token.",
                },
                "resource": list(_resources()),
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    },
                    {
                        "name": "patient-export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                    },
                ],
            }
        ],
    }
