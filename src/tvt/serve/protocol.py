"""uvicorn's h11 HTTP protocol with a deadline for the request head (needs the [serve] extra).

uvicorn closes a keep-alive connection that stays idle, but stops that timer on the first byte a
client sends, so a client that sends its request line and headers a byte at a time (or opens a
connection and sends nothing) holds the connection forever. Here the same timer runs from the
moment a connection opens, and only a complete request head stops it; the body has its own
deadline in the app (:data:`tvt.serve.app.BODY_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0  # request line and headers must arrive within this time


class HeadDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` whose idle timer also bounds the time to receive a request head."""

    head_timeout: float = HEAD_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.head_timeout, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        # as uvicorn's, without stopping the timer: handle_events stops it once a head is complete
        self.conn.receive_data(data)
        self.handle_events()

    def timeout_keep_alive_handler(self) -> None:
        if not self.transport.is_closing():  # a half-received request cannot be answered in h11: close
            self.transport.close()


def with_head_timeout(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class with another head deadline (for tests and the command line)."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": float(seconds)})
