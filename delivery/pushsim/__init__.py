"""The push simulator: a faithful fake APNs and FCM on loopback, for tests, benchmarks and the demo.

Use it from Python (tests start it on free ports in a thread)::

    sim = PushSimulator(tls=True).start()
    sim.state.add_apns_key(key_id=..., team_id=..., public_key_pem=..., topics=["com.example.app"])
    sim.apns_url("sandbox", tls=True)   # -> "https://127.0.0.1:<port>"
    sim.fcm_url(), sim.token_uri        # FCM base URL and the OAuth token endpoint
    sim.ca_path                          # the CA that signed its certificate (tls=True)
    sim.state.count("<device token>")   # what a device received
    sim.stop()

or as ``manage.py pushsim`` (see that command for its flags and default ports).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass

from delivery.pushsim.server import SimProtocol, server_ssl_context
from delivery.pushsim.state import Faults, SimState

__all__ = ["PushSimulator", "SimState", "Faults"]


@dataclass
class Listener:
    host: str
    port: int
    environment: str  # APNs environment: "production" or "sandbox"
    tls: bool


class PushSimulator:
    """Fake APNs + FCM listening on loopback: h2c (and HTTP/1.1) ports, plus TLS ports when ``tls``.

    Ports given as 0 are picked free at start. ``ca_dir`` keeps the generated CA and server
    certificate (a temporary directory when not given); or pass ``cert_file``/``key_file``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sandbox_port: int = 0,
        tls: bool = False,
        tls_port: int = 0,
        sandbox_tls_port: int = 0,
        ca_dir: str = "",
        cert_file: str = "",
        key_file: str = "",
        state: SimState | None = None,
    ):
        self.host = host
        self.state = state or SimState()
        self.listeners = [Listener(host, port, "production", False), Listener(host, sandbox_port, "sandbox", False)]
        if tls:
            self.listeners += [
                Listener(host, tls_port, "production", True),
                Listener(host, sandbox_tls_port, "sandbox", True),
            ]
        self.tls = tls
        self.ca_dir = ca_dir
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_path = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: weakref.WeakSet[SimProtocol] = weakref.WeakSet()
        self._tmp: tempfile.TemporaryDirectory | None = None

    # --- addresses ------------------------------------------------------------------------------
    def _listener(self, environment: str, tls: bool) -> Listener:
        for listener in self.listeners:
            if listener.environment == environment and listener.tls == tls:
                return listener
        raise ValueError(f"no {'TLS ' if tls else ''}listener for {environment}")

    def url(self, *, environment: str = "production", tls: bool = False) -> str:
        listener = self._listener(environment, tls)
        return f"{'https' if tls else 'http'}://{self.host}:{listener.port}"

    def apns_url(self, environment: str = "production", *, tls: bool = False) -> str:
        return self.url(environment=environment, tls=tls)

    def fcm_url(self, *, tls: bool = False) -> str:
        return self.url(tls=tls)

    @property
    def token_uri(self) -> str:
        """The OAuth token endpoint (over HTTP/1.1 or h2, cleartext)."""
        return self.url() + "/token"

    # --- lifecycle -------------------------------------------------------------------------------
    def _tls_context(self):
        if not self.cert_file:
            import trustme

            directory = self.ca_dir
            if not directory:
                self._tmp = tempfile.TemporaryDirectory(prefix="pushsim-")
                directory = self._tmp.name
            os.makedirs(directory, exist_ok=True)
            ca = trustme.CA(organization_name="Pushdesk push simulator")
            cert = ca.issue_cert(self.host, "localhost", "127.0.0.1")
            self.ca_path = os.path.join(directory, "ca.pem")
            self.cert_file = os.path.join(directory, "server.pem")
            self.key_file = os.path.join(directory, "server.key")
            ca.cert_pem.write_to_path(self.ca_path)
            cert.cert_chain_pems[0].write_to_path(self.cert_file)
            for extra in cert.cert_chain_pems[1:]:
                extra.write_to_path(self.cert_file, append=True)
            cert.private_key_pem.write_to_path(self.key_file)
        return server_ssl_context(self.cert_file, self.key_file)

    def _connection(self, environment: str) -> SimProtocol:
        protocol = SimProtocol(self.state, environment)
        self._connections.add(protocol)
        return protocol

    def start(self) -> PushSimulator:
        """Start listening (in a background thread) and return once every port is bound."""
        # hpack logs every header it decodes at DEBUG: here that is every provider token and
        # OAuth access token the simulator receives. Keep it out of the logs.
        logging.getLogger("hpack").setLevel(max(logging.INFO, logging.getLogger("hpack").getEffectiveLevel()))
        self.state.keep_start_state()
        ssl_context = self._tls_context() if self.tls else None
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                for listener in self.listeners:
                    server = loop.run_until_complete(
                        loop.create_server(
                            lambda env=listener.environment: self._connection(env),
                            listener.host,
                            listener.port,
                            ssl=ssl_context if listener.tls else None,
                            reuse_address=True,
                            backlog=512,
                        )
                    )
                    listener.port = server.sockets[0].getsockname()[1]
                    self._servers.append(server)
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            for server in self._servers:
                server.close()
            # As when a server goes down: its clients' connections are reset, not left hanging.
            for protocol in list(self._connections):
                if protocol.transport is not None:
                    protocol.transport.abort()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="pushsim", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving; stopping twice is harmless."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def wait(self) -> None:
        """Block until the simulator stops (the management command's main loop)."""
        if self._thread is not None:
            while self._thread.is_alive():
                self._thread.join(1)

    def __enter__(self) -> PushSimulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
