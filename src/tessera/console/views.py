"""The console's pages: server-rendered with Jinja2, made live with htmx.

Every page reads the same ports the API does (the store for profiles, the bus
for lag and dead letters), so what it shows is what the API would answer.
Sections that need parts of Tessera not built yet are listed in ``SECTIONS``
with ``available=False`` and say so instead of showing invented data; making
one available is adding its route and template and flipping the flag.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response, StreamingResponse
from starlette.templating import Jinja2Templates

from tessera.activation.api import activation_state
from tessera.activation.service import overview as subscriptions_overview
from tessera.console.graph import MergeView, identity_svg
from tessera.console.personalized import consent, personalized
from tessera.console.session import COOKIE, MAX_AGE_SECONDS, Sessions
from tessera.console.tail import MAX_PER_BATCH, TAIL
from tessera.events.envelope import iso_time
from tessera.journeys.report import instances_of
from tessera.observability import metrics
from tessera.runtime import Runtime
from tessera.store.base import Profile, TimelineEntry

HERE = Path(__file__).parent
STATIC = {
    "htmx.min.js": "text/javascript",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
TIMELINE_PAGE = 25
EVENT_SCAN_LIMIT = 5000
"""How far back in a profile's timeline the console looks for the event behind a merge."""
MAX_FORM_BYTES = 16 * 1024
NAME_TRAITS = ("first_name", "last_name")


@dataclass(frozen=True, slots=True)
class Section:
    key: str
    path: str
    title: str
    available: bool = True
    why: str = ""


SECTIONS = [
    Section("overview", "/console", "Overview"),
    Section("profiles", "/console/profiles", "Customers"),
    Section("subscriptions", "/console/subscriptions", "Subscriptions"),
    Section("journeys", "/console/journeys", "Journeys"),
    Section("catalog", "/console/catalog", "Catalog"),
    Section("identity-review", "/console/identity-review", "Identity review"),
    Section("dead-letters", "/console/dead-letters", "Dead letters"),
]
PROFILE_SECTIONS_NOT_YET: list[dict[str, str]] = []
"""Customer 360 sections whose part of Tessera does not exist yet (``key``, ``title``, ``why``)."""


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return iso_time(ts).replace("T", " ")[:19] + " UTC"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _payload(raw: bytes) -> str:
    text = raw[:8192].decode("utf-8", "replace")
    with contextlib.suppress(ValueError):
        text = _pretty(json.loads(text))
    return text + ("\n… (truncated)" if len(raw) > 8192 else "")


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=_when, show=_show, pretty=_pretty, payload=_payload)
    env.filters["urlencode"] = lambda v: quote(str(v), safe="")
    return Jinja2Templates(env=env)


TEMPLATES = _templates()


class Rates:
    """Rates from totals sampled when the overview refreshes (a sliding window)."""

    WINDOW = 15.0

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=64)

    def sample(self, accepted: int, applied: int | None) -> tuple[float | None, float | None]:
        now = time.monotonic()
        applied_value = applied if applied is not None else -1
        self.samples.append((now, accepted, applied_value))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.WINDOW:
            self.samples.popleft()
        first = self.samples[0]
        elapsed = now - first[0]
        if elapsed < 0.5:
            return None, None
        ingest = max(0, accepted - first[1]) / elapsed
        processing = (
            max(0, applied_value - first[2]) / elapsed
            if applied is not None and first[2] >= 0 else None
        )
        return ingest, processing


class ConsoleState:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.sessions = Sessions(runtime)
        self.rates = Rates()


def _state(request: Request) -> ConsoleState:
    state: ConsoleState | None = getattr(request.app.state, "console", None)
    if state is None:
        state = ConsoleState(request.app.state.runtime)
        request.app.state.console = state
    return state


router = APIRouter(prefix="/console", include_in_schema=False)


class NotLoggedIn(Exception):
    pass


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/console") and not value.startswith("//"):
        return value
    return "/console"


def _login_redirect(request: Request) -> Response:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    location = "/console/login?next=" + quote(target, safe="")
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": location})
    return RedirectResponse(location, status_code=303)


