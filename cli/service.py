"""``serve``'s application (issue #8): the ledger over HTTP, for source systems and for people.

* ``POST /events`` takes one event (``application/json``) or a batch (``application/x-ndjson``:
  JSON Lines; ``text/csv`` as ``ingest`` reads it). Every line goes through the same reader,
  validation and rules of record as ``ingest`` (`ledger.ingest.ingest_whole`), and the answer is
  ``ingest --json``'s document. **A request is all or nothing**: when any line is rejected the
  answer is 422 with every rejection (line, event_id, field, reason) and nothing is written; a
  re-sent event (same ``event_id``, same content) counts as *repeated*, not as an error.
* Each source system has a token; the tokens file (TOML) holds its SHA-256, never the token, and
  the event types the source may send. Unknown or missing token: 401. A batch with a type its
  source may not send: 403, and nothing of it is written. Reads need a source with ``read = true``.
* Reads return byte for byte what the commands print with ``--json``: ``/customers/{ref}/attribution``
  and ``/trace`` (phones masked), ``/statements/{month}`` (``settle --month M --json``),
  ``/liability?as_of=D`` (``liability --as-of D --json``); ``/report`` is the month's HTML page.
* Writes in one process go through one lock and one long-lived rules-of-record state (caught up
  from the store before each write, never re-read whole); writers in other processes are
  serialised by the store's chain (`WriteConflict` → re-validate), as concurrent ``ingest`` runs are.

Nothing here logs personal data: the access log names the route template (``/customers/{ref}/…``,
never the ref), the status and the time; rejections go to the caller, not to the log.
"""

import hashlib
import hmac
import html
import logging
import os
import threading
import tomllib
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from time import perf_counter
from typing import Annotated, Any, Literal, Union

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, TypeAdapter
from starlette.concurrency import run_in_threadpool

from cli.attribution_cmds import UnknownCustomer, attribution_json, collision_json, find_customer, load_from, trace_json
from cli.common import CommandError, fail, json_bytes
from cli.ingest_cmd import collisions_seen, report_json
from cli.serve_cmd import TOKENS_ENV
from cli.settle_cmds import statement_json
from ledger.events import BY_TYPE, SOURCE_TYPES
from ledger.identity import customer_id_for, index_terms
from ledger.ingest import IngestReport, ingest_whole
from ledger.neighbourhood import neighbourhood
from ledger.projector import Projector
from ledger.recording import RecordState
from ledger.sources import SourceLine, read_body
from ledger.store import STORE_ENV, LedgerStore, StoreError, WriteConflict, store_url_from
from policies import NoRulesInForce, RuleSet, default_rules
from projections.attribution import CustomerAttribution, rule_book
from projections.liability import liability
from projections.pipeline import Facts, facts

MAX_BODY_BYTES = 16 * 1024 * 1024
"""A request body larger than this is refused (413): send a larger file in several requests."""
SOURCE_DEFAULT_TYPES = tuple(t for t in SOURCE_TYPES if t != "policy.adopted")
"""What ``events = ["*"]`` allows: every type source systems send (rule sets are adopted with
``channel-ledger policy adopt``, months closed with ``close``)."""
LEADS_CHECKED_BY_NEIGHBOURHOOD = 20
"""Up to this many new leads in a request are checked for collisions customer by customer (the
store's index); more are checked as ``ingest`` checks a file (one fold of the stream)."""
YEARS = r"(19[7-9][0-9]|2[0-9]{3})"
MONTH_PATTERN = rf"^{YEARS}-(0[1-9]|1[0-2])$"
DAY_PATTERN = rf"^{YEARS}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2999, 12, 31)
"""Days and months the reads take (the description says so: a fuzzer keeps to it)."""
REPORTS_CACHED = 8

log = logging.getLogger("channel_ledger.service")

FORMATS = {
    "application/json": "json",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/json-lines": "jsonl",
    "text/csv": "csv",
}


# --- sources and their tokens ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A source system: its name, its token's SHA-256, what it may send, whether it may read."""

    name: str
    token_sha256: str
    events: frozenset[str]
    read: bool = False


