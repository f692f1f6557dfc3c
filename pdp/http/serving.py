"""How `pdp serve` runs uvicorn: the HTTP/1.1 protocol with bounded request heads.

uvicorn's httptools protocol reads a request head of any size and waits for it forever
(a 16 MiB header was accepted; a client that sends a byte now and then holds a connection
and its buffers as long as it likes). This protocol refuses, before the app sees the
request:

- a request line and headers larger than `max_header_bytes` together, or more than
  `max_header_count` headers: 431, and the connection is closed;
- a head that has not arrived `header_timeout_seconds` after the connection opened or
  the request began: 408, and the connection is closed;
- a body still arriving `body_timeout_seconds` (and a little grace) after its head: the
  connection is closed. The app answers such a slow body with 408 itself (pdp.http.access);
  this also ends a body that no route reads.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from pdp.model.errors import INVALID_REQUEST, error_body
from pdp.service.settings import Settings

BODY_GRACE_SECONDS = 5.0  # the app's own 408 comes first
# Bytes of a head read before its callbacks can count them (httptools hands a header over
# only once it is whole): a generous multiple of the limit bounds what is buffered.
RAW_SLACK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_header_count: int
    header_timeout_seconds: float
    body_timeout_seconds: float

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.max_header_bytes, settings.max_header_count,
                   settings.header_timeout_seconds, settings.body_timeout_seconds)


class HeadTooLarge(Exception):
    """Raised in a parser callback: httptools then stops parsing this connection."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, limits: Limits) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.in_head = True  # reading a request line and headers (or waiting for one)
        self.raw_head_bytes = 0
        self.head_bytes = 0
        self.header_count = 0
        self.refusal: str | None = None  # why this connection's head is refused (431)
        self.deadline: asyncio.TimerHandle | None = None

    # -- timers ------------------------------------------------------------------------

    def arm(self, seconds: float, fire: Any) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(seconds, fire)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def head_timed_out(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head behind a running request
            return
        self.refuse(408, "the request head did not arrive within "
                         f"{self.limits.header_timeout_seconds:g} seconds")

    def body_timed_out(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    # -- refusing ----------------------------------------------------------------------

    def refuse(self, status: int, message: str) -> None:
        body = orjson.dumps(error_body("request_timeout" if status == 408 else
                                       INVALID_REQUEST, message))
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n",
                        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse: 400 in API.md's error body, too."""
        self.refuse(400, msg)

    def too_large(self, what: str) -> HeadTooLarge:
        self.refusal = what
        return HeadTooLarge(what)

    # -- the protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.arm(self.limits.header_timeout_seconds, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refusal is not None:
            return
        if self.in_head:
            self.raw_head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self.refusal is not None:
                self.refuse_head(self.refusal)
            else:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            return
        if self.in_head and self.raw_head_bytes > self.limits.max_header_bytes + RAW_SLACK_BYTES:
            # one header still unfinished (httptools has not handed it over to be counted)
            self.refuse_head(str(self.too_large(
                f"request head over {self.limits.max_header_bytes} bytes")))

    def refuse_head(self, why: str) -> None:
        self.logger.info("request refused: %s", why)
        self.refuse(431, why)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_bytes = 0
        self.header_count = 0
        if self.deadline is None:
            self.arm(self.limits.header_timeout_seconds, self.head_timed_out)

    def on_url(self, url: bytes) -> None:
        self.head_bytes += len(url)
        if self.head_bytes > self.limits.max_header_bytes:
            raise self.too_large(f"request line over {self.limits.max_header_bytes} bytes")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        self.head_bytes += len(name) + len(value) + 4
        if self.header_count > self.limits.max_header_count:
            raise self.too_large(f"more than {self.limits.max_header_count} headers")
        if self.head_bytes > self.limits.max_header_bytes:
            raise self.too_large(f"request headers over {self.limits.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.raw_head_bytes = 0
        self.arm(self.limits.body_timeout_seconds + BODY_GRACE_SECONDS, self.body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_head = True
        self.raw_head_bytes = 0
        self.disarm()
        super().on_message_complete()


def http_protocol(settings: Settings) -> Any:
    """What `pdp serve` gives uvicorn as its `http` protocol (picklable, for workers)."""
    return functools.partial(BoundedHttpToolsProtocol, limits=Limits.of(settings))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The limits as uvicorn options (h11's limit too, should anyone pick h11)."""
    return {"http": http_protocol(settings),
            "h11_max_incomplete_event_size": settings.max_header_bytes}
