"""The trust records contract: every backend's test module subclasses :class:`RecordsContract`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.privacy import keys
from tessera.privacy.records.base import AuditEntry, TrustRecords


class RecordsContract:
    def make_records(self, tmp_path: Path) -> TrustRecords:
        raise NotImplementedError

    @pytest.fixture
    def records(self, tmp_path: Path) -> Iterator[TrustRecords]:
        records = self.make_records(tmp_path)
        records.migrate()
        try:
            yield records
        finally:
            records.close()

    def test_a_created_key_is_found_by_digest_only(self, records: TrustRecords) -> None:
        token, record = keys.create(records, "api", scopes=["profiles:read"], name="bi")
        found = records.key_by_digest(keys.digest(token))
        assert found == record
        assert found is not None and found.scopes == frozenset({"profiles:read"})
        assert found.prefix == token[: keys.PREFIX_CHARS]
        assert records.key_by_digest(keys.digest(token + "x")) is None
        assert all(token not in repr(k) for k in records.list_keys())

    def test_revoked_keys_are_listed_only_on_request(self, records: TrustRecords) -> None:
        _, first = keys.create(records, "write", source="web")
        _, second = keys.create(records, "api", scopes=["admin"])
        assert records.revoke_key(first.id, time.time())
        assert not records.revoke_key(first.id, time.time())
        assert [k.id for k in records.list_keys()] == [second.id]
        assert {k.id for k in records.list_keys(include_revoked=True)} == {first.id, second.id}
        revoked = records.get_key(first.id)
        assert revoked is not None and not revoked.active

    def test_rotation_keeps_the_rights_and_revokes_the_old_key(
        self, records: TrustRecords
    ) -> None:
        old_token, old = keys.create(records, "api", scopes=["segments:read", "profiles:read"],
                                     rate_per_second=5.0)
        new_token, new = keys.rotate(records, old.id)
        assert new_token != old_token
        assert new.scopes == old.scopes and new.rate_per_second == 5.0 and new.replaces == old.id
        still = records.key_by_digest(keys.digest(old_token))
        assert still is not None and not still.active
        with pytest.raises(keys.KeyError_):
            keys.rotate(records, old.id)

    def test_suppression_list_grows_idempotently(self, records: TrustRecords) -> None:
        assert records.suppressed() == set()
        v0 = records.suppression_version()
        records.suppress(["a" * 64, "b" * 64], time.time())
        records.suppress(["a" * 64], time.time())
        assert records.suppressed() == {"a" * 64, "b" * 64}
        assert records.suppression_version() != v0

    def test_audit_entries_newest_first_with_paging_and_filter(
        self, records: TrustRecords
    ) -> None:
        ids = [
            records.audit(AuditEntry(action=a, actor="cli", at=time.time(), target=str(n),
                                     details={"n": n}))
            for n, a in enumerate(["keys.create", "privacy.erasure", "keys.revoke"])
        ]
        entries = records.audit_entries()
        assert [e.id for e in entries] == ids[::-1]
        assert entries[-1].details == {"n": 0}
        assert [e.action for e in records.audit_entries(action="keys.")] == [
            "keys.revoke", "keys.create"]
        assert [e.id for e in records.audit_entries(limit=1, before=ids[2])] == [ids[1]]

    def test_data_keys_register_once_retire_and_come_back(self, records: TrustRecords) -> None:
        assert records.data_keys() == []
        records.add_data_key("k1", "check-1", 1.0)
        records.add_data_key("k1", "other", 2.0)  # an existing id keeps its check value
        records.add_data_key("k2", "check-2", 3.0)
        assert [(k.id, k.check, k.retired_at) for k in records.data_keys()] == [
            ("k1", "check-1", None), ("k2", "check-2", None)]
        records.retire_data_keys(["k1"], 5.0)
        assert [k.retired_at for k in records.data_keys()] == [5.0, None]
        records.unretire_data_key("k1")
        assert [k.retired_at for k in records.data_keys()] == [None, None]

    def test_state_values_are_set_replaced_and_cleared(self, records: TrustRecords) -> None:
        assert records.get_state("rotation") is None
        records.set_state("rotation", '{"after": ""}')
        records.set_state("rotation", '{"after": "prf_9"}')
        assert records.get_state("rotation") == '{"after": "prf_9"}'
        records.set_state("rotation", None)
        assert records.get_state("rotation") is None
