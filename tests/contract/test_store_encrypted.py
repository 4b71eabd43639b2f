"""The encrypting store wrapper: the store contract over each backend, and no plaintext at rest.

The whole contract runs unchanged through :class:`EncryptedStore`, over the
SQLite and the PostgreSQL backend; then the backends' own bytes (the SQLite
files, the PostgreSQL tables) are read directly and must not hold any
personal trait value, timeline event or outbox payload in the clear.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tessera.config import parse_config
from tessera.privacy.encryption import BYTES_PREFIX, FieldCipher, Keyring, PiiTraits
from tessera.store.base import Store, TimelineEntry, Trait
from tessera.store.encrypted import EncryptedStore
from tessera.store.outbox_pack import MARK, PackedMessages, Template, expand
from tessera.store.postgres import PostgresStore
from tessera.store.sqlite import SQLiteStore
from tests.contract.store_contract import ChangeFeedContract, pid
from tests.contract.test_store_postgres import schema_for
from tests.services import require_postgres

KEY = base64.b64encode(bytes(range(32))).decode()
CONFIG = parse_config({"privacy": {"encryption": {"enabled": True,
                                                  "traits": ["name", "city", "addr*"]}}})
SECRETS = [b"Jane Quixote", b"Rue des Secrets", b"Montevideo-7", b"jane-event-secret"]


def cipher() -> FieldCipher:
    return FieldCipher(Keyring.parse(f"t1:{KEY}"), PiiTraits(CONFIG))


def write_person(store: Store) -> str:
    p = pid()
    with store.transaction() as tx:
        tx.create_profile(p, 1.0)
        tx.link(p, [("email", "jq@x.io")], "e1", 1.0, "web")
        tx.put_traits(p, {"name": Trait("Jane Quixote", "web", 1.0),
                          "address_line": Trait("Rue des Secrets", "crm", 1.0),
                          "city": Trait({"name": "Montevideo-7"}, "crm", 1.0),
                          "tier": Trait("gold", "crm", 1.0)})
        tx.append_timeline(p, [TimelineEntry("e1", "signup", "web", 1.0, 1.0,
                                             {"id": "e1", "data": {"note": "jane-event-secret"}})],
                           1.0)
        tx.add_outbox([("derived", "d1", "k", b'{"changed": "Jane Quixote"}')])
    return p


def assert_reads_clear(store: Store, p: str) -> None:
    profile = store.get_profile(p)
    assert profile is not None
    assert profile.traits["name"].value == "Jane Quixote"
    assert profile.traits["city"].value == {"name": "Montevideo-7"}
    assert profile.traits["tier"].value == "gold"
    with store.transaction() as tx:
        assert tx.traits([p])[p]["address_line"].value == "Rue des Secrets"
    assert store.timeline(p, 5)[0].event == {"id": "e1", "data": {"note": "jane-event-secret"}}
    assert [m.payload for m in store.pending_outbox(5)] == [b'{"changed": "Jane Quixote"}']


def write_packed(store: Store) -> PackedMessages:
    """Packed messages whose records hold a secret: the wrapper must seal every one."""
    template = Template("derived", (0,), ("profile_id:", 1), ('{"changed":"', 2, '"}'))
    packed = PackedMessages.build(template, [f"m{i}\x1f{pid()}\x1fJane Quixote"
                                             for i in range(1200)])
    with store.transaction() as tx:
        tx.add_outbox_packed(packed)
    assert [(m.topic, m.message_id, m.key, m.payload)
            for m in store.pending_outbox(5000)] == expand(packed)
    return packed


def assert_sealed_one_by_one(packed: PackedMessages, stored: list[tuple[str, bytes]]) -> None:
    """The backend holds each message on its own, its payload sealed (never a packed row)."""
    assert [m for m, _ in stored] == [m[1] for m in expand(packed)]
    assert all(p.startswith(BYTES_PREFIX) and not p.startswith(MARK) for _, p in stored)
    assert not any(b"Jane Quixote" in p for _, p in stored)


class TestEncryptedSQLiteStore(ChangeFeedContract):
    def make_store(self, tmp_path: Path) -> Store:
        return EncryptedStore(SQLiteStore(tmp_path / "store.db"), cipher())

    def test_the_files_hold_no_personal_value_in_the_clear(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        store.migrate()
        try:
            p = write_person(store)
            assert_reads_clear(store, p)
        finally:
            store.close()
        blob = b"".join(f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())
        for secret in SECRETS:
            assert secret not in blob, secret
        assert b"gold" in blob and b"jq@x.io" in blob  # not personal traits; the index
        plain = SQLiteStore(tmp_path / "plain" / "store.db")  # the same scan, no wrapper
        plain.migrate()
        try:
            write_person(plain)
        finally:
            plain.close()
        control = b"".join(f.read_bytes() for f in (tmp_path / "plain").rglob("*") if f.is_file())
        assert all(secret in control for secret in SECRETS)

    def test_packed_messages_are_stored_sealed_one_by_one(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        store.migrate()
        try:
            packed = write_packed(store)
        finally:
            store.close()
        with sqlite3.connect(tmp_path / "store.db") as conn:
            stored = conn.execute("SELECT message_id, payload FROM outbox ORDER BY id").fetchall()
        assert_sealed_one_by_one(packed, stored)
        blob = b"".join(f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())
        assert b"Jane Quixote" not in blob

    def test_a_planted_ciphertext_lookalike_is_sealed_like_the_real_thing(
        self, store: Store
    ) -> None:
        p = pid()
        fake = "$tsenc1:t1:AAAA"
        with store.transaction() as tx:
            tx.create_profile(p, 1.0)
            tx.put_traits(p, {"tier": Trait(fake, "web", 1.0)})
        profile = store.get_profile(p)
        assert profile is not None and profile.traits["tier"].value == fake


class TestEncryptedPostgresStore(ChangeFeedContract):
    url: str
    schemas: set[str]

    @pytest.fixture(autouse=True)
    def _schemas(self) -> Iterator[None]:
        self.url = require_postgres()
        self.schemas = set()
        yield
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(name)))

    def make_store(self, tmp_path: Path) -> Store:
        schema = schema_for(tmp_path, "enc")
        self.schemas.add(schema)
        return EncryptedStore(PostgresStore(self.url, schema=schema), cipher())

    def _dump(self, schema: str) -> bytes:
        """Every stored byte of the personal columns, as PostgreSQL holds them."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            return b"".join(bytes(row[0]) for query in (
                "SELECT convert_to(value::text, 'UTF8') FROM traits",
                "SELECT event FROM timeline",
                "SELECT payload FROM outbox",
                "SELECT convert_to(value, 'UTF8') FROM identities",
            ) for row in conn.execute(query.encode()))

    def test_the_tables_hold_no_personal_value_in_the_clear(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        plain_schema = schema_for(tmp_path, "plain")
        self.schemas.add(plain_schema)
        plain = PostgresStore(self.url, schema=plain_schema)
        try:
            p = write_person(store)
            assert_reads_clear(store, p)
            write_person(plain)
        finally:
            store.close()
            plain.close()
        dump = self._dump(schema_for(tmp_path, "enc"))
        for secret in SECRETS:
            assert secret not in dump, secret
        assert b"gold" in dump and b"jq@x.io" in dump
        control = self._dump(plain_schema)  # the same query sees them without the wrapper
        assert all(secret in control for secret in SECRETS)

    def test_packed_messages_are_stored_sealed_one_by_one(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        try:
            store.migrate()
            packed = write_packed(store)
        finally:
            store.close()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(
                sql.Identifier(schema_for(tmp_path, "enc"))))
            stored = [(m, bytes(p)) for m, p in conn.execute(
                "SELECT message_id, payload FROM outbox ORDER BY id")]
        assert_sealed_one_by_one(packed, stored)
