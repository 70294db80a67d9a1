"""Keep FHIR resources: the in-process store API every context calls.

Functions take a SQLAlchemy ``Session``, never touch ``request`` and never commit: the
caller owns the unit of work. Writes validate the resource, stamp ``meta`` into the
accepted JSON text, keep a history row and rewrite the search index rows in the same
transaction. Raises ``his.errors`` exceptions: ``ValidationFailed`` (invalid resource,
unknown reference), ``BadRequest``, ``NotFound``, ``Gone``, ``PreconditionFailed``.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import and_, false, func, insert, not_, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement, Select

from fhir import jsontext
from fhir.models import (
    INDEX_TABLES,
    FhirCompartment,
    FhirIndexReference,
    FhirResource,
    FhirResourceHistory,
)
from fhir.searchparams import (
    SearchParam,
    compartment_patients,
    date_range,
    index_values,
    normalize_string,
    params_for,
    parse_reference,
)
from fhir.validation import is_resource_type, summary_elements, validate_resource
from his.db import core_connection, utcnow
from his.errors import BadRequest, Conflict, Gone, NotFound, PreconditionFailed, ValidationFailed

if TYPE_CHECKING:
    from fhir.bundles import PreparedBundle

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DEFAULT_COUNT = 20
MAX_COUNT = 1000
CHUNK = 500
PAGING_PARAMS = {"_count", "_getpagesoffset", "_snapshot"}
RESULT_PARAMS = {
    "_sort",
    "_include",
    "_revinclude",
    "_include:iterate",
    "_revinclude:iterate",
    "_total",
    "_summary",
    "_elements",
    "_format",
    "_pretty",
    *PAGING_PARAMS,
}
DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")

WriteGuard = Callable[[Session, str, str], None]
_write_guards: list[WriteGuard] = []


def register_write_guard(guard: WriteGuard) -> None:
    """Let a context refuse REST changes to resources it owns, e.g. a signed record.

    ``guard(session, resource_type, resource_id)`` runs before ``/fhir/R4`` updates or
    deletes an existing resource and raises a ``his.errors`` exception (``Conflict``) to
    refuse. Contexts' own in-process writes are not guarded: they own their rules.
    """
    if guard not in _write_guards:
        _write_guards.append(guard)


def check_write_guards(session: Session, resource_type: str, resource_id: str) -> None:
    """Run every registered guard for a change a client asked for; raise what a guard raises."""
    for guard in _write_guards:
        guard(session, resource_type, resource_id)


@dataclass(frozen=True)
class StoredResource:
    """Carry one stored version: its type, id, version, time and the JSON text as stored."""

    type: str
    id: str
    version_id: int
    last_updated: datetime
    text: str | None
    deleted: bool = False
    created: bool = False
    method: str = ""

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def reference(self) -> str:
        return f"{self.type}/{self.id}"

    @property
    def resource(self) -> dict[str, Any]:
        """Return the stored resource parsed (decimals kept exact)."""
        return self.json()

    def json(self) -> dict[str, Any]:
        """Parse the stored text (decimals kept exact)."""
        if self.text is None:
            raise Gone(f"{self.reference} was deleted", code="FHIR_DELETED")
        parsed: dict[str, Any] = jsontext.loads(self.text)
        return parsed


@dataclass
class SearchResult:
    """Hold one page of a search: matches, included resources, total and paging state."""

    type: str | None
    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    offset: int
    count: int
    params: list[tuple[str, str]]
    snapshot: str
    warnings: list[str] = field(default_factory=list)
    has_next: bool = False
    summary: str | None = None
    elements: tuple[str, ...] = ()


@dataclass
class EntryResult:
    """Hold the outcome of one Bundle entry: status line, stored resource or outcome."""

    status: str
    stored: StoredResource | None = None
    location: str | None = None
    outcome: dict[str, Any] | None = None
    search: SearchResult | None = None


@dataclass
class BundleResult:
    """Hold the response of a batch or transaction, entries in request order."""

    type: str
    entries: list[EntryResult]


@dataclass
class _Write:
    type: str
    id: str
    version: int
    method: str
    last_updated: datetime
    created: datetime
    is_new: bool
    resource: dict[str, Any] | None
    text: str | None


def _now() -> datetime:
    moment = utcnow().astimezone(UTC).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def instant(moment: datetime) -> str:
    """Format a naive-UTC or aware time as a FHIR instant with milliseconds."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def _stored(row: Any, *, created: bool = False, method: str = "") -> StoredResource:
    return StoredResource(
        type=row.res_type,
        id=row.res_id,
        version_id=row.version,
        last_updated=row.last_updated.replace(tzinfo=UTC),
        text=row.content,
        deleted=bool(row.deleted),
        created=created,
        method=method,
    )


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parse(resource: Mapping[str, Any] | str | bytes) -> tuple[dict[str, Any], str | None]:
    if isinstance(resource, str | bytes):
        text = resource.decode("utf-8") if isinstance(resource, bytes) else resource
        parsed = jsontext.loads(text)
        if not isinstance(parsed, dict):
            raise BadRequest("The body must be a JSON object", code="FHIR_NOT_OBJECT")
        return parsed, text
    return dict(resource), None


def _invalid(issues: list[dict[str, Any]]) -> ValidationFailed:
    first = issues[0]
    expression = (first.get("expression") or [""])[0]
    return ValidationFailed(
        first.get("diagnostics", "The resource is not valid"),
        code="FHIR_INVALID",
        fields={expression: first.get("diagnostics", "")} if expression else {},
        extra={"issue": issues},
    )


def _require_valid(resource: dict[str, Any], prefix: str | None = None) -> None:
    issues = validate_resource(resource, prefix)
    if issues:
        raise _invalid(issues)


def _require_type(resource_type: str) -> None:
    if not is_resource_type(resource_type):
        raise NotFound(
            f"Unknown resource type {resource_type!r}",
            code="FHIR_UNKNOWN_TYPE",
            extra={"issue": [_issue("not-supported", f"Unknown resource type {resource_type!r}")]},
        )


