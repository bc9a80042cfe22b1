"""The HTTP/2 transport of the send path: libcurl's multiplexing through pycurl's multi interface.

Chosen by measurement (README, "Performance"): one Python process drives 15,000+ APNs-shaped
requests/s through libcurl, against well under 1,000/s for httpx's HTTP/2. The interface is
small on purpose: hand ``Http2Transport.send`` a batch of ``Request`` and get back one
``Response`` per request, in the same order; a response is either an HTTP answer (status,
headers, body) or a transport error (``error`` set, ``status`` 0).

What the transport guarantees:

* At most ``max_connections_per_host`` connections per host and ``max_streams_per_connection``
  streams on each (fewer if the server's SETTINGS say so).
* ``https://`` URLs negotiate HTTP/2 by ALPN; ``http://`` URLs speak HTTP/2 with prior
  knowledge (h2c), which is what the push simulator serves on loopback.
* TLS is always verified, against ``ca_bundle`` when given (else the system's trust store),
  and fails closed: a server whose certificate does not chain to it gets an error response.
* A request is put on the wire at most once per attempt, and attempted again only when the
  server provably never processed it: its stream was refused (``REFUSED_STREAM``, or above the
  last stream id of a GOAWAY). libcurl would also re-send, by itself, a request whose reused
  connection was reset before any answer; a provider may have acted on such a request before
  the reset, so the transport takes retries out of libcurl's hands: a pre-request callback
  counts the attempts of each handle and aborts any second one. libcurl closes a refused
  stream without recording an error, while every other failure it would retry records one
  first (a reset stream, a broken or reset connection), and it keeps a transfer's first
  error: a handle aborted with no earlier error was refused, and is sent again on a fresh
  attempt, up to ``max_resends`` times. Anything else (a timeout, a connection lost before or
  during an answer, a stream reset) comes back as an error with ``maybe_sent`` True: the
  caller must not send it again. ``max_resends=0`` turns even refused streams into errors.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import pycurl

# libcurl error codes that mean "no connection could be made or trusted": never retried here.
_TLS_ERRORS = frozenset({35, 51, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91})
_CONNECT_ERRORS = frozenset({6, 7})
_TIMEOUT = 28
_ABORTED_BY_CALLBACK = 42
# The message libcurl records when the pre-request callback aborts an attempt; a transfer keeps
# its first error message, so this one means nothing failed before the retry libcurl wanted.
_ABORTED_MESSAGE = "operation aborted by pre-request callback"
# The longest wait for a socket without looking at the clock again (select returns at once when one is ready).
_MAX_WAIT = 0.05


@dataclass(slots=True)
class Request:
    """One HTTP request. ``headers`` are ``"name: value"`` lines (libcurl's own form, so no copy).

    ``tag`` is the caller's: it is not sent (providers keep the id they gave the request there).
    """

    url: str
    headers: list[str]
    body: bytes = b""
    method: str = "POST"
    tag: str = ""


class Response:
    """The answer to one request: an HTTP response, or a transport error when ``error`` is set.

    ``headers`` (lower-case names) are parsed from the raw header lines on first use.
    """

    __slots__ = ("status", "body", "error", "error_kind", "maybe_sent", "attempts", "_headers", "_raw")

    def __init__(
        self,
        *,
        status: int = 0,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        error: str = "",
        error_kind: str = "",  # "", "timeout", "tls", "connect", "refused", "connection"
        maybe_sent: bool = False,  # only for errors: the request may have reached the server
        attempts: int = 1,
        raw_headers: list[bytes] | None = None,
    ):
        self.status = status
        self.body = body
        self.error = error
        self.error_kind = error_kind
        self.maybe_sent = maybe_sent
        self.attempts = attempts
        self._headers = headers
        self._raw = raw_headers

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw in self._raw or ():
                line = raw.decode("latin-1")
                if line.startswith("HTTP/"):
                    headers.clear()  # a new response (after an interim one): keep only the last
                    continue
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            self._headers = headers
        return self._headers

    @property
    def ok(self) -> bool:
        return not self.error and 200 <= self.status < 300

    def __repr__(self) -> str:
        if self.error:
            return f"<Response error={self.error_kind}: {self.error}>"
        return f"<Response {self.status} {len(self.body)} bytes>"


class _Slot:
    """A reusable easy handle and the buffers its callbacks fill."""

    __slots__ = ("curl", "index", "body", "header_lines", "tls", "custom_method", "wire_attempts")

    def __init__(self, transport: Http2Transport):
        self.curl = c = pycurl.Curl()
        self.body: list[bytes] = []
        self.header_lines: list[bytes] = []
        self.index = -1
        self.tls: bool | None = None  # the HTTP version option set last: 2TLS (True) or h2c (False)
        self.custom_method = False  # CUSTOMREQUEST is set (a method other than GET or POST)
        self.wire_attempts = 0  # how often libcurl was about to send the current request
        c.setopt(pycurl.WRITEFUNCTION, self.body.append)
        c.setopt(pycurl.PREREQFUNCTION, self._before_request)
        if transport.all_headers:
            c.setopt(pycurl.HEADERFUNCTION, self.header_lines.append)
        c.setopt(pycurl.PIPEWAIT, 1)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.TIMEOUT_MS, int(transport.timeout * 1000))
        c.setopt(pycurl.CONNECTTIMEOUT_MS, int(transport.connect_timeout * 1000))
        c.setopt(pycurl.SSL_VERIFYPEER, 1)
        c.setopt(pycurl.SSL_VERIFYHOST, 2)
        if transport.ca_bundle:
            c.setopt(pycurl.CAINFO, transport.ca_bundle)
        c.setopt(pycurl.TCP_NODELAY, 1)
        c.setopt(pycurl.TCP_KEEPALIVE, 1)
        c.setopt(pycurl.FOLLOWLOCATION, 0)

    def _before_request(self, *_connection) -> int:
        """One attempt per handle: abort the re-send libcurl would make on a fresh connection."""
        self.wire_attempts += 1
        return pycurl.PREREQFUNC_OK if self.wire_attempts == 1 else pycurl.PREREQFUNC_ABORT


class Http2Transport:
    """Many requests over a few multiplexed HTTP/2 connections, kept open between batches.

    Not thread-safe: use one transport per thread (connections are per transport).
    """

    def __init__(
        self,
        *,
        max_connections_per_host: int = 4,
        max_streams_per_connection: int = 100,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        ca_bundle: str = "",
        max_resends: int = 5,
        all_headers: bool = False,
    ):
        self.max_connections_per_host = max_connections_per_host
        self.max_streams_per_connection = max_streams_per_connection
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ca_bundle = ca_bundle
        self.max_resends = max_resends
        # Without all headers (the default: the APNs and FCM clients read none of a success), an
        # error response carries only content-type and retry-after, read from libcurl, not line by
        # line from Python: about 5 µs less per request. ``all_headers`` keeps every header.
        self.all_headers = all_headers
        self.max_in_flight = max_connections_per_host * max_streams_per_connection
        self._multi = m = pycurl.CurlMulti()
        m.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        m.setopt(pycurl.M_MAX_HOST_CONNECTIONS, max_connections_per_host)
        m.setopt(pycurl.M_MAX_CONCURRENT_STREAMS, max_streams_per_connection)
        m.setopt(pycurl.M_MAXCONNECTS, max(8, max_connections_per_host * 2))
        self._free: list[_Slot] = []
        self._all: list[_Slot] = []

    def close(self) -> None:
        """Close every connection and handle. The transport cannot be used afterwards."""
        for slot in self._all:
            slot.curl.close()
        self._all.clear()
        self._free.clear()
        self._multi.close()

    def __enter__(self) -> Http2Transport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _slot(self) -> _Slot:
        if self._free:
            return self._free.pop()
        slot = _Slot(self)
        self._all.append(slot)
        return slot

    def _start(self, slot: _Slot, index: int, request: Request) -> None:
        c = slot.curl
        slot.index = index
        slot.wire_attempts = 0
        slot.body.clear()
        slot.header_lines.clear()
        c.setopt(pycurl.URL, request.url)
        tls = request.url.startswith("https:")
        if tls is not slot.tls:
            c.setopt(
                pycurl.HTTP_VERSION,
                pycurl.CURL_HTTP_VERSION_2TLS if tls else pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE,
            )
            slot.tls = tls
        c.setopt(pycurl.HTTPHEADER, request.headers)
        if slot.custom_method:
            c.setopt(pycurl.CUSTOMREQUEST, None)
            slot.custom_method = False
        if request.method == "POST":
            c.setopt(pycurl.POSTFIELDS, request.body)
        elif request.method == "GET":
            c.setopt(pycurl.HTTPGET, 1)
        else:
            c.setopt(pycurl.POSTFIELDS, request.body)
            c.setopt(pycurl.CUSTOMREQUEST, request.method)
            slot.custom_method = True
        self._multi.add_handle(c)

    def send(self, requests: Sequence[Request]) -> list[Response]:
        """Send every request (up to the connection and stream limits at a time); one response each, in order."""
        results: list[Response | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        pending = deque(range(len(requests)))
        active: dict[pycurl.Curl, _Slot] = {}
        multi = self._multi
        deadline_slack = self.timeout + self.connect_timeout + 5
        started = time.monotonic()

        while pending or active:
            while pending and len(active) < self.max_in_flight:
                index = pending.popleft()
                attempts[index] += 1
                slot = self._slot()
                self._start(slot, index, requests[index])
                active[slot.curl] = slot
            while True:
                ret, _ = multi.perform()
                if ret != pycurl.E_CALL_MULTI_PERFORM:
                    break
            while True:
                queued, done, failed = multi.info_read()
                for c in done:
                    slot = active.pop(c)
                    multi.remove_handle(c)
                    results[slot.index] = self._response(slot, attempts[slot.index])
                    self._free.append(slot)
                for c, errno, message in failed:
                    slot = active.pop(c)
                    multi.remove_handle(c)
                    index = slot.index
                    response = self._error(slot, errno, message, attempts[index])
                    if response is None and attempts[index] <= self.max_resends:
                        pending.append(index)  # the server refused it unprocessed: send it again
                    else:
                        results[index] = response or Response(
                            error="stream refused too often", error_kind="refused", attempts=attempts[index]
                        )
                    self._free.append(slot)
                if not queued:
                    break
            if active:
                # Wait for a socket to be ready, at most until libcurl's next timer (0: it has work
                # of its own now, such as data it read and has not handed over yet).
                due = multi.timeout()
                if due != 0:
                    multi.select(_MAX_WAIT if due < 0 else min(due / 1000, _MAX_WAIT))
            if time.monotonic() - started > deadline_slack * (1 + len(requests) / self.max_in_flight):
                break  # a safety net only: libcurl's own timeouts end every transfer first
        for c, slot in list(active.items()):
            multi.remove_handle(c)
            results[slot.index] = Response(error="transport deadline exceeded", error_kind="timeout", maybe_sent=True)
            self._free.append(slot)
        return [r if r is not None else Response(error="not sent", error_kind="connection") for r in results]

    def _response(self, slot: _Slot, attempts: int) -> Response:
        c = slot.curl
        if self.all_headers:
            return Response(
                status=c.getinfo(pycurl.RESPONSE_CODE),
                raw_headers=list(slot.header_lines),
                body=b"".join(slot.body),
                attempts=attempts,
            )
        status = c.getinfo(pycurl.RESPONSE_CODE)
        headers = {}
        if status >= 300:  # what an error answer may need: its body's type, when to retry
            content_type = c.getinfo(pycurl.CONTENT_TYPE)
            if content_type:
                headers["content-type"] = content_type
            retry_after = c.getinfo(pycurl.RETRY_AFTER)
            if retry_after:
                headers["retry-after"] = str(retry_after)
        return Response(status=status, headers=headers, body=b"".join(slot.body), attempts=attempts)

    def _error(self, slot: _Slot, errno: int, message: str, attempts: int) -> Response | None:
        """The error response for a failed transfer, or None when the server provably did not process it."""
        if errno in _TLS_ERRORS:
            return Response(error=message, error_kind="tls", attempts=attempts)
        if errno in _CONNECT_ERRORS:
            return Response(error=message, error_kind="connect", attempts=attempts)
        if errno == _TIMEOUT:
            return Response(error=message, error_kind="timeout", maybe_sent=True, attempts=attempts)
        if errno == _ABORTED_BY_CALLBACK and slot.wire_attempts > 1 and message.startswith(_ABORTED_MESSAGE):
            return None  # refused: libcurl wanted it again and recorded no failure before
        return Response(
            error=message or f"libcurl error {errno}", error_kind="connection", maybe_sent=True, attempts=attempts
        )
