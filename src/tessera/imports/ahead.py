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

The process is a fresh interpreter (:func:`main`: no copy of
the parent's threads, locks or store connections, as ``fork`` would make, and no
caller's ``__main__`` run again, as ``spawn`` would) and reads the job on its stdin as
pickled by :meth:`ImportJob.__getstate__`: the file, the mapping, the extractor's
configuration and the builder, never the store. It writes each chunk on its stdout as
a length-prefixed pickle, at most about one chunk ahead of the writer (the pipe blocks
it), so memory stays that of a few chunks. A failure in it (a reader error, anything
else) reaches the writer as the error it would have raised in process; an import
stopped or failed on the writer's side ends it.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import struct
import subprocess
import sys
import traceback
from dataclasses import dataclass
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
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, bufsize=0,
            # not in the terminal's process group: Ctrl-C stops the import after its
            # current chunk (the writer's decision), and close() ends this process
            start_new_session=True)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._out = self._process.stdout
        spec = pickle.dumps((job, start, event_time), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_frame(self._process.stdin, spec)
            self._process.stdin.close()
        except BrokenPipeError:
            pass  # it failed at start: next() says how
        self._done = False

    def next(self) -> tuple[Ahead, list[tuple[int, str, Any]], Position | None, int]:
        """The next chunk, its rejects, the position after it (None at the end of the
        file) and its number of records; blocks until the process has it."""
        if self._done:
            raise ReadAheadError("the import's reading process has finished")
        data = _read_frame(self._out)
        if data is None:
            self._done = True
            code = self._process.wait()
            raise ReadAheadError(f"the import's reading process ended (exit code {code})")
        message = pickle.loads(data)
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
        self._out.close()


_LENGTH = struct.Struct("<Q")


def _write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _read_exactly(stream: IO[bytes], n: int) -> bytes | None:
    """``n`` bytes of ``stream``, or None at its end (a partial frame included)."""
    parts: list[bytes] = []
    while n:
        part = stream.read(n)
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = _read_exactly(stream, _LENGTH.size)
    if head is None:
        return None
    return _read_exactly(stream, _LENGTH.unpack(head)[0])


def _run(job: ImportJob, start: Position, event_time: float, out: IO[bytes]) -> None:
    """The process: every chunk from ``start``, as :class:`Ahead`, until the end of the file."""
    try:
        builder = job.builder
        assert builder is not None
        blocks = read_csv_blocks(job.path, start, job.batch_size, sorted(job.mapping.columns()))
        at = start
        while True:
            prepared, rejected, end = job._next_chunk(blocks, event_time)
            _write_frame(out, pickle.dumps(builder.ahead(prepared, rejected, at, end),
                                           protocol=pickle.HIGHEST_PROTOCOL))
            if end is None:
                break
            at = end
    except ReaderError as exc:
        _send_failure(out, _Failed(str(exc)))
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the writer has stopped listening
    except BaseException:
        _send_failure(out, _Failed(None, traceback.format_exc()))


def _send_failure(out: IO[bytes], failure: _Failed) -> None:
    with contextlib.suppress(OSError):
        _write_frame(out, pickle.dumps(failure))


def main() -> None:
    """The reading process: the job on stdin, chunks on stdout. (Started by importing
    this module, not with ``-m``: the package imports it first, and ``-m`` would run a
    second copy of it as ``__main__``, whose classes the writer could not unpickle.)"""
    spec = _read_frame(sys.stdin.buffer)
    if spec is None:
        return
    job, start, event_time = pickle.loads(spec)
    # the chunks' objects die by reference counting; collections of the young
    # generation over every chunk's millions of them found nothing to free
    gc.freeze()
    gc.disable()
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing printed may corrupt the frames
    _run(job, start, event_time, out)
    out.flush()

