"""A workload designed to collide, its exact expected outcome, and the check of it.

Every person has five identifiers: a member number, a user id, two e-mail
addresses and an anonymous id. Each of their events carries only one or two
of them, so the events of one person have up to five different partition keys
(the key is an event's highest-priority identifier), land in different NATS
partitions and so reach different workers, which must merge what they created
separately. Four "chain" events per person (member+user, user+email,
email+email2, email2+anonymous) connect everything, so the outcome is known
whatever the order: one profile per person with exactly their five
identifiers. Each event sets ``first_name`` (and some ``plan``) with a unique
event time, in an order unrelated to the sending order, so the expected trait
values are those of the latest event time. Some events are sent twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
from psycopg import sql

from tessera.bus.nats import partition_of

WRITE = {"Authorization": "Bearer wk_crm_123",
         "Content-Type": "application/cloudevents-batch+json"}
READ = {"Authorization": "Bearer rk_read_123"}
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

Identifier = tuple[str, str]


@dataclass
class Person:
    index: int
    identifiers: list[Identifier]
    events: int = 0
    traits: dict[str, tuple[float, str]] = field(default_factory=dict)
    """name -> (event time, value) of the latest event setting it."""

    def expected_traits(self) -> dict[str, str]:
        return {name: value for name, (_, value) in self.traits.items()}


@dataclass
class Workload:
    people: list[Person]
    events: list[dict[str, Any]]
    """Unique events in sending order."""
    duplicates: list[dict[str, Any]]
    """Events sent a second time (after all of the originals)."""

    @property
    def total(self) -> int:
        return len(self.events)

    def partitions_per_person(self, partitions: int) -> list[int]:
        """How many partitions each person's events are spread over."""
        spread: dict[int, set[int]] = {}
        for e in self.events:
            person = int(e["id"].split("-")[1])
            key = partition_key(e)
            spread.setdefault(person, set()).add(partition_of(key, partitions))
        return [len(spread[p.index]) for p in self.people]


PRIORITY = ["member_number", "user_id", "email", "anonymous_id"]


def partition_key(event: dict[str, Any]) -> str:
    """The event's highest-priority identifier, as the ingest path computes it."""
    ids: list[Identifier] = event["_identifiers"]
    best = min(ids, key=lambda i: PRIORITY.index(i[0]))
    return f"{best[0]}:{best[1]}"


def person_identifiers(i: int) -> list[Identifier]:
    return [("member_number", f"M{i:06d}"), ("user_id", f"u{i}"),
            ("email", f"p{i}@example.com"), ("email", f"p{i}.alt@example.org"),
            ("anonymous_id", f"anon-{i}")]


def build(people: int, per_person: int, duplicates: int = 0, seed: int = 1) -> Workload:
    assert per_person >= 4
    rng = random.Random(seed)
    persons = [Person(i, person_identifiers(i)) for i in range(people)]
    total = people * per_person
    times = list(range(total))
    rng.shuffle(times)  # event time unrelated to sending order
    events: list[dict[str, Any]] = []
    n = 0
    for p in persons:
        m, u, e1, e2, a = p.identifiers
        subsets: list[list[Identifier]] = [[m, u], [u, e1], [e1, e2], [e2, a]]
        while len(subsets) < per_person:
            k = 1 if rng.random() < 0.7 else 2
            subsets.append(rng.sample(p.identifiers, k))
        rng.shuffle(subsets)
        for k, ids in enumerate(subsets):
            t = BASE_TIME + times[n]
            n += 1
            traits = {"first_name": f"name-{p.index}-{k}"}
            if k % 3 == 0:
                traits["plan"] = f"plan-{p.index}-{k}"
            for name, value in traits.items():
                if name not in p.traits or p.traits[name][0] < t:
                    p.traits[name] = (t, value)
            p.events += 1
            events.append(make_event(f"c-{p.index}-{k}", t, ids, traits))
    rng.shuffle(events)  # the people's events interleave
    dups = rng.sample(events, duplicates) if duplicates else []
    return Workload(persons, events, dups)


def make_event(event_id: str, t: float, ids: list[Identifier],
               traits: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {"traits": traits}
    emails = [v for typ, v in ids if typ == "email"]
    for typ, value in ids:
        if typ == "member_number":
            data["member_number"] = value
        elif typ == "user_id":
            data["userId"] = value
        elif typ == "anonymous_id":
            data["anonymousId"] = value
    if emails:
        data["email"] = emails[0]
    if len(emails) > 1:
        data["properties"] = {"email": emails[1]}
    return {"specversion": "1.0", "id": event_id, "source": "crm",
            "type": "com.example.crm.contact.updated",
            "time": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
            "data": data, "_identifiers": ids}


def wire(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if not k.startswith("_")} for e in events]


@dataclass
class SendResult:
    accepted: int = 0
    duplicates: int = 0
    unavailable: int = 0
    """503 answers (each retried after a pause)."""
    retry_after: set[str] = field(default_factory=set)


def post_batch(url: str, batch: list[dict[str, Any]], result: SendResult,
               deadline: float, lock: threading.Lock | None = None) -> None:
    """POST one batch until it is accepted, retrying a 503 or a dropped connection."""
    body = wire(batch)
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the API did not accept a batch in time")
        try:
            r = httpx.post(f"{url}/v1/events", headers=WRITE, json=body, timeout=30)
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if r.status_code == 503:
            with lock or threading.Lock():
                result.unavailable += 1
                result.retry_after.add(r.headers.get("Retry-After", ""))
            time.sleep(0.3)
            continue
        assert r.status_code == 202, r.text
        answer = r.json()
        with lock or threading.Lock():
            result.accepted += answer["accepted"]
            result.duplicates += answer["duplicates"]
        return


