"""Encryption at rest of personal data: the API reads clear values while the store files
hold only ciphertext; a wrong or missing key stops the process at start; key rotation."""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tessera.cli import app as cli_app
from tessera.config import DEFAULT_CONFIG_FILE, EncryptionConfig, PrivacyConfig, TesseraConfig
from tessera.privacy.encryption import (
    EncryptionError,
    FieldCipher,
    Keyring,
    PiiTraits,
    check_keys,
    cipher_from_environment,
)
from tessera.runtime import Runtime
from tests.api.conftest import DEMO_CONFIG
from tests.api.helpers import Api, bearer
from tests.privacy.people import (
    ADMIN,
    JANE_CITY,
    JANE_EMAIL,
    JANE_NAME,
    event,
    populate,
    send,
)

K1 = "k1:" + base64.b64encode(b"1" * 32).decode()
K1_WRONG = "k1:" + base64.b64encode(b"9" * 32).decode()
K2 = "k2:" + base64.b64encode(b"2" * 32).decode()
NOTE = "note-only-in-the-event-7731"
CONFIG = DEMO_CONFIG.model_copy(update={"privacy": PrivacyConfig(
    encryption=EncryptionConfig(enabled=True, traits=["name", "city"]))})
Build = Callable[[TesseraConfig], AbstractAsyncContextManager[Api]]


def store_bytes(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data.glob("store.db*"))


# -- keys from the environment


@pytest.mark.parametrize(("text", "reason"), [
    ("k1", "entry 1 must be KEY_ID:BASE64"),
    ("bad id!:AAAA", "entry 1 must be KEY_ID:BASE64"),
    ("k1:not base64!", "key 'k1' is not valid base64"),
    ("k1:" + base64.b64encode(b"short").decode(), "key 'k1' is 5 bytes"),
    (f"{K1},{K1}", "key id 'k1' appears twice"),
    (" , ", "holds no key"),
])
def test_malformed_keys_are_refused_naming_the_entry_not_the_key(text: str, reason: str) -> None:
    with pytest.raises(EncryptionError) as caught:
        Keyring.parse(text)
    assert reason in str(caught.value)
    assert base64.b64encode(b"short").decode() not in str(caught.value)


def test_enabled_without_keys_is_a_start_error() -> None:
    with pytest.raises(EncryptionError, match="TESSERA_PII_KEYS is not set"):
        cipher_from_environment(CONFIG, {})
    assert cipher_from_environment(DEMO_CONFIG, {}) is None


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old = FieldCipher(Keyring.parse(K1), PiiTraits(CONFIG))
    both = FieldCipher(Keyring.parse(f"{K2},{K1}"), PiiTraits(CONFIG))
    sealed = old.seal_trait("name", "Jane")
    assert sealed.startswith("$tsenc1:k1:") and "Jane" not in sealed
    assert both.open_trait("name", sealed) == "Jane"
    assert both.trait_key_id(both.seal_trait("name", "Jane")) == "k2"
    assert both.open_trait("city", sealed) == sealed  # bound to its trait: not swappable
    event = {"specversion": "1.0", "id": "e1", "data": {"x": 1}}
    assert both.open_event("u1", old.seal_event("u1", event)) == event
    assert both.open_payload("m1", old.seal_payload("m1", b'{"a":1}')) == b'{"a":1}'
    assert both.wants_trait("name", "x") and not both.wants_trait("tier", "gold")
    assert both.wants_trait("tier", "$tsenc1:k9:AAAA")  # a planted lookalike is sealed too


# -- end to end: the API reads clear values, the store's files hold none


