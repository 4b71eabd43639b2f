"""Reading request bodies with limits, gzip included, without trusting the sender's sizes."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable

import orjson
from starlette.requests import Request

from tessera.api.errors import ApiError
from tessera.events.errors import FieldError


async def read_body(request: Request, limit: int) -> bytes:
    """The decoded body; 413 past ``limit`` bytes (after decompression), 415 for an
    unknown content encoding, 400 for a corrupt gzip stream."""
    declared = request.headers.get("content-length")
    encoding = (request.headers.get("content-encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported Content-Encoding {encoding!r}; use gzip or none",
        )
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) > limit
        and encoding == "identity"
    ):
        raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    decoder = None
    if encoding == "gzip":
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    async for chunk in request.stream():
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, limit + 1 - size)
                if decoder.unconsumed_tail:
                    raise ApiError(
                        413,
                        "payload_too_large",
                        f"the decompressed body is larger than {limit} bytes",
                    )
            except zlib.error as exc:
                raise ApiError(400, "invalid_body", f"corrupt {encoding} body: {exc}") from None
            if decoder.unused_data:
                raise _trailing_data(encoding)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    if decoder is not None:
        try:
            tail = decoder.flush()
        except zlib.error as exc:
            raise ApiError(400, "invalid_body", f"corrupt {encoding} body: {exc}") from None
        size += len(tail)
        if size > limit:
            raise ApiError(
                413, "payload_too_large", f"the decompressed body is larger than {limit} bytes"
            )
        chunks.append(tail)
        if not decoder.eof:
            raise ApiError(400, "invalid_body", f"truncated {encoding} body")
        if decoder.unused_data:
            raise _trailing_data(encoding)
    return b"".join(chunks)


def _trailing_data(encoding: str) -> ApiError:
    # a second gzip member or garbage: refused rather than silently ignored
    return ApiError(400, "invalid_body", f"unexpected data after the end of the {encoding} stream")


MAX_DEPTH = 64
"""Deeper documents are refused: nothing Tessera accepts nests this deep, and recursive
code further on (traits, conditions, schemas) must never meet Python's recursion limit."""
MAX_INTEGER = 2**63
"""Numbers at or past this magnitude are refused: they do not survive a round trip
through the stores (64-bit integers, doubles) without silently losing digits."""
_KEY_BEFORE_SPACE = re.compile(rb'"\s+:')


def parse_json(body: bytes) -> object:
    """Strict JSON: one document, valid UTF-8 without lone surrogates, no duplicate keys,
    at most ``MAX_DEPTH`` levels, no number of magnitude ``MAX_INTEGER`` or more, no
    NaN or Infinity. Anything else is a 400 that says which rule and where."""
    if not body:
        raise ApiError(
            400,
            "invalid_body",
            "the body is empty; a JSON document is required",
            [FieldError("(body)", "is empty")],
        )
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"not valid JSON: {exc}") from None
    keys = _check(value)
    if keys and _has_duplicate_keys(body, keys):
        raise _invalid(f"duplicate key {_duplicate_key(body)!r} in one object")
    return value


def _invalid(reason: str) -> ApiError:
    return ApiError(400, "invalid_json", f"the body is {reason}"
                    if reason.startswith("not") else f"the body is not accepted: {reason}",
                    [FieldError("(body)", reason)])


def _check(value: object) -> int:
    """Walks the document once; the number of object keys in it.

    Recursive on purpose: a call per container and a ``type() is`` test per
    value is several times cheaper than pushing every value on an explicit
    stack (the walk was most of strict parsing's cost, see docs/benchmarks.md),
    and the depth limit is checked on entry, so the recursion never goes past
    ``MAX_DEPTH`` frames, far below Python's limit.
    """
    kind = type(value)
    if kind is dict or kind is list:
        return _walk(value, 1)  # type: ignore[arg-type]
    if (kind is int or kind is float) and not -MAX_INTEGER < value < MAX_INTEGER:  # type: ignore[operator]
        raise _invalid(f"a number too large (magnitude 2^63 or more): {value!r}")
    return 0


def _walk(container: dict[str, object] | list[object], depth: int) -> int:
    if depth > MAX_DEPTH:
        raise _invalid(f"nested deeper than {MAX_DEPTH} levels")
    if type(container) is dict:
        keys = len(container)
        values: Iterable[object] = container.values()
    else:
        keys = 0
        values = container
    for item in values:
        kind = type(item)
        if kind is str:  # most values: one test and on
            continue
        if kind is dict or kind is list:
            keys += _walk(item, depth + 1)  # type: ignore[arg-type]
        elif (kind is int or kind is float) and not -MAX_INTEGER < item < MAX_INTEGER:  # type: ignore[operator]
            raise _invalid(f"a number too large (magnitude 2^63 or more): {item!r}")
    return keys


def _has_duplicate_keys(body: bytes, keys: int) -> bool:
    """True if an object of the text repeats a key (orjson silently keeps the last one).

    Fast path: without escaped quotes, every key ends in ``"``, optional whitespace and
    ``:``; a string value starting with ``:`` is the only other match and can only add to
    the count. So a count equal to the parsed document's keys proves there is no
    duplicate; any other count is settled by the standard library's parser."""
    if b'\\"' not in body and (
        body.count(b'":') + len(_KEY_BEFORE_SPACE.findall(body)) == keys
    ):
        return False
    return _duplicate_key(body) is not None


def _duplicate_key(body: bytes) -> str | None:
    found: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        out = dict(items)
        if len(out) != len(items) and not found:
            seen: set[str] = set()
            found.extend(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return out

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None
