"""Run the push simulator: a fake APNs and FCM on loopback, with a page of phone mock-ups.

Defaults suit ``make run``: h2c (HTTP/2 cleartext, prior knowledge) and HTTP/1.1 on
127.0.0.1:8440 (APNs production, FCM, the OAuth token endpoint, control, the page) and
127.0.0.1:8441 (APNs sandbox). ``--tls`` adds TLS listeners (8442 production, 8443 sandbox)
with a certificate from a CA generated into ``var/pushsim/``; point ``PUSHDESK_CA_BUNDLE``
at its ``ca.pem``.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.digits import command_number
from delivery.pushsim import PushSimulator
from delivery.pushsim.state import InvalidField
from delivery.pushsim.trust import trust_file_path, trust_loader

# The faults whose option is not named after them.
_OPTIONS = {
    "goaway_after_streams": "goaway-after",
    "drop_after_streams": "drop-after",
    "idle_timeout_s": "idle-timeout",
}


# Read as send_stream's --slot is: a port typed in other digits is refused, not listened on.
_port = command_number("port", give="0 to 65535 (0: any free one)", most=65535)
# So are the faults counted in whole numbers: '٣' injects no fault a script named as typed.
_seconds = command_number("number of seconds", give="0 or more")
_streams = command_number("count of streams", give="0 (never) or more")


def _listen_refused(exc: OSError, options: dict) -> str:
    """Which option's port the simulator could not listen on, and what to do, in one line."""
    import errno
    import re

    host, port = options["host"], None
    found = re.search(r"\('([^']*)', (\d+)\)", str(exc))
    if found:
        host, port = found[1], int(found[2])
    ports = {"--port": options["port"], "--sandbox-port": options["sandbox_port"]}
    if options["tls"]:
        ports |= {"--tls-port": options["tls_port"], "--sandbox-tls-port": options["sandbox_tls_port"]}
    option = next((name for name, value in ports.items() if port is not None and value == port), None)
    if option is None:
        return f"the simulator cannot listen on {host} ({exc.strerror or exc}): check --host and the ports"
    if exc.errno == errno.EADDRINUSE:
        return f"{option} {port}: {host}:{port} is in use: stop what listens there, or choose another {option}"
    return f"{option} {port}: the simulator cannot listen on {host}:{port} ({exc.strerror or exc}): choose another {option} or --host"


class Command(BaseCommand):
    help = "Run the push simulator (fake APNs + FCM) until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=_port, default=8440, help="h2c/HTTP/1.1: APNs production, FCM, page")
        parser.add_argument("--sandbox-port", type=_port, default=8441, help="h2c/HTTP/1.1: APNs sandbox")
        parser.add_argument("--tls", action="store_true", help="also listen with TLS (ALPN h2, http/1.1)")
        parser.add_argument("--tls-port", type=_port, default=8442)
        parser.add_argument("--sandbox-tls-port", type=_port, default=8443)
        parser.add_argument("--rate-429", type=float, default=0.0, help="fraction of sends answered 429")
        parser.add_argument("--rate-500", type=float, default=0.0, help="fraction of sends answered 500")
        parser.add_argument("--rate-503", type=float, default=0.0, help="fraction of sends answered 503")
        parser.add_argument("--retry-after", type=_seconds, default=1, help="Retry-After seconds on 429/503")
        parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
        parser.add_argument("--goaway-after", type=_streams, default=0, help="GOAWAY a connection after N streams")
        parser.add_argument("--drop-after", type=_streams, default=0, help="drop a connection after N streams")
        parser.add_argument("--idle-timeout", type=float, default=0.0, help="GOAWAY IdleTimeout after S idle seconds")
        parser.add_argument("--dead-rate", type=float, default=0.0, help="fraction of unknown tokens that are dead")
        parser.add_argument("--dead-token", action="append", default=[], help="a token that is unregistered")
        parser.add_argument("--strict-tokens", action="store_true", help="unknown tokens are invalid")

    def handle(self, *args, **o):
        ca_dir = str(settings.VAR_DIR / "pushsim") if o["tls"] else ""
        sim = PushSimulator(
            host=o["host"],
            port=o["port"],
            sandbox_port=o["sandbox_port"],
            tls=o["tls"],
            tls_port=o["tls_port"],
            sandbox_tls_port=o["sandbox_tls_port"],
            ca_dir=ca_dir,
        )
        faults = {
            "rate_429": o["rate_429"],
            "rate_500": o["rate_500"],
            "rate_503": o["rate_503"],
            "retry_after": o["retry_after"],
            "latency_ms": o["latency_ms"],
            "goaway_after_streams": o["goaway_after"],
            "drop_after_streams": o["drop_after"],
            "idle_timeout_s": o["idle_timeout"],
            "dead_rate": o["dead_rate"],
            "strict_tokens": o["strict_tokens"],
        }
        try:
            sim.state.faults.update(faults)
        except InvalidField as exc:  # checked as a /control/faults request is, before anything listens
            option = _OPTIONS.get(exc.field, exc.field.replace("_", "-"))
            raise CommandError(f"--{option}: {exc}") from exc
        for token in o["dead_token"]:
            platform = "ios" if all(c in "0123456789abcdefABCDEF" for c in token) else "android"
            sim.state.add_device(token=token, platform=platform, state="unregistered")
        loader = trust_loader(sim.state, trust_file_path())
        loader()
        sim.state.trust_file_loader = loader
        try:
            sim.start()
        except OSError as exc:  # a port taken, an address not this machine's: asyncio's traceback said it
            sim.stop()
            raise CommandError(_listen_refused(exc, o)) from None
        self.stdout.write(f"Push simulator: {sim.url()}/ (phones), APNs production {sim.apns_url('production')}")
        self.stdout.write(f"  APNs sandbox {sim.apns_url('sandbox')}, FCM {sim.fcm_url()}, token URI {sim.token_uri}")
        if o["tls"]:
            self.stdout.write(f"  TLS: {sim.apns_url('production', tls=True)}, {sim.apns_url('sandbox', tls=True)}")
            self.stdout.write(f"  CA: {sim.ca_path} (set PUSHDESK_CA_BUNDLE to it)")
        try:
            sim.wait()
        except KeyboardInterrupt:
            pass
        finally:
            sim.stop()