def hash_token(token: str) -> str:
    """The SHA-256 (hex) of a token, as the tokens file holds it."""
    return hashlib.sha256(token.strip().encode("utf-8")).hexdigest()


def load_sources(path: str | os.PathLike[str]) -> tuple[Source, ...]:
    """Read a tokens file: ``[[source]]`` tables with ``name``, ``token_sha256``, ``events`` (event
    types, or ``"*"`` for every type source systems send) and optionally ``read = true``.
    Refuses (`CommandError`) anything it cannot read whole and unambiguous."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        fail(f"cannot read tokens file {path}: {error.strerror or error}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as error:
        fail(f"tokens file {path} is not valid TOML: {error}")
    entries = data.get("source")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        fail(f"tokens file {path} has no [[source]] tables", hint="see the README: serve, the tokens file")
    sources: list[Source] = []
    for n, entry in enumerate(entries, start=1):
        where = f"tokens file {path}, source {n}"
        unknown = sorted(set(entry) - {"name", "token_sha256", "events", "read"})
        if unknown:
            fail(f"{where}: unknown key {unknown[0]!r}", hint="keys: name, token_sha256, events, read")
        name, digest, events, read = entry.get("name"), entry.get("token_sha256"), entry.get("events", []), entry.get("read", False)
        if not isinstance(name, str) or not name.strip():
            fail(f"{where}: name must be a non-empty string")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            fail(f"{where} ({name}): token_sha256 must be 64 lower-case hex digits", hint="make it with: channel-ledger serve --hash-token")
        if not isinstance(events, list) or not all(isinstance(t, str) for t in events):
            fail(f"{where} ({name}): events must be a list of event types")
        if not isinstance(read, bool):
            fail(f"{where} ({name}): read must be true or false")
        allowed: set[str] = set()
        for kind in events:
            if kind == "*":
                allowed.update(SOURCE_DEFAULT_TYPES)
            elif kind in SOURCE_TYPES:
                allowed.add(kind)
            else:
                fail(f"{where} ({name}): {kind!r} is not an event type a source may send", hint="one of: *, " + ", ".join(SOURCE_TYPES))
        if not allowed and not read:
            fail(f"{where} ({name}): the source may neither send events nor read")
        sources.append(Source(name.strip(), digest, frozenset(allowed), read))
    for attribute in ("name", "token_sha256"):
        values = [getattr(s, attribute) for s in sources]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            fail(f"tokens file {path}: two sources share a {attribute}" + (f" ({twice[0]!r})" if attribute == "name" else ""))
    return tuple(sources)


# --- the service's state --------------------------------------------------------------------


class Service:
    """One process's view of the ledger: the open store, the write lock and the rules-of-record
    state shared by its requests, and a small cache of rendered reports."""

    def __init__(self, store_url: str, sources: tuple[Source, ...], clock: Callable[[], datetime]):
        self.store_url = store_url
        self.sources = {s.token_sha256: s for s in sources}
        self.clock = clock
        self.write_lock = threading.Lock()
        self.report_lock = threading.Lock()  # matplotlib's settings are process-wide
        self.state = RecordState()
        self.reports: dict[tuple[str, str, date | None, int], str] = {}
        self._store: LedgerStore | None = None
        self._opening = threading.Lock()

    @property
    def store(self) -> LedgerStore:
        with self._opening:
            if self._store is None:
                self._store = LedgerStore(self.store_url)
            return self._store

    def close(self) -> None:
        with self._opening:
            if self._store is not None:
                self._store.close()
                self._store = None

    def source_of(self, token: str | None) -> Source | None:
        if not token:
            return None
        digest = hash_token(token)
        found = self.sources.get(digest)
        return found if found is not None and hmac.compare_digest(found.token_sha256, digest) else None

    def record(self, lines: list[SourceLine]) -> IngestReport:
        """The request's events, all or nothing (`ingest_whole`), one writer at a time."""
        with self.write_lock:
            return ingest_whole(self.store, lines, self.state)

    def warm_up(self) -> None:
        """Fold the store into the rules-of-record state before the first request needs it."""
        with self.write_lock:
            ingest_whole(self.store, [], self.state)

    def collisions(self, report: IngestReport) -> list[dict[str, Any]] | None:
        """Collisions (撞单) caused by the leads this request recorded, as ``ingest`` reports them."""
        if not report.accepted_leads or not report.written:
            return []
        if len(report.accepted_leads) > LEADS_CHECKED_BY_NEIGHBOURHOOD:
            return collisions_seen(self.store, report)
        new, checked = set(report.accepted_leads), set()
        found: list[tuple[datetime, str, dict[str, Any]]] = []
        for lead in self._known_people(report):
            if lead in checked:
                continue
            f = facts(neighbourhood(self.store, customer_id_for(lead)))
            if not f.book.adoptions:
                return []
            checked.update(e.event_id for e in f.events)
            found += [(c.at, c.event_id, {"customer_id": cid, **collision_json(c)}) for cid, c in f.attribution.collisions() if c.event_id in new]
        return [c for _, _, c in sorted(found, key=lambda x: x[:2])]

    def _known_people(self, report: IngestReport) -> list[str]:
        """The new leads whose person the ledger knew before this request (by an identity key some
        other event names): only those can be collisions. A first lead of a new person cannot."""
        assert report.positions is not None
        written = set(range(report.positions[0], report.positions[1] + 1))
        recorded = self.store.lookup(report.accepted_leads)
        return [
            lead for lead in report.accepted_leads
            if self.store.find(t for t in index_terms(recorded[lead].event) if t.startswith("k:")) - written
        ]

    def rules_now(self) -> RuleSet:
        """The rules in force now (their time zone says which month is the current one)."""
        store = self.store
        book = rule_book(r.event for r in store.reference_data())
        try:
            return book.in_force_at(self.clock())
        except NoRulesInForce:
            return default_rules()

    def report(self, month: str | None, lang: str) -> tuple[str, str]:
        """The month's page (default: the current month, as of today) and the month it shows."""
        from cli.report import render_report  # matplotlib: loaded when a page is first asked for

        rules, now = self.rules_now(), self.clock()
        today, current = rules.local_date(now), rules.month_of(now)
        month = month or current
        as_of = today if month == current else None
        store = self.store
        key = (month, lang, as_of, store.position())
        with self.report_lock:
            if key not in self.reports:
                while len(self.reports) >= REPORTS_CACHED:
                    self.reports.pop(next(iter(self.reports)))
                self.reports[key] = render_report(store, month, lang=lang, as_of=as_of)
            return self.reports[key], month