def _issue(
    code: str, diagnostics: str, expression: str | None = None, severity: str = "error"
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return issue


def _stamp(text: str | None, resource: dict[str, Any], rid: str, version: int, moment: datetime) -> str:
    """Return the JSON text to store: as accepted, with ``id`` and ``meta`` set."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(moment)
    if text is not None:
        stamped = jsontext.stamp(text, resource, rid, meta)
    else:
        ordered: dict[str, Any] = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
        ordered.update((k, v) for k, v in resource.items() if k not in ordered)
        stamped = jsontext.dumps(ordered)
    resource["id"] = rid
    resource["meta"] = meta
    return stamped


def _current(session: Session, rtype: str, ids: Iterable[str], *, lock: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {}
    id_list = list(dict.fromkeys(ids))
    for part in _chunks(id_list):
        stmt = select(FhirResource).where(FhirResource.res_type == rtype, FhirResource.res_id.in_(part))
        if lock:
            stmt = stmt.with_for_update()
        for row in session.scalars(stmt):
            found[row.res_id] = row
    return found


INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    "string": ("res_type", "res_id", "param", "value", "exact"),
    "token": ("res_type", "res_id", "param", "system", "code"),
    "date": ("res_type", "res_id", "param", "start", "end"),
    "quantity": ("res_type", "res_id", "param", "value", "system", "code"),
    "reference": ("res_type", "res_id", "param", "target_type", "target_id", "url"),
    "uri": ("res_type", "res_id", "param", "value"),
}
"""The columns of the rows ``index_rows`` returns, by index kind."""


def index_rows(
    rtype: str, rid: str, resource: dict[str, Any], moment: datetime
) -> dict[str, list[tuple[Any, ...]]]:
    """Compute the index rows of one resource, grouped by index kind, as ``INDEX_COLUMNS`` tuples.

    Tuples rather than dicts: a transaction writes tens of thousands of index rows, and
    they go to the database as tuples.
    """
    rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    rows["date"].append((rtype, rid, "_lastUpdated", moment, moment))
    for param, found in index_values(rtype, resource):
        head = (rtype, rid, param.name)
        rows["quantity" if param.kind == "number" else param.kind].extend(head + values for values in found)
    return rows


_ARRAY_TYPES: dict[type, str] = {
    sa.String: "text",
    sa.Text: "text",
    sa.DateTime: "timestamp",
    sa.Boolean: "boolean",
    sa.Integer: "integer",
    sa.Float: "float8",
}


def _array_type(column: Any) -> str:
    """Return the PostgreSQL array type a column's values travel in (lengths unchecked here)."""
    for kind, name in _ARRAY_TYPES.items():
        if isinstance(column.type, kind):
            return f"{name}[]"
    raise TypeError(f"no array type for {column.type!r}")


@cache
def _unnest_insert(table: Any, columns: tuple[str, ...]) -> str:
    """Return ``INSERT ... SELECT * FROM unnest(%s::type[], ...)`` for ``columns`` of ``table``.

    Casting to unbounded element types keeps PostgreSQL's own check of ``varchar(n)``
    lengths on assignment, so an overlong value still fails as a plain insert would.
    """
    names = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join(f"%b::{_array_type(table.c[c])}" for c in columns)
    # Names and types come from our own table definitions; every value travels as a parameter.
    return f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays})'  # noqa: S608


def _values_insert(table: Any, columns: tuple[str, ...]) -> str:
    """Return ``INSERT ... VALUES (%s, ...)`` of one row for ``columns`` of ``table``."""
    names = ", ".join(f'"{c}"' for c in columns)
    # Names come from our own table definitions; every value travels as a parameter.
    return f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join(["%s"] * len(columns))})'  # noqa: S608


COPY_MIN_ROWS = 50
"""Rows from which ``_insert_batches`` copies a table's rows rather than inserts them on PostgreSQL.

A COPY costs one more round trip than an insert, and saves a few microseconds a row:
psycopg builds an array parameter element by element in Python, while it formats a
binary COPY row in C.
"""


_COPY_TYPES = {
    "text[]": "text",
    "timestamp[]": "timestamp",
    "boolean[]": "bool",
    "integer[]": "int4",
    "float8[]": "float8",
}


_RESOURCE_COLUMNS = ("res_type", "res_id", "version", "created", "last_updated", "deleted", "content")
_HISTORY_COLUMNS = ("res_type", "res_id", "version", "last_updated", "method", "deleted", "content")
_COMPARTMENT_COLUMNS = ("patient_id", "res_type", "res_id")

# Rows bound for one table: the table, its columns, and one tuple of values per row.
_Batch = tuple[Any, tuple[str, ...], list[tuple[Any, ...]]]


def _insert_batches(session: Session, batches: Sequence[_Batch]) -> None:
    """Insert rows into several tables: in one statement on PostgreSQL, executemany on SQLite.

    On PostgreSQL each column travels as one array parameter and ``unnest`` turns the
    arrays back into rows (a multi-row ``VALUES`` list of thousands of placeholders costs
    more to build and parse than to run, and psycopg sends an executemany row by row).
    The tables' inserts go together as data-modifying ``WITH`` queries of one statement:
    one round trip for a resource, its history, its index rows and its compartments.
    From ``COPY_MIN_ROWS`` rows on, a table's rows go by binary ``COPY`` instead (see
    ``_copy_rows``).
    """
    batches = [batch for batch in batches if batch[2]]
    if not batches:
        return
    if session.get_bind().dialect.name != "postgresql":
        for table, columns, rows in batches:
            session.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    connection = session.connection()
    together: list[_Batch] = []
    for batch in batches:
        if len(batch[2]) >= COPY_MIN_ROWS:
            _copy_rows(connection, *batch)
        else:
            together.append(batch)
    if together:
        statement = _combined_insert(
            tuple((table, columns, len(rows) == 1) for table, columns, rows in together)
        )
        params: list[Any] = []
        for _, _, rows in together:
            if len(rows) == 1:
                params.extend(rows[0])
            else:
                params.extend(list(values) for values in zip(*rows, strict=True))
        connection.exec_driver_sql(statement, tuple(params))


@cache
def _combined_insert(parts: tuple[tuple[Any, tuple[str, ...], bool], ...]) -> str:
    """Return one statement that inserts into every table of ``parts``.

    A table's rows travel as column arrays, or, when it gets a single row, as plain values
    (psycopg builds an array parameter in Python, a plain value in C). PostgreSQL runs every
    data-modifying ``WITH`` query whether or not the statement reads it; the tables have no
    foreign keys between them, so the order does not matter.
    """
    *first, last = [
        _values_insert(table, columns) if single else _unnest_insert(table, columns)
        for table, columns, single in parts
    ]
    if not first:
        return last
    return "WITH " + ", ".join(f"w{n} AS ({insert})" for n, insert in enumerate(first)) + " " + last


def _delete_index_rows(session: Session, rtype: str, ids: Sequence[str]) -> None:
    """Delete the index and compartment rows of resources about to be re-indexed.

    One statement on PostgreSQL (every table's ``DELETE`` a ``WITH`` query of it), a
    statement per table elsewhere.
    """
    tables: list[Any] = [*{id(t): t for t in INDEX_TABLES.values()}.values(), FhirCompartment.__table__]
    for part in _chunks(ids):
        if session.get_bind().dialect.name == "postgresql":
            session.connection().exec_driver_sql(
                _combined_delete(tuple(tables)), (rtype, list(part)) * len(tables)
            )
            continue
        for table in tables:
            session.execute(sa.delete(table).where(table.c.res_type == rtype, table.c.res_id.in_(part)))


@cache
def _combined_delete(tables: tuple[Any, ...]) -> str:
    """Return one statement deleting a type's rows with the given ids (an array) from every table."""
    # Table names come from our own definitions; the type and the ids travel as parameters.
    *first, last = [
        f'DELETE FROM "{table.name}" WHERE res_type = %s AND res_id = ANY(%s::text[])'  # noqa: S608
        for table in tables
    ]
    return "WITH " + ", ".join(f"d{n} AS ({delete})" for n, delete in enumerate(first)) + " " + last