def send(url: str, events: list[dict[str, Any]], batch: int = 500, threads: int = 2,
         timeout: float = 120.0, pause: float = 0.0) -> SendResult:
    """Send in batches from a few threads; every batch is retried until accepted."""
    result = SendResult()
    lock = threading.Lock()
    batches = [events[i:i + batch] for i in range(0, len(events), batch)]
    deadline = time.monotonic() + timeout
    errors: list[BaseException] = []

    def run(mine: list[list[dict[str, Any]]]) -> None:
        try:
            for b in mine:
                post_batch(url, b, result, deadline, lock)
                if pause:
                    time.sleep(pause)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(batches[i::threads],), daemon=True)
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout + 5)
    if errors:
        raise errors[0]
    assert not any(w.is_alive() for w in workers), "sender threads did not finish"
    return result


# -- the state of the store -------------------------------------------------------


def applied_count(store_url: str, schema: str) -> int:
    with psycopg.connect(store_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.applied").format(
            sql.Identifier(schema))).fetchone()
    assert row is not None
    return int(row[0])


def wait_applied(store_url: str, schema: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        try:
            last = applied_count(store_url, schema)
        except psycopg.Error:
            last = -1
        if last >= total:
            return
        time.sleep(0.25)
    raise AssertionError(f"only {last} of {total} events applied after {timeout}s")


def check_store(store_url: str, schema: str, workload: Workload) -> None:
    """The exact expected outcome, read straight from the store's tables.

    One live profile per person, holding exactly that person's identifiers;
    event_count, the timeline and the applied records each count every unique
    event exactly once; the traits are those of the latest event time; every
    merged profile points at a live one.
    """
    with psycopg.connect(store_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))

        def rows(query: str) -> list[tuple[Any, ...]]:
            return conn.execute(query.encode()).fetchall()

        live = {pid: count for pid, count in
                rows("SELECT id, event_count FROM profiles WHERE merged_into IS NULL")}
        merged = dict(rows("SELECT id, merged_into FROM profiles WHERE merged_into IS NOT NULL"))
        links: dict[str, set[Identifier]] = {}
        for typ, value, pid in rows("SELECT type, value, profile_id FROM identities"):
            links.setdefault(pid, set()).add((typ, value))
        traits: dict[str, dict[str, str]] = {}
        for pid, name, value in rows("SELECT profile_id, name, value FROM traits"):
            traits.setdefault(pid, {})[name] = value
        timeline = dict(rows("SELECT profile_id, count(*) FROM timeline GROUP BY profile_id"))
        timeline_total = rows("SELECT count(*), count(DISTINCT event_uid) FROM timeline")[0]
        applied = rows("SELECT count(*) FROM applied")[0][0]

    total = workload.total
    assert applied == total, f"{applied} events recorded as applied, expected {total}"
    assert timeline_total == (total, total), f"timeline rows, distinct: {timeline_total}"
    assert sum(live.values()) == total, f"event counts add up to {sum(live.values())}"
    assert len(live) == len(workload.people), (
        f"{len(live)} live profiles for {len(workload.people)} people")
    assert set(links) <= set(live), "identifiers linked to merged-away profiles"
    assert set(traits) <= set(live), "traits left on merged-away profiles"
    assert set(timeline) <= set(live), "timeline entries left on merged-away profiles"
    assert all(target in live for target in merged.values()), "a merge points at a dead profile"

    owner = {ident: p for p in workload.people for ident in p.identifiers}
    seen_people: set[int] = set()
    wrong: list[str] = []
    for pid, count in live.items():
        idents = links.get(pid, set())
        people = {owner[i].index for i in idents}
        if len(people) != 1:
            wrong.append(f"{pid}: identifiers of people {sorted(people)}")
            continue
        person = workload.people[people.pop()]
        seen_people.add(person.index)
        if idents != set(person.identifiers):
            wrong.append(f"{pid}: {sorted(idents)} != {sorted(person.identifiers)}")
        if count != person.events or timeline.get(pid, 0) != person.events:
            wrong.append(f"{pid} (person {person.index}): event_count {count}, timeline "
                         f"{timeline.get(pid, 0)}, expected {person.events}")
        if traits.get(pid, {}) != person.expected_traits():
            wrong.append(f"{pid} (person {person.index}): traits {traits.get(pid)} != "
                         f"{person.expected_traits()}")
    assert not wrong, f"{len(wrong)} wrong profiles, e.g. " + "; ".join(wrong[:5])
    assert seen_people == {p.index for p in workload.people}


def check_api(api_url: str, workload: Workload, sample: int = 20) -> None:
    """The API shows the same: a person's profile by any of their identifiers."""
    rng = random.Random(2)
    for person in rng.sample(workload.people, min(sample, len(workload.people))):
        answers = []
        for typ, value in person.identifiers:
            r = httpx.get(f"{api_url}/v1/profiles/{typ}:{value}", headers=READ, timeout=10)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        assert len({a["id"] for a in answers}) == 1
        body = answers[0]
        assert body["event_count"] == person.events
        assert {(i["type"], i["value"]) for i in body["identities"]} == set(person.identifiers)
        assert {n: t["value"] for n, t in body["traits"].items()} == person.expected_traits()
