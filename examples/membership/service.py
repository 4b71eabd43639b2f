"""A small membership service on PostgreSQL that publishes through a transactional outbox.

Its address change writes the member row and the event in one transaction;
``tessera relay outbox`` publishes the event. The legacy CRM's ``contacts``
table, which publishes nothing, is captured by ``tessera relay cdc``.

    python examples/membership/service.py --dsn $DSN setup
    python examples/membership/service.py --dsn $DSN move M-1001 "1 Fjord Rd" Bergen 5003
    tessera relay outbox --dsn postgresql://... --url http://127.0.0.1:8000 \\
        --write-key wk_membership_example
    tessera relay cdc --dsn postgresql://... --table contacts \\
        --type-prefix com.example.crm.contact --entity contact \\
        --url http://127.0.0.1:8000 --write-key wk_crm_example
"""

from __future__ import annotations

import argparse
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tessera.publish import entity_change_event
from tessera.relay.outbox import add_event, create_outbox

ADDRESS_CHANGED = "com.example.membership.member.address_changed"
SOURCE = "membership-service"

SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    member_number text PRIMARY KEY,
    email         text,
    address       jsonb,
    version       integer NOT NULL DEFAULT 1
);
-- the legacy CRM's table: no events of its own, captured by CDC
CREATE TABLE IF NOT EXISTS contacts (
    member_number     text PRIMARY KEY,
    email             text,
    phone             text,
    preferred_channel text
);
ALTER TABLE contacts REPLICA IDENTITY FULL;
"""


class MembershipService:
    def __init__(self, dsn: str, outbox_table: str = "tessera_outbox") -> None:
        self.dsn = dsn
        self.outbox_table = outbox_table

    def setup(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(SCHEMA)
            create_outbox(conn, self.outbox_table)

    def join(self, member_number: str, email: str, address: dict[str, str]) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute("INSERT INTO members (member_number, email, address) VALUES (%s, %s, %s)",
                         (member_number, email, Jsonb(address)))

    def change_address(self, member_number: str, address: dict[str, str]) -> dict[str, Any]:
        """Move a member: the row and its event commit together, or neither does."""
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT email, address, version FROM members "
                               "WHERE member_number = %s FOR UPDATE", (member_number,)).fetchone()
            if row is None:
                raise KeyError(member_number)
            email, old, version = row
            conn.execute("UPDATE members SET address = %s, version = %s WHERE member_number = %s",
                         (Jsonb(address), version + 1, member_number))
            event = entity_change_event(
                ADDRESS_CHANGED, SOURCE, "member", member_number, "update", version=version + 1,
                before={"member_number": member_number, "email": email, "address": old},
                after={"member_number": member_number, "email": email, "address": address})
            add_event(conn, event, table=self.outbox_table)
        return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup")
    move = sub.add_parser("move")
    for name in ("member_number", "street", "city", "postcode"):
        move.add_argument(name)
    args = parser.parse_args()
    service = MembershipService(args.dsn)
    if args.command == "setup":
        service.setup()
    else:
        event = service.change_address(args.member_number, {
            "street": args.street, "city": args.city, "postcode": args.postcode})
        print(f"moved; event {event['id']} is in the outbox")


if __name__ == "__main__":
    main()
