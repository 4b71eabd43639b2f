"""A simulated member-services company: roadside assistance, membership, travel, insurance.

:func:`build_scenario` turns a seed into people and the stream of events their
lives leave in eight source systems, in the order the systems would send them:

* ``web`` and ``app`` speak the Segment spec: anonymous visitors (an
  ``anonymousId`` per browser or phone) who later log in (``identify`` with
  ``userId`` and e-mail), pages, screens and ``track`` calls such as
  ``cart_updated`` and ``checkout_completed``;
* ``membership``, ``roadservice``, ``travel``, ``crm``, ``contact_center`` and
  ``store`` send CloudEvents (``com.example.<system>.<entity>.<what>``) whose
  data carries member numbers, e-mails, phones, names, addresses and so on.

The data is as messy as real data: one person's e-mail in several spellings,
phones in national and international formats, typos in names typed by staff,
placeholder identifiers (``null``, ``anonymous``, ``0000000``), family members
who share one e-mail but have their own member numbers, events that arrive
after newer ones, and events sent twice.

The simulator knows who is who, so the :class:`Scenario` also carries the
ground truth the demo checks the unified profiles against: which identifier
belongs to which person, which are shared, and how many profiles each
person's records can at best form (a browser on which someone never logged in
has nothing that ties it to them).

Everything is derived from the seed; the same seed gives the same stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Ident = tuple[str, str]
"""(identifier type, value): canonical for a person's identifier, raw for a placeholder."""

START = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
"""The simulated half year starts here (members who joined earlier are replayed too)."""
END = datetime(2025, 7, 1, tzinfo=UTC).timestamp()
DAY = 86_400.0
HOUR = 3_600.0
MINUTE = 60.0

SEGMENT_SOURCES = ("web", "app")
CLOUDEVENT_SOURCES = {
    "membership": "https://membership.example.com/members",
    "roadservice": "https://roadservice.example.com/tickets",
    "travel": "https://travel.example.com/bookings",
    "crm": "https://crm.example.com/contacts",
    "contact_center": "https://contact-center.example.com/calls",
    "store": "https://stores.example.com/visits",
}
SOURCES = (*SEGMENT_SOURCES, *CLOUDEVENT_SOURCES)

DUPLICATE_RATE = 0.015
"""Share of messages a sender sends a second time (a retry after a timeout)."""

