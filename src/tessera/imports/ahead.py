"""The import's reading process: chunks read, mapped, built and packed beside the writer.

A columnar import has two kinds of work per chunk: Python that reads, maps and builds
its rows (about 16 us per row) and the store's writes (SQLite, most of it without the
interpreter lock). On two threads of one process they share the interpreter lock, and
the writing thread, which takes the lock back after every SQLite statement, waits for
the reading thread each time (measured: a busy Python thread beside the writer made
its chunks three times slower). In a process of its own the reader runs on the other
core, and the writer gets what it needs as a few bytes objects
(:class:`.columnar.Ahead`: the store's packed statements, the packed outbox messages)
that cost nothing to unpickle.

The process is a fresh interpreter (:func:`main`: no copy of the parent's threads,
locks or store connections, as ``fork`` would make, and no caller's ``__main__`` run
again, as ``spawn`` would) and reads the job on its stdin as pickled by
:meth:`ImportJob.__getstate__`: the file, the mapping, the extractor's configuration
and the builder, never the store. It writes each chunk on its stdout (both pipes as
:mod:`multiprocessing` connections: length-prefixed pickles), at most about one chunk
ahead of the writer (the pipe blocks it), so memory stays that of a few chunks. A
failure in it (a reader error, anything else) reaches the writer as the error it would
have raised in process; an import stopped or failed on the writer's side ends it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import IO, TYPE_CHECKING, Any

from tessera.imports.readers import Position, ReaderError, read_csv_blocks

if TYPE_CHECKING:
    from tessera.imports.columnar import Ahead
    from tessera.imports.job import ImportJob


@dataclass(slots=True)
class _Failed:
    """What went wrong in the reading process."""

    reader_error: str | None
    """A :class:`ReaderError`'s message (the file cannot be read on)."""
    trace: str = ""


class ReadAheadError(Exception):
    """The reading process failed other than by a reader error (its traceback included)."""


class ReadAhead:
    """The reading process of one import run, from ``start``."""

    def __init__(self, job: ImportJob, start: Position, event_time: float) -> None:
        # a fresh interpreter rather than multiprocessing: nothing of the parent's threads
        # and connections is copied (fork), and no caller's __main__ is run again (spawn)
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from tessera.imports.ahead import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            # not in the terminal's process group: Ctrl-C stops the import after its
            # current chunk (the writer's decision), and close() ends this process
            start_new_session=True)
        assert self._process.stdin is not None and self._process.stdout is not None
        # the pipes as multiprocessing connections: length-prefixed pickles both ways
        self._conn = _connection(self._process.stdout, readable=True)
        send = _connection(self._process.stdin, readable=False)
        try:
            send.send((job, start, event_time))
        except OSError:
            pass  # it failed at start: next() says how
        finally:
            send.close()
        self._done = False

    def next(self) -> tuple[Ahead, list[tuple[int, str, Any]], Position | None, int]:
        """The next chunk, its rejects, the position after it (None at the end of the
        file) and its number of records; blocks until the process has it."""
        if self._done:
            raise ReadAheadError("the import's reading process has finished")
        try:
            message = self._conn.recv()
        except (EOFError, OSError):  # gone, maybe in the middle of a message
            self._done = True
            code = self._process.wait()
            raise ReadAheadError(f"the import's reading process ended (exit code {code})"
                                 ) from None
        if isinstance(message, _Failed):
            self._done = True
            if message.reader_error is not None:
                raise ReaderError(message.reader_error)
            raise ReadAheadError(f"the import's reading process failed:\n{message.trace}")
        if message.end is None:
            self._done = True
        return message, message.rejected, message.end, message.count

    def close(self) -> None:
        """End the process (at the end of the file it has ended already)."""
        if self._process.poll() is None:
            self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=10)
        self._conn.close()


def _connection(stream: IO[bytes], readable: bool) -> Connection:
    """A pipe's end as a :class:`Connection` of its own (the file object is closed)."""
    conn = Connection(os.dup(stream.fileno()), readable=readable, writable=not readable)
    stream.close()
    return conn


def _run(job: ImportJob, start: Position, event_time: float, out: Connection) -> None:
    """The process: every chunk from ``start``, as :class:`Ahead`, until the end of the file."""
    try:
        builder = job.builder
        assert builder is not None
        blocks = read_csv_blocks(job.path, start, job.batch_size, sorted(job.mapping.columns()))
        at = start
        while True:
            prepared, rejected, end = job._next_chunk(blocks, event_time)
            out.send(builder.ahead(prepared, rejected, at, end))
            if end is None:
                break
            at = end
    except ReaderError as exc:
        _send_failure(out, _Failed(str(exc)))
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the writer has stopped listening
    except BaseException:
        _send_failure(out, _Failed(None, traceback.format_exc()))


def _send_failure(out: Connection, failure: _Failed) -> None:
    with contextlib.suppress(OSError):
        out.send(failure)


def main() -> None:
    """The reading process: the job on stdin, chunks on stdout. (Started by importing
    this module, not with ``-m``: the package imports it first, and ``-m`` would run a
    second copy of it as ``__main__``, whose classes the writer could not unpickle.)"""
    try:
        job, start, event_time = _connection(sys.stdin.buffer, readable=True).recv()
    except EOFError:
        return
    # the chunks' objects die by reference counting; collections of the young
    # generation over every chunk's millions of them found nothing to free
    gc.freeze()
    gc.disable()
    out = _connection(sys.stdout.buffer, readable=False)
    sys.stdout = sys.stderr  # nothing printed may corrupt the messages
    _run(job, start, event_time, out)
    out.close()