def _page(request: Request, template: str, session: str | None, section: str = "",
          status_code: int = 200, **context: Any) -> Response:
    state = _state(request)
    base = {
        "nav": SECTIONS if session else None,
        "section": section,
        "csrf": state.sessions.csrf_token(session) if session else "",
        "q": context.pop("q", ""),
        "title": context.pop("title", "Console"),
    }
    response = TEMPLATES.TemplateResponse(request, template, {**base, **context},
                                          status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


# -- login --------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str = "/console") -> Response:
    return _page(request, "login.html", None, title="Log in", next=_safe_next(next), error="")


@router.post("/login")
async def login(request: Request) -> Response:
    state = _state(request)
    form = await _form(request)
    key = form.get("key", "").strip()
    target = _safe_next(form.get("next"))
    if not key or not state.sessions.is_admin_key(key):
        return _page(request, "login.html", None, status_code=401, title="Log in",
                     next=target, error="That is not an API key with the admin scope.")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, state.sessions.issue(key), max_age=MAX_AGE_SECONDS,
                        path="/console", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


def _session(request: Request) -> str | None:
    return _state(request).sessions.current(request)


async def _require_csrf(request: Request, session: str) -> bool:
    presented = request.headers.get("x-csrf-token")
    if presented is None:
        presented = (await _form(request)).get("csrf")
    return _state(request).sessions.check_csrf(session, presented)


# -- static -------------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media = STATIC.get(name)
    if media is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(HERE / "static" / name, media_type=media,
                        headers={"Cache-Control": "public, max-age=3600"})


# -- overview -----------------------------------------------------------------


async def _deliveries(runtime: Runtime) -> tuple[list[dict[str, Any]], str | None]:
    """Each subscription's delivery failures, as the Subscriptions page shows them."""
    try:
        subs = await asyncio.wait_for(
            subscriptions_overview(runtime.config, runtime.bus, activation_state(runtime)), 5.0)
    except Exception as exc:
        return [], str(exc) or type(exc).__name__
    return [{"name": s["name"], "paused": s["paused"], **s["stats"]} for s in subs], None


async def _stats(state: ConsoleState) -> dict[str, Any]:
    runtime = state.runtime
    out: dict[str, Any] = {"counts": {}, "lags": [], "lag_error": None, "dead_letters": None,
                           "at": _when(time.time())}
    try:
        out["counts"] = await asyncio.to_thread(runtime.store.counts)
    except Exception as exc:
        out["counts"] = {"profiles": f"unavailable ({type(exc).__name__})"}
    try:
        for topic, group in metrics.watched_groups(runtime.config):
            lag = await asyncio.wait_for(runtime.bus.lag(topic, group), 5.0)
            out["lags"].append({"topic": topic, "group": group, "lag": lag})
        out["dead_letters"] = len(await asyncio.wait_for(runtime.bus.dead_letters(None), 5.0))
    except Exception as exc:
        out["lag_error"] = str(exc) or type(exc).__name__
    out["deliveries"], out["delivery_error"] = await _deliveries(runtime)
    applied = out["counts"].get("events_applied")
    ingest, processing = state.rates.sample(
        metrics.INGEST_TOTALS.accepted, applied if isinstance(applied, int) else None
    )
    out.update(ingest_rate=ingest, processing_rate=processing,
               accepted=metrics.INGEST_TOTALS.accepted)
    return out


@router.get("")
async def overview(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    stats = await _stats(_state(request))
    return _page(request, "overview.html", session, "overview", title="Overview", stats=stats,
                 per_batch=MAX_PER_BATCH)


@router.get("/overview/stats")
async def overview_stats(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    return _page(request, "_stats.html", session, stats=await _stats(_state(request)))


@router.get("/tail")
async def tail(request: Request) -> Response:
    if _session(request) is None:
        return Response("log in first", status_code=401, media_type="text/plain")
    return StreamingResponse(
        TAIL.stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# -- customers ------------------------------------------------------------------


def find_profiles(runtime: Runtime, query: str) -> list[tuple[str, str]]:
    """``(matched identifier, profile id)`` for ``type:value``, a bare value or a profile id."""
    query = query.strip()
    if not query:
        return []
    types = [i.type for i in runtime.config.all_identifiers()]
    candidates: list[str] = []
    if query.startswith("prf_"):
        candidates.append(query)
    type_, sep, value = query.partition(":")
    if sep and type_ in types and value:
        candidates.append(f"{type_}:{_normalize(runtime, type_, value) or value}")
    else:
        for t in types:
            normalized = _normalize(runtime, t, query)
            if normalized is not None:
                candidates.append(f"{t}:{normalized}")
    found: dict[str, str] = {}
    for candidate in candidates:
        pid = runtime.store.resolve(candidate)
        if pid is not None and pid not in found:
            found[pid] = candidate
    return [(matched, pid) for pid, matched in found.items()]


def _normalize(runtime: Runtime, type_: str, value: str) -> str | None:
    try:
        return runtime.extractor.normalize(type_, value)
    except Exception:
        return None


def _name(profile: Profile) -> str:
    parts = [profile.traits[t].value for t in NAME_TRAITS if t in profile.traits]
    return " ".join(str(p) for p in parts if p)


@router.get("/profiles")
async def search(request: Request, q: str = "") -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    matches = await asyncio.to_thread(find_profiles, runtime, q)
    if len(matches) == 1:
        return RedirectResponse(f"/console/profiles/{quote(matches[0][1], safe='')}",
                                status_code=303)
    results = []
    for matched, pid in matches:
        profile = await asyncio.to_thread(runtime.store.get_profile, pid)
        if profile is not None:
            results.append({"matched": matched, "profile": profile, "name": _name(profile)})
    types = [i.type for i in runtime.config.all_identifiers()]
    return _page(request, "search.html", session, "profiles", title="Customers", q=q,
                 results=results, types=types)


def _scan_timeline(runtime: Runtime, pid: str, wanted: set[str]) -> dict[str, TimelineEntry]:
    """Find events by uid in a profile's timeline, newest first, up to EVENT_SCAN_LIMIT."""
    found: dict[str, TimelineEntry] = {}
    before: tuple[float, str] | None = None
    seen = 0
    while wanted - found.keys() and seen < EVENT_SCAN_LIMIT:
        page = runtime.store.timeline(pid, 500, before)
        if not page:
            break
        for entry in page:
            if entry.event_uid in wanted:
                found[entry.event_uid] = entry
        seen += len(page)
        before = (page[-1].time, page[-1].event_uid)
        if len(page) < 500:
            break
    return found


def _identifiers_of(runtime: Runtime, entry: TimelineEntry) -> list[str]:
    try:
        return [f"{t}:{v}" for t, v in runtime.extractor.extract(entry.event)]
    except Exception:
        return []


def _merge_views(runtime: Runtime, profile: Profile) -> list[MergeView]:
    merges = sorted(profile.merged_from, key=lambda m: m.at)
    events = _scan_timeline(runtime, profile.id, {m.event_uid for m in merges})
    views = []
    for m in merges:
        view = MergeView(merged=m.merged, event_uid=m.event_uid, at=m.at, reason=m.reason)
        entry = events.get(m.event_uid)
        if entry is not None:
            view.event_type = entry.type
            view.event_source = entry.source
            view.event_time = entry.time
            view.identifiers = _identifiers_of(runtime, entry)
        views.append(view)
    return views


def _load_profile(runtime: Runtime, pid: str) -> Profile | None:
    resolved = runtime.store.resolve(pid)
    return runtime.store.get_profile(resolved) if resolved else None


def _timeline_page(runtime: Runtime, pid: str, cursor: str | None
                   ) -> tuple[list[TimelineEntry], str | None]:
    before = None
    if cursor:
        stamp, _, uid = cursor.partition("_")
        try:
            before = (float(stamp), uid)
        except ValueError:
            before = None
    entries = runtime.store.timeline(pid, TIMELINE_PAGE + 1, before)
    page = entries[:TIMELINE_PAGE]
    next_cursor = (
        f"{page[-1].time!r}_{page[-1].event_uid}" if len(entries) > TIMELINE_PAGE and page
        else None
    )
    return page, next_cursor


@router.get("/profiles/{pid}")
async def customer_360(request: Request, pid: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    profile = await asyncio.to_thread(_load_profile, runtime, pid)
    if profile is None:
        return _page(request, "search.html", session, "profiles", status_code=404,
                     title="Customers", q=pid, results=[],
                     types=[i.type for i in runtime.config.all_identifiers()])
    if profile.id != pid:  # a merged-away id: show the survivor
        return RedirectResponse(f"/console/profiles/{quote(profile.id, safe='')}",
                                status_code=303)
    merges = await asyncio.to_thread(_merge_views, runtime, profile)
    entries, next_cursor = await asyncio.to_thread(_timeline_page, runtime, profile.id, None)
    journeys = await asyncio.to_thread(
        instances_of, runtime.config.journeys, runtime.data_dir,
        [profile.id, *(m.merged for m in profile.merged_from)], runtime.store_url)
    personal = await asyncio.to_thread(personalized, runtime, profile.id)
    traits = [{"name": n, "trait": t} for n, t in sorted(profile.traits.items())]
    identities = sorted(profile.identities, key=lambda i: (i.type, i.value))
    return _page(
        request, "profile.html", session, "profiles", title=_name(profile) or profile.id,
        profile=profile, name=_name(profile), traits=traits, identities=identities,
        merges=merges, graph=identity_svg(profile, merges), entries=entries,
        next_cursor=next_cursor, profile_id=profile.id, unavailable=PROFILE_SECTIONS_NOT_YET,
        journeys=journeys, journeys_configured=bool(runtime.config.journeys),
        personal=personal, consent=consent(profile),
    )


@router.get("/profiles/{pid}/timeline")
async def timeline_fragment(request: Request, pid: str, cursor: str | None = None) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    entries, next_cursor = await asyncio.to_thread(_timeline_page, runtime, pid, cursor)
    return _page(request, "_timeline.html", session, entries=entries, next_cursor=next_cursor,
                 profile_id=pid)


@router.get("/profiles/{pid}/events/{uid}")
async def event_detail(request: Request, pid: str, uid: str) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    profile = await asyncio.to_thread(_load_profile, runtime, pid)
    found = (await asyncio.to_thread(_scan_timeline, runtime, profile.id, {uid})
             if profile else {})
    entry = found.get(uid)
    if profile is None or entry is None:
        return _page(request, "unavailable.html", session, "profiles", status_code=404,
                     title="Event not found",
                     why=f"no event {uid} in the latest {EVENT_SCAN_LIMIT} events of {pid}.")
    return _page(
        request, "event.html", session, "profiles", title=entry.type, entry=entry,
        profile_id=profile.id, identifiers=_identifiers_of(runtime, entry),
        linked=[f"{i.type}:{i.value}" for i in profile.identities if i.event_uid == uid],
        caused=[m for m in profile.merged_from if m.event_uid == uid],
        traits=sorted(n for n, t in profile.traits.items() if t.event_uid == uid),
    )


# -- dead letters -----------------------------------------------------------------


@router.get("/dead-letters")
async def dead_letters(request: Request) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    runtime = _state(request).runtime
    include_replayed = request.query_params.get("all") in ("1", "true", "yes")
    group = request.query_params.get("group") or None
    error = ""
    try:
        letters = await runtime.bus.dead_letters(group, include_replayed=include_replayed)
    except Exception as exc:
        letters, error = [], f"the bus is unavailable: {exc}"
    return _page(request, "dead_letters.html", session, "dead-letters", title="Dead letters",
                 letters=list(reversed(letters)), include_replayed=include_replayed, error=error,
                 message="", queued=False, group=group)


@router.post("/dead-letters/{letter_id}/replay")
async def replay_dead_letter(request: Request, letter_id: int) -> Response:
    session = _session(request)
    if session is None:
        return _login_redirect(request)
    if not await _require_csrf(request, session):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    runtime = _state(request).runtime
    replayed = await runtime.bus.replay_dead_letter(letter_id)
    letters = await runtime.bus.dead_letters(None, include_replayed=True)
    letter = next((d for d in letters if d.id == letter_id), None)
    if letter is None:
        return Response(f"no dead letter {letter_id}", status_code=404, media_type="text/plain")
    message = "" if replayed else "not replayed (already replayed?)"
    return _page(request, "_dead_letter_row.html", session, d=letter, message=message,
                 queued=replayed)


# -- sections that do not exist yet ------------------------------------------------


def _unavailable_page(section: Section) -> Any:
    async def page(request: Request) -> Response:
        session = _session(request)
        if session is None:
            return _login_redirect(request)
        return _page(request, "unavailable.html", session, section.key, title=section.title,
                     why=section.why)

    page.__name__ = "section_" + section.key.replace("-", "_")
    return page


for _section in SECTIONS:
    if not _section.available:
        router.add_api_route(_section.path.removeprefix("/console"), _unavailable_page(_section),
                             methods=["GET"])