# Synthetic names: common first and last names, combined at random.
FIRST_NAMES = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
    "Sarah", "Charles", "Karen", "Christopher", "Lisa", "Daniel", "Nancy", "Matthew", "Betty",
    "Anthony", "Margaret", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul",
    "Emily", "Andrew", "Donna", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda",
    "Brian", "Melissa", "George", "Deborah", "Timothy", "Stephanie", "Ronald", "Rebecca",
    "Jason", "Laura", "Edward", "Sharon", "Jeffrey", "Cynthia", "Ryan", "Kathleen", "Jacob",
    "Amy", "Gary", "Angela", "Nicholas", "Shirley", "Eric", "Anna", "Jonathan", "Brenda",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gomez", "Phillips", "Evans",
    "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris",
)  # fmt: skip
STREETS = (
    "Oak", "Maple", "Cedar", "Pine", "Elm", "Washington", "Lake", "Hill", "Park", "Main",
    "Church", "Highland", "Sunset", "Ridge", "River", "Spring", "Meadow", "Forest", "Willow",
)  # fmt: skip
STREET_KINDS = ("St", "Ave", "Rd", "Dr", "Ln", "Blvd", "Ct", "Way")
CITIES = (
    ("Springfield", "IL", "627"), ("Columbus", "OH", "432"), ("Madison", "WI", "537"),
    ("Albany", "NY", "122"), ("Austin", "TX", "787"), ("Denver", "CO", "802"),
    ("Portland", "OR", "972"), ("Raleigh", "NC", "276"), ("Tampa", "FL", "336"),
    ("Phoenix", "AZ", "850"), ("Richmond", "VA", "232"), ("Boise", "ID", "837"),
    ("Omaha", "NE", "681"), ("Sacramento", "CA", "958"), ("Hartford", "CT", "061"),
)  # fmt: skip
AREA_CODES = (
    "212", "213", "303", "312", "404", "415", "503", "512", "602", "608", "614", "617",
    "702", "704", "713", "804", "813", "860", "916", "919", "208", "402", "518", "720",
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.net", "example.org", "mail.example.com")
VEHICLES = (
    "Toyota Camry", "Honda Civic", "Ford F-150", "Chevrolet Equinox", "Subaru Outback",
    "Tesla Model 3", "Hyundai Elantra", "Jeep Wrangler", "Nissan Rogue", "Kia Sorento",
)  # fmt: skip
DESTINATIONS = (
    "Orlando, FL", "Las Vegas, NV", "Honolulu, HI", "Cancun, Mexico", "Rome, Italy",
    "Paris, France", "Yellowstone National Park", "Alaska cruise", "San Juan, Puerto Rico",
    "London, United Kingdom", "Banff, Canada", "Grand Canyon, AZ", "Lisbon, Portugal",
)  # fmt: skip
TIERS = ("classic", "plus", "premier")
CHANNELS = ("email", "sms", "phone", "app")
PLACEHOLDER_PHONES = ("anonymous", "0000000", "null", "000-000-0000")
PLACEHOLDER_EMAILS = ("null", "noemail@example.com", "n/a")
PAGES = (
    ("/", "Home"), ("/roadside", "Roadside Assistance"), ("/membership", "Membership"),
    ("/membership/renew", "Renew Membership"), ("/travel", "Travel"),
    ("/travel/deals", "Travel Deals"), ("/insurance/auto", "Auto Insurance"),
    ("/insurance/home", "Home Insurance"), ("/account", "My Account"), ("/discounts", "Discounts"),
)  # fmt: skip
SCREENS = ("Home", "Membership Card", "Roadside Help", "Trips", "Discounts", "Account")
PRODUCTS = (
    ("Membership upgrade to Plus", 49.0), ("Membership upgrade to Premier", 89.0),
    ("Travel insurance", 79.0), ("Auto insurance quote fee", 0.0),
    ("Gift membership", 64.0), ("Road atlas", 14.95), ("Car seat inspection", 25.0),
)  # fmt: skip
CALL_REASONS = (
    "roadside_followup", "billing", "renewal", "travel_change", "insurance_question",
    "address_update", "complaint", "card_replacement",
)  # fmt: skip
STORE_SERVICES = (
    "dmv_renewal", "travel_planning", "insurance_quote", "maps_and_guides", "passport_photos",
    "membership_signup",
)  # fmt: skip
PROBLEMS = ("flat_tire", "battery", "tow", "lockout", "fuel_delivery", "winch")


@dataclass(slots=True)
class Device:
    """A browser or a phone: Segment's ``anonymousId``, and whether it was tied to its owner."""

    anonymous_id: str
    linked: bool = False
    """An event on it carried something that identifies its owner (a login, a form)."""
    logged_in: bool = False
    """Its owner logged in on it, so its events carry the ``userId`` from then on."""


@dataclass(slots=True)
class Person:
    index: int
    first_name: str
    last_name: str
    email: str
    """Canonical (trimmed, lower-case)."""
    phone: str
    """E.164."""
    work_phone: str
    address: dict[str, str]
    joined: float
    member_number: str | None = None
    tier: str | None = None
    user_id: str | None = None
    """A login on the web site and the app."""
    has_app: bool = False
    preferred_channel: str = "email"
    vehicle: str | None = None
    weight: float = 1.0
    """How active the person is."""
    family: int | None = None
    """Another member who shares this person's e-mail address (and has their own number)."""
    web_devices: list[Device] = field(default_factory=list)
    app_device: Device | None = None

    @property
    def key(self) -> str:
        return f"person-{self.index:05d}"

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"

    @property
    def is_member(self) -> bool:
        return self.member_number is not None


@dataclass(slots=True)
class Message:
    """One event as a source sends it, with the simulator's knowledge about it."""

    seq: int
    source: str
    """The Tessera source (whose write key sends it)."""
    protocol: str
    """``segment`` (sent to ``/v1/batch``) or ``cloudevents`` (sent to ``/v1/events``)."""
    body: dict[str, Any]
    time: float
    """Event time."""
    send_at: float
    """When the source sends it (later than ``time`` for a late event)."""
    person: int
    idents: tuple[Ident, ...] = ()
    """The person's identifiers the event carries, canonical."""
    placeholders: tuple[Ident, ...] = ()
    """Placeholder values the event carries in identifier fields, raw."""
    late: bool = False
    duplicate: bool = False

    @property
    def event_id(self) -> str:
        return str(self.body.get("messageId") or self.body.get("id"))

    @property
    def type(self) -> str:
        if self.protocol == "cloudevents":
            return str(self.body["type"])
        return str(self.body.get("event") or self.body["type"])


@dataclass(slots=True)
class Scenario:
    seed: int
    people: list[Person]
    messages: list[Message]
    """Every message in the order it is sent, duplicates included."""
    owner: dict[Ident, int]
    """Identifier -> the one person it belongs to."""
    shared: dict[Ident, tuple[int, ...]]
    """Identifiers more than one person used (family e-mails)."""
    components: list[int]
    """Per person: how many profiles their records can at best form (records that
    share no identifier with the person's other records cannot be tied to them)."""
    stray: dict[str, int]
    """Why people's records stay apart: for each group of records besides a person's
    main one, what it is tied together by (``browser``, ``phone``, ...)."""
    spellings: dict[Ident, set[str]]
    """The raw spellings sent for each identifier."""
    placeholders: set[Ident]
    """Placeholder values sent in identifier fields; none may become an identity."""
    families: list[tuple[int, int]]
    """Pairs of members who share an e-mail address."""
    expected_address: dict[int, Any]
    """Member -> the address of their latest membership record by event time."""
    late_address: set[int]
    """Members whose older address change arrived after a newer one."""
    unattributable: int
    """Events whose only identifiers are placeholders: they belong to no profile."""
    ambiguous: int
    """Events whose only identifiers are shared by several people (the simulator avoids them)."""

    @property
    def expected_profiles(self) -> int:
        return sum(self.components)

    @property
    def duplicates(self) -> int:
        return sum(m.duplicate for m in self.messages)

    @property
    def late(self) -> int:
        return sum(m.late for m in self.messages if not m.duplicate)

    @property
    def unique_messages(self) -> int:
        return len(self.messages) - self.duplicates

    def sources_of(self, person: int) -> set[str]:
        return {m.source for m in self.messages if m.person == person}

    def identifiers_of(self, person: int) -> list[Ident]:
        """The person's identifiers that any event carried, shared ones included."""
        found = [i for i, p in self.owner.items() if p == person]
        found += [i for i, ps in self.shared.items() if person in ps]
        return found

    def showcase(self) -> int:
        """A person seen by many systems with messy data, whose records all link up."""
        sources: dict[int, set[str]] = {}
        counts: dict[int, int] = {}
        for m in self.messages:
            sources.setdefault(m.person, set()).add(m.source)
            counts[m.person] = counts.get(m.person, 0) + 1
        spellings: dict[int, int] = {}
        for ident, raws in self.spellings.items():
            who = self.owner.get(ident)
            if who is not None:
                spellings[who] = spellings.get(who, 0) + len(raws)

        def score(p: Person) -> tuple[int, int, int, int, int]:
            late = p.index in self.late_address
            return (
                len(sources.get(p.index, ())),
                int(late),
                min(spellings.get(p.index, 0), 9),
                -abs(counts.get(p.index, 0) - 30),
                -p.index,
            )

        candidates = [
            p
            for p in self.people
            if p.family is None
            and p.is_member
            and p.user_id is not None
            and self.components[p.index] == 1
        ] or self.people
        return max(candidates, key=score).index


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


class _Ids:
    """Collects the identifiers (and placeholders) one event carries while it is built."""

    def __init__(self, builder: _Builder) -> None:
        self.b = builder
        self.idents: list[Ident] = []
        self.placeholders: list[Ident] = []

    def add(self, type_: str, canonical: str, raw: Any) -> Any:
        self.idents.append((type_, canonical))
        self.b.spellings.setdefault((type_, canonical), set()).add(str(raw))
        return raw

    def placeholder(self, type_: str, raw: str) -> str:
        self.placeholders.append((type_, raw))
        return raw

    def email(self, p: Person, messy: bool = True) -> str:
        return str(self.add("email", p.email, self.b.email_spelling(p.email, messy)))

    def phone(self, p: Person, work: bool = False) -> str:
        number = p.work_phone if work else p.phone
        return str(self.add("phone", number, self.b.phone_spelling(number)))

    def member(self, p: Person, as_number: float = 0.0) -> Any:
        assert p.member_number is not None
        raw: Any = p.member_number
        if self.b.rng.random() < as_number:
            raw = int(raw)  # one system keeps it as a JSON number
        return self.add("member_number", p.member_number, raw)

    def user(self, p: Person) -> str:
        assert p.user_id is not None
        return str(self.add("user_id", p.user_id, p.user_id))

    def anon(self, device: Device) -> str:
        return str(self.add("anonymous_id", device.anonymous_id, device.anonymous_id))


class _Builder:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.messages: list[Message] = []
        self.spellings: dict[Ident, set[str]] = {}
        self.late_address: set[int] = set()
        self._serial = 0

    # -- ids and spellings --------------------------------------------------

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"

    def serial(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial:07d}"

    def email_spelling(self, email: str, messy: bool) -> str:
        r = self.rng.random()
        if not messy:  # a web form: as the person typed it, at most capitalized
            if r < 0.75:
                return email
            local, _, domain = email.partition("@")
            return ".".join(w.capitalize() for w in local.split(".")) + "@" + domain
        if r < 0.45:
            return email
        local, _, domain = email.partition("@")
        if r < 0.65:
            return ".".join(w.capitalize() for w in local.split(".")) + "@" + domain.capitalize()
        if r < 0.77:
            return email.upper()
        if r < 0.92:
            return self.rng.choice((" ", "  ", "\t")) + email + self.rng.choice((" ", "", "\n"))
        if r < 0.97:
            return email.upper().strip() + " "
        return "mailto:" + email

    def phone_spelling(self, e164: str) -> str:
        digits = e164[2:]
        a, b, c = digits[:3], digits[3:6], digits[6:]
        return self.rng.choice(
            (
                e164,
                e164,
                f"({a}) {b}-{c}",
                f"({a}) {b}-{c}",
                f"{a}-{b}-{c}",
                f"{a}.{b}.{c}",
                f"+1 {a} {b} {c}",
                f"1-{a}-{b}-{c}",
                f"+1 ({a}) {b}-{c}",
                digits,
            )
        )

    def typo(self, name: str) -> str:
        """A name as staff sometimes type it."""
        if len(name) < 4:
            return name + name[-1]
        i = self.rng.randrange(1, len(name) - 1)
        kind = self.rng.random()
        if kind < 0.4:  # two letters swapped
            return name[:i] + name[i + 1] + name[i] + name[i + 2 :]
        if kind < 0.7:  # a letter left out
            return name[:i] + name[i + 1 :]
        if kind < 0.85:  # a letter doubled
            return name[:i] + name[i] + name[i:]
        return name.upper()

    def maybe_typo(self, name: str, chance: float) -> str:
        return self.typo(name) if self.rng.random() < chance else name

    # -- messages -----------------------------------------------------------

    def _add(
        self,
        source: str,
        protocol: str,
        body: dict[str, Any],
        p: Person,
        t: float,
        ids: _Ids,
        late_by: float,
    ) -> Message:
        msg = Message(
            seq=len(self.messages),
            source=source,
            protocol=protocol,
            body=body,
            time=t,
            send_at=t + late_by + self.rng.uniform(0.5, 30.0),
            person=p.index,
            idents=tuple(dict.fromkeys(ids.idents)),
            placeholders=tuple(dict.fromkeys(ids.placeholders)),
            late=late_by > 0,
        )
        self.messages.append(msg)
        return msg

    def segment(
        self, source: str, p: Person, t: float, body: dict[str, Any], ids: _Ids, late_by: float
    ) -> None:
        body = {
            **body,
            "messageId": f"{source}-{self.uuid()}",
            "timestamp": iso(t),
            "context": {
                "library": {"name": "analytics.js" if source == "web" else "analytics-swift"},
                "locale": "en-US",
                **body.get("context", {}),
            },
        }
        self._add(source, "segment", body, p, t, ids, late_by)

    def cloudevent(
        self,
        source: str,
        what: str,
        p: Person,
        t: float,
        data: dict[str, Any],
        ids: _Ids,
        subject: str | None = None,
        late_by: float = 0.0,
    ) -> None:
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.uuid(),
            "source": CLOUDEVENT_SOURCES[source],
            "type": f"com.example.{source}.{what}",
            "time": iso(t),
            "datacontenttype": "application/json",
            "data": data,
        }
        if subject is not None:
            body["subject"] = subject
        self._add(source, "cloudevents", body, p, t, ids, late_by)