# --- request and response shapes (for the OpenAPI description) ----------------------------


class Problem(BaseModel):
    detail: str


class RefusedEvent(BaseModel):
    line: int
    event_id: str | None
    type: str


class TypeRefusal(BaseModel):
    detail: str
    source: str
    refused: list[RefusedEvent]


class RejectionOut(BaseModel):
    file: str
    line: int
    event_id: str | None
    field: str
    reason: str


class IngestOut(BaseModel):
    """``ingest --json``: what was accepted, repeated, rejected (nothing is written then)."""

    accepted: int
    repeated: int
    rejected: list[RejectionOut]
    collisions: list[dict[str, Any]]
    collisions_checked: bool
    written: bool
    positions: list[int] | None


class Health(BaseModel):
    status: str
    position: int


def _event_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON Schema of one event a source may send (the §2 catalogue, with ``type``), and the
    definitions it refers to, placed under ``#/components/schemas``."""
    classes = [BY_TYPE[t] for t in SOURCE_TYPES]
    schema = TypeAdapter(Union[tuple(classes)]).json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[arg-type]
    definitions = schema.pop("$defs")
    for cls in classes:
        shape = definitions[cls.__name__]
        shape["properties"] = {"type": {"type": "string", "enum": [cls.type]}, **shape["properties"]}
        shape["required"] = ["type", *shape.get("required", [])]
    return schema, definitions


