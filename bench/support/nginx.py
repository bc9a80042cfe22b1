"""An nginx HTTP/2 + TLS endpoint on loopback that answers as APNs and FCM (every push accepted),
and h2load's rate against it: the sink and the reference of the send benchmarks."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import trustme
from support.http_load import free_port

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