def _copy_rows(
    connection: sa.Connection, table: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Write rows with a binary ``COPY`` on the session's connection, in its transaction.

    The server checks each value against its column as an insert would (``varchar(n)``
    lengths included). Raises the ``sqlalchemy.exc.DBAPIError`` an insert would raise.
    """
    statement, types = _copy_statement(table, columns)
    dbapi = connection.dialect.loaded_dbapi
    driver = connection.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(
            statement, None, exc, dbapi.Error, dialect=connection.dialect
        ) from exc


@cache
def _copy_statement(table: Any, columns: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Return the ``COPY ... FROM STDIN`` statement for ``columns`` and their PostgreSQL types."""
    names = ", ".join(f'"{c}"' for c in columns)
    types = tuple(_COPY_TYPES[_array_type(table.c[c])] for c in columns)
    return f'COPY "{table.name}" ({names}) FROM STDIN (FORMAT BINARY)', types


def _apply(session: Session, writes: Sequence[_Write]) -> None:
    """Write current rows, history rows, index rows and compartments in batches."""
    if not writes:
        return
    new_rows = [w for w in writes if w.is_new]
    old_rows = [w for w in writes if not w.is_new]
    for w in old_rows:
        session.execute(
            sa.update(FhirResource)
            .where(FhirResource.res_type == w.type, FhirResource.res_id == w.id)
            .values(
                version=w.version, last_updated=w.last_updated, deleted=w.resource is None, content=w.text
            )
        )
    stale: dict[str, list[str]] = defaultdict(list)
    for w in old_rows:
        stale[w.type].append(w.id)
    for rtype, ids in stale.items():
        _delete_index_rows(session, rtype, ids)
    batches: list[_Batch] = [
        (
            FhirResource.__table__,
            _RESOURCE_COLUMNS,
            [
                (w.type, w.id, w.version, w.created, w.last_updated, w.resource is None, w.text)
                for w in new_rows
            ],
        ),
        (
            FhirResourceHistory.__table__,
            _HISTORY_COLUMNS,
            [(w.type, w.id, w.version, w.last_updated, w.method, w.resource is None, w.text) for w in writes],
        ),
    ]
    indexed: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    compartments: list[tuple[Any, ...]] = []
    for w in writes:
        if w.resource is None:
            continue
        for kind, rows in index_rows(w.type, w.id, w.resource, w.last_updated).items():
            indexed[kind].extend(rows)
        compartments.extend((pid, w.type, w.id) for pid in compartment_patients(w.type, w.resource))
    batches += [(INDEX_TABLES[kind], INDEX_COLUMNS[kind], rows) for kind, rows in indexed.items()]
    batches.append((FhirCompartment.__table__, _COMPARTMENT_COLUMNS, compartments))
    _insert_batches(session, batches)


def _to_stored(w: _Write, *, created: bool) -> StoredResource:
    return StoredResource(
        type=w.type,
        id=w.id,
        version_id=w.version,
        last_updated=w.last_updated.replace(tzinfo=UTC),
        text=w.text,
        deleted=w.resource is None,
        created=created,
        method=w.method,
    )


def _reference_paths(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(expression, Reference object)`` for every reference in ``node``, ``contained`` aside.

    A resource has a few references among a hundred-odd elements, so the walk keeps the
    steps that lead to the current element and spells an expression out only at a hit.
    """
    found: list[tuple[str, dict[str, Any]]] = []
    _collect_references(node, [path], found)
    return iter(found)


def _collect_references(node: Any, steps: list[str], found: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            found.append(("".join(steps) + ".reference", node))
        for key, value in node.items():
            if key != "contained" and isinstance(value, (dict, list)):
                steps.append("." + key)
                _collect_references(value, steps, found)
                steps.pop()
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)):
                steps.append(f"[{index}]")
                _collect_references(item, steps, found)
                steps.pop()


def _check_references(
    session: Session,
    items: Sequence[tuple[str, dict[str, Any]]],
    pending: set[tuple[str, str]] | None = None,
) -> None:
    """Reject references to local resources that neither exist nor are being written.

    ``items`` pairs an expression prefix (``Patient`` or ``Bundle.entry[2].resource``)
    with the resource. Raises ValidationFailed naming the element of the first miss.
    """
    found = [
        (path, ref["reference"])
        for prefix, resource in items
        for path, ref in _reference_paths(resource, prefix)
    ]
    check_found_references(session, found, pending)


def check_found_references(
    session: Session, found: Sequence[tuple[str, str]], pending: set[tuple[str, str]] | None = None
) -> None:
    """Check references already collected as (expression, reference) pairs; see ``_check_references``."""
    pending = pending or set()
    wanted: dict[str, dict[str, str]] = defaultdict(dict)
    for path, reference in found:
        rtype, rid, _ = parse_reference(reference)
        if rtype and rid and (rtype, rid) not in pending and is_resource_type(rtype):
            wanted[rtype].setdefault(rid, path)
    for rtype, ids in wanted.items():
        present: set[str] = set()
        id_list = list(ids)
        for part in _chunks(id_list):
            present.update(
                session.scalars(
                    select(FhirResource.res_id).where(
                        FhirResource.res_type == rtype,
                        FhirResource.res_id.in_(part),
                        FhirResource.deleted == false(),
                    )
                )
            )
        for rid in id_list:
            if rid not in present:
                path = ids[rid]
                message = f"{path}: the referenced resource {rtype}/{rid} does not exist"
                raise ValidationFailed(
                    message,
                    code="FHIR_REFERENCE_NOT_FOUND",
                    fields={path: message},
                    extra={"issue": [_issue("not-found", message, path)]},
                )


def new_id() -> str:
    """Return a fresh server id for a resource about to be created."""
    return str(uuid.uuid4())


def create(
    session: Session,
    resource: Mapping[str, Any] | str | bytes,
    *,
    if_none_exist: str | None = None,
    check_references: bool = True,
    resource_id: str | None = None,
) -> StoredResource:
    """Create a resource with a new server id; with ``if_none_exist``, only if no match.

    ``resource_id`` is an id the caller took from ``new_id()`` beforehand (so that its own
    row can name the resource before it is written); any other id is the REST API's
    create-on-update, which goes through ``update``.
    Returns the new version (``created=True``) or the one existing match.
    Raises ValidationFailed, BadRequest, PreconditionFailed (several matches).
    """
    parsed, text = _parse(resource)
    rtype = str(parsed.get("resourceType") or "")
    _require_valid(parsed)
    if if_none_exist:
        found = _conditional_match(session, rtype, if_none_exist)
        if found is not None:
            return found
    if check_references:
        _check_references(session, [(rtype, parsed)])
    moment = _now()
    rid = resource_id or new_id()
    stamped = _stamp(text, parsed, rid, 1, moment)
    write = _Write(rtype, rid, 1, "POST", moment, moment, True, parsed, stamped)
    _apply(session, [write])
    return _to_stored(write, created=True)


def ambiguous_condition(rtype: str, query: str) -> PreconditionFailed:
    """Return the 412 for a condition that more than one resource matches."""
    return PreconditionFailed(
        f"More than one {rtype} matches {query!r}",
        code="FHIR_CONDITION_AMBIGUOUS",
        extra={"issue": [_issue("multiple-matches", f"More than one {rtype} matches {query!r}")]},
    )


def _conditional_match(session: Session, rtype: str, query: str) -> StoredResource | None:
    """Return the one resource matching ``query``, None for none; 412 for several."""
    params = parse_query(query)
    if not params:
        raise BadRequest("A conditional request needs search parameters", code="FHIR_CONDITION_EMPTY")
    ids = _search_ids(session, rtype, params, limit=2)
    if len(ids) > 1:
        raise ambiguous_condition(rtype, query)
    if not ids:
        return None
    return read(session, rtype, ids[0])


def match_identifiers(
    session: Session, rtype: str, conditions: Iterable[str]
) -> dict[str, list[StoredResource]]:
    """Find the matches of many ``identifier=system|value`` conditions in one query.

    Returns the matches (current, not deleted) of every condition of exactly that form;
    other conditions are left out, for ``_conditional_match`` to run one by one. The
    result is what ``_conditional_match`` would find for each: the same index rows,
    compared the same way (system and value equal).
    """
    ids = match_identifier_ids(session, rtype, conditions)
    stored = _fetch(session, [(rtype, rid) for rids in ids.values() for rid in rids])
    return {
        condition: [stored[(rtype, rid)] for rid in rids if (rtype, rid) in stored]
        for condition, rids in ids.items()
    }


def match_identifier_ids(session: Session, rtype: str, conditions: Iterable[str]) -> dict[str, list[str]]:
    """Find the ids (sorted) matching many ``identifier=system|value`` conditions in one query.

    Conditions of another form are left out of the result; see ``match_identifiers``.
    A transaction's conditional references (``Practitioner?identifier=…``) are looked up
    here together rather than by one search each.
    """
    param = params_for(rtype).get("identifier")
    if param is None or param.kind != "token":
        return {}
    wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
    for condition in dict.fromkeys(conditions):
        pairs = parse_query(condition)
        if len(pairs) != 1 or pairs[0][0] != "identifier":
            continue
        raw = pairs[0][1]
        if "\\" in raw or "," in raw or raw.count("|") != 1:
            continue
        system, code = raw.split("|")
        if system and code:
            wanted[(system, code)].append(condition)
    if not wanted:
        return {}
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    token = INDEX_TABLES["token"]
    codes = list(dict.fromkeys(code for _, code in wanted))
    for part in _chunks(codes):
        rows = session.execute(
            select(token.c.res_id, token.c.system, token.c.code)
            .join(
                FhirResource,
                and_(FhirResource.res_type == token.c.res_type, FhirResource.res_id == token.c.res_id),
            )
            .where(
                token.c.res_type == rtype,
                token.c.param == "identifier",
                token.c.code.in_(part),
                FhirResource.deleted == false(),
            )
        )
        for rid, system, code in rows:
            if (system, code) in wanted and rid not in found[(system, code)]:
                found[(system, code)].append(rid)
    return {
        condition: sorted(found.get(key, []))
        for key, conditions_of_key in wanted.items()
        for condition in conditions_of_key
    }


_DELETED_FLAG_QUERY = select(FhirResource.deleted).where(
    FhirResource.res_type == sa.bindparam("res_type"), FhirResource.res_id == sa.bindparam("res_id")
)


def exists(session: Session, resource_type: str, resource_id: str) -> bool:
    """Tell whether a resource exists and is not deleted, without reading it."""
    deleted = core_connection(session).scalar(
        _DELETED_FLAG_QUERY, {"res_type": resource_type, "res_id": resource_id}
    )
    return deleted is False


def _unknown(resource_type: str, resource_id: str) -> NotFound:
    message = f"{resource_type}/{resource_id} is not known"
    return NotFound(message, code="FHIR_NOT_FOUND", extra={"issue": [_issue("not-found", message)]})


def _was_deleted(resource_type: str, resource_id: str) -> Gone:
    message = f"{resource_type}/{resource_id} was deleted"
    return Gone(message, code="FHIR_DELETED", extra={"issue": [_issue("deleted", message)]})


def read(session: Session, resource_type: str, resource_id: str) -> StoredResource:
    """Return the current version. Raises NotFound, or Gone when it was deleted."""
    _require_type(resource_type)
    row = session.get(FhirResource, (resource_type, resource_id))
    if row is None:
        raise _unknown(resource_type, resource_id)
    if row.deleted:
        raise _was_deleted(resource_type, resource_id)
    return _stored(row)


# The current version and its compartment rows, one row per patient (or one with a null).
_READ_WITH_PATIENTS = (
    select(
        FhirResource.version,
        FhirResource.last_updated,
        FhirResource.deleted,
        FhirResource.content,
        FhirCompartment.patient_id,
    )
    .select_from(FhirResource)
    .outerjoin(
        FhirCompartment,
        and_(
            FhirCompartment.res_type == FhirResource.res_type, FhirCompartment.res_id == FhirResource.res_id
        ),
    )
    .where(FhirResource.res_type == sa.bindparam("res_type"), FhirResource.res_id == sa.bindparam("res_id"))
)


def read_with_patients(
    session: Session, resource_type: str, resource_id: str
) -> tuple[StoredResource, set[str]]:
    """Return the current version and the patients whose compartment holds it, in one query.

    What ``read`` and ``compartments_of`` give together, for a read that is access-checked:
    one statement instead of two. Raises NotFound, or Gone when it was deleted.
    """
    _require_type(resource_type)
    rows = (
        core_connection(session)
        .execute(_READ_WITH_PATIENTS, {"res_type": resource_type, "res_id": resource_id})
        .all()
    )
    if not rows:
        raise _unknown(resource_type, resource_id)
    current = rows[0]
    if current.deleted:
        raise _was_deleted(resource_type, resource_id)
    stored = StoredResource(
        type=resource_type,
        id=resource_id,
        version_id=current.version,
        last_updated=current.last_updated.replace(tzinfo=UTC),
        text=current.content,
    )
    if resource_type == "Patient":
        return stored, {resource_id}
    return stored, {row.patient_id for row in rows if row.patient_id is not None}


def vread(session: Session, resource_type: str, resource_id: str, version_id: str | int) -> StoredResource:
    """Return one version. Raises NotFound, or Gone for the version that deleted it."""
    _require_type(resource_type)
    try:
        version = int(version_id)
    except (TypeError, ValueError):
        version = -1
    row = session.get(FhirResourceHistory, (resource_type, resource_id, version))
    if row is None:
        message = f"{resource_type}/{resource_id}/_history/{version_id} is not known"
        raise NotFound(message, code="FHIR_NOT_FOUND", extra={"issue": [_issue("not-found", message)]})
    if row.deleted:
        message = f"{resource_type}/{resource_id} version {version} is a deletion"
        raise Gone(message, code="FHIR_DELETED", extra={"issue": [_issue("deleted", message)]})
    return _stored(row, method=row.method)


def _expect_version(if_match: str | None, current: int | None, reference: str) -> None:
    if if_match is None:
        return
    wanted = if_match.strip()
    if wanted.startswith("W/"):
        wanted = wanted[2:]
    wanted = wanted.strip('"')
    if current is None or wanted != str(current):
        message = f"{reference} is at version {current}, not {wanted}"
        raise PreconditionFailed(
            message, code="FHIR_VERSION_CONFLICT", extra={"issue": [_issue("conflict", message)]}
        )


def update(
    session: Session,
    resource_type: str,
    resource_id: str,
    resource: Mapping[str, Any] | str | bytes,
    *,
    if_match: str | None = None,
    check_references: bool = True,
) -> StoredResource:
    """Replace a resource with a new version, creating it under the client's id if new.

    Raises BadRequest (id or type mismatch), ValidationFailed, PreconditionFailed
    (``if_match`` is not the current version).
    """
    _require_type(resource_type)
    parsed, text = _parse(resource)
    if parsed.get("resourceType") != resource_type:
        raise _wrong_type(resource_type, parsed.get("resourceType"))
    if parsed.get("id") != resource_id:
        message = f"The body's id {parsed.get('id')!r} does not match the URL's id {resource_id!r}"
        raise BadRequest(
            message,
            code="FHIR_ID_MISMATCH",
            extra={"issue": [_issue("invalid", message, f"{resource_type}.id")]},
        )
    if not ID_RE.match(resource_id):
        raise BadRequest(f"{resource_id!r} is not a valid FHIR id", code="FHIR_BAD_ID")
    _require_valid(parsed)
    if check_references:
        _check_references(session, [(resource_type, parsed)], {(resource_type, resource_id)})
    row = _current(session, resource_type, [resource_id], lock=True).get(resource_id)
    _expect_version(
        if_match,
        row.version if row is not None and not row.deleted else None,
        f"{resource_type}/{resource_id}",
    )
    moment = _now()
    version = 1 if row is None else row.version + 1
    stamped = _stamp(text, parsed, resource_id, version, moment)
    write = _Write(
        resource_type,
        resource_id,
        version,
        "PUT",
        moment,
        moment if row is None else row.created,
        row is None,
        parsed,
        stamped,
    )
    created = row is None or bool(row.deleted)
    _apply(session, [write])
    return _to_stored(write, created=created)


def conditional_update(
    session: Session,
    resource_type: str,
    query: str,
    resource: Mapping[str, Any] | str | bytes,
    *,
    check_references: bool = True,
) -> StoredResource:
    """Update the one resource matching ``query``, or create one when none matches.

    Raises PreconditionFailed when several match, BadRequest when the body's id
    names another resource.
    """
    _require_type(resource_type)
    parsed, text = _parse(resource)
    match = _conditional_match(session, resource_type, query)
    if match is None:
        if parsed.get("id"):
            return update(
                session,
                resource_type,
                str(parsed["id"]),
                text if text is not None else parsed,
                check_references=check_references,
            )
        if parsed.get("resourceType") != resource_type:
            raise _wrong_type(resource_type, parsed.get("resourceType"))
        return create(session, text if text is not None else parsed, check_references=check_references)
    if parsed.get("id") not in (None, match.id):
        raise BadRequest(
            f"The body's id {parsed.get('id')!r} is not the matching resource {match.id!r}",
            code="FHIR_ID_MISMATCH",
        )
    if "id" not in parsed:
        parsed = {"resourceType": parsed.get("resourceType"), "id": match.id, **parsed}
        text = None
    return update(
        session,
        resource_type,
        match.id,
        text if text is not None else parsed,
        check_references=check_references,
    )


def _wrong_type(expected: str, got: Any) -> BadRequest:
    message = f"Expected a {expected} resource, got {got!r}"
    return BadRequest(
        message,
        code="FHIR_WRONG_TYPE",
        extra={"issue": [_issue("invalid", message, "resourceType")]},
    )


def delete_resource(
    session: Session, resource_type: str, resource_id: str, *, if_match: str | None = None
) -> StoredResource | None:
    """Delete logically: a new, empty version. Returns it, or None if already deleted.

    Raises NotFound for an unknown resource and PreconditionFailed for a stale ``if_match``.
    """
    _require_type(resource_type)
    row = _current(session, resource_type, [resource_id], lock=True).get(resource_id)
    if row is None:
        message = f"{resource_type}/{resource_id} is not known"
        raise NotFound(message, code="FHIR_NOT_FOUND", extra={"issue": [_issue("not-found", message)]})
    _expect_version(if_match, None if row.deleted else row.version, f"{resource_type}/{resource_id}")
    if row.deleted:
        return None
    ensure_unreferenced(session, [(resource_type, resource_id)])
    moment = _now()
    write = _Write(
        resource_type, resource_id, row.version + 1, "DELETE", moment, row.created, False, None, None
    )
    _apply(session, [write])
    return _to_stored(write, created=False)


delete = delete_resource


def ensure_unreferenced(session: Session, keys: Sequence[tuple[str, str]], prefix: str = "") -> None:
    """Raise Conflict when a live resource outside ``keys`` refers to one of ``keys``.

    Writes refuse references to missing resources; deletes keep that promise by
    refusing to leave a reference dangling.
    """
    Ref = FhirIndexReference
    doomed = set(keys)
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        by_type[rtype].append(rid)
    for rtype, ids in by_type.items():
        for part in _chunks(ids):
            rows = session.execute(
                select(Ref.res_type, Ref.res_id, Ref.target_id)
                .where(Ref.target_type == rtype, Ref.target_id.in_(part))
                .distinct()
                .limit(len(part) + 10)
            )
            for source_type, source_id, target_id in rows:
                if (source_type, source_id) in doomed:
                    continue
                message = f"{prefix}{rtype}/{target_id} is referenced by {source_type}/{source_id}; delete that first"
                raise Conflict(
                    message, code="FHIR_STILL_REFERENCED", extra={"issue": [_issue("conflict", message)]}
                )


def conditional_delete(session: Session, resource_type: str, query: str) -> StoredResource | None:
    """Delete the one resource matching ``query`` (none is fine; several is a 412)."""
    match = _conditional_match(session, resource_type, query)
    if match is None:
        return None
    return delete_resource(session, resource_type, match.id)


def history(
    session: Session,
    resource_type: str | None = None,
    resource_id: str | None = None,
    *,
    since: str | None = None,
    count: int = DEFAULT_COUNT,
    offset: int = 0,
) -> tuple[list[StoredResource], int]:
    """Return one page of versions, newest first, and the total, at any of three levels.

    Raises NotFound for the history of an unknown resource, BadRequest for a bad ``since``.
    """
    H = FhirResourceHistory
    conditions: list[ColumnElement[bool]] = []
    if resource_type is not None:
        _require_type(resource_type)
        conditions.append(H.res_type == resource_type)
    if resource_id is not None:
        conditions.append(H.res_id == resource_id)
    if since:
        try:
            conditions.append(H.last_updated >= date_range(since)[0])
        except ValueError as exc:
            raise BadRequest(f"_since: {exc}", code="FHIR_BAD_PARAM", fields={"_since": str(exc)}) from exc
    total = session.scalar(select(func.count()).select_from(H).where(*conditions)) or 0
    if resource_id is not None and total == 0 and not since:
        raise NotFound(f"{resource_type}/{resource_id} is not known", code="FHIR_NOT_FOUND")
    rows = session.scalars(
        select(H)
        .where(*conditions)
        .order_by(H.last_updated.desc(), H.version.desc(), H.res_type, H.res_id)
        .offset(offset)
        .limit(count)
    )
    return [_stored(row, method=row.method) for row in rows], int(total)


def parse_query(query: str) -> list[tuple[str, str]]:
    """Split a query string (``a=1&b=2``) into pairs, percent-decoding them."""
    from urllib.parse import parse_qsl

    return parse_qsl(query.lstrip("?"), keep_blank_values=True)


def _split_values(raw: str) -> list[str]:
    parts = re.split(r"(?<!\\),", raw)
    return [p.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$") for p in parts]


def _bad_param(name: str, message: str) -> BadRequest:
    return BadRequest(
        f"{name}: {message}",
        code="FHIR_BAD_SEARCH",
        fields={name: message},
        extra={"issue": [_issue("invalid", f"Search parameter {name}: {message}", name)]},
    )


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _number_bounds(raw: str) -> tuple[float, float, float]:
    value = float(raw)
    mantissa = raw.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    half = 0.5 * 10 ** (-decimals)
    return value, value - half, value + half


def _prefix(raw: str) -> tuple[str, str]:
    if len(raw) > 2 and raw[:2] in DATE_PREFIXES and not raw[:2].isdigit():
        return raw[:2], raw[2:]
    return "eq", raw


def _value_condition(param: SearchParam, modifier: str | None, raw: str, table: Any) -> ColumnElement[bool]:
    """Build the SQL condition on one index table row for one search value."""
    name = param.name
    kind = param.kind
    if kind == "string":
        if modifier == "exact":
            return table.c.exact == raw
        folded = _like_escape(normalize_string(raw))
        if modifier == "contains":
            return table.c.value.like(f"%{folded}%", escape="\\")
        if modifier is None:
            return table.c.value.like(f"{folded}%", escape="\\")
        raise _bad_param(name, f"modifier :{modifier} is not supported for strings")
    if kind == "token":
        if modifier not in (None, "not"):
            raise _bad_param(name, f"modifier :{modifier} is not supported for tokens")
        if "|" in raw:
            system, code = raw.split("|", 1)
            parts: list[ColumnElement[bool]] = [
                table.c.system.is_(None) if system == "" else table.c.system == system
            ]
            if code:
                parts.append(table.c.code == code)
            return and_(*parts)
        return table.c.code == raw
    if kind == "date":
        prefix, value = _prefix(raw)
        try:
            first, last = date_range(value)
        except ValueError as exc:
            raise _bad_param(name, f"{raw!r} is not a valid date") from exc
        start, end = table.c.start, table.c.end
        conditions = {
            "eq": and_(start >= first, end <= last),
            "ne": not_(and_(start >= first, end <= last)),
            "lt": start < first,
            "gt": end > last,
            "le": start <= last,
            "ge": end >= first,
            "sa": start > last,
            "eb": end < first,
            "ap": and_(start <= last, end >= first),
        }
        return conditions[prefix]
    if kind in ("number", "quantity"):
        number, _, rest = raw.partition("|")
        prefix, value = _prefix(number)
        try:
            exact, low, high = _number_bounds(value)
        except ValueError as exc:
            raise _bad_param(name, f"{raw!r} is not a valid number") from exc
        column = table.c.value
        margin = abs(exact) * 0.1
        numeric = {
            "eq": and_(column >= low, column < high),
            "ne": not_(and_(column >= low, column < high)),
            "lt": column < exact,
            "gt": column > exact,
            "le": column <= exact,
            "ge": column >= exact,
            "sa": column > exact,
            "eb": column < exact,
            "ap": and_(column >= exact - margin, column <= exact + margin),
        }[prefix]
        if rest:
            system, _, code = rest.partition("|") if "|" in rest else ("", "", rest)
            extra: list[ColumnElement[bool]] = [numeric]
            if system:
                extra.append(table.c.system == system)
            if code:
                extra.append(table.c.code == code)
            return and_(*extra)
        return numeric
    if kind == "reference":
        if "://" in raw:
            rtype, rid, _ = parse_reference(raw.split("://", 1)[1].split("/", 1)[-1])
            return (
                or_(table.c.url == raw, and_(table.c.target_type == rtype, table.c.target_id == rid))
                if rtype
                else table.c.url == raw
            )
        if "/" in raw:
            rtype, rid, _ = parse_reference(raw)
            if rtype is None:
                raise _bad_param(name, f"{raw!r} is not a valid reference")
            return and_(table.c.target_type == rtype, table.c.target_id == rid)
        if modifier and modifier[:1].isupper():
            return and_(table.c.target_type == modifier, table.c.target_id == raw)
        if len(param.targets) == 1:
            return and_(table.c.target_type == param.targets[0], table.c.target_id == raw)
        return table.c.target_id == raw
    if kind == "uri":
        if modifier == "below":
            return table.c.value.like(f"{_like_escape(raw)}%", escape="\\")
        return table.c.value == raw
    raise _bad_param(name, f"kind {kind} is not searchable")


def _param_ids(rtype: str, key: str, raw_values: str) -> tuple[Select[Any], bool]:
    """Return a select of ids matching ``key=raw_values`` and whether to negate it.

    Raises BadRequest for an unknown parameter, modifier or malformed value.
    """
    chain = None
    if "." in key:
        key, chain = key.split(".", 1)
    name, _, modifier_text = key.partition(":")
    modifier = modifier_text or None
    if name == "_lastUpdated":
        param = SearchParam("_lastUpdated", "date", ())
    else:
        found = params_for(rtype).get(name)
        if found is None:
            raise KeyError(name)
        param = found
    table = INDEX_TABLES[param.kind]
    base = [table.c.res_type == rtype, table.c.param == param.name]
    if modifier == "missing":
        present = select(table.c.res_id).where(*base)
        return present, raw_values == "true"
    if chain is not None:
        if param.kind != "reference":
            raise _bad_param(name, "only reference parameters can be chained")
        target = modifier or (param.targets[0] if len(param.targets) == 1 else None)
        if target is None or not is_resource_type(target):
            raise _bad_param(name, "name the target type of the chain, as in subject:Patient.name")
        try:
            inner, negate = _param_ids(target, chain, raw_values)
        except KeyError as exc:
            raise _bad_param(f"{key}.{chain}", f"{target} has no search parameter {exc.args[0]!r}") from exc
        target_ids = (
            inner
            if not negate
            else select(FhirResource.res_id).where(
                FhirResource.res_type == target, FhirResource.res_id.not_in(inner)
            )
        )
        stmt = select(table.c.res_id).where(
            *base, table.c.target_type == target, table.c.target_id.in_(target_ids)
        )
        return stmt, False
    values = _split_values(raw_values)
    if not any(values):
        raise _bad_param(name, "a value is required")
    condition = or_(*(_value_condition(param, modifier, v, table) for v in values if v != ""))
    return select(table.c.res_id).where(*base, condition), modifier == "not"


def _search_ids(
    session: Session, rtype: str, params: Sequence[tuple[str, str]], limit: int | None = None
) -> list[str]:
    stmt, _warnings = _build(rtype, params, strict=True)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def _build(
    rtype: str,
    params: Sequence[tuple[str, str]],
    *,
    strict: bool,
    compartment: str | None = None,
    snapshot: datetime | None = None,
    visible_patients: Select[Any] | None = None,
) -> tuple[Select[Any], list[str]]:
    R = FhirResource
    stmt = select(R.res_id).where(R.res_type == rtype, R.deleted == false())
    warnings: list[str] = []
    for key, raw in params:
        if key in RESULT_PARAMS or key.startswith("_include") or key.startswith("_revinclude"):
            continue
        if key == "_id":
            stmt = stmt.where(R.res_id.in_(_split_values(raw)))
            continue
        try:
            ids, negate = _param_ids(rtype, key, raw)
        except KeyError:
            message = f"Unknown search parameter {key!r} for {rtype}"
            if strict:
                raise BadRequest(
                    message,
                    code="FHIR_UNKNOWN_PARAM",
                    fields={key: message},
                    extra={"issue": [_issue("not-supported", message, key)]},
                ) from None
            warnings.append(message)
            continue
        stmt = stmt.where(R.res_id.not_in(ids) if negate else R.res_id.in_(ids))
    if compartment is not None:
        if rtype == "Patient":
            stmt = stmt.where(R.res_id == compartment)
        else:
            stmt = stmt.where(
                R.res_id.in_(
                    select(FhirCompartment.res_id).where(
                        FhirCompartment.patient_id == compartment, FhirCompartment.res_type == rtype
                    )
                )
            )
    if visible_patients is not None:
        if rtype == "Patient":
            stmt = stmt.where(R.res_id.in_(visible_patients))
        else:
            hidden = select(FhirCompartment.res_id).where(
                FhirCompartment.res_type == rtype, FhirCompartment.patient_id.not_in(visible_patients)
            )
            stmt = stmt.where(R.res_id.not_in(hidden))
    if snapshot is not None:
        stmt = stmt.where(R.created <= snapshot)
    return stmt, warnings


def _sort_columns(rtype: str, sort: str) -> list[Any]:
    R = FhirResource
    columns: list[Any] = []
    for key in (k.strip() for k in sort.split(",") if k.strip()):
        descending = key.startswith("-")
        name = key.lstrip("-")
        if name == "_id":
            column: Any = R.res_id
        elif name == "_lastUpdated":
            column = R.last_updated
        else:
            param = params_for(rtype).get(name)
            if param is None:
                raise _bad_param("_sort", f"{rtype} has no search parameter {name!r}")
            table = INDEX_TABLES[param.kind]
            value = {
                "string": table.c.value if param.kind == "string" else None,
                "token": table.c.code if param.kind == "token" else None,
                "date": (table.c.end if descending else table.c.start) if param.kind == "date" else None,
                "number": table.c.value if param.kind in ("number", "quantity") else None,
                "quantity": table.c.value if param.kind in ("number", "quantity") else None,
                "reference": table.c.target_id if param.kind == "reference" else None,
                "uri": table.c.value if param.kind == "uri" else None,
            }[param.kind]
            aggregate = func.max(value) if descending else func.min(value)
            column = (
                select(aggregate)
                .where(
                    table.c.res_type == R.res_type, table.c.res_id == R.res_id, table.c.param == param.name
                )
                .scalar_subquery()
            )
        columns.append(column.desc().nulls_last() if descending else column.asc().nulls_last())
    return columns


def _fetch(session: Session, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredResource]:
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        by_type[rtype].append(rid)
    found: dict[tuple[str, str], StoredResource] = {}
    for rtype, ids in by_type.items():
        for part in _chunks(list(dict.fromkeys(ids))):
            for row in session.scalars(
                select(FhirResource).where(
                    FhirResource.res_type == rtype,
                    FhirResource.res_id.in_(part),
                    FhirResource.deleted == false(),
                )
            ):
                found[(row.res_type, row.res_id)] = _stored(row)
    return found


def _parse_include(raw: str, reverse: bool) -> tuple[str, str, str | None]:
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not is_resource_type(parts[0]):
        raise _bad_param("_revinclude" if reverse else "_include", f"{raw!r} is not Type:parameter[:target]")
    param = params_for(parts[0]).get(parts[1])
    if parts[1] != "*" and (param is None or param.kind != "reference"):
        raise _bad_param(
            "_revinclude" if reverse else "_include", f"{parts[0]} has no reference parameter {parts[1]!r}"
        )
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _includes(
    session: Session,
    base: list[tuple[str, str]],
    includes: list[tuple[str, str, str | None, bool]],
    revincludes: list[tuple[str, str, str | None, bool]],
    limit: int = MAX_COUNT,
) -> list[tuple[str, str]]:
    Ref = FhirIndexReference
    seen = set(base)
    result: list[tuple[str, str]] = []
    frontier = list(base)
    for round_number in range(5):
        if not frontier or len(result) >= limit:
            break
        found: list[tuple[str, str]] = []
        by_type: dict[str, list[str]] = defaultdict(list)
        for rtype, rid in frontier:
            by_type[rtype].append(rid)
        for source, param, target, iterate in includes:
            if round_number and not iterate:
                continue
            for part in _chunks(by_type.get(source, [])):
                stmt = select(Ref.target_type, Ref.target_id).where(
                    Ref.res_type == source, Ref.res_id.in_(part), Ref.target_id.is_not(None)
                )
                if param != "*":
                    stmt = stmt.where(Ref.param == param)
                if target:
                    stmt = stmt.where(Ref.target_type == target)
                found.extend((str(t), str(i)) for t, i in session.execute(stmt))
        for source, param, target, iterate in revincludes:
            if round_number and not iterate:
                continue
            for rtype, ids in by_type.items():
                if target and target != rtype:
                    continue
                for part in _chunks(ids):
                    stmt = select(Ref.res_type, Ref.res_id).where(
                        Ref.res_type == source, Ref.target_type == rtype, Ref.target_id.in_(part)
                    )
                    if param != "*":
                        stmt = stmt.where(Ref.param == param)
                    found.extend((t, i) for t, i in session.execute(stmt))
        frontier = []
        for key in found:
            if key not in seen:
                seen.add(key)
                frontier.append(key)
                result.append(key)
        if not any(i[3] for i in (*includes, *revincludes)):
            break
    return result[:limit]


def search(
    session: Session,
    resource_type: str,
    params: Sequence[tuple[str, str]] | Mapping[str, str],
    *,
    strict: bool = False,
    compartment: str | None = None,
    visible_patients: Select[Any] | None = None,
) -> SearchResult:
    """Search one type: index SQL returns ids, then the stored JSON of one page.

    ``params`` are (name, value) pairs as in a query string, including ``_count``,
    ``_sort``, ``_include``, ``_revinclude``, ``_total``, ``_summary`` and ``_elements``.
    ``compartment`` limits the search to one patient's compartment, ``visible_patients``
    (a select of patient ids) hides what belongs to any other patient. Unknown parameters
    become warnings, or a BadRequest when ``strict``. Raises BadRequest for bad values.
    """
    _require_type(resource_type)
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    settings = {k: v for k, v in pairs if k in RESULT_PARAMS}
    try:
        count = min(int(settings.get("_count", DEFAULT_COUNT)), MAX_COUNT)
        offset = max(int(settings.get("_getpagesoffset", 0)), 0)
    except ValueError as exc:
        raise _bad_param("_count", "must be a whole number") from exc
    if count < 0:
        raise _bad_param("_count", "must not be negative")
    snapshot_text = settings.get("_snapshot") or instant(_now())
    try:
        snapshot = date_range(snapshot_text)[1]
    except ValueError as exc:
        raise _bad_param("_snapshot", "is not an instant") from exc
    summary = settings.get("_summary")
    if summary not in (None, "true", "false", "count", "text", "data"):
        raise _bad_param("_summary", f"{summary!r} is not supported")
    stmt, warnings = _build(
        resource_type,
        pairs,
        strict=strict,
        compartment=compartment,
        snapshot=snapshot,
        visible_patients=visible_patients,
    )
    total_mode = settings.get("_total", "accurate")
    total: int | None = None
    wants_total = total_mode != "none" or summary == "count" or count == 0
    matches: list[StoredResource] = []
    included: list[StoredResource] = []
    has_next = False
    if summary != "count" and count > 0:
        order = _sort_columns(resource_type, settings["_sort"]) if settings.get("_sort") else []
        order.append(FhirResource.res_id.asc())
        columns: list[Any] = list(FhirResource.__table__.c)
        if wants_total:
            # Counted with the page, before LIMIT: no second query for the total.
            columns.append(func.count().over().label("matched"))
        page_stmt = (
            select(*columns)
            .where(FhirResource.res_type == resource_type, FhirResource.res_id.in_(stmt))
            .order_by(*order)
            .offset(offset)
            .limit(count + 1)
        )
        rows = session.execute(page_stmt).all()
        has_next = len(rows) > count
        matches = [_stored(row) for row in rows[:count]]
        if wants_total and rows:
            total = int(rows[0].matched)
        includes = [
            (*_parse_include(v, False), k.endswith(":iterate")) for k, v in pairs if k.startswith("_include")
        ]
        revincludes = [
            (*_parse_include(v, True), k.endswith(":iterate"))
            for k, v in pairs
            if k.startswith("_revinclude")
        ]
        if matches and (includes or revincludes):
            keys = _includes(session, [(m.type, m.id) for m in matches], includes, revincludes)
            fetched = _fetch(session, keys)
            if compartment is not None:
                allowed = in_compartment(session, compartment, list(fetched))
                fetched = {k: v for k, v in fetched.items() if k in allowed}
            if visible_patients is not None:
                hidden = _hidden(session, list(fetched), visible_patients)
                fetched = {k: v for k, v in fetched.items() if k not in hidden}
            included = [fetched[k] for k in keys if k in fetched]
    if wants_total and total is None:
        if summary != "count" and count > 0 and not has_next and (matches or offset == 0):
            # The page holds the rest of the matches: the total needs no second query.
            total = offset + len(matches)
        else:
            total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    elements = tuple(e.strip() for e in settings.get("_elements", "").split(",") if e.strip())
    kept = [(k, v) for k, v in pairs if k not in PAGING_PARAMS]
    return SearchResult(
        type=resource_type,
        matches=matches,
        included=included,
        total=total,
        offset=offset,
        count=count,
        params=kept,
        snapshot=instant(snapshot),
        warnings=warnings,
        has_next=has_next,
        summary=summary,
        elements=elements,
    )


def _hidden(
    session: Session, keys: Sequence[tuple[str, str]], visible_patients: Select[Any]
) -> set[tuple[str, str]]:
    """Return which of ``keys`` belong to a patient outside ``visible_patients``."""
    C = FhirCompartment
    hidden: set[tuple[str, str]] = set()
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        by_type[rtype].append(rid)
    for rtype, ids in by_type.items():
        for part in _chunks(ids):
            rows = session.execute(
                select(C.res_type, C.res_id).where(
                    C.res_type == rtype, C.res_id.in_(part), C.patient_id.not_in(visible_patients)
                )
            )
            hidden.update((t, i) for t, i in rows)
    return hidden


def in_compartment(
    session: Session, patient_id: str, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Return which of ``keys`` belong to the patient's compartment."""
    allowed = {k for k in keys if k == ("Patient", patient_id)}
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        by_type[rtype].append(rid)
    for rtype, ids in by_type.items():
        for part in _chunks(ids):
            allowed.update(
                (rtype, rid)
                for rid in session.scalars(
                    select(FhirCompartment.res_id).where(
                        FhirCompartment.patient_id == patient_id,
                        FhirCompartment.res_type == rtype,
                        FhirCompartment.res_id.in_(part),
                    )
                )
            )
    return allowed


def compartments_of(session: Session, resource_type: str, resource_id: str) -> set[str]:
    """Return the ids of the patients whose compartment holds this resource."""
    if resource_type == "Patient":
        return {resource_id}
    return set(
        session.scalars(
            select(FhirCompartment.patient_id).where(
                FhirCompartment.res_type == resource_type, FhirCompartment.res_id == resource_id
            )
        )
    )


def search_patients_named(params: Sequence[tuple[str, str]], resource_type: str) -> set[str]:
    """Return the patient ids a search names explicitly (``patient=``, ``subject=Patient/…``)."""
    named: set[str] = set()
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if resource_type == "Patient" and name == "_id":
            named.update(_split_values(raw))
            continue
        param = params_for(resource_type).get(name.split(".")[0])
        if param is None or param.kind != "reference" or "." in key:
            continue
        for value in _split_values(raw):
            rtype, rid, _ = parse_reference(value) if "/" in value else (None, value, None)
            patient_like = rtype == "Patient" or (
                rtype is None and (modifier == "Patient" or param.targets == ("Patient",))
            )
            if patient_like and rid:
                named.add(rid)
    return named


def everything(
    session: Session,
    patient_id: str,
    *,
    since: str | None = None,
    count: int | None = None,
    offset: int = 0,
) -> tuple[list[StoredResource], int]:
    """Return the patient, every resource in their compartment and what those reference.

    The patient comes first, then the rest by type and id. Raises NotFound or Gone for
    the patient, BadRequest for a bad ``since``.
    """
    read(session, "Patient", patient_id)
    C = FhirCompartment
    Ref = FhirIndexReference
    members = [
        (t, i) for t, i in session.execute(select(C.res_type, C.res_id).where(C.patient_id == patient_id))
    ]
    referenced = session.execute(
        select(Ref.target_type, Ref.target_id)
        .join(C, and_(C.res_type == Ref.res_type, C.res_id == Ref.res_id))
        .where(C.patient_id == patient_id, Ref.target_id.is_not(None))
        .distinct()
    )
    keys = [
        ("Patient", patient_id),
        *sorted((set(members) | {(str(t), str(i)) for t, i in referenced}) - {("Patient", patient_id)}),
    ]
    if since:
        try:
            cutoff = date_range(since)[0]
        except ValueError as exc:
            raise _bad_param("_since", "is not an instant") from exc
    fetched = _fetch(session, keys)
    ordered = [fetched[k] for k in keys if k in fetched]
    if since:
        ordered = [r for r in ordered if r.last_updated.replace(tzinfo=None) >= cutoff]
    total = len(ordered)
    page = ordered[offset : offset + count] if count is not None else ordered[offset:]
    return page, total


def shape(stored: StoredResource, summary: str | None, elements: Sequence[str]) -> str:
    """Return the text to send for ``_summary``/``_elements`` (the stored text when neither)."""
    text = stored.text or ""
    if summary in (None, "false") and not elements:
        return text
    resource = jsontext.loads(text)
    if summary == "text":
        resource = {k: v for k, v in resource.items() if k in {"resourceType", "id", "meta", "text"}}
    elif summary == "data":
        resource.pop("text", None)
    elif summary == "true":
        summary_keep = summary_elements(stored.type)
        resource = {k: v for k, v in resource.items() if k in summary_keep}
    elif elements:
        keep = {"resourceType", "id", "meta", *elements}
        resource = {k: v for k, v in resource.items() if k in keep}
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    tags.append({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"})
    meta["tag"] = tags
    resource["meta"] = meta
    return jsontext.dumps(resource)


def validate(
    resource: Mapping[str, Any] | str | bytes, resource_type: str | None = None
) -> list[dict[str, Any]]:
    """Return the OperationOutcome issues of a resource (empty when valid); never writes."""
    parsed, _ = _parse(resource)
    if resource_type and parsed.get("resourceType") != resource_type:
        return [
            _issue(
                "invalid",
                f"Expected a {resource_type} resource, got {parsed.get('resourceType')!r}",
                "resourceType",
            )
        ]
    return validate_resource(parsed)


def prepare_bundle(bundle: Mapping[str, Any] | str | bytes) -> PreparedBundle:
    """Parse and validate a batch or transaction Bundle without a session (see ``fhir.bundles``).

    Hand the result to ``transaction``. Raises BadRequest for a Bundle that is neither.
    """
    from fhir import bundles

    return bundles.prepare(bundle)


def transaction(
    session: Session,
    bundle: PreparedBundle | Mapping[str, Any] | str | bytes,
    *,
    check_references: bool = True,
) -> BundleResult:
    """Process a batch or transaction Bundle, raw or from ``prepare_bundle`` (see ``fhir.bundles``)."""
    from fhir import bundles

    return bundles.process(session, bundle, check_references=check_references)


batch = transaction

__all__ = [
    "BundleResult",
    "EntryResult",
    "SearchResult",
    "StoredResource",
    "batch",
    "conditional_delete",
    "conditional_update",
    "create",
    "delete",
    "everything",
    "history",
    "prepare_bundle",
    "read",
    "search",
    "shape",
    "transaction",
    "update",
    "validate",
    "vread",
]
