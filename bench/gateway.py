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
import resource
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from support.nginx import h2load, start_nginx  # noqa: E402

from delivery.providers.apns import ApnsClient, ApnsMessage  # noqa: E402
from delivery.providers.fcm import FcmClient, FcmMessage  # noqa: E402
from delivery.transport import Http2Transport  # noqa: E402


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
