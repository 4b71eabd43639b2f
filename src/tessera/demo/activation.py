"""The customer's three activation scenarios, as the demo shows them.

The demo's ``tessera serve`` runs with the demo settings plus the destinations,
subscriptions and journey below (the same as ``examples/activation``, with the
demo's event types). They deliver to :class:`Receiver`, a webhook receiver in
the demo process that stands in for the marketing platform, the notification
service and the membership app, and checks every Standard Webhooks signature.

1. **Abandoned cart**: ``cart_updated`` and no ``checkout_completed`` within
   the wait (30 minutes in production, :data:`CART_WAIT` in the demo) sends the
   next marketing step to the marketing platform; a checkout in time exits.
2. **Roadside assistance**: a ticket's status changes to ``driver_assigned``
   with an ETA; the notification service gets "Your driver arrives in N
   minutes" on the member's preferred channel, at the contact of the unified
   profile.
3. **Membership sync**: a change in the membership system reaches the
   membership app as the fields that changed, and only those.

After the load the demo waits until every subscription has delivered what it
holds and no journey waits, then checks each arrival against the simulation.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from tessera.activation.signing import verify
from tessera.config import DEFAULT_CONFIG_FILE, parse_config
from tessera.demo.scenario import Scenario
from tessera.identity.extract import IdentifierExtractor

CART_WAIT = "5s"
"""How long the demo's abandoned-cart journey waits for a checkout (30m in production)."""

SECRETS = {
    "marketing": "whsec_bWFya2V0aW5nLXNlY3JldC0wMTIzNDU2Nzg5",
    "notifications": "whsec_bm90aWZpY2F0aW9ucy1zZWNyZXQtMDEyMzQ1",
    "membership-app": "whsec_bWVtYmVyc2hpcC1hcHAtc2VjcmV0LTAxMjM0",
}
PATHS = {"marketing": "/marketing", "notifications": "/notifications",
         "membership-app": "/member-sync"}
ETA_MESSAGE = "Your driver arrives in {eta} minutes"


def activation_settings(receiver_url: str, cart_wait: str = CART_WAIT) -> dict[str, Any]:
    """The destinations, subscriptions and journey of the three scenarios."""
    destinations = {
        name: {"type": "webhook", "url": receiver_url + PATHS[name], "secret": SECRETS[name],
               "max_concurrency": 16}
        for name in PATHS
    }
    # ``start: beginning``: the demo's data directory is new, and its systems start sending
    # the moment the API is up, possibly before the activation processor has started
    subscriptions = [
        {
            "name": "roadside-eta",
            "start": "beginning",
            "filter": {
                "types": ["com.example.roadservice.ticket.status_changed"],
                "condition": {"all": [{"path": "data.status", "eq": "driver_assigned"},
                                      {"path": "data.eta_minutes", "exists": True}]},
            },
            "shape": {"template": {
                "channel": "{{ profile.preferred_channel }}",
                "to": "{{ profile.preferred_contact }}",
                "message": ETA_MESSAGE.replace("{eta}", "{{ data.eta_minutes }}"),
                "ticket": "{{ data.ticket_id }}",
                "member_number": "{{ profile.identifiers.member_number.0 }}",
            }},
            "destination": "notifications",
        },
        {
            "name": "member-sync",
            "start": "beginning",
            "filter": {
                "types": ["profile.updated"],
                "condition": {"path": "data.caused_by.type", "like": "com.example.membership.*"},
            },
            "shape": {"fields": {
                "profile_id": "data.profile_id",
                "member_number": "profile.identifiers.member_number.0",
                "cause": "data.caused_by.type",
                "changed": "data.changed",
            }},
            "destination": "membership-app",
        },
    ]
    journeys = [{
        "name": "abandoned-cart",
        "trigger": {"types": ["cart_updated"]},
        "exit_on": [{"types": ["checkout_completed"]}],
        "steps": [
            {"id": "wait-for-checkout", "wait": {"for": cart_wait}},
            {"id": "reachable", "condition": {
                "if": {"path": "profile.identifiers.email", "exists": True}}},
            {"id": "send-reminder", "action": {"call": {
                "destination": "marketing",
                "data": {
                    "campaign": "abandoned-cart",
                    "step": "reminder-1",
                    "email": "{{ profile.identifiers.email.0 }}",
                    "first_name": "{{ profile.traits.first_name }}",
                    "cart_id": "{{ trigger.data.properties.cart_id }}",
                    "product": "{{ trigger.data.properties.product }}",
                },
            }}},
        ],
    }]
    return {"destinations": destinations, "subscriptions": subscriptions, "journeys": journeys}


