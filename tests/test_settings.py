"""Start-up refuses bad configuration with one clear line; production settings pass check --deploy."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "PUSHDESK_MODE": "production",
    "SECRET_KEY": "x" * 20 + "a-test-only-secret-key-that-is-long-enough-for-django-checks",
    "PUSHDESK_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/pushdesk",
    "ALLOWED_HOSTS": "pushdesk.example.com",
}


def _manage(*args, env, tmp_path):
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUSHDESK_", "DATABASE_URL", "SECRET_KEY", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"))
    }
    full_env.update({"PUSHDESK_VAR_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_check_deploy(tmp_path):
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("missing", ["PUSHDESK_ENCRYPTION_KEY", "SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without_a_required_setting(tmp_path, missing):
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != missing}
    result = _manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert missing in lines[0] and "set" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["not a url", "postgres//missing-colon", "mysql2://x@y/z", "postgres://"])
def test_malformed_database_url_stops_start_up_with_one_line(tmp_path, url):
    result = _manage("check", env={"DATABASE_URL": url}, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0]


def test_embedded_mode_generates_and_keeps_its_keys(tmp_path):
    first = _manage("check", env={}, tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "encryption.key"
    assert key_file.exists()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = key_file.read_text()
    assert _manage("check", env={}, tmp_path=tmp_path).returncode == 0
    assert key_file.read_text() == key
