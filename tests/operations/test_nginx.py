"""The documented nginx configuration in front of the production web server (``config.web``): TLS, the forwarded headers,
static files from WhiteNoise (hashed, compressed, cached for a year), large uploads, the probes."""

import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connections

from tests.fakes.workers import database_url
from tests.processes import free_port

ROOT = Path(settings.BASE_DIR)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

pytestmark = [
    pytest.mark.skipif(not Path(NGINX).exists(), reason="needs nginx (apt-get install nginx-light)"),
    pytest.mark.skipif(
        not settings.REDIS_URL or connections["default"].vendor != "postgresql",
        reason="production mode needs PostgreSQL and Redis",
    ),
]


def _wait(url: str, **kwargs) -> None:
    for _ in range(600):
        try:
            httpx.get(url, timeout=5, **kwargs)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


@pytest.fixture
def production_web(transactional_db, tmp_path):
    """collectstatic, then the web server in production mode on a free port, as the operator's guide does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHDESK_", "DEBUG", "DJANGO_"))}
    env.update(
        PUSHDESK_MODE="production",
        PUSHDESK_INSTANCE=settings.PUSHDESK_INSTANCE,
        SECRET_KEY="a-test-only-secret-key-" + "k3y" * 20,
        PUSHDESK_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        ALLOWED_HOSTS="push.example.com",
        CSRF_TRUSTED_ORIGINS="https://push.example.com",
        PUSHDESK_TRUSTED_PROXIES="1",
        STATIC_ROOT=str(tmp_path / "static"),
        MEDIA_ROOT=str(tmp_path / "media"),
        PUSHDESK_VAR_DIR=str(tmp_path / "var"),
    )
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collect.returncode == 0, collect.stderr
    port = free_port()
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115
    web = subprocess.Popen(
        # Requests a closing connection still holds get 10 s, within the 30 s the teardown waits.
        [sys.executable, "-m", "config.web", "--workers", "2", "--stop-seconds", "10", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/healthz")
        yield port
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)
        log.close()


@pytest.fixture
def nginx(production_web, tmp_path):
    """The documented nginx.conf, with this test's ports, certificate and web machine."""
    ca = trustme.CA()
    cert = ca.issue_cert("push.example.com")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    http_port, https_port = free_port(), free_port()
    site = (ROOT / "docs" / "deploy" / "nginx.conf").read_text()
    site = site.replace("server 127.0.0.1:8000 ", f"server 127.0.0.1:{production_web} ")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    site = site.replace("/etc/ssl/pushdesk/fullchain.pem", str(tmp_path / "server.pem"))
    site = site.replace("/etc/ssl/pushdesk/privkey.pem", str(tmp_path / "server.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"""
worker_processes 1;
error_log {tmp_path}/nginx-error.log warn;
pid {tmp_path}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/site.conf;
}}
"""
    )
    server = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{http_port}/")
        yield {"http": http_port, "https": https_port, "ca": str(tmp_path / "ca.pem"), "web": production_web}
    finally:
        server.send_signal(signal.SIGQUIT)
        server.wait(30)


def test_the_documented_nginx_serves_the_admin_styled_over_tls(nginx):
    ssl_context = ssl.create_default_context(cafile=nginx["ca"])
    with httpx.Client(verify=ssl_context, timeout=30, follow_redirects=False) as http:
        url = f"https://127.0.0.1:{nginx['https']}"
        headers = {"Host": "push.example.com"}
        ext = {"sni_hostname": "push.example.com"}
        login = http.get(f"{url}/admin/login/", headers=headers, extensions=ext)
        assert login.status_code == 200, login.text[:500]
        # Static files: content-hashed names, served with a year's cache and compressed.
        css = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login.text)
        assert css, login.text[:2000]
        sheet = http.get(f"{url}{css.group(1)}", headers={**headers, "Accept-Encoding": "gzip"}, extensions=ext)
        assert sheet.status_code == 200
        assert "immutable" in sheet.headers["Cache-Control"] and "max-age=315360000" in sheet.headers["Cache-Control"]
        assert sheet.headers.get("Content-Encoding") == "gzip"
        docs = http.get(f"{url}/api/v1/docs/", headers=headers, extensions=ext)
        assert docs.status_code == 200
        swagger = re.search(r'src="(/static/drf_spectacular_sidecar/[^"]+\.js)"', docs.text)
        assert swagger and http.get(f"{url}{swagger.group(1)}", headers=headers, extensions=ext).status_code == 200
        # A 2 MB body reaches Django (nginx's default limit is 1 MB): the API answers it, not nginx.
        big = http.post(
            f"{url}/api/v1/profiles/bulk/", headers=headers, content=b"x" * (2 * 1024 * 1024), extensions=ext
        )
        assert big.status_code != 413 and big.headers.get("Content-Type", "").startswith("application/json")
    # Plain HTTP moves to HTTPS.
    moved = httpx.get(f"http://127.0.0.1:{nginx['http']}/admin/", headers={"Host": "push.example.com"})
    assert moved.status_code == 301 and moved.headers["Location"].startswith("https://push.example.com")
    # A load balancer's probe straight to a web machine: plain HTTP, an IP Host, no redirect.
    probe = httpx.get(f"http://127.0.0.1:{nginx['web']}/readyz")
    assert probe.status_code == 200 and probe.json() == {"status": "ready"}, probe.text