EVENT_SCHEMA, EVENT_DEFINITIONS = _event_schemas()
EVENTS_BODY = {
    "required": True,
    "description": "One event (application/json), or JSON Lines (application/x-ndjson: one event object a "
    "line), or CSV with the same field names (text/csv, nested fields flattened with dots).",
    "content": {
        "application/json": {"schema": EVENT_SCHEMA},
        "application/x-ndjson": {"schema": {"type": "string", "description": "one event object a line"}},
        "text/csv": {"schema": {"type": "string", "description": "a header line, then one event a line"}},
    },
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Unknown or missing token."},
    403: {"model": Problem, "description": "The token's source may not do this."},
    503: {"model": Problem, "description": "The store cannot be reached, or too many concurrent writers: try again."},
}
READ_RESPONSES = {**AUTH_RESPONSES, 409: {"model": Problem, "description": "No rule set has been adopted in this store."}}


class LedgerJSON(JSONResponse):
    """JSON exactly as the commands print it with ``--json`` (`cli.common.json_bytes`)."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def invalid(where: str, name: str, message: str) -> RequestValidationError:
    """A request parameter FastAPI let through but the ledger cannot use (answered 422, like FastAPI's own)."""
    return RequestValidationError([{"type": "value_error", "loc": (where, name), "msg": message, "input": None}])


def only_query(*names: str) -> Callable[[Request], None]:
    """A dependency refusing (422) query parameters the operation does not take: a misspelt
    ``?asof=`` must not quietly fall back to a default."""

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - set(names))
        if unknown:
            raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown query parameter", "input": None} for name in unknown])

    return check


def body_format(content_type: str | None) -> str:
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in FORMATS:
        raise problem(415, "send application/json (one event), application/x-ndjson (JSON Lines) or text/csv")
    return FORMATS[media]


async def read_limited(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise problem(413, f"request larger than {MAX_BODY_BYTES:,} bytes: send the events in several requests")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise problem(413, f"request larger than {MAX_BODY_BYTES:,} bytes: send the events in several requests")
        chunks.append(chunk)
    return b"".join(chunks)


def refused_types(lines: list[SourceLine], source: Source) -> list[RefusedEvent]:
    """The lines whose (known) event type the source may not send."""
    refused = []
    for line in lines:
        obj = line.obj if isinstance(line.obj, dict) else {}
        kind, event_id = obj.get("type"), obj.get("event_id")
        if isinstance(kind, str) and kind in BY_TYPE and kind not in source.events:
            refused.append(RefusedEvent(line=line.line, event_id=event_id if isinstance(event_id, str) else None, type=kind))
    return refused


def _where(error: BaseException) -> str:
    """Where an unexpected error happened, without its message (it may quote personal data)."""
    frames = traceback.extract_tb(error.__traceback__)[-3:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))


# --- the application ------------------------------------------------------------------------


