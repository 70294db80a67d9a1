"""Process batch and transaction Bundles against the store.

A transaction is all or nothing: every entry is validated, every ``urn:uuid:`` and
conditional reference resolved, every local reference checked, and then all writes go
in as one batch of rows; any failure raises an error naming the entry, and the
caller's rollback leaves nothing behind. A batch runs each entry in its own savepoint
and reports each entry's outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from sqlalchemy.orm import Session

from fhir import services
from fhir.services import BundleResult, EntryResult, StoredResource, _issue, _Write
from fhir.validation import is_resource_type, validate_resource
from his.errors import BadRequest, PreconditionFailed, ValidationFailed, VetinhError

METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    type: str
    id: str | None
    query: str | None
    full_url: str | None
    resource: dict[str, Any] | None
    if_none_exist: str | None
    if_match: str | None
    target_id: str | None = None
    existing: StoredResource | None = None
    same_as: _Entry | None = None
    references: list[tuple[str, dict[str, Any]]] | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def status_line(code: int) -> str:
    """Return ``"201 Created"`` for 201."""
    return f"{code} {HTTPStatus(code).phrase}"


def _entry_error(index: int, exc: VetinhError) -> VetinhError:
    """Re-raise ``exc`` as the same kind of error, naming the failing entry."""
    where = f"Bundle.entry[{index}]"
    issues = exc.extra.get("issue") or [_issue("processing", exc.message)]
    named = []
    for issue in issues:
        issue = dict(issue)
        issue["diagnostics"] = f"{where}: {issue.get('diagnostics', exc.message)}"
        expressions = issue.get("expression") or []
        issue["expression"] = [
            e if e.startswith("Bundle.") else f"{where}.resource.{e.split('.', 1)[1]}" if "." in e else where
            for e in expressions
        ] or [where]
        named.append(issue)
    error = type(exc)(
        f"{where}: {exc.message}",
        code=exc.code,
        fields={i["expression"][0]: i["diagnostics"] for i in named},
        extra={**exc.extra, "issue": named},
    )
    return error


def _bad(
    index: int, message: str, code: str = "invalid", kind: type[VetinhError] = BadRequest
) -> VetinhError:
    where = f"Bundle.entry[{index}]"
    return kind(
        f"{where}: {message}",
        code="FHIR_BAD_ENTRY",
        fields={where: message},
        extra={"issue": [_issue(code, f"{where}: {message}", where)]},
    )


def _parse_entry(index: int, raw: Any) -> _Entry:
    if not isinstance(raw, dict):
        raise _bad(index, "an entry must be an object")
    request = raw.get("request")
    if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
        raise _bad(index, "request.method and request.url are required")
    method = str(request["method"]).upper()
    if method not in METHOD_ORDER:
        raise _bad(index, f"method {method} is not supported", "not-supported")
    url = str(request["url"]).lstrip("/")
    path, _, query = url.partition("?")
    parts = path.split("/")
    rtype = parts[0]
    if not is_resource_type(rtype):
        raise _bad(index, f"{rtype!r} is not a resource type", "not-supported")
    rid = parts[1] if len(parts) > 1 and parts[1] else None
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise _bad(index, f"{method} needs a resource", "required")
        if resource.get("resourceType") != rtype:
            raise _bad(index, f"the resource is a {resource.get('resourceType')!r}, the URL names {rtype}")
    return _Entry(
        index=index,
        method=method,
        url=url,
        type=rtype,
        id=rid,
        query=query or None,
        full_url=raw.get("fullUrl"),
        resource=resource if isinstance(resource, dict) else None,
        if_none_exist=request.get("ifNoneExist"),
        if_match=request.get("ifMatch"),
    )


@dataclass
class PreparedBundle:
    """Hold a Bundle parsed and validated, before anything touches the database."""

    type: str
    raw_entries: list[Any]
    entries: list[_Entry | VetinhError]
    issues: dict[int, list[dict[str, Any]]]


def prepare(bundle: Mapping[str, Any] | str | bytes) -> PreparedBundle:
    """Parse a batch or transaction Bundle's entries and validate their resources.

    Pure work, no session: a caller can do it before taking a database lock. Invalid
    entries are kept with their issues for ``process`` to report as it always did.
    Raises BadRequest for a Bundle that is neither a batch nor a transaction.
    """
    parsed, _ = services._parse(bundle)
    if parsed.get("resourceType") != "Bundle":
        raise services._wrong_type("Bundle", parsed.get("resourceType"))
    btype = parsed.get("type")
    if btype not in ("batch", "transaction"):
        message = f"Bundle.type must be batch or transaction, not {btype!r}"
        raise BadRequest(
            message, code="FHIR_BAD_BUNDLE", extra={"issue": [_issue("invalid", message, "Bundle.type")]}
        )
    raw_entries = parsed.get("entry") or []
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be a list", code="FHIR_BAD_BUNDLE")
    entries: list[_Entry | VetinhError] = []
    issues: dict[int, list[dict[str, Any]]] = {}
    for index, raw in enumerate(raw_entries):
        try:
            entry = _parse_entry(index, raw)
        except VetinhError as exc:
            entries.append(exc)
            if btype == "transaction":
                # The transaction fails on this entry; validating the rest would be wasted.
                break
            continue
        entries.append(entry)
        if entry.resource is None:
            continue
        if btype == "transaction":
            entry.references = []
            found = validate_resource(entry.resource, f"{entry.where}.resource", references=entry.references)
        elif entry.method in ("POST", "PUT") and not entry.query:
            found = validate_resource(entry.resource)
        else:
            continue
        if found:
            issues[index] = found
    return PreparedBundle(str(btype), raw_entries, entries, issues)


def process(
    session: Session,
    bundle: PreparedBundle | Mapping[str, Any] | str | bytes,
    *,
    check_references: bool = True,
) -> BundleResult:
    """Process a batch or transaction Bundle (prepared or not) and return its response entries.

    Raises BadRequest for a Bundle that is neither, and (transactions only) the error of
    the first failing entry, named ``Bundle.entry[i]``.
    """
    prepared = bundle if isinstance(bundle, PreparedBundle) else prepare(bundle)
    if prepared.type == "batch":
        return BundleResult("batch-response", _batch(session, prepared, check_references))
    return _transaction(session, prepared, check_references)


def _failed(index: int, exc: VetinhError) -> EntryResult:
    named = _entry_error(index, exc)
    return EntryResult(
        status=status_line(exc.status if exc.status in HTTPStatus._value2member_map_ else 500),
        outcome={"resourceType": "OperationOutcome", "issue": named.extra["issue"]},
    )


def _batch(session: Session, prepared: PreparedBundle, check_references: bool) -> list[EntryResult]:
    """Process a batch: plain creates and updates are prepared one by one, written together.

    Each entry still succeeds or fails on its own: validation, conditions and references
    are checked per entry before anything is written; the rest (reads, searches,
    deletes, conditional updates) run one by one in savepoints.
    """
    results: dict[int, EntryResult] = {}
    group: list[_Entry] = []
    targets: set[tuple[str, str]] = set()
    conditions: dict[tuple[str, str], _Entry] = {}
    one_by_one: list[tuple[int, Any]] = []
    raw_entries = prepared.raw_entries
    known = _match_conditions(session, prepared.entries)
    for index, raw in enumerate(raw_entries):
        entry = prepared.entries[index]
        if isinstance(entry, VetinhError):
            results[index] = _failed(index, entry)
            continue
        if entry.method not in ("POST", "PUT") or entry.query:
            one_by_one.append((index, raw))
            continue
        assert entry.resource is not None
        issues = prepared.issues.get(index)
        if issues:
            results[index] = _failed(index, services._invalid(issues))
            continue
        condition = (
            (entry.type, entry.if_none_exist) if entry.method == "POST" and entry.if_none_exist else None
        )
        if condition is not None and condition in conditions:
            one_by_one.append((index, raw))
            continue
        try:
            _resolve_identity(session, entry, known)
            if entry.existing is not None:
                results[index] = _written(entry.existing, 200)
                continue
            if (entry.type, entry.target_id) in targets:
                one_by_one.append((index, raw))
                continue
            if check_references:
                services._check_references(
                    session, [(entry.type, entry.resource)], {(entry.type, entry.target_id or "")}
                )
        except VetinhError as exc:
            results[index] = _failed(index, exc)
            continue
        group.append(entry)
        targets.add((entry.type, entry.target_id or ""))
        if condition is not None:
            conditions[condition] = entry
    if group:
        savepoint = session.begin_nested()
        try:
            written = _write_all(session, group)
            savepoint.commit()
            results.update(written)
        except VetinhError:
            savepoint.rollback()
            one_by_one.extend((e.index, raw_entries[e.index]) for e in group)
    for index, raw in sorted(one_by_one):
        results[index] = _batch_entry(session, index, raw, check_references)
    return [results[i] for i in range(len(raw_entries))]


def _batch_entry(session: Session, index: int, raw: Any, check_references: bool) -> EntryResult:
    savepoint = session.begin_nested()
    try:
        result = _single(session, _parse_entry(index, raw), check_references)
        savepoint.commit()
        return result
    except VetinhError as exc:
        savepoint.rollback()
        return _failed(index, exc)


def _single(session: Session, entry: _Entry, check_references: bool) -> EntryResult:
    """Run one batch entry through the ordinary single-resource services."""
    if entry.method == "POST":
        assert entry.resource is not None
        stored = services.create(
            session, entry.resource, if_none_exist=entry.if_none_exist, check_references=check_references
        )
        return _written(stored, 201 if stored.created else 200)
    if entry.method == "PUT":
        assert entry.resource is not None
        if entry.query:
            stored = services.conditional_update(
                session, entry.type, entry.query, entry.resource, check_references=check_references
            )
        else:
            if entry.id is None:
                raise _bad(entry.index, "PUT needs Type/id or Type?search")
            stored = services.update(
                session,
                entry.type,
                entry.id,
                entry.resource,
                if_match=entry.if_match,
                check_references=check_references,
            )
        return _written(stored, 201 if stored.created else 200)
    if entry.method == "DELETE":
        if entry.query:
            services.conditional_delete(session, entry.type, entry.query)
        elif entry.id is not None:
            services.delete_resource(session, entry.type, entry.id, if_match=entry.if_match)
        else:
            raise _bad(entry.index, "DELETE needs Type/id or Type?search")
        return EntryResult(status=status_line(204))
    return _get(session, entry)


def _get(session: Session, entry: _Entry) -> EntryResult:
    if entry.id is not None:
        parts = entry.url.partition("?")[0].split("/")
        if len(parts) == 4 and parts[2] == "_history":
            stored = services.vread(session, entry.type, entry.id, parts[3])
        else:
            stored = services.read(session, entry.type, entry.id)
        return _written(stored, 200)
    result = services.search(session, entry.type, services.parse_query(entry.query or ""))
    return EntryResult(status=status_line(200), search=result)


def _written(stored: StoredResource, code: int) -> EntryResult:
    return EntryResult(
        status=status_line(code),
        stored=stored,
        location=f"{stored.type}/{stored.id}/_history/{stored.version_id}",
    )


def _transaction(session: Session, prepared: PreparedBundle, check_references: bool) -> BundleResult:
    entries: list[_Entry] = []
    for entry_or_error in prepared.entries:
        if isinstance(entry_or_error, VetinhError):
            raise entry_or_error
        entries.append(entry_or_error)
    issues = [issue for index in sorted(prepared.issues) for issue in prepared.issues[index]]
    if issues:
        first = issues[0]
        raise ValidationFailed(
            first["diagnostics"],
            code="FHIR_INVALID",
            fields={first["expression"][0]: first["diagnostics"]},
            extra={"issue": issues},
        )
    urn_map: dict[str, str] = {}
    touched: set[tuple[str, str]] = set()
    conditions: dict[tuple[str, str], _Entry] = {}
    for entry in sorted(entries, key=lambda e: METHOD_ORDER[e.method]):
        condition = (
            (entry.type, entry.if_none_exist) if entry.method == "POST" and entry.if_none_exist else None
        )
        if condition is not None and condition in conditions:
            # A second conditional create of the same thing finds the first one, as it would
            # if the entries ran one after another.
            entry.same_as = conditions[condition]
            entry.existing = entry.same_as.existing
            entry.target_id = entry.same_as.target_id
            if entry.full_url and entry.target_id is not None:
                urn_map[entry.full_url] = f"{entry.type}/{entry.target_id}"
            continue
        try:
            _resolve_identity(session, entry)
        except VetinhError as exc:
            raise _entry_error(entry.index, exc) from exc
        if condition is not None:
            conditions[condition] = entry
        if entry.target_id is not None and entry.method != "GET":
            key = (entry.type, entry.target_id)
            if key in touched:
                raise _bad(entry.index, f"{entry.type}/{entry.target_id} appears in more than one entry")
            touched.add(key)
        if entry.full_url and entry.target_id is not None:
            urn_map[entry.full_url] = f"{entry.type}/{entry.target_id}"
    rewritten = [e for e in entries if e.resource is not None and e.existing is None and e.same_as is None]
    for entry in rewritten:
        if entry.references is None:
            # Not from ``prepare``, which finds them while it validates.
            assert entry.resource is not None
            entry.references = list(services._reference_paths(entry.resource, f"{entry.where}.resource"))
    conditional_cache: dict[str, str] = {}
    matched = _match_conditional_references(session, rewritten, urn_map)
    found: list[tuple[str, str]] = []
    for entry in rewritten:
        seen = _rewrite_references(session, entry, urn_map, conditional_cache, matched)
        if entry.method in ("POST", "PUT"):
            found.extend(seen)
    if check_references:
        written = {
            (e.type, e.target_id)
            for e in entries
            if e.method in ("POST", "PUT")
            and e.existing is None
            and e.same_as is None
            and e.target_id is not None
        }
        # A conditional reference was resolved a moment ago, in this transaction, to a
        # resource that exists and is not deleted; asking again would find the same.
        resolved = {(t, i) for t, _, i in (r.partition("/") for r in conditional_cache.values())}
        services.check_found_references(session, found, {(t, str(i)) for t, i in written} | resolved)
    results = _write_all(session, entries)
    for entry in entries:
        if entry.method in ("GET", "HEAD"):
            try:
                results[entry.index] = _get(session, entry)
            except VetinhError as exc:
                raise _entry_error(entry.index, exc) from exc
    return BundleResult("transaction-response", [results[e.index] for e in entries])


def _match_conditions(
    session: Session, entries: list[_Entry | VetinhError]
) -> dict[tuple[str, str], list[StoredResource]]:
    """Look up the conditional creates' ``identifier=system|value`` conditions, one query per type."""
    by_type: dict[str, list[str]] = {}
    for entry in entries:
        if isinstance(entry, _Entry) and entry.method == "POST" and entry.if_none_exist:
            by_type.setdefault(entry.type, []).append(entry.if_none_exist)
    return {
        (rtype, condition): found
        for rtype, conditions in by_type.items()
        for condition, found in services.match_identifiers(session, rtype, conditions).items()
    }