def write_config(data: Path, receiver_url: str, cart_wait: str = CART_WAIT) -> Path:
    """The demo settings plus the scenarios', as ``<data>/tessera.yaml`` (validated)."""
    raw = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    raw.update(activation_settings(receiver_url, cart_wait))
    parse_config(raw)  # a mistake here is the demo's, and should say so before starting
    path = data / "tessera.yaml"
    path.write_text("# the demo's settings and its activation scenarios (written by the demo)\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


# -- the receiver ---------------------------------------------------------------------


@dataclass(slots=True)
class Arrival:
    path: str
    msg_id: str
    at: float
    body: dict[str, Any]
    signed: bool
    """The Standard Webhooks signature checked out with the destination's secret."""


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) that keeps every webhook it gets."""

    def __init__(self, secrets: Mapping[str, str] | None = None) -> None:
        by_path = {PATHS[name]: secret for name, secret in (secrets or SECRETS).items()}
        self.arrivals: list[Arrival] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: the sender reuses its connections

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                secret = by_path.get(self.path)
                signed = secret is not None and verify(secret, headers, body)
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = {}
                with receiver.lock:
                    receiver.arrivals.append(Arrival(
                        self.path, headers.get("webhook-id", ""), time.time(),
                        parsed if isinstance(parsed, dict) else {}, signed))
                self.send_response(204 if secret is not None else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per webhook would drown the demo's output

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="demo webhook receiver")

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def at(self, path: str) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.path == path]


# -- what should arrive, and what did ---------------------------------------------------


@dataclass(slots=True)
class ActivationReport:
    """What the three scenarios delivered, checked against the simulation."""

    settled: bool = False
    seconds: float = 0.0
    """From the end of processing until everything was delivered."""
    webhooks: int = 0
    redelivered: int = 0
    """Arrivals with a ``webhook-id`` seen before (at-least-once delivery)."""
    unsigned: int = 0
    # roadside
    tickets: int = 0
    notified: int = 0
    eta_wrong: list[str] = field(default_factory=list)
    contact_wrong: list[str] = field(default_factory=list)
    channels: dict[str, int] = field(default_factory=dict)
    roadside_example: dict[str, Any] | None = None
    # membership sync
    sync_messages: int = 0
    sync_by_cause: dict[str, int] = field(default_factory=dict)
    address_changes: int = 0
    address_synced: int = 0
    """Address changes that reached the app as exactly ``{"address": <new address>}``."""
    sync_extra_fields: list[str] = field(default_factory=list)
    sync_example: dict[str, Any] | None = None
    # abandoned cart
    carts: int = 0
    carts_checked_out: int = 0
    journey: dict[str, dict[str, int]] = field(default_factory=dict)
    reminders: int = 0
    wrong_reminders: list[str] = field(default_factory=list)
    """Reminders for a cart that was checked out, or to someone who had no such cart."""
    reminder_example: dict[str, Any] | None = None

    @property
    def problems(self) -> list[str]:
        out = []
        if not self.settled:
            out.append("deliveries did not settle in time")
        if self.unsigned:
            out.append(f"{self.unsigned} webhooks without a valid signature")
        if self.notified != self.tickets:
            out.append(f"{self.notified} of {self.tickets} driver assignments notified")
        if self.eta_wrong:
            out.append(f"wrong ETA in {len(self.eta_wrong)} notifications")
        if self.contact_wrong:
            out.append(f"someone else's contact in {len(self.contact_wrong)} notifications")
        if self.sync_extra_fields:
            out.append(f"{len(self.sync_extra_fields)} address syncs carried other fields")
        if self.address_synced == 0 and self.address_changes:
            out.append("no address change reached the membership app")
        if self.wrong_reminders:
            out.append(f"{len(self.wrong_reminders)} reminders for a cart that was checked out")
        return out


def check(scenario: Scenario, receiver: Receiver, report: ActivationReport,
          extractor: IdentifierExtractor) -> None:
    """Compare what arrived with what the simulation sent."""
    arrivals = receiver.at(PATHS["notifications"]) + receiver.at(PATHS["membership-app"]) \
        + receiver.at(PATHS["marketing"])
    seen: set[str] = set()
    unique: list[Arrival] = []
    for a in arrivals:
        if a.msg_id in seen:
            report.redelivered += 1
            continue
        seen.add(a.msg_id)
        unique.append(a)
    report.webhooks = len(arrivals)
    report.unsigned = sum(not a.signed for a in arrivals)

    def people_of(type_: str, raw: Any) -> set[int]:
        """The simulated people an identifier value belongs to (two for a family e-mail)."""
        if not isinstance(raw, str) or not raw:
            return set()
        value = extractor.normalize(type_, raw)
        if value is None:
            return set()
        ident = (type_, value)
        if ident in scenario.shared:
            return set(scenario.shared[ident])
        return {scenario.owner[ident]} if ident in scenario.owner else set()

    def data_of(a: Arrival) -> dict[str, Any]:
        data = a.body.get("data")  # every webhook is a CloudEvent
        return data if isinstance(data, dict) else {}

    # roadside: every driver assignment, once, with its ETA, at the member's own contact
    etas: dict[str, tuple[int, int]] = {}
    for m in scenario.messages:
        ce_data = m.body.get("data") if m.protocol == "cloudevents" else None
        if (m.type == "com.example.roadservice.ticket.status_changed"
                and isinstance(ce_data, dict) and ce_data.get("status") == "driver_assigned"):
            etas[str(ce_data["ticket_id"])] = (int(ce_data["eta_minutes"]), m.person)
    report.tickets = len(etas)
    notified: set[str] = set()
    contact_type = {"sms": "phone", "phone": "phone", "whatsapp": "phone", "voice": "phone",
                    "email": "email", "app": "user_id", "push": "user_id"}
    for a in unique:
        if a.path != PATHS["notifications"]:
            continue
        data = data_of(a)
        ticket = str(data.get("ticket"))
        if ticket not in etas:
            continue
        notified.add(ticket)
        eta, person = etas[ticket]
        if data.get("message") != ETA_MESSAGE.format(eta=eta):
            report.eta_wrong.append(ticket)
        channel = str(data.get("channel"))
        report.channels[channel] = report.channels.get(channel, 0) + 1
        if person not in people_of(contact_type.get(channel, ""), data.get("to")):
            report.contact_wrong.append(ticket)
        if report.roadside_example is None and channel != "email":
            report.roadside_example = data
    report.notified = len(notified)

    # membership sync: an address change arrives as that one field, with the new address
    changes: set[tuple[int, str]] = set()
    for m in scenario.messages:
        if m.type == "com.example.membership.member.address_changed" and not m.duplicate:
            changes.add((m.person, orjson.dumps(m.body["data"]["address"]).decode()))
    report.address_changes = len(changes)
    for a in unique:
        if a.path != PATHS["membership-app"]:
            continue
        data = data_of(a)
        report.sync_messages += 1
        cause = str(data.get("cause", "")).rsplit(".", 1)[-1]
        report.sync_by_cause[cause] = report.sync_by_cause.get(cause, 0) + 1
        changed = data.get("changed")
        if cause != "address_changed" or not isinstance(changed, dict):
            continue
        if set(changed) != {"address"}:
            report.sync_extra_fields.append(str(data.get("member_number")))
            continue
        new = orjson.dumps((changed["address"] or {}).get("new")).decode()
        if any((person, new) in changes
               for person in people_of("member_number", data.get("member_number"))):
            report.address_synced += 1
            if report.sync_example is None:
                report.sync_example = data

    # abandoned cart: reminders only for carts that were not checked out, to their owner
    cart_owner: dict[str, int] = {}
    checked_out: set[str] = set()
    for m in scenario.messages:
        props = m.body.get("properties") if m.protocol == "segment" else None
        if not isinstance(props, dict):
            continue
        if m.type == "cart_updated":
            cart_owner[str(props["cart_id"])] = m.person
        elif m.type == "checkout_completed":
            checked_out.add(str(props["cart_id"]))
    report.carts = len(cart_owner)
    report.carts_checked_out = len(checked_out & set(cart_owner))
    for a in unique:
        if a.path != PATHS["marketing"]:
            continue
        data = data_of(a)
        report.reminders += 1
        cart = str(data.get("cart_id"))
        if cart in checked_out or cart not in cart_owner \
                or cart_owner[cart] not in people_of("email", data.get("email")):
            report.wrong_reminders.append(cart)
        elif report.reminder_example is None:
            report.reminder_example = data
