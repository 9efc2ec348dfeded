"""uvicorn's h11 protocol with a deadline on each request's arrival: from the connection's
opening (or a new request's first byte) to the request's last byte, headers and body. uvicorn
alone times out only idle keep-alive connections, so a client that sends part of its headers or
of its body and then goes quiet would hold its connection (and, once its headers are in, its
request) for as long as it likes; here the connection is closed at the deadline instead.

The same deadline holds for a client that stops reading: an answer it has not taken within that
time (the write buffer stays full) is dropped with the connection, not kept in memory.
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# The client's side of h11's state machine while a request is still arriving.
_ARRIVING = (h11.IDLE, h11.SEND_BODY)


class RequestDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request has not arrived in full within
    `request_timeout` seconds (set per server by `with_request_deadline`)."""

    request_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._reader_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._reader_deadline is None:
            self._reader_deadline = self.loop.call_later(self.request_timeout, self._not_reading)

    def resume_writing(self) -> None:
        self._stop_reader_deadline()
        super().resume_writing()

    def _stop_reader_deadline(self) -> None:
        if self._reader_deadline is not None:
            self._reader_deadline.cancel()
            self._reader_deadline = None

    def _not_reading(self) -> None:
        self._reader_deadline = None
        self.transport.abort()  # close() would wait for the buffer to drain: it never would

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state not in _ARRIVING:
            self._disarm()  # the whole request is in (or the connection failed)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_reader_deadline()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state in _ARRIVING and not self.transport.is_closing():
            # The app (if it got the headers) sees a disconnect and answers nothing.
            self.transport.close()


def with_request_deadline(seconds: float) -> type[RequestDeadlineProtocol]:
    """The protocol class for uvicorn.Config(http=...) with this deadline."""
    if not seconds > 0:
        raise ValueError(f"the request deadline must be > 0 seconds, is {seconds}")
    return type("RequestDeadlineProtocol", (RequestDeadlineProtocol,),
                {"request_timeout": float(seconds)})