async def test_the_api_reads_clear_values_the_store_files_hold_ciphertext(
    api_with: Build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_PII_KEYS", K1)
    async with api_with(CONFIG) as api:
        await populate(api)
        await send(api, "wk_crm_123", event("j4", {"email": JANE_EMAIL, "note": NOTE}))
        await api.process()
        jane = await api.profile(f"email:{JANE_EMAIL}")
        assert jane["traits"]["name"]["value"] == JANE_NAME
        assert jane["traits"]["city"]["value"] == JANE_CITY
        timeline = (await api.client.get(f"/v1/profiles/email:{JANE_EMAIL}/events",
                                         headers=bearer("rk_read_123"))).json()
        assert NOTE in str(timeline)
        export = (await api.client.post("/v1/privacy/access", headers=ADMIN,
                                        json={"identifier": f"email:{JANE_EMAIL}"})).json()
        assert NOTE in str(export) and JANE_NAME in str(export)
        assert api.runtime.store.pending_outbox(10) == []  # relayed in the clear
    data = tmp_path / "data-custom"
    stored = store_bytes(data)
    assert stored and b"$tsenc1" in stored
    for secret in (JANE_NAME, JANE_CITY, NOTE):
        assert secret.encode() not in stored, secret
    # the event log is not the store: it keeps events as received (see docs/privacy.md)
    assert NOTE.encode() in (data / "bus.db").read_bytes()


# -- start-up checks


async def _encrypted_installation(api_with: Build, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TESSERA_PII_KEYS", K1)
    async with api_with(CONFIG) as api:
        await populate(api)
    return api.runtime.data_dir


@pytest.mark.parametrize(("config", "keys", "reason"), [
    (CONFIG, K1_WRONG, "key 'k1' is not the key that id was first used with"),
    (CONFIG, K2, "encrypted with key(s) k1, which TESSERA_PII_KEYS does not hold"),
    (DEMO_CONFIG, None, "encrypted with key(s) k1, but TESSERA_PII_KEYS is not set"),
])
async def test_a_wrong_or_missing_key_stops_the_start(
    api_with: Build, monkeypatch: pytest.MonkeyPatch, config: TesseraConfig,
    keys: str | None, reason: str,
) -> None:
    data = await _encrypted_installation(api_with, monkeypatch)
    if keys is None:
        monkeypatch.delenv("TESSERA_PII_KEYS")
    else:
        monkeypatch.setenv("TESSERA_PII_KEYS", keys)
    with pytest.raises(EncryptionError) as caught:
        Runtime(config, data)
    assert reason in str(caught.value)
    monkeypatch.setenv("TESSERA_PII_KEYS", K1)
    Runtime(config, data).store.close()  # the right key starts


async def test_the_command_line_names_the_problem_without_a_traceback(
    api_with: Build, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = await _encrypted_installation(api_with, monkeypatch)
    config_file = tmp_path / "tessera.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    raw["privacy"] = {"encryption": {"enabled": True, "traits": ["name", "city"]}}
    config_file.write_text(yaml.safe_dump(raw))
    args = ["profiles", "get", f"email:{JANE_EMAIL}", "--config", str(config_file),
            "--data-dir", str(data)]
    result = CliRunner().invoke(cli_app, args, env={"TESSERA_PII_KEYS": K1_WRONG})
    assert result.exit_code == 2
    assert "is not the key that id was first used with" in result.output
    assert "Traceback" not in result.output
    good = CliRunner().invoke(cli_app, args, env={"TESSERA_PII_KEYS": K1})
    assert good.exit_code == 0 and JANE_NAME in good.output


# -- rotation


async def test_rotation_re_encrypts_resumably_and_retires_the_old_key(
    api_with: Build, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tessera.privacy.rotation import rotate

    data = await _encrypted_installation(api_with, monkeypatch)
    monkeypatch.setenv("TESSERA_PII_KEYS", f"{K2},{K1}")
    runtime = Runtime(CONFIG, data)
    try:
        profiles = list(runtime.store.iter_profile_ids())
        assert len(profiles) == 2
        first = rotate(runtime.store, runtime.records, max_profiles=1)
        assert (first.profiles, first.complete, first.retired) == (1, False, [])
        assert first.traits >= 1 and first.events >= 1
        assert b"$tsenc1:k1:" in store_bytes(data)  # the second profile is still under k1
        rest = rotate(runtime.store, runtime.records)
        assert rest.complete and rest.retired == ["k1"]
        assert rest.profiles >= 1  # continued after the first profile, then verified
        assert {k.id: k.retired_at is not None for k in runtime.records.data_keys()} == {
            "k1": True, "k2": False}
    finally:
        runtime.store.close()
        runtime.records.close()
    raw = runtime.store.inner  # type: ignore[attr-defined]
    for pid in profiles:
        profile = raw.get_profile(pid)
        sealed = [t.value for t in profile.traits.values() if str(t.value).startswith("$ts")]
        assert sealed and all(v.startswith("$tsenc1:k2:") for v in sealed)
        assert all(next(iter(e.event.values())).startswith("k2:") for e in raw.timeline(pid, 50))
    monkeypatch.setenv("TESSERA_PII_KEYS", K2)  # k1 may now go
    after = Runtime(CONFIG, data)
    try:
        jane = after.store.get_profile(after.store.resolve(f"email:{JANE_EMAIL}") or "")
        assert jane is not None and jane.traits["name"].value == JANE_NAME
    finally:
        after.store.close()


def test_rotation_without_keys_is_refused(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.privacy.rotation import rotate

    monkeypatch.delenv("TESSERA_PII_KEYS", raising=False)
    runtime = Runtime(DEMO_CONFIG, tmp_path)
    try:
        with pytest.raises(ValueError, match="nothing to rotate"):
            rotate(runtime.store, runtime.records)
    finally:
        runtime.store.close()


def test_check_keys_registers_the_encrypting_key_once(tmp_path: Path) -> None:
    from tessera.privacy.records.sqlite import SQLiteRecords

    records = SQLiteRecords(tmp_path / "trust.db")
    cipher = FieldCipher(Keyring.parse(K1), PiiTraits(CONFIG))
    check_keys(records, cipher, "TESSERA_PII_KEYS")
    check_keys(records, cipher, "TESSERA_PII_KEYS")
    assert [k.id for k in records.data_keys()] == ["k1"]
    with pytest.raises(EncryptionError):
        check_keys(records, FieldCipher(Keyring.parse(K1_WRONG), PiiTraits(CONFIG)), "X")
    records.close()


def test_nonces_never_repeat_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    cipher = FieldCipher(Keyring.parse(K1), PiiTraits(CONFIG))
    with ThreadPoolExecutor(8) as pool:
        nonces = list(pool.map(lambda _: cipher._nonce(), range(20_000)))
    assert len(set(nonces)) == len(nonces) and all(len(n) == 12 for n in nonces)


async def test_rotate_key_and_new_key_from_the_command_line(
    api_with: Build, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import orjson

    data = await _encrypted_installation(api_with, monkeypatch)
    config_file = tmp_path / "tessera.yaml"
    raw = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    raw["privacy"] = {"encryption": {"enabled": True, "traits": ["name", "city"]}}
    config_file.write_text(yaml.safe_dump(raw))
    made = CliRunner().invoke(cli_app, ["privacy", "new-key", "k3"])
    assert made.exit_code == 0
    assert Keyring.parse(made.output.strip()).ids() == ["k3"]
    where = ["--config", str(config_file), "--data-dir", str(data)]
    result = CliRunner().invoke(cli_app, ["privacy", "rotate-key", *where],
                                env={"TESSERA_PII_KEYS": f"{K2},{K1}"})
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout[result.stdout.index("{"):])
    assert report["complete"] and report["retired"] == ["k1"] and report["traits"] >= 1
    audit = CliRunner().invoke(cli_app, ["audit", "list", "--action", "privacy.rotate_key",
                                         *where], env={"TESSERA_PII_KEYS": K2})
    assert audit.exit_code == 0 and "privacy.rotate_key" in audit.output


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_rotation_over_each_store_backend(tmp_path: Path, backend: str) -> None:
    """The rotation works on the store contract alone: the same on SQLite and PostgreSQL."""
    import hashlib

    import psycopg
    from psycopg import sql

    from tessera.privacy.records.sqlite import SQLiteRecords
    from tessera.privacy.rotation import rotate
    from tessera.store.base import Store, TimelineEntry, Trait
    from tessera.store.encrypted import EncryptedStore
    from tessera.store.postgres import PostgresStore
    from tessera.store.sqlite import SQLiteStore
    from tests.services import require_postgres

    schema = "rot_" + hashlib.blake2b(str(tmp_path).encode(), digest_size=6).hexdigest()
    url = require_postgres() if backend == "postgres" else ""

    def open_inner() -> Store:
        if backend == "postgres":
            return PostgresStore(url, schema=schema)
        return SQLiteStore(tmp_path / "store.db")

    records = SQLiteRecords(tmp_path / "trust.db")
    old = FieldCipher(Keyring.parse(K1), PiiTraits(CONFIG))
    new = FieldCipher(Keyring.parse(f"{K2},{K1}"), PiiTraits(CONFIG))
    try:
        check_keys(records, old, "TESSERA_PII_KEYS")
        store = EncryptedStore(open_inner(), old)
        with store.transaction() as tx:
            for n in range(3):
                pid = f"prf_{n}"
                tx.create_profile(pid, 1.0)
                tx.put_traits(pid, {"name": Trait(f"Person {n}", "crm", 1.0),
                                    "tier": Trait("gold", "crm", 1.0)})
                tx.append_timeline(pid, [TimelineEntry(f"e{n}", "t", "crm", 1.0, 1.0,
                                                       {"id": f"e{n}", "n": n})], 1.0)
        store.close()
        check_keys(records, new, "TESSERA_PII_KEYS")
        rotated = EncryptedStore(open_inner(), new)
        report = rotate(rotated, records)
        assert report.complete and report.retired == ["k1"]
        assert (report.traits, report.events) == (3, 3)  # tier is not personal: untouched
        raw = rotated.inner
        for n in range(3):
            profile = raw.get_profile(f"prf_{n}")
            assert profile is not None
            assert profile.traits["name"].value.startswith("$tsenc1:k2:")
            assert raw.timeline(f"prf_{n}", 5)[0].event["$tsenc1"].startswith("k2:")
            clear = rotated.get_profile(f"prf_{n}")
            assert clear is not None and clear.traits["name"].value == f"Person {n}"
        assert rotate(rotated, records, restart=True).traits == 0  # nothing left to do
        rotated.close()
    finally:
        records.close()
        if backend == "postgres":
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