def _resolve_identity(
    session: Session,
    entry: _Entry,
    known: Mapping[tuple[str, str], list[StoredResource]] | None = None,
) -> None:
    """Decide which resource id an entry writes (or finds), resolving conditions.

    ``known`` holds conditions already looked up (see ``_match_conditions``).
    """
    if entry.method == "POST":
        if entry.if_none_exist:
            matches = (known or {}).get((entry.type, entry.if_none_exist))
            if matches is None:
                found = services._conditional_match(session, entry.type, entry.if_none_exist)
            elif len(matches) > 1:
                raise services.ambiguous_condition(entry.type, entry.if_none_exist)
            else:
                found = matches[0] if matches else None
            if found is not None:
                entry.existing = found
                entry.target_id = found.id
                return
        entry.target_id = str(uuid.uuid4())
    elif entry.method == "PUT":
        if entry.query:
            found = services._conditional_match(session, entry.type, entry.query)
            body_id = (entry.resource or {}).get("id")
            if found is not None:
                if body_id not in (None, found.id):
                    raise BadRequest(f"the body's id {body_id!r} is not the matching resource {found.id!r}")
                entry.target_id = found.id
            else:
                entry.target_id = str(body_id) if body_id else str(uuid.uuid4())
        else:
            if entry.id is None:
                raise BadRequest("PUT needs Type/id or Type?search")
            if (entry.resource or {}).get("id") != entry.id:
                raise BadRequest(f"the body's id does not match {entry.type}/{entry.id}")
            entry.target_id = entry.id
        if not services.ID_RE.match(entry.target_id or ""):
            raise BadRequest(f"{entry.target_id!r} is not a valid FHIR id")
    elif entry.method == "DELETE":
        if entry.query:
            found = services._conditional_match(session, entry.type, entry.query)
            entry.target_id = found.id if found is not None else None
        else:
            entry.target_id = entry.id


