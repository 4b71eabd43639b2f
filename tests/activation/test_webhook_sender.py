"""The webhook sender against a real HTTP server on 127.0.0.1: what it sends, how it reads
the answers (redirects, Retry-After, error bodies), connection reuse, no proxies."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson
import pytest

from tessera import __version__
from tessera.activation.destinations import DeliveryFailed, Outgoing, WebhookSender
from tessera.activation.model import WebhookDestination
from tessera.activation.signing import new_secret, verify
from tests.http_server import LocalHTTPServer


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Server:
    """Answers every POST with ``answer``; notes each request and its client port."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.requests: list[tuple[str, dict[str, str], bytes, int]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                server.requests.append((self.path, {k.lower(): v for k, v in
                                                    self.headers.items()},
                                        body, self.client_address[1]))
                answer = server.answer
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = LocalHTTPServer(Handler)

    def url(self, path: str = "/hook") -> str:
        return f"{self.http.base_url}{path}"

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def message(n: int = 1) -> Outgoing:
    body = {"specversion": "1.0", "id": f"e{n}", "type": "t", "data": {"n": n}}
    return Outgoing(f"msg_{n}", body, orjson.dumps(body), "prf_1")


async def send(url: str, *messages: Outgoing, **extra: Any) -> None:
    """Send these with one sender (``extra``: the destination's settings), then close it."""
    s = WebhookSender(WebhookDestination.model_validate({"type": "webhook", "url": url,
                                                         **extra}))
    try:
        for one in messages:
            await s.send(one)
    finally:
        await s.close()


async def failure(url: str) -> DeliveryFailed:
    """The error one attempt to send a message to ``url`` fails with."""
    with pytest.raises(DeliveryFailed) as failed:
        await send(url, message())
    return failed.value


async def test_a_signed_post_with_the_configured_headers(server: Server) -> None:
    secret = new_secret()
    await send(server.url(), message(), secret=secret, headers={"x-tenant": "acme"})
    [(path, headers, body, _)] = server.requests
    assert path == "/hook" and body == message().raw
    assert verify(secret, headers, body)
    assert headers["webhook-id"] == "msg_1"
    assert headers["content-type"] == "application/cloudevents+json"
    assert headers["user-agent"] == f"tessera/{__version__}"
    assert headers["x-tenant"] == "acme"


async def test_connections_are_kept_alive_and_reused(server: Server) -> None:
    await send(server.url(), *(message(n) for n in range(20)))
    assert len(server.requests) == 20
    assert len({port for *_, port in server.requests}) == 1


async def test_a_redirect_is_a_failed_attempt_not_followed(server: Server) -> None:
    server.answer = Answer(302, {"location": server.url("/elsewhere")})
    failed = await failure(server.url())
    assert [r[0] for r in server.requests] == ["/hook"]
    assert failed.retryable and failed.error.startswith("HTTP 302")


async def test_retry_after_and_the_error_body_are_kept(server: Server) -> None:
    server.answer = Answer(429, {"retry-after": "7"}, b"slow down\nplease" + b"x" * 5000)
    failed = await failure(server.url())
    assert failed.retryable and failed.retry_after == 7.0
    assert failed.error.startswith("HTTP 429: slow down please")
    assert len(failed.error) <= len("HTTP 429: ") + 200


async def test_a_4xx_is_not_retryable(server: Server) -> None:
    server.answer = Answer(400, body=b"bad event")
    failed = await failure(server.url())
    assert not failed.retryable and failed.error == "HTTP 400: bad event"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_names_its_cause() -> None:
    failed = await failure(f"http://127.0.0.1:{closed_port()}/hook")
    assert failed.retryable and "refused" in failed.error.lower()


async def test_proxies_from_the_environment_are_not_used(
    server: Server, monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    await send(server.url(), message())
    assert len(server.requests) == 1
