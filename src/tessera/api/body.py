"""Reading request bodies with limits, gzip included, without trusting the sender's sizes."""

from __future__ import annotations

import zlib

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


def parse_json(body: bytes) -> object:
    if not body:
        raise ApiError(
            400,
            "invalid_body",
            "the body is empty; a JSON document is required",
            [FieldError("(body)", "is empty")],
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400,
            "invalid_json",
            f"the body is not valid JSON: {exc}",
            [FieldError("(body)", f"not valid JSON: {exc}")],
        ) from None