def _match_conditional_references(
    session: Session, entries: list[_Entry], urn_map: Mapping[str, str]
) -> dict[str, list[str]]:
    """Look up the entries' ``Type?identifier=system|value`` references, one query per type.

    Returns the ids (at most two, as the one-by-one search asks for) each such reference
    matches; references of other forms are left to ``_rewrite_references`` to search.
    """
    by_type: dict[str, list[str]] = {}
    for entry in entries:
        for _path, ref in entry.references or ():
            value = ref["reference"]
            if value in urn_map or "?" not in value:
                continue
            rtype, query = value.split("?", 1)
            if is_resource_type(rtype):
                by_type.setdefault(rtype, []).append(query)
    return {
        f"{rtype}?{query}": ids[:2]
        for rtype, queries in by_type.items()
        for query, ids in services.match_identifier_ids(session, rtype, queries).items()
    }


def _rewrite_references(
    session: Session,
    entry: _Entry,
    urn_map: dict[str, str],
    cache: dict[str, str],
    matched: Mapping[str, list[str]],
) -> list[tuple[str, str]]:
    """Resolve urn:uuid and conditional references in place; return every reference seen.

    The entry's references were collected beforehand (see ``prepare``). ``matched``
    holds the ids of the conditional references already looked up (see
    ``_match_conditional_references``); the others are searched here.
    """
    seen = entry.references
    assert seen is not None
    for path, ref in seen:
        value = ref["reference"]
        if value in urn_map:
            ref["reference"] = urn_map[value]
        elif value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
            raise _bad(entry.index, f"{path}: {value} is not the fullUrl of any entry", "not-found")
        elif "?" in value and is_resource_type(value.split("?", 1)[0]):
            if value not in cache:
                rtype, query = value.split("?", 1)
                ids = matched.get(value)
                if ids is None:
                    try:
                        ids = services._search_ids(session, rtype, services.parse_query(query), limit=2)
                    except VetinhError as exc:
                        raise _entry_error(entry.index, exc) from exc
                if len(ids) != 1:
                    raise _bad(
                        entry.index,
                        f"{path}: the conditional reference {value} matches {len(ids)} resources",
                        "multiple-matches" if ids else "not-found",
                        PreconditionFailed if ids else BadRequest,
                    )
                cache[value] = f"{rtype}/{ids[0]}"
            ref["reference"] = cache[value]
    return [(path, ref["reference"]) for path, ref in seen]