def create_app(store_url: str | None, sources: tuple[Source, ...], *, clock: Callable[[], datetime] | None = None) -> FastAPI:
    """The HTTP service over the store at ``store_url`` for these sources. ``clock`` (aware "now")
    decides the current month of ``/report``; the wall clock by default."""
    service = Service(store_url_from(store_url), sources, clock or (lambda: datetime.now(UTC)))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(service.warm_up)
        except StoreError as error:
            log.error("store not ready: %s", error)
        yield
        service.close()

    app = FastAPI(
        title="channel-ledger",
        version="1",
        summary="Event-sourced attribution, commission and fulfillment ledger for clinic groups' channels.",
        description=__doc__,
        lifespan=lifespan,
        default_response_class=LedgerJSON,
    )
    app.state.service = service
    bearer = HTTPBearer(auto_error=False, description="The source system's token (the tokens file holds its SHA-256).")
    query_token = APIKeyQuery(name="token", auto_error=False, description="The token, for a page opened in a browser.")

    def authenticated(token: str | None) -> Source:
        source = service.source_of(token)
        if source is None:
            raise problem(401, "unknown or missing token", {"WWW-Authenticate": "Bearer"})
        return source

    def writer(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> Source:
        return authenticated(credentials.credentials if credentials else None)

    def reader(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> Source:
        return may_read(authenticated(credentials.credentials if credentials else None))

    def page_reader(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        token: Annotated[str | None, Security(query_token)],
    ) -> Source:
        return may_read(authenticated(credentials.credentials if credentials else token))

    def may_read(source: Source) -> Source:
        if not source.read:
            raise problem(403, f"source {source.name!r} may not read (read = true in the tokens file)")
        return source

    @app.middleware("http")
    async def access_log(request: Request, call_next: Callable[[Request], Any]) -> Response:
        started = perf_counter()
        try:
            response = await call_next(request)
        except Exception as error:  # answered here: the server would log the message, which may quote personal data
            log.error("%s %s: unexpected %s at %s", request.method, _route(request), type(error).__name__, _where(error))
            response = LedgerJSON({"detail": "internal error"}, status_code=500)
        log.info("%s %s %d %.1f ms", request.method, _route(request), response.status_code, (perf_counter() - started) * 1000)
        return response

    @app.exception_handler(StoreError)
    async def store_unavailable(_request: Request, error: StoreError) -> Response:
        log.error("store error: %s", error)
        return LedgerJSON({"detail": "the store cannot be reached; try again"}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(WriteConflict)
    async def busy(_request: Request, _error: WriteConflict) -> Response:
        return LedgerJSON({"detail": "too many concurrent writers; try again"}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NoRulesInForce)
    async def no_rules(_request: Request, error: NoRulesInForce) -> Response:
        return LedgerJSON({"detail": str(error)}, status_code=409)

    @app.get("/health", response_model=Health, responses={503: {"model": Problem}}, tags=["service"], dependencies=[Depends(only_query())])
    def health() -> Response:
        """The store answers: its ledger position."""
        return LedgerJSON({"status": "ok", "position": service.store.position()})

    @app.post(
        "/events",
        response_model=IngestOut,
        responses={
            **AUTH_RESPONSES,
            400: {"model": Problem, "description": "The request holds no event."},
            403: {"model": TypeRefusal, "description": "An event type the source may not send: nothing was written."},
            413: {"model": Problem, "description": "The request is too large."},
            415: {"model": Problem, "description": "Not JSON, JSON Lines or CSV."},
            422: {"model": IngestOut, "description": "Something was rejected: nothing was written (every rejection is listed)."},
        },
        openapi_extra={"requestBody": EVENTS_BODY},
        tags=["events"],
        dependencies=[Depends(only_query())],
    )
    async def post_events(request: Request, source: Annotated[Source, Depends(writer)]) -> Response:
        """Record events (SPEC §2.2) all or nothing, as ``ingest`` validates them; the answer is
        ``ingest --json``'s. Re-sent events (same id, same content) are *repeated*, not errors."""
        fmt = body_format(request.headers.get("content-type"))
        body = await read_limited(request)
        lines = list(read_body("request", body, fmt)) if body.strip() else []
        if not lines:
            raise problem(400, "the request holds no event")
        refused = refused_types(lines, source)
        if refused:
            kinds = ", ".join(sorted({r.type for r in refused}))
            detail = f"source {source.name!r} may not send {kinds}: nothing was written"
            return LedgerJSON({"detail": detail, "source": source.name, "refused": [r.model_dump() for r in refused]}, status_code=403)
        report = await run_in_threadpool(service.record, lines)
        collisions = await run_in_threadpool(service.collisions, report) if report.written else []
        log.info("%s: %d events: accepted %d, repeated %d, rejected %d", source.name, len(lines), report.accepted, report.repeated, len(report.rejected))
        return LedgerJSON(report_json(report, collisions, collisions is not None), status_code=422 if report.rejected else 200)

    Ref = Annotated[str, PathParam(min_length=1, max_length=200, description="Phone, WeChat id, platform user (douyin:8842) or customer id (C-…).")]

    def customer(ref: str) -> tuple[Facts, CustomerAttribution]:
        try:
            f = load_from(service.store, ref)
            return f, find_customer(f, ref)
        except UnknownCustomer as error:
            raise problem(404, str(error)) from None
        except CommandError as error:  # no rule set adopted
            raise problem(409, str(error)) from None

    customer_responses = {**READ_RESPONSES, 404: {"model": Problem, "description": "No customer known by this ref."}}

    @app.get("/customers/{ref}/attribution", response_model=dict[str, Any], responses=customer_responses, tags=["reads"], dependencies=[Depends(only_query())])
    def get_attribution(ref: Ref, _source: Annotated[Source, Depends(reader)]) -> Response:
        """``attribution REF --json``: source, owner, protection end, collisions (SPEC §4)."""
        f, found = customer(ref)
        return LedgerJSON(attribution_json(found, f, unmasked=False))

    @app.get("/customers/{ref}/trace", response_model=dict[str, Any], responses=customer_responses, tags=["reads"], dependencies=[Depends(only_query())])
    def get_trace(ref: Ref, _source: Annotated[Source, Depends(reader)]) -> Response:
        """``trace REF --json``: every event of the customer, each rule decision with its version."""
        f, found = customer(ref)
        return LedgerJSON(trace_json(found, f, unmasked=False))

    @app.get("/statements/{month}", response_model=dict[str, Any], responses=READ_RESPONSES, tags=["reads"], dependencies=[Depends(only_query())])
    def get_statement(
        month: Annotated[str, PathParam(pattern=MONTH_PATTERN, description="YYYY-MM (1970–2999), in the rules' time zone.")],
        _source: Annotated[Source, Depends(reader)],
    ) -> Response:
        """``settle --month M --json``: the month's statement (SPEC §6); a closed month as it was closed."""
        statement, directory = Projector(service.store).statement(month)  # the kept projection, refreshed
        return LedgerJSON(statement_json(statement, directory))

    @app.get("/liability", response_model=dict[str, Any], responses=READ_RESPONSES, tags=["reads"], dependencies=[Depends(only_query("as_of", "months"))])
    def get_liability(
        as_of: Annotated[date, Query(description="Business day D (YYYY-MM-DD, 1970–2999); everything up to the end of D counts.", json_schema_extra={"pattern": DAY_PATTERN})],
        _source: Annotated[Source, Depends(reader)],
        months: Annotated[int, Query(ge=1, le=36, description="Forecast months after D.")] = 3,
    ) -> Response:
        """``liability --as-of D --json``: outstanding sessions, deferred revenue, forecast vs capacity (SPEC §7)."""
        if not FIRST_DAY <= as_of <= LAST_DAY:
            raise invalid("query", "as_of", f"a day from {FIRST_DAY} to {LAST_DAY}")
        return LedgerJSON(liability([r.event for r in service.store.read()], as_of, months).as_json())

    @app.get(
        "/report",
        response_class=HTMLResponse,
        responses={**READ_RESPONSES, 404: {"description": "Nothing happened in that month.", "content": {"text/html": {}}}},
        tags=["reads"],
        dependencies=[Depends(only_query("month", "lang", "token"))],
    )
    def get_report(
        _source: Annotated[Source, Depends(page_reader)],
        month: Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM (1970–2999); default: the current month.")] = None,
        lang: Annotated[Literal["zh", "en"], Query(description="Language of the page.")] = "zh",
    ) -> HTMLResponse:
        """The month's report page (HTML): the three ledgers per channel kind, the forecast heatmap,
        the commission per payee, the statement digest. The current month is shown as of today."""
        try:
            page, _month = service.report(month, lang)
        except CommandError as error:
            hint = f"<p>{html.escape(error.hint)}</p>" if error.hint else ""
            return HTMLResponse(f"<!DOCTYPE html><meta charset=utf-8><title>channel-ledger</title><p>{html.escape(str(error))}</p>{hint}", status_code=404)
        return HTMLResponse(page)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(EVENT_DEFINITIONS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "(no route)")


def app_from_env() -> FastAPI:
    """The application as ``uvicorn --factory cli.service:app_from_env`` (and ``serve --workers N``)
    builds it: the store from ``CHANNEL_LEDGER_STORE``, the tokens from ``CHANNEL_LEDGER_SERVE_TOKENS``."""
    tokens = os.environ.get(TOKENS_ENV)
    if not tokens:
        fail(f"${TOKENS_ENV} names no tokens file")
    return create_app(os.environ.get(STORE_ENV), load_sources(tokens))
