from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.personalization.state.sqlite import SQLiteState
from tests.personalization.state_contract import StateContract


class TestSQLiteState(StateContract):
    @pytest.fixture
    def state(self, tmp_path: Path) -> Iterator[SQLiteState]:
        state = SQLiteState(tmp_path / "personalization.db")
        state.migrate()
        yield state
        state.close()

    def test_a_second_process_sees_committed_state(self, tmp_path: Path) -> None:
        writer = SQLiteState(tmp_path / "p.db")
        reader = SQLiteState(tmp_path / "p.db")
        with writer.transaction() as tx:
            tx.enter("vip", "p1", 1.0)
        assert reader.memberships_of("p1") == {"vip": 1.0}
        writer.close()
        reader.close()

    def test_reading_neither_waits_for_nor_sees_another_writer(self, tmp_path: Path) -> None:
        """Batch evaluation reads each chunk in ``reading()`` while another process writes:
        it reads the last commit at once instead of queueing for the write lock."""
        writer = SQLiteState(tmp_path / "p.db")
        reader = SQLiteState(tmp_path / "p.db")
        with writer.transaction() as tx:
            tx.enter("vip", "p1", 1.0)
        holding, done = threading.Event(), threading.Event()

        def write() -> None:
            with writer.transaction() as tx:
                tx.enter("gold", "p1", 2.0)
                tx.memberships(["p1"])  # written, not committed
                holding.set()
                done.wait(10)

        thread = threading.Thread(target=write)
        thread.start()
        try:
            assert holding.wait(10)
            with reader.reading() as tx:
                seen = tx.memberships(["p1"])
        finally:
            done.set()
            thread.join()
        assert seen == {"p1": {"vip": 1.0}}
        assert reader.memberships_of("p1") == {"vip": 1.0, "gold": 2.0}
        with pytest.raises(sqlite3.OperationalError), reader.reading() as tx:
            tx.enter("silver", "p1", 3.0)  # a write in it is refused, not dropped
        with reader.transaction() as tx:  # the connection writes again afterwards
            tx.enter("silver", "p1", 3.0)
        assert reader.memberships_of("p1") == {"vip": 1.0, "gold": 2.0, "silver": 3.0}
        writer.close()
        reader.close()

    @pytest.mark.parametrize("erasing", [True, False])
    def test_an_erasure_leaves_no_byte_of_the_deleted_rows_in_the_files(
            self, tmp_path: Path, erasing: bool) -> None:
        path = tmp_path / "p.db"
        state = SQLiteState(path)
        secret = b"jane-secret-7f3a91"
        with state.transaction() as tx:
            tx.put_trait_states("p1", {"last_email": {"life": {"last": secret.decode()}}})
            tx.put_trait_states("p2", {"last_email": {"life": {"last": "bob"}}})
        with state.erasing() if erasing else contextlib.nullcontext(), \
                state.transaction() as tx:
            tx.drop(["p1"])
        # while the state is open, as in a running installation (closing checkpoints)
        files = [p for p in tmp_path.iterdir() if p.name.startswith("p.db")]
        found = any(secret in p.read_bytes() for p in files)
        assert found is not erasing  # without the erasure's care the bytes stay behind
        assert state.trait_states_of("p2")["last_email"]["life"]["last"] == "bob"
        state.close()