def _write_all(session: Session, entries: list[_Entry]) -> dict[int, EntryResult]:
    """Turn the resolved entries into versions and write them as one batch."""
    results: dict[int, EntryResult] = {}
    by_type: dict[str, list[str]] = {}
    for entry in entries:
        if entry.method in ("PUT", "DELETE") and entry.target_id:
            by_type.setdefault(entry.type, []).append(entry.target_id)
    current = {
        (rtype, rid): row
        for rtype, ids in by_type.items()
        for rid, row in services._current(session, rtype, ids, lock=True).items()
    }
    moment = services._now()
    writes: list[tuple[_Entry, _Write, int]] = []
    for entry in sorted(entries, key=lambda e: METHOD_ORDER[e.method]):
        if entry.method in ("GET", "HEAD") or entry.same_as is not None:
            continue
        if entry.existing is not None:
            results[entry.index] = _written(entry.existing, 200)
            continue
        row = current.get((entry.type, entry.target_id or ""))
        if entry.method == "DELETE":
            if row is None and entry.id is not None and not entry.query:
                raise _bad(
                    entry.index, f"{entry.type}/{entry.id} is not known", "not-found", services.NotFound
                )
            if row is None or row.deleted:
                results[entry.index] = EntryResult(status=status_line(204))
                continue
            try:
                services._expect_version(entry.if_match, row.version, f"{entry.type}/{row.res_id}")
            except VetinhError as exc:
                raise _entry_error(entry.index, exc) from exc
            write = _Write(
                entry.type, row.res_id, row.version + 1, "DELETE", moment, row.created, False, None, None
            )
            writes.append((entry, write, 204))
            continue
        assert entry.resource is not None
        assert entry.target_id is not None
        if entry.method == "PUT":
            try:
                services._expect_version(
                    entry.if_match,
                    row.version if row is not None and not row.deleted else None,
                    f"{entry.type}/{entry.target_id}",
                )
            except VetinhError as exc:
                raise _entry_error(entry.index, exc) from exc
        version = 1 if row is None else row.version + 1
        text = services._stamp(None, entry.resource, entry.target_id, version, moment)
        write = _Write(
            entry.type,
            entry.target_id,
            version,
            entry.method,
            moment,
            moment if row is None else row.created,
            row is None,
            entry.resource,
            text,
        )
        writes.append((entry, write, 201 if row is None or row.deleted else 200))
    deleted = [(w.type, w.id) for _, w, _ in writes if w.resource is None]
    if deleted:
        services.ensure_unreferenced(session, deleted, "Bundle: ")
    services._apply(session, [w for _, w, _ in writes])
    for entry, write, code in writes:
        stored = services._to_stored(write, created=code == 201)
        results[entry.index] = EntryResult(status=status_line(204)) if code == 204 else _written(stored, code)
    for entry in entries:
        first = entry.same_as
        if first is not None:
            found = first.existing or results[first.index].stored
            assert found is not None
            results[entry.index] = _written(found, 200)
    return results
