"""An OAuth token endpoint that answers every request with one fixed answer, over HTTPS on loopback:
what a proxy or a wrong ``token_uri`` puts between a service account and Google's tokens."""

from __future__ import annotations

import http.server
import ssl
import threading
from contextlib import contextmanager

import trustme


@contextmanager
def token_endpoint(*, status: int, body: bytes, ca_path: str):
    """Yield the endpoint's URL; its CA is written to ``ca_path`` (point PUSHDESK_CA_BUNDLE there)."""

    class Answering(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ca = trustme.CA()
    ca.cert_pem.write_to_path(ca_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/token"
    finally:
        server.shutdown()
        server.server_close()
