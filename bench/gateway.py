"""Benchmark: the providers' send path alone, from one process, against nginx HTTP/2 on loopback.

    .venv/bin/python bench/gateway.py [--requests 100000]

Starts nginx (Debian's ``nginx-light``) with TLS and HTTP/2 on a free loopback port (one
worker, 1000 streams per connection, access log off, the request's ``apns-id`` echoed as APNs
does), measures h2load (``nghttp2-client``: 4 connections x 100 streams) on the same endpoint
before and after, for the reference figure, then sends N APNs messages through ``ApnsClient.send`` and N FCM messages
through ``FcmClient.send`` (JWT, headers, JSON bodies, the pycurl transport, outcome mapping:
everything but the database). Prints one JSON line: requests/s for each path, the ratio to
h2load, and the CPU time per request of this process.
"""

import argparse
import json
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import trustme  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

from delivery.providers.apns import ApnsClient, ApnsMessage  # noqa: E402
from delivery.providers.fcm import FcmClient, FcmMessage  # noqa: E402
from delivery.transport import Http2Transport  # noqa: E402

NGINX_CONF = """
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 1000;
    client_body_buffer_size 64k;
    map $http_apns_id $reply_apns_id {{ default $http_apns_id; '' $request_id; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        default_type application/json;
        location /3/device/ {{ add_header apns-id $reply_apns_id always; return 200; }}
        location /token {{
            return 200 '{{"access_token":"ya29.bench","expires_in":3599,"token_type":"Bearer"}}';
        }}
        location /v1/ {{ return 200 '{{"name":"projects/bench/messages/$request_id"}}'; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(workdir: Path) -> tuple[subprocess.Popen, str, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("nginx is missing: apt-get install nginx-light")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(workdir / "server.pem"))
    cert.private_key_pem.write_to_path(str(workdir / "server.key"))
    ca_path = str(workdir / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir, port=port, user=user))
    proc = subprocess.Popen(
        [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"https://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, base, ca_path
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"nginx did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
    sys.exit("nginx did not start listening")


def h2load(base: str, requests: int, workdir: Path) -> float:
    binary = shutil.which("h2load")
    if binary is None:
        sys.exit("h2load is missing: apt-get install nghttp2-client")
    body = workdir / "body.json"
    body.write_bytes(b'{"aps":{"alert":{"title":"Hello","body":"Benchmark"}}}')
    out = subprocess.run(
        [
            binary,
            "-n",
            str(requests),
            "-c",
            "4",
            "-m",
            "100",
            "-t",
            "1",
            "-d",
            str(body),
            "-H",
            "apns-topic: com.example.bench",
            "-H",
            "apns-push-type: alert",
            f"{base}/3/device/{'ab' * 32}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if match is None or f"{requests} succeeded" not in out:
        sys.exit(f"h2load did not complete every request:\n{out[-800:]}")
    return float(match.group(1))


def measure(send, batches) -> tuple[float, float, int]:
    """Run ``send`` over every batch: (requests/s, CPU µs per request, accepted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    accepted = 0
    total = 0
    for batch in batches:
        outcomes = send(batch)
        accepted += sum(1 for o in outcomes if o.accepted)
        total += len(batch)
    elapsed = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    return total / elapsed, cpu / total * 1e6, accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    os.chmod(workdir, 0o755)
    proc, base, ca_path = start_nginx(workdir)
    try:
        before = h2load(base, args.requests, workdir)

        key = ec.generate_private_key(ec.SECP256R1())
        p8 = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        apns = ApnsClient(
            team_id="BENCHTEAM1",
            key_id="BENCHKEY01",
            private_key_pem=p8,
            bundle_id="com.example.bench",
            base_url=base,
            transport=Http2Transport(
                ca_bundle=ca_path,
                max_connections_per_host=args.connections,
                max_streams_per_connection=args.streams,
                all_headers=False,
            ),
        )
        payload = {"aps": {"alert": {"title": "Hello", "body": "Benchmark"}}, "campaign": "bench"}
        apns_batches = [
            [
                ApnsMessage(token=f"{i:064x}", payload=payload)
                for i in range(start, min(start + args.batch, args.requests))
            ]
            for start in range(0, args.requests, args.batch)
        ]
        apns.send(apns_batches[0][:100])  # connect and warm up
        apns_rps, apns_cpu, apns_ok = measure(apns.send, apns_batches)
        apns.close()

        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        info = {
            "type": "service_account",
            "project_id": "bench",
            "private_key_id": "bench",
            "private_key": rsa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "client_email": "bench@bench.iam.gserviceaccount.com",
            "token_uri": f"{base}/token",
        }
        fcm = FcmClient(
            service_account_info=info,
            base_url=base,
            transport=Http2Transport(
                ca_bundle=ca_path,
                max_connections_per_host=args.connections,
                max_streams_per_connection=args.streams,
                all_headers=False,
            ),
            http=httpx.Client(verify=ssl.create_default_context(cafile=ca_path)),
        )
        fcm_batches = [
            [
                FcmMessage(
                    message={
                        "token": f"bench-token-{i:012d}" + "x" * 140,
                        "notification": {"title": "Hello", "body": "Benchmark"},
                        "data": {"campaign": "bench"},
                        "android": {"priority": "high"},
                    }
                )
                for i in range(start, min(start + args.batch, args.requests))
            ]
            for start in range(0, args.requests, args.batch)
        ]
        fcm.send(fcm_batches[0][:100])
        fcm_rps, fcm_cpu, fcm_ok = measure(fcm.send, fcm_batches)
        fcm.close()
        # The machine's load can drift during the run: h2load before and after, averaged.
        reference = (before + h2load(base, args.requests, workdir)) / 2
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        json.dumps(
            {
                "benchmark": "gateway",
                "requests": args.requests,
                "in_flight": args.connections * args.streams,
                "apns_requests_per_s": round(apns_rps),
                "fcm_requests_per_s": round(fcm_rps),
                "h2load_requests_per_s": round(reference),
                "apns_ratio_to_h2load": round(apns_rps / reference, 3),
                "fcm_ratio_to_h2load": round(fcm_rps / reference, 3),
                "apns_cpu_us_per_request": round(apns_cpu, 1),
                "fcm_cpu_us_per_request": round(fcm_cpu, 1),
                # What one core would do if nothing else ran on it: steadier than requests/s
                # on a machine whose other work comes and goes.
                "apns_requests_per_cpu_s": round(1e6 / apns_cpu),
                "fcm_requests_per_cpu_s": round(1e6 / fcm_cpu),
                "apns_accepted": apns_ok,
                "fcm_accepted": fcm_ok,
                "goal": {"requests_per_s": 15000, "ratio_to_h2load": 0.25},
            }
        )
    )


if __name__ == "__main__":
    main()
