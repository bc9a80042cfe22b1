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
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from delivery.pushsim.apns import handle_apns
from delivery.pushsim.control import handle_control, handle_page
from delivery.pushsim.fcm import handle_send, handle_token
from delivery.pushsim.state import Answer, Connection, Exchange, SimState

log = logging.getLogger("delivery.pushsim")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_conn_ids = itertools.count(1)


def route(state: SimState, ex: Exchange) -> Answer:
    path = ex.path
    if path.startswith("/3/"):
        answer = handle_apns(state, ex)
    elif path.startswith("/v1/projects/"):
        answer = handle_send(state, ex)
    elif path.split("?")[0] == "/token":
        answer = handle_token(state, ex)
    elif path.startswith("/control/"):
        answer = handle_control(state, ex)
    elif path.split("?")[0] == "/" and ex.method == "GET":
        answer = handle_page(state, ex)
    else:
        answer = handle_apns(state, ex)  # APNs answers 404 BadPath (or 405) for anything else
    with state.lock:
        state.requests[answer.status] += 1
    return answer


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
        """Restart the idle clock (fault ``idle_timeout_s``: GOAWAY IdleTimeout after that long idle)."""
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
            config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False)
            self.h2 = h2.connection.H2Connection(config=config)
            self.h2.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 8000,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                },
            )
            self.h2.initiate_connection()
            self.h2.increment_flow_control_window(1 << 24)
            self._flush()
            self._touch()

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
                if event.stream_id in self.requests:
                    self.requests[event.stream_id][1].append(event.data)
            elif isinstance(event, h2.events.StreamEnded):
                self._on_stream_ended(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.requests.pop(event.stream_id, None)
                self.open_streams.discard(event.stream_id)
                self.pending_data.pop(event.stream_id, None)
            elif isinstance(event, h2.events.WindowUpdated):
                self._send_pending()
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
        self.requests[stream_id] = [headers, []]
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

    def _on_stream_ended(self, stream_id: int) -> None:
        request = self.requests.pop(stream_id, None)
        if request is None:
            return
        headers, chunks = request
        pseudo = dict((k, v) for k, v in headers if k.startswith(":"))
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
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            headers = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
            length = int(dict(headers).get("content-length", "0") or 0)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            if target.startswith("/3/"):
                self.transport.close()  # APNs refuses HTTP/1.1
                return
            ex = Exchange(method=method, path=target, headers=headers, body=body, connection=self.conn)
            answer = route(self.state, ex)
            keep_alive = dict(headers).get("connection", "").lower() != "close"
            reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
            out = [f"HTTP/1.1 {answer.status} {reason.get(answer.status, 'Status')}"]
            out += [f"{k}: {v}" for k, v in answer.headers]
            out.append(f"content-length: {len(answer.body)}")
            if not keep_alive:
                out.append("connection: close")
            self.transport.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + answer.body)
            if not keep_alive:
                self.transport.close()
                return


def server_ssl_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A TLS server context offering h2 and http/1.1 by ALPN, from PEM files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_pem, key_pem)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
