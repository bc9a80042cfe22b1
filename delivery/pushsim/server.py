"""The simulator's network side: asyncio listeners speaking HTTP/2 (h2c or TLS with ALPN) and HTTP/1.1.

Every listener serves every route (APNs, FCM, the OAuth token endpoint, control, the page);
a listener's ``environment`` is the APNs environment its connections reach. Over TLS, ALPN
picks ``h2`` or ``http/1.1``; in cleartext, or over TLS when the client offered no ALPN, the
HTTP/2 preface (prior knowledge) picks h2. As
APNs does, an APNs request over HTTP/1.1 gets its connection closed without an answer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import ssl
import time
import uuid
from http import HTTPStatus

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from delivery.pushsim import apns, fcm
from delivery.pushsim.control import handle_control, handle_page
from delivery.pushsim.state import Answer, Connection, Exchange, SimState

log = logging.getLogger("delivery.pushsim")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS = 1000  # per HTTP/2 connection, as advertised
MAX_HEAD_BYTES = 16 * 1024  # an HTTP/1.1 request line and its headers
MAX_BODY_BYTES = 1 << 20  # a request body; the largest real one (a control request) is a few KB
_conn_ids = itertools.count(1)

_HANDLERS = {
    "apns": apns.handle_apns,
    "fcm": fcm.handle_send,
    "token": fcm.handle_token,
    "control": handle_control,
    "page": handle_page,
}


def _service(ex: Exchange) -> str:
    path = ex.path
    if path.startswith("/3/"):
        return "apns"
    if path.startswith("/v1/projects/"):
        return "fcm"
    if path.split("?")[0] == "/token":
        return "token"
    if path.startswith("/control/"):
        return "control"
    if path.split("?")[0] == "/" and ex.method == "GET":
        return "page"
    return "apns"  # APNs answers 404 BadPath (or 405) for anything else


def route(state: SimState, ex: Exchange) -> Answer:
    """Answer one request. A handler that fails answers 500 for this request alone, as the real
    services do (the connection and its other streams go on), and logs one line: a traceback
    per request (thousands of lines for a RecursionError) would bury the log."""
    service = _service(ex)
    try:
        answer = _HANDLERS[service](state, ex)
    except Exception as exc:
        log.error("pushsim: %.20r %.200r failed: %s: %.200r", ex.method, ex.path, type(exc).__name__, str(exc))
        if service == "apns":
            answer = apns.internal_error(ex)
        elif service == "fcm":
            answer = fcm.internal_error()
        else:
            answer = Answer(500, [("content-type", "application/json")], b'{"error": "internal error"}')
    with state.lock:
        state.requests[answer.status] += 1
    return answer


_PSEUDO_HEADERS = (b":method", b":scheme", b":authority", b":path")
_CONNECTION_SPECIFIC = (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a token, lowercase
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")


def malformed_request(headers: list[tuple[bytes, bytes]]) -> bool:
    """A request header block RFC 9113 calls malformed (§8.2, §8.3.1): a pseudo-header unknown,
    repeated or after a field; :method, :scheme or :path missing (or :path empty); a field name
    with uppercase or other non-token characters; a connection-specific field; a value with NUL,
    CR, LF or surrounding whitespace.

    A real server resets such a stream with PROTOCOL_ERROR. h2 checks this when asked to
    (``validate_inbound_headers``), but then ends the whole connection and its other streams.
    """
    pseudo: dict[bytes, bytes] = {}
    fields = False
    for name, value in headers:
        if name.startswith(b":"):
            if fields or name not in _PSEUDO_HEADERS or name in pseudo:
                return True
            pseudo[name] = value
        elif (
            not _FIELD_NAME.fullmatch(name) or name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers")
        ):
            return True
        else:
            fields = True
        if _BAD_VALUE.search(value):
            return True
    return not (pseudo.get(b":method") and pseudo.get(b":scheme") and pseudo.get(b":path"))


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""  # a status injected for a test (499...): the phrase may be empty


_DIGITS = re.compile(r"[0-9]+")
_REQUEST_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) HTTP/1\.([01])")
_H1_FIELD = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n\x00]*?)[ \t]*")


def _parse_head(head: bytes) -> tuple[str, str, bool, list[tuple[str, str]]] | None:
    """An HTTP/1.1 request head: method, target, whether it is HTTP/1.0, and the headers (names
    lowercase); None when it is malformed (RFC 9112 §3, §5: no space before the colon, no
    folded line, no bare CR or NUL)."""
    request_line, *lines = head.decode("latin-1").split("\r\n")
    request = _REQUEST_LINE.fullmatch(request_line)
    if request is None:
        return None
    headers = []
    for line in lines:
        field = _H1_FIELD.fullmatch(line)
        if field is None:
            return None
        headers.append((field[1].lower(), field[2]))
    return request[1], request[2], request[3] == "0", headers


class SimProtocol(asyncio.Protocol):
    """One client connection, HTTP/2 or HTTP/1.1."""

    def __init__(self, state: SimState, environment: str):
        self.state = state
        self.environment = environment
        self.transport: asyncio.Transport | None = None
        self.mode = ""  # "", "h2", "h1"
        self.buffer = b""
        self.h2: h2.connection.H2Connection | None = None
        self.conn: Connection | None = None
        self.requests: dict[int, list] = {}  # stream id -> [headers, body chunks]
        self.open_streams: set[int] = set()  # accepted, not yet answered
        self.pending_data: dict[int, bytes] = {}
        self.goaway_last_stream = -1
        self.closed = False
        self.closing = False
        self.idle_timer: asyncio.TimerHandle | None = None

    # --- connection --------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self._touch()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            if alpn is not None:
                self._start("h2" if alpn == "h2" else "h1")
            # No ALPN (a client that did not offer it): like the real servers, take the HTTP/2
            # preface as HTTP/2 and anything else as HTTP/1.1, as in cleartext.

    def connection_lost(self, exc):
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()

    def _touch(self) -> None:
        """Restart the idle clock (fault ``idle_timeout_s``: after that long idle, GOAWAY IdleTimeout
        over HTTP/2; HTTP/1.1, with no GOAWAY, and a connection that never spoke are closed)."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        timeout = self.state.faults.idle_timeout_s
        if timeout > 0 and not self.closed:
            self.idle_timer = asyncio.get_running_loop().call_later(timeout, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if self.closed or self.goaway_last_stream >= 0:
            return
        if self.mode != "h2":
            self.transport.close()
            return
        if self.open_streams or self.pending_data:
            self._touch()
            return
        self._goaway(self._last_answered, "IdleTimeout")

    def _goaway(self, last_stream: int, reason: str) -> None:
        """Send GOAWAY with APNs's JSON debug data; streams above ``last_stream`` are refused."""
        self.goaway_last_stream = last_stream
        self._flush()
        data = json.dumps({"reason": reason}).encode()
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream, error_code=0, additional_data=data)
        self.transport.write(frame.serialize())
        self._maybe_close()

    def _start(self, mode: str) -> None:
        self.mode = mode
        with self.state.lock:
            self.state.connections += 1
        self.conn = Connection(
            id=next(_conn_ids), environment=self.environment, protocol="h2" if mode == "h2" else "http/1.1"
        )
        if mode == "h2":
            # Headers are checked by ``malformed_request``, which resets only the stream (h2's
            # own check ends the connection).
            config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False)
            self.h2 = h2.connection.H2Connection(config=config)
            self.h2.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 8000,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                },
            )
            self.h2.initiate_connection()
            # Advertised, h2 would enforce the limit by ending the whole connection (its
            # TooManyStreamsError comes before the stream's headers are even decoded); RFC 9113
            # §5.1.2 refuses the stream over it alone, with REFUSED_STREAM: _on_request does.
            del self.h2.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
            self.h2.increment_flow_control_window(1 << 24)
            self._flush()

    def data_received(self, data: bytes):
        if not self.mode:
            self.buffer += data
            if PREFACE.startswith(self.buffer[: len(PREFACE)]) and len(self.buffer) < len(PREFACE):
                return
            data, self.buffer = self.buffer, b""
            self._start("h2" if data.startswith(PREFACE) else "h1")
        if self.mode == "h2":
            self._h2_received(data)
        else:
            self._h1_received(data)

    def _flush(self) -> None:
        if self.h2 is not None and self.transport is not None and not self.closed:
            out = self.h2.data_to_send()
            if out:
                self.transport.write(out)

    # --- HTTP/2 --------------------------------------------------------------------------------
    def _h2_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._on_request(event.stream_id, event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self._on_data(event.stream_id, event.data)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_stream_ended(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
                self.open_streams.discard(event.stream_id)
                self.pending_data.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._send_pending()  # a larger window, by WINDOW_UPDATE or INITIAL_WINDOW_SIZE
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.transport.close()
                return
        self._flush()

    def _on_request(self, stream_id: int, raw_headers) -> None:
        if self.closed:
            return
        faults = self.state.faults
        if self.goaway_last_stream >= 0:
            return  # after our GOAWAY: a refused stream, never processed
        if len(self.open_streams) >= MAX_CONCURRENT_STREAMS:
            # The streams accepted before this one and not yet answered (h2's own count also
            # takes the streams that arrived after it in the same read).
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if malformed_request(raw_headers):
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        self.conn.streams += 1
        if faults.drop_after_streams and self.conn.streams > faults.drop_after_streams:
            # Drop the connection without GOAWAY: what is unanswered stays unanswered. The answers
            # already written get a moment to leave (closing at once would reset them away).
            self.requests.clear()
            self.open_streams.clear()
            self._flush()
            self.closed = True
            self._abort_when_flushed(time.monotonic() + 2.0)
            return
        if faults.goaway_after_streams and self.conn.streams > faults.goaway_after_streams:
            self._goaway(max([*self.open_streams, self._last_answered], default=0), "Shutdown")
            return
        self._touch()
        headers = [(k.decode("latin-1"), v.decode("utf-8", "replace")) for k, v in raw_headers]
        self.requests[stream_id] = [headers, [], 0]
        self.open_streams.add(stream_id)

    _last_answered = 0

    def _abort_when_flushed(self, deadline: float, quiet_since: float = 0.0) -> None:
        """Abort once the answers already written have left (and had 50 ms to be read)."""
        now = time.monotonic()
        if self.transport.get_write_buffer_size() > 0:
            quiet_since = 0.0
        elif not quiet_since:
            quiet_since = now
        if (quiet_since and now - quiet_since >= 0.05) or now >= deadline:
            self.transport.abort()
            return
        asyncio.get_running_loop().call_later(0.01, self._abort_when_flushed, deadline, quiet_since)

    def _on_data(self, stream_id: int, data: bytes) -> None:
        """Keep a request's body, up to ``MAX_BODY_BYTES``: past it, answer 413 at once (APNs's
        ``PayloadTooLarge`` on its paths) and drop the rest of the body as it comes."""
        request = self.requests.get(stream_id)
        if request is None:
            return
        request[2] += len(data)
        if request[2] <= MAX_BODY_BYTES:
            request[1].append(data)
            return
        del self.requests[stream_id]
        path = next((v for k, v in request[0] if k == ":path"), "")
        if path.startswith("/3/"):
            answer = apns._reject(413, "PayloadTooLarge", str(uuid.uuid4()))  # noqa: SLF001 (its own answer)
        else:
            answer = Answer(413, [("content-type", "text/plain")], _reason_phrase(413).encode())
        self._respond(stream_id, answer)

    def _on_stream_ended(self, stream_id: int) -> None:
        request = self.requests.pop(stream_id, None)
        if request is None:
            return
        headers, chunks, _ = request
        pseudo = dict((k, v) for k, v in headers if k.startswith(":"))  # each one once: not malformed
        ex = Exchange(
            method=pseudo.get(":method", ""),
            path=pseudo.get(":path", ""),
            headers=headers,
            body=b"".join(chunks),
            connection=self.conn,
        )
        answer = route(self.state, ex)
        latency = self.state.faults.latency_ms
        if latency > 0:
            asyncio.get_running_loop().call_later(latency / 1000, self._respond, stream_id, answer)
        else:
            self._respond(stream_id, answer)

    def _respond(self, stream_id: int, answer: Answer) -> None:
        if self.closed:
            return
        headers = [(":status", str(answer.status)), *answer.headers]
        try:
            if answer.body:
                headers.append(("content-length", str(len(answer.body))))
                self.h2.send_headers(stream_id, headers)
                self.pending_data[stream_id] = answer.body
                self._send_pending()
            else:
                self.h2.send_headers(stream_id, headers, end_stream=True)
                self._answered(stream_id)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            self.open_streams.discard(stream_id)
        self._flush()
        self._maybe_close()

    def _answered(self, stream_id: int) -> None:
        self.open_streams.discard(stream_id)
        self._last_answered = max(self._last_answered, stream_id)

    def _send_pending(self) -> None:
        for stream_id in list(self.pending_data):
            data = self.pending_data[stream_id]
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                del self.pending_data[stream_id]
                continue
            size = min(window, len(data))
            while size > 0:
                chunk_size = min(size, self.h2.max_outbound_frame_size)
                # As APNs does, the frame carrying the end of the body ends the stream: an empty
                # DATA frame after it breaks clients that parse every DATA frame as JSON.
                last = chunk_size == len(data)
                self.h2.send_data(stream_id, data[:chunk_size], end_stream=last)
                data = data[chunk_size:]
                size -= chunk_size
            if data:
                self.pending_data[stream_id] = data
            else:
                del self.pending_data[stream_id]
                self._answered(stream_id)
        self._flush()

    def _maybe_close(self) -> None:
        # After our GOAWAY, once every accepted stream is answered the client closes; if it does
        # not, close a little later (closing at once would reset the last answers away).
        if self.goaway_last_stream >= 0 and not self.open_streams and not self.pending_data and not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_later(1.0, self.transport.close)

    # --- HTTP/1.1 --------------------------------------------------------------------------------
    def _h1_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self._touch()
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0 and len(self.buffer) <= MAX_HEAD_BYTES:
                return
            if head_end < 0 or head_end > MAX_HEAD_BYTES:
                return self._h1_refuse(431)
            request = _parse_head(self.buffer[:head_end])
            if request is None:
                return self._h1_refuse(400)
            method, target, http10, headers = request
            if any(name == "transfer-encoding" for name, _ in headers):
                return self._h1_refuse(501)  # no client of the simulator sends a chunked request
            lengths = {value for name, value in headers if name == "content-length"}
            if len(lengths) > 1 or not all(_DIGITS.fullmatch(length) for length in lengths):
                return self._h1_refuse(400)  # digits only: a negative length would rewind the buffer
            declared = lengths.pop() if lengths else "0"
            if len(declared) > 9 or int(declared) > MAX_BODY_BYTES:  # (int() refuses over 4,300 digits)
                return self._h1_refuse(413)
            length = int(declared)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            if target.startswith("/3/"):
                self.transport.close()  # APNs refuses HTTP/1.1
                return
            ex = Exchange(method=method, path=target, headers=headers, body=body, connection=self.conn)
            answer = route(self.state, ex)
            connection = dict(headers).get("connection", "").lower()
            keep_alive = connection == "keep-alive" if http10 else connection != "close"
            self._h1_answer(answer, keep_alive=keep_alive, with_body=method != "HEAD")
            if not keep_alive:
                self.transport.close()
                return

    def _h1_refuse(self, status: int) -> None:
        """Answer a request that cannot be read (400, 413, 431, 501) and close: nothing after it on
        the connection can be told apart from its body."""
        self.buffer = b""
        phrase = _reason_phrase(status)
        self._h1_answer(Answer(status, [("content-type", "text/plain")], phrase.encode()), keep_alive=False)
        self.transport.close()

    def _h1_answer(self, answer: Answer, *, keep_alive: bool, with_body: bool = True) -> None:
        out = [f"HTTP/1.1 {answer.status} {_reason_phrase(answer.status)}"]
        out += [f"{k}: {v}" for k, v in answer.headers]
        out.append(f"content-length: {len(answer.body)}")
        if not keep_alive:
            out.append("connection: close")
        head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        self.transport.write(head + answer.body if with_body else head)


def server_ssl_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A TLS server context offering h2 and http/1.1 by ALPN, from PEM files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_pem, key_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
