"""What the web logs of a request the client got wrong: one line an operator can read, no traceback."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.fakes.workers import database_url
from tests.processes import ROOT, free_port


def _lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("django.")]


@pytest.mark.django_db
def test_a_request_for_an_unknown_host_is_one_warning_naming_the_host_and_the_client(client, caplog, settings):
    settings.PUSHDESK_TRUSTED_PROXIES = 1
    caplog.set_level(logging.INFO)
    answer = client.get("/admin/", HTTP_HOST="scanner.example", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert answer.status_code == 400
    [line] = _lines(caplog)
    assert line.name == "django.security.DisallowedHost"
    assert (line.levelno, line.exc_info, line.exc_text) == (logging.WARNING, None, None)
    assert line.getMessage() == (
        "refused a request for the host 'scanner.example' (not in ALLOWED_HOSTS) from 203.0.113.9: GET /admin/"
    )
    assert (line.host, line.client) == ("scanner.example", "203.0.113.9")
    assert "Traceback" not in caplog.text


@pytest.mark.django_db
def test_an_unknown_host_s_line_stays_one_line_and_short(client, caplog):
    caplog.set_level(logging.INFO)
    host = "a\x1b[31m.example" + "x" * 5000
    answer = client.get("/api/v1/me/", HTTP_HOST=host)
    assert answer.status_code == 400
    [line] = _lines(caplog)
    message = line.getMessage()
    assert "\n" not in message and "\x1b" not in message and len(message) < 400
    assert "from 127.0.0.1: GET /api/v1/me/" in message


@pytest.mark.django_db
def test_an_unknown_host_s_line_is_left_out_where_warnings_are_not_logged(client, caplog):
    caplog.set_level(logging.ERROR, logger="django.security")
    assert client.get("/admin/", HTTP_HOST="scanner.example").status_code == 400
    assert not _lines(caplog)


def _form(fields: int) -> str:
    return "&".join(f"field{i}=1" for i in range(fields))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        (
            "application/x-www-form-urlencoded",
            "a=" + "x" * 25_000,
            "its body is over PUSHDESK_MAX_REQUEST_BYTES (20,000 bytes)",
        ),
        ("application/x-www-form-urlencoded", _form(1001), "more than 1,000 query parameters or form fields"),
        ("multipart/form-data", "x", "a malformed multipart body (Invalid boundary in multipart: None)"),
    ],
    ids=["too-big", "too-many-fields", "malformed-multipart"],
)
def test_a_body_refused_as_it_is_read_is_one_warning_naming_the_client_and_why(
    client, caplog, settings, content_type, body, why
):
    """An admin form's body too big, with too many fields, or not multipart as it says: the client's
    mistake, logged as one line (Django logged each as an error with its traceback)."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 20_000
    settings.PUSHDESK_TRUSTED_PROXIES = 1
    caplog.set_level(logging.INFO)
    answer = client.post("/admin/login/", body, content_type=content_type, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert answer.status_code == 400
    [line] = _lines(caplog)
    assert (line.levelno, line.exc_info, line.exc_text) == (logging.WARNING, None, None)
    assert line.getMessage() == f"refused a request from 203.0.113.9: POST /admin/login/: {why}"
    assert line.client == "203.0.113.9"
    assert "Traceback" not in caplog.text


@pytest.mark.django_db
def test_an_error_of_the_application_keeps_its_traceback(client, caplog, monkeypatch):
    from accounts.middleware import RefuseNulMiddleware

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(RefuseNulMiddleware, "__call__", broken)
    client.raise_request_exception = False
    caplog.set_level(logging.INFO)
    assert client.get("/admin/login/").status_code == 500
    [line] = _lines(caplog)
    assert (line.levelno, line.exc_info[0]) == (logging.ERROR, RuntimeError)


def test_the_web_server_logs_one_json_line_for_an_unknown_host(tmp_path):
    """The web unit's own output, as a log pipeline reads it: a scanner's request with a made-up
    ``Host`` answers 400 and writes one line, not a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDESK_")}
    env.update(LOG_FORMAT="json", PUSHDESK_VAR_DIR=str(tmp_path), DATABASE_URL=database_url())
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "config.web", "--workers", "1", "--stop-seconds", "5", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        answer = httpx.get(f"http://127.0.0.1:{port}/admin/login/", headers={"Host": "scanner.example"}, timeout=30)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        output, _ = web.communicate(timeout=30)
    assert answer.status_code == 400, output
    entries = [json.loads(line) for line in output.splitlines() if line.strip()]
    refused = [e for e in entries if e["logger"].startswith("django.")]
    assert [(e["level"], e["logger"]) for e in refused] == [("WARNING", "django.security.DisallowedHost")], output
    assert refused[0]["message"] == (
        "refused a request for the host 'scanner.example' (not in ALLOWED_HOSTS) from 127.0.0.1: GET /admin/login/"
    )
    assert (refused[0]["host"], refused[0]["client"]) == ("scanner.example", "127.0.0.1")
    assert "exc_info" not in refused[0] and "Traceback" not in output


def _logged_at(level: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDESK_")}
    env.update(LOG_LEVEL=level, PUSHDESK_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="config.settings")
    script = (
        "import django; django.setup(); import logging\n"
        "logging.getLogger('django.request').warning('Not Found: /nothing-here/')\n"
        "logging.getLogger('django.template').debug('Exception while resolving variable')\n"
        "logging.getLogger('django.request').error('Internal Server Error: /api/v1/me/')\n"
        "logging.getLogger('pushdesk.x').warning('a warning of pushdesk')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return result.stderr


def test_log_level_quiets_django_s_own_lines_too(tmp_path):
    """Django's loggers kept Django's level (INFO) whatever LOG_LEVEL said: at ERROR, every 404, 401
    and 405 was still a warning line."""
    quiet = _logged_at("ERROR", tmp_path)
    assert "Internal Server Error" in quiet
    assert "Not Found" not in quiet and "a warning of pushdesk" not in quiet
    usual = _logged_at("INFO", tmp_path)
    assert "Not Found" in usual and "a warning of pushdesk" in usual
    # At DEBUG, Django's own debugging lines (a template's every missing variable) stay out.
    verbose = _logged_at("DEBUG", tmp_path)
    assert "Not Found" in verbose and "resolving variable" not in verbose