# -- the people ------------------------------------------------------------


def _make_people(rng: random.Random, n: int) -> list[Person]:
    emails: set[str] = set()
    phones: set[str] = set()
    numbers: set[str] = set()
    users: set[str] = set()

    def unique(made: set[str], make: Callable[[], str]) -> str:
        while True:
            value = make()
            if value not in made:
                made.add(value)
                return value

    def phone() -> str:
        return f"+1{rng.choice(AREA_CODES)}{rng.randint(200, 999)}{rng.randrange(10_000):04d}"

    people: list[Person] = []
    for index in range(n):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        domain = rng.choice(EMAIL_DOMAINS)
        style = rng.random()

        def email(
            first: str = first, last: str = last, domain: str = domain, style: float = style
        ) -> str:
            f, l_ = first.lower(), last.lower()
            if style < 0.5:
                local = f"{f}.{l_}"
            elif style < 0.8:
                local = f"{f[0]}{l_}"
            else:
                local = f"{f}_{l_[0]}"
            if rng.random() < 0.6 or local in emails:
                local += str(rng.randint(1, 999))
            return f"{local}@{domain}"

        person = Person(
            index=index,
            first_name=first,
            last_name=last,
            email=unique(emails, email),
            phone=unique(phones, phone),
            work_phone=unique(phones, phone),
            address=_address(rng),
            joined=START,
            weight=rng.lognormvariate(0.0, 0.7),
            preferred_channel=rng.choices(CHANNELS, (5, 3, 2, 2))[0],
        )
        if rng.random() < 0.8:
            person.member_number = unique(
                numbers, lambda: f"{rng.randint(1, 9)}{rng.randrange(10**9):09d}"
            )
            person.tier = rng.choices(TIERS, (6, 3, 1))[0]
            person.vehicle = f"{rng.randint(2008, 2025)} {rng.choice(VEHICLES)}"
            # most members joined before the half year and are replayed from the
            # membership system's history; the others join during it
            if rng.random() < 0.75:
                person.joined = START - rng.uniform(30, 5 * 365) * DAY
            else:
                person.joined = START + rng.uniform(0, 150) * DAY
        else:
            person.joined = START + rng.uniform(0, 150) * DAY
        if rng.random() < 0.7:
            person.user_id = unique(users, lambda: f"u_{rng.getrandbits(40):010x}")
            person.has_app = rng.random() < 0.55
        people.append(person)

    # families: a member whose household shares the e-mail of another member
    # (a spouse, a teenage driver) but has their own member number and phone
    members = [p for p in people if p.is_member]
    rng.shuffle(members)
    pairs = int(len(members) * 0.04)
    for i in range(pairs):
        primary, second = members[2 * i], members[2 * i + 1]
        second.family, primary.family = primary.index, second.index
        second.last_name = primary.last_name
        second.email = primary.email
        second.address = dict(primary.address)
        second.user_id = None  # they use the member-services line and the stores
        second.has_app = False
    return people


def _address(rng: random.Random) -> dict[str, str]:
    city, state, zip3 = rng.choice(CITIES)
    return {
        "line1": f"{rng.randint(1, 9899)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}",
        "city": city,
        "state": state,
        "postal_code": f"{zip3}{rng.randrange(100):02d}",
    }


# -- what people do ----------------------------------------------------------


def _member_created(b: _Builder, p: Person) -> None:
    ids = _Ids(b)
    data = {
        "member_number": ids.member(p),
        "first_name": p.first_name,
        "last_name": p.last_name,
        "email": ids.email(p),
        "phone": ids.phone(p),
        "address": dict(p.address),
        "tier": p.tier,
        "preferred_channel": p.preferred_channel,
        "joined_on": day(p.joined),
    }
    b.cloudevent("membership", "member.created", p, p.joined, data, ids, p.member_number)


def _membership_change(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    r = rng.random()
    if r < 0.45:
        if rng.random() < 0.3 and t + 2 * DAY < END:
            # two moves close together; the older record reaches the CDP only
            # after the newer one (a re-sent export), and must not win
            first, second = _address(rng), _address(rng)
            t2 = min(END - HOUR, t + rng.uniform(1, 12) * DAY)
            _address_changed(b, p, t, first, late_by=(t2 - t) + rng.uniform(1, 48) * HOUR)
            _address_changed(b, p, t2, second)
            b.late_address.add(p.index)
        else:
            _address_changed(b, p, t, _address(rng))
        return
    ids = _Ids(b)
    if r < 0.7:
        old = p.tier
        p.tier = rng.choice([x for x in TIERS if x != old])
        data = {"member_number": ids.member(p), "tier": p.tier, "previous_tier": old}
        b.cloudevent("membership", "member.tier_changed", p, t, data, ids, p.member_number)
    else:
        data = {
            "member_number": ids.member(p),
            "tier": p.tier,
            "valid_until": day(t + 365 * DAY),
            "auto_renew": rng.random() < 0.6,
        }
        b.cloudevent("membership", "member.renewed", p, t, data, ids, p.member_number)


def _address_changed(
    b: _Builder, p: Person, t: float, address: dict[str, str], late_by: float = 0.0
) -> None:
    ids = _Ids(b)
    data = {"member_number": ids.member(p), "address": address, "previous_address": p.address}
    p.address = address
    b.cloudevent("membership", "member.address_changed", p, t, data, ids, p.member_number, late_by)


def _roadside(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    ticket = b.serial("RS-")
    ids = _Ids(b)
    member = ids.member(p, as_number=0.35)
    data: dict[str, Any] = {
        "ticket_id": ticket,
        "member_number": member,
        "phone": (
            ids.placeholder("phone", rng.choice(PLACEHOLDER_PHONES))
            if rng.random() < 0.04
            else ids.phone(p)
        ),
        "vehicle": p.vehicle,
        "problem": rng.choice(PROBLEMS),
        "location": {
            "lat": round(rng.uniform(25.0, 48.0), 5),
            "lon": round(rng.uniform(-122.0, -71.0), 5),
        },
    }
    b.cloudevent("roadservice", "ticket.created", p, t, data, ids, ticket)
    t += rng.uniform(2, 12) * MINUTE
    eta = rng.choice((15, 20, 25, 30, 35, 40, 45, 60, 75, 90))
    ids = _Ids(b)
    data = {
        "ticket_id": ticket,
        "member_number": ids.member(p, as_number=0.35),
        "status": "driver_assigned",
        "driver_assigned": f"Truck {rng.randint(100, 999)}",
        "eta_minutes": eta,
    }
    b.cloudevent("roadservice", "ticket.status_changed", p, t, data, ids, ticket)
    t += (eta + rng.uniform(10, 50)) * MINUTE
    ids = _Ids(b)
    data = {
        "ticket_id": ticket,
        "member_number": ids.member(p, as_number=0.35),
        "status": "completed",
        "resolution": rng.choice(("fixed_on_site", "towed", "fixed_on_site", "jump_started")),
    }
    b.cloudevent("roadservice", "ticket.status_changed", p, t, data, ids, ticket)


def _travel(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    booking = b.serial("TB-")
    ids = _Ids(b)
    data: dict[str, Any] = {"booking_id": booking}
    if p.is_member and (p.family is not None or rng.random() < 0.8):
        data["member_number"] = ids.member(p)
    data["email"] = ids.email(p)
    if not p.is_member:
        data["phone"] = ids.phone(p)
    depart = t + rng.uniform(14, 120) * DAY
    data.update(
        {
            "first_name": b.maybe_typo(p.first_name, 0.05),
            "last_name": b.maybe_typo(p.last_name, 0.05),
            "destination": rng.choice(DESTINATIONS),
            "product": rng.choice(("hotel", "cruise", "flight_and_hotel", "car_rental", "tour")),
            "depart_on": day(depart),
            "return_on": day(depart + rng.randint(3, 14) * DAY),
            "travelers": rng.randint(1, 4),
            "total": round(rng.uniform(300, 6000), 2),
            "currency": "USD",
        }
    )
    b.cloudevent("travel", "booking.created", p, t, data, ids, booking)
    if rng.random() < 0.12:
        ids2 = _Ids(b)
        cancel: dict[str, Any] = {"booking_id": booking}
        if "member_number" in data:
            cancel["member_number"] = ids2.member(p)
        else:
            cancel["email"] = ids2.email(p)
        cancel["reason"] = rng.choice(("customer_request", "illness", "schedule_change"))
        when = min(END - MINUTE, t + rng.uniform(1, 10) * DAY)
        b.cloudevent("travel", "booking.cancelled", p, when, cancel, ids2, booking)


def _call(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    ids = _Ids(b)
    call = b.serial("CALL-")
    data: dict[str, Any] = {"call_id": call}
    r = rng.random()
    if r < 0.05:  # caller id withheld
        data["phone"] = ids.placeholder("phone", rng.choice(PLACEHOLDER_PHONES))
    elif r < 0.08:  # from the office
        data["phone"] = ids.phone(p, work=True)
    else:
        data["phone"] = ids.phone(p)
    if p.is_member and rng.random() < 0.5:  # the agent looked the member up
        data["member_number"] = ids.member(p)
    if rng.random() < 0.6:
        data["first_name"] = b.maybe_typo(p.first_name, 0.1)
        data["last_name"] = b.maybe_typo(p.last_name, 0.06)
    if rng.random() < 0.1:
        p.preferred_channel = rng.choice(CHANNELS)
        data["preferred_channel"] = p.preferred_channel
    data.update(
        {
            "reason": rng.choice(CALL_REASONS),
            "queue": rng.choice(("member_services", "roadside", "travel", "insurance")),
            "agent_id": f"agent-{rng.randint(1, 120):03d}",
            "duration_seconds": rng.randint(45, 1500),
            "satisfaction": rng.choice((None, 3, 4, 5, 5, 2)),
        }
    )
    # the call records of a night are uploaded in a batch the next day
    late = rng.uniform(8, 30) * HOUR if rng.random() < 0.1 else 0.0
    b.cloudevent("contact_center", "call.completed", p, t, data, ids, call, late)


def _store(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    ids = _Ids(b)
    visit = b.serial("V-")
    data: dict[str, Any] = {"visit_id": visit, "store_id": f"store-{rng.randint(1, 40):03d}"}
    if p.is_member and (p.family is not None or rng.random() < 0.7):
        data["member_number"] = ids.member(p)
    else:
        if p.is_member and rng.random() < 0.15:  # "no card with me"
            data["member_number"] = ids.placeholder("member_number", "0000000")
        data["email"] = ids.email(p)
    data.update(
        {
            "service": rng.choice(STORE_SERVICES),
            "first_name": b.maybe_typo(p.first_name, 0.08),
            "last_name": b.maybe_typo(p.last_name, 0.05),
        }
    )
    b.cloudevent("store", "visit.recorded", p, t, data, ids, visit)


def _crm(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    ids = _Ids(b)
    data: dict[str, Any] = {"contact_id": f"C{p.index + 100_000}"}
    if p.is_member:
        data["member_number"] = ids.member(p)
    if rng.random() < 0.04 and p.family is None:
        data["email"] = ids.placeholder("email", rng.choice(PLACEHOLDER_EMAILS))
    else:
        data["email"] = ids.email(p)
    data["phone"] = ids.phone(p)
    if p.user_id is not None and rng.random() < 0.5:
        data["user_id"] = ids.user(p)
    data.update(
        {
            "first_name": p.first_name,
            "last_name": p.last_name,
            "preferred_channel": p.preferred_channel,
            "lifecycle_stage": "member" if p.is_member else rng.choice(("lead", "prospect")),
            "consent": {"email": rng.random() < 0.8, "sms": rng.random() < 0.4},
        }
    )
    b.cloudevent("crm", "contact.updated", p, t, data, ids, data["contact_id"])


def _page(b: _Builder, p: Person, t: float, device: Device, late_by: float = 0.0) -> None:
    ids = _Ids(b)
    path, title = b.rng.choice(PAGES)
    body: dict[str, Any] = {
        "type": "page",
        "anonymousId": ids.anon(device),
        "name": title,
        "properties": {"path": path, "url": f"https://www.example.com{path}", "title": title},
    }
    if device.logged_in:
        body["userId"] = ids.user(p)
    b.segment("web", p, t, body, ids, late_by)


def _web_session(b: _Builder, p: Person, t: float, login: bool = False, buy: bool = False) -> None:
    """A visit: pages, maybe a login (or a quote form), maybe a purchase.

    With ``login`` the visitor identifies for sure: an account holder logs in,
    anyone else fills in the quote form with their e-mail.
    """
    rng = b.rng
    if p.web_devices and rng.random() < 0.96:
        device = rng.choice(p.web_devices)
    else:
        device = Device(b.uuid())
        p.web_devices.append(device)
    for _ in range(rng.randint(1, 3)):
        _page(b, p, t, device)
        t += rng.uniform(5, 180)
    if not device.logged_in and p.user_id is not None and (login or rng.random() < 0.75):
        ids = _Ids(b)
        traits: dict[str, Any] = {
            "email": ids.email(p, messy=False),
            "first_name": p.first_name,
            "last_name": p.last_name,
        }
        if p.is_member and (p.family is not None or rng.random() < 0.6):
            traits["member_number"] = ids.member(p)
        body = {
            "type": "identify",
            "anonymousId": ids.anon(device),
            "userId": ids.user(p),
            "traits": traits,
        }
        b.segment("web", p, t, body, ids, 0.0)
        device.linked = device.logged_in = True
        t += rng.uniform(2, 20)
        _page(b, p, t, device)
        t += rng.uniform(5, 120)
    elif not device.linked and p.user_id is None and (login or rng.random() < 0.6):
        ids = _Ids(b)
        if p.is_member:  # renewing online with the number on the card, without an account
            body = {
                "type": "track",
                "event": "membership_renewal_started",
                "anonymousId": ids.anon(device),
                "properties": {"member_number": ids.member(p), "tier": p.tier},
            }
        else:
            body = {
                "type": "track",
                "event": "insurance_quote_requested",
                "anonymousId": ids.anon(device),
                "properties": {
                    "email": ids.email(p, messy=False),
                    "product": rng.choice(("auto", "home", "renters", "life")),
                    "zip": p.address["postal_code"],
                },
            }
        b.segment("web", p, t, body, ids, 0.0)
        device.linked = True
        t += rng.uniform(5, 60)
    if buy and device.logged_in:
        cart = b.uuid()
        product, price = rng.choice(PRODUCTS)
        for quantity in range(1, rng.randint(1, 2) + 1):
            ids = _Ids(b)
            body = {
                "type": "track",
                "event": "cart_updated",
                "anonymousId": ids.anon(device),
                "userId": ids.user(p),
                "properties": {
                    "cart_id": cart,
                    "product": product,
                    "price": price,
                    "quantity": quantity,
                },
            }
            b.segment("web", p, t, body, ids, 0.0)
            t += rng.uniform(10, 300)
        if rng.random() < 0.7:
            ids = _Ids(b)
            body = {
                "type": "track",
                "event": "checkout_completed",
                "anonymousId": ids.anon(device),
                "userId": ids.user(p),
                "properties": {
                    "order_id": b.serial("ORD-"),
                    "cart_id": cart,
                    "revenue": round(price * quantity, 2),
                    "currency": "USD",
                    "products": [{"name": product, "price": price, "quantity": quantity}],
                },
            }
            b.segment("web", p, t, body, ids, 0.0)
    elif device.linked and rng.random() < 0.04:
        # a tag-manager bug sends the string "null" as the userId
        ids = _Ids(b)
        body = {
            "type": "track",
            "event": "discount_viewed",
            "anonymousId": ids.anon(device),
            "userId": ids.placeholder("user_id", "null"),
            "properties": {"discount": rng.choice(("hotels", "rental_cars", "theme_parks"))},
        }
        b.segment("web", p, t, body, ids, 0.0)


def _app_session(b: _Builder, p: Person, t: float) -> None:
    rng = b.rng
    if p.app_device is None:
        p.app_device = Device(b.uuid())
    device = p.app_device
    # a phone without signal queues events and sends them when it is back online
    late = rng.uniform(1, 96) * HOUR if rng.random() < 0.1 else 0.0
    if not device.logged_in:
        ids = _Ids(b)
        body = {
            "type": "identify",
            "anonymousId": ids.anon(device),
            "userId": ids.user(p),
            "traits": {
                "phone": ids.phone(p),
                "first_name": p.first_name,
                "last_name": p.last_name,
            },
            "context": {"device": {"type": "ios" if rng.random() < 0.55 else "android"}},
        }
        b.segment("app", p, t, body, ids, late)
        device.linked = device.logged_in = True
        t += rng.uniform(2, 20)
    for _ in range(rng.randint(1, 3)):
        ids = _Ids(b)
        body = {
            "type": "screen",
            "anonymousId": ids.anon(device),
            "userId": ids.user(p),
            "name": rng.choice(SCREENS),
        }
        b.segment("app", p, t, body, ids, late)
        t += rng.uniform(5, 120)
    if rng.random() < 0.35:
        ids = _Ids(b)
        event = rng.choice(("roadside_request_started", "digital_card_viewed", "trip_saved"))
        body = {
            "type": "track",
            "event": event,
            "anonymousId": ids.anon(device),
            "userId": ids.user(p),
            "properties": {"screen": rng.choice(SCREENS)},
        }
        b.segment("app", p, t, body, ids, late)


# -- the stream --------------------------------------------------------------

Activity = Callable[[_Builder, Person, float], None]


def _activities() -> list[tuple[Activity, Callable[[Person], float]]]:
    """What people do, and how often a given person does it (relative weights)."""

    def web(p: Person) -> float:
        return 26.0 if p.user_id is not None else 3.0  # fewer visits without an account

    return [
        (_web_session, web),
        (
            lambda b, p, t: _web_session(b, p, t, buy=True),
            lambda p: 7.0 if p.user_id is not None else 0.0,
        ),
        (_app_session, lambda p: 14.0 if p.has_app else 0.0),
        (_roadside, lambda p: 8.0 if p.is_member else 0.0),
        (_call, lambda p: 12.0),
        (_store, lambda p: 8.0),
        (_travel, lambda p: 8.0),
        (_membership_change, lambda p: 7.0 if p.is_member else 0.0),
        (_crm, lambda p: 5.0),
    ]


def build_scenario(people: int = 5_000, events: int = 50_000, seed: int = 7) -> Scenario:
    """The simulated company: ``people`` people and about ``events`` events (at least a few
    per person: everyone's first records are always sent)."""
    if people < 2:
        raise ValueError("the demo needs at least 2 people")
    rng = random.Random(seed)
    folks = _make_people(rng, people)
    b = _Builder(rng)

    # everyone's first records: joining, signing up online, a CRM lead
    for p in folks:
        first_seen = max(p.joined, START)
        if p.is_member:
            _member_created(b, p)
        if p.user_id is not None:
            _web_session(b, p, first_seen + rng.uniform(0, 20) * DAY, login=True)
            if p.has_app:
                _app_session(b, p, first_seen + rng.uniform(0, 40) * DAY)
        elif not p.is_member:  # a lead from the web site's quote form
            _web_session(b, p, first_seen, login=True)
        if not p.is_member:  # prospects are in the CRM as leads
            _crm(b, p, first_seen + rng.uniform(0, 3) * DAY)
        if p.is_member and rng.random() < 0.4:
            _crm(b, p, first_seen + rng.uniform(0, 30) * DAY)

    # then whatever people do, the more active ones more often
    activities = _activities()
    acts = [act for act, _ in activities]
    weights = [weight for _, weight in activities]
    cumulative: list[float] = []
    total = 0.0
    for p in folks:
        total += p.weight
        cumulative.append(total)
    target = round(events / (1 + DUPLICATE_RATE))
    while len(b.messages) < target:
        p = rng.choices(folks, cum_weights=cumulative)[0]
        act = rng.choices(acts, [weight(p) for weight in weights])[0]
        start = max(p.joined, START)
        act(b, p, rng.uniform(start, END - 2 * HOUR))

    # a few messages are sent twice (a sender retried after a timeout)
    originals = list(b.messages)
    for original in rng.sample(originals, round(len(originals) * DUPLICATE_RATE)):
        copy = Message(
            seq=len(b.messages),
            source=original.source,
            protocol=original.protocol,
            body=original.body,
            time=original.time,
            send_at=original.send_at + rng.uniform(30, 2 * DAY),
            person=original.person,
            idents=original.idents,
            placeholders=original.placeholders,
            late=original.late,
            duplicate=True,
        )
        b.messages.append(copy)
    b.messages.sort(key=lambda m: (m.send_at, m.seq))
    return _with_ground_truth(seed, folks, b)


def _with_ground_truth(seed: int, people: list[Person], b: _Builder) -> Scenario:
    holders: dict[Ident, set[int]] = {}
    placeholders: set[Ident] = set()
    originals = [m for m in b.messages if not m.duplicate]
    for m in originals:
        for ident in m.idents:
            holders.setdefault(ident, set()).add(m.person)
        placeholders.update(m.placeholders)
    shared = {i: tuple(sorted(ps)) for i, ps in holders.items() if len(ps) > 1}
    owner = {i: next(iter(ps)) for i, ps in holders.items() if len(ps) == 1}

    # per person, records that share an identifier end up in one profile
    parent: dict[Ident, Ident] = {}

    def find(x: Ident) -> Ident:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    unattributable = ambiguous = 0
    for m in originals:
        own = [i for i in m.idents if i not in shared]
        if not own:
            if m.idents:
                ambiguous += 1
            else:
                unattributable += 1
            continue
        for ident in own:
            parent.setdefault(ident, ident)
        root = find(own[0])
        for ident in own[1:]:
            parent[find(ident)] = root
    groups: dict[Ident, list[Ident]] = {}
    for ident in parent:
        groups.setdefault(find(ident), []).append(ident)
    by_person: dict[int, list[list[Ident]]] = {}
    for members in groups.values():
        by_person.setdefault(owner[members[0]], []).append(members)
    components = [len(by_person.get(p.index, ())) for p in people]
    stray: dict[str, int] = {}
    for found in by_person.values():
        found.sort(key=lambda g: (-len(g), min(g)))
        for group in found[1:]:
            types = {t for t, _ in group}
            reason = {"anonymous_id": "browser", "phone": "phone"}.get(
                types.pop() if len(types) == 1 else "", "other"
            )
            stray[reason] = stray.get(reason, 0) + 1

    latest: dict[int, tuple[float, Any]] = {}
    for m in originals:
        if m.source == "membership":
            address = m.body["data"].get("address")
            if address is not None and m.time >= latest.get(m.person, (-1.0, None))[0]:
                latest[m.person] = (m.time, address)

    families = sorted(
        {(min(p.index, p.family), max(p.index, p.family)) for p in people if p.family is not None}
    )
    return Scenario(
        seed=seed,
        people=people,
        messages=b.messages,
        owner=owner,
        shared=shared,
        components=components,
        stray=stray,
        spellings=b.spellings,
        placeholders=placeholders,
        families=families,
        expected_address={p: a for p, (_, a) in latest.items()},
        late_address=b.late_address,
        unattributable=unattributable,
        ambiguous=ambiguous,
    )


def batches(
    messages: Iterable[Message], size: int = 100, flush_every: int = 400
) -> list[tuple[str, str, list[Message]]]:
    """Group the stream into per-source batches of at most ``size``, as SDKs do.

    Each source keeps its own buffer; every ``flush_every`` messages of the whole
    stream all buffers are flushed (an SDK's flush interval), so no source's
    events wait for long behind the others'.
    """
    out: list[tuple[str, str, list[Message]]] = []
    pending: dict[str, list[Message]] = {}

    def flush(source: str) -> None:
        buffered = pending.pop(source, [])
        if buffered:
            out.append((source, buffered[0].protocol, buffered))

    for n, m in enumerate(messages, 1):
        buffer = pending.setdefault(m.source, [])
        # a retried message never shares a request with its first attempt
        if m.duplicate and any(x.event_id == m.event_id for x in buffer):
            flush(m.source)
            buffer = pending.setdefault(m.source, [])
        buffer.append(m)
        if len(buffer) >= size:
            flush(m.source)
        if n % flush_every == 0:
            for source in list(pending):
                flush(source)
    for source in list(pending):
        flush(source)
    return out
