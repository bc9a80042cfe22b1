"""Start-up refuses bad configuration with one clear line; production settings pass check --deploy."""

import json
import os
import re
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
    "REDIS_URL": "redis://127.0.0.1:6379/8",
    "PUSHDESK_INSTANCE": "test-instance",
}


def _manage(*args, env, tmp_path):
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("PUSHDESK_", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")
        )
    }
    full_env.update({"PUSHDESK_VAR_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_check_deploy(tmp_path):
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize(
    "missing",
    ["PUSHDESK_ENCRYPTION_KEY", "SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "REDIS_URL", "PUSHDESK_INSTANCE"],
)
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


# One malformed value per setting read from the environment, each refused at start-up with one line.
BAD_VALUES = {
    "ALLOWED_HOSTS": "https://push.example.com/",
    "CSRF_TRUSTED_ORIGINS": "push.example.com",
    "DATABASE_URL": "mysql://u@h/db",
    "DEBUG": "maybe",
    "LOG_FORMAT": "xml",
    "LOG_LEVEL": "LOUD",
    "MEDIA_ROOT": "relative/media",
    "PUSHDESK_APNS_PRODUCTION_URL": "api.push.apple.com",
    "PUSHDESK_APNS_SANDBOX_URL": "ftp://sandbox",
    "PUSHDESK_CA_BUNDLE": "/nonexistent/ca.pem",
    "PUSHDESK_DEEP_LINK_SCHEMES": "https,my app",
    "PUSHDESK_ENCRYPTION_KEY": "not-a-fernet-key",
    "PUSHDESK_FCM_URL": "https://",
    "PUSHDESK_IMPORT_BATCH_ROWS": "0",
    "PUSHDESK_IMPORT_MAX_BYTES": "1GB",
    "PUSHDESK_IMPORT_TASK_SECONDS": "-5",
    "PUSHDESK_IMPORT_STALL_SECONDS": "60",  # under the queue's timeout: a live import would read as stalled
    "PUSHDESK_INGEST_RATE_PER_KEY": "-1",
    "PUSHDESK_INSTANCE": "Production EU",
    "PUSHDESK_LOGIN_LOCKOUT_SECONDS": "15m",
    "PUSHDESK_LOGIN_MAX_FAILURES": "five",
    "PUSHDESK_MODE": "staging",
    "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": "localhost:8440",
    "PUSHDESK_PUSHSIM_APNS_SANDBOX_URL": "localhost:8441",
    "PUSHDESK_PUSHSIM_FCM_URL": "tcp://127.0.0.1:8440",
    "PUSHDESK_QUEUE_NAME": "my queue",
    "PUSHDESK_RESOLVE_SLICES": "two",
    "PUSHDESK_RESOLVE_SLICE_PROFILES": "0",
    "PUSHDESK_GC_THRESHOLD": "10000,10",
    "PUSHDESK_SEND_BACKOFF_SECONDS": "soon",
    "PUSHDESK_SEND_BATCH": "abc",
    "PUSHDESK_SEND_CONNECTIONS": "0",
    "PUSHDESK_SEND_LEASE_SECONDS": "2.5",
    "PUSHDESK_SEND_MAX_ATTEMPTS": "many",
    "PUSHDESK_SEND_TASKS": "x",
    "PUSHDESK_STOP_SECONDS": "0",
    "PUSHDESK_METRICS_TOKEN": "short",
    "PUSHDESK_CACHE_SECONDS": "a minute",
    "PUSHDESK_STREAM_SENDERS": "0",
    "PUSHDESK_STREAM_POLL_SECONDS": "often",
    "PUSHDESK_MAX_REQUEST_BYTES": "24MB",
    "PUSHDESK_RETENTION_DELIVERY_DAYS": "half a year",
    "PUSHDESK_RETENTION_AUDIT_DAYS": "30",
    "PUSHDESK_RETENTION_EVENT_DAYS": "a quarter",
    "PUSHDESK_RETENTION_TASK_DAYS": "-1",
    "PUSHDESK_RETENTION_IDEMPOTENCY_DAYS": "a month",
    "PUSHDESK_SEND_TASK_SECONDS": "",  # replaced below: an empty value means the default
    "PUSHDESK_SEND_TIMEOUT_SECONDS": "nan",
    "PUSHDESK_TASKS_SYNC": "sometimes",
    "PUSHDESK_TEST_SEND_MAX_DEVICES": "fifty",
    "PUSHDESK_TRIGGER_RATE_PER_KEY": "-1",
    "PUSHDESK_TRUSTED_PROXIES": "one",
    "PUSHDESK_URL_SCHEMES": "https,",
    "PUSHDESK_VAR_DIR": "relative/var",
    "PUSHDESK_WORKERS": "abc",
    "Q_CLUSTER_NAME": "workers-b",
    "REDIS_URL": "localhost:6379",
    "SECRET_KEY": "short",
    "SECURE_HSTS_SECONDS": "a year",
    "SECURE_SSL_REDIRECT": "perhaps",
    "SENTRY_DSN": "not a dsn",
    "SESSION_COOKIE_AGE": "10",
    "STATIC_ROOT": "static",
}
BAD_VALUES["PUSHDESK_SEND_TASK_SECONDS"] = "3 minutes"
BAD_VALUES["PUSHDESK_URL_SCHEMES"] = "https,javascript:"
# Settings only production reads (SECRET_KEY's strength, HSTS, the redirect) are tried in production.
PRODUCTION_ONLY = {"SECRET_KEY", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT"}


def _settings_read_from_the_environment() -> set[str]:
    source = (ROOT / "config" / "settings.py").read_text()
    return set(re.findall(r'(?:_env_\w+|os\.environ\.get)\(\s*"([A-Z][A-Z0-9_]+)"', source))


def test_every_setting_read_from_the_environment_has_a_malformed_case():
    assert _settings_read_from_the_environment() == set(BAD_VALUES)


def _import_settings(env: dict, tmp_path) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in BAD_VALUES and not k.startswith("PUSHDESK_")}
    full_env.update({"PUSHDESK_VAR_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_malformed_setting_stops_start_up_with_one_line_naming_it(tmp_path, name):
    env = PRODUCTION_ENV if name in PRODUCTION_ONLY else {}
    result = _import_settings({**env, name: BAD_VALUES[name]}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "PUSHDESK_RETENTION_DELIVERY_DAYS",
        "PUSHDESK_RETENTION_AUDIT_DAYS",
        "PUSHDESK_RETENTION_EVENT_DAYS",
        "PUSHDESK_RETENTION_TASK_DAYS",
        "PUSHDESK_RETENTION_IDEMPOTENCY_DAYS",
    ],
)
def test_a_retention_of_more_than_a_century_stops_start_up_with_one_line(tmp_path, name):
    """A cut millions of days back is before year 1: retention_apply failed with a traceback."""
    result = _import_settings({name: "99999999"}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "from 0 to 36500" in lines[0], result.stderr
    assert _import_settings({name: "36500"}, tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", ""),
        ("DATABASE_URL", "sqlite:////tmp/pushdesk.sqlite3"),
        ("PUSHDESK_INSTANCE", ""),
    ],
)
def test_production_refuses_what_only_the_embedded_mode_accepts(tmp_path, name, value):
    result = _import_settings({**PRODUCTION_ENV, name: value}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.stderr


def test_the_production_environment_example_is_a_valid_environment_file(tmp_path):
    """The docs' example, read the way systemd's EnvironmentFile reads it, starts production."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"```sh\n# /etc/pushdesk/pushdesk.env\n(.*?)```", text, re.DOTALL).group(1)
    env = {}
    for line in block.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), line
        assert " #" not in value, f"an inline comment is part of the value for systemd: {line}"
        env[name] = value
    # The example's placeholders, filled in as an operator would.
    env["SECRET_KEY"] = PRODUCTION_ENV["SECRET_KEY"]
    env["PUSHDESK_ENCRYPTION_KEY"] = PRODUCTION_ENV["PUSHDESK_ENCRYPTION_KEY"]
    env["STATIC_ROOT"] = str(tmp_path / "static")
    env["MEDIA_ROOT"] = str(tmp_path / "media")
    result = _import_settings(env, tmp_path)
    assert result.returncode == 0, result.stderr


def test_django_q2s_cluster_name_stops_start_up_with_one_line_naming_the_queue_setting(tmp_path):
    """django-q2 reads Q_CLUSTER_NAME to pick one of several clusters: every command ended in a
    KeyError's traceback. Pushdesk's processes share one queue, which PUSHDESK_QUEUE_NAME names."""
    result = _manage("check", env={"Q_CLUSTER_NAME": "workers-b"}, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Q_CLUSTER_NAME" in lines[0] and "PUSHDESK_QUEUE_NAME" in lines[0], lines[0]
    same = _manage("check", env={"Q_CLUSTER_NAME": "local", "PUSHDESK_QUEUE_NAME": "local"}, tmp_path=tmp_path)
    assert same.returncode == 0, same.stderr


SENTRY_DSN = "https://public-key@sentry.example.invalid/42"


def _python(code: str, env: dict, tmp_path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in BAD_VALUES and not k.startswith("PUSHDESK_")}
    full_env.update({"PUSHDESK_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **env})
    if pythonpath is not None:
        full_env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )


def test_error_reporting_is_optional_and_sentry_sdk_is_not_loaded_without_a_dsn(tmp_path):
    assert "sentry-sdk" not in (ROOT / "requirements.txt").read_text()
    result = _python(
        "import sys, django; sys.modules['sentry_sdk'] = None; django.setup(); print('started')", {}, tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"


def test_a_dsn_without_sentry_sdk_stops_start_up_with_one_line_saying_what_to_install(tmp_path):
    # A None entry in sys.modules makes `import sentry_sdk` fail as if it were not installed.
    result = _python(
        "import sys; sys.modules['sentry_sdk'] = None; import config.settings", {"SENTRY_DSN": SENTRY_DSN}, tmp_path
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "SENTRY_DSN is set but sentry-sdk is not installed" in lines[0]
    assert "pip install sentry-sdk" in lines[0]


def test_a_dsn_with_sentry_sdk_installed_starts_reporting_without_personal_data(tmp_path):
    """sentry-sdk stands in as a small module that records how it was started (no network)."""
    fake = tmp_path / "site"
    fake.mkdir()
    (fake / "sentry_sdk.py").write_text(
        "import json, sys\ndef init(**options):\n    sys.stdout.write('init ' + json.dumps(options) + '\\n')\n"
    )
    result = _python(
        "import django; django.setup()",
        {**PRODUCTION_ENV, "SENTRY_DSN": SENTRY_DSN},
        tmp_path,
        pythonpath=fake,
    )
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout.strip().removeprefix("init "))
    assert options == {
        "dsn": SENTRY_DSN,
        "environment": "test-instance",
        "send_default_pii": False,
        "include_local_variables": False,  # a frame parsing a credential holds it in plain
        "max_request_body_size": "never",  # an uploaded key, a trigger's context
    }


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/abc", "redis://127.0.0.1:6379/1/2", "redis://127.0.0.1:6379/-1"]
)
def test_a_redis_url_whose_database_is_not_a_number_stops_start_up(tmp_path, url):
    """Redis' client reads `/abc` as database 0 and `/1/2` as 12: another deployment's, perhaps."""
    result = _import_settings({"REDIS_URL": url}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "database" in lines[0], result.stderr


@pytest.mark.parametrize(
    "url",
    [
        ":hunter2-redis@cache.internal:6379/0",  # no scheme
        "redis:/:hunter2-redis@cache.internal:6379/0",  # a slash missing
        "redis://:hunter2@redis@cache.internal:6379/x",  # an @ in the password, not escaped
        "http://default:hunter2-redis@cache.internal:6379/0",
    ],
)
def test_a_refused_redis_url_is_named_without_its_password(tmp_path, url):
    result = _import_settings({"REDIS_URL": url}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "REDIS_URL" in result.stderr and "***" in result.stderr
    assert "hunter2" not in result.stderr and "redis@" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("REDIS_URL", "redis://:hunter2@cache.internal:63790x/0"),
        ("REDIS_URL", "redis://:hunter2@cache.internal:99999/0"),
        ("PUSHDESK_FCM_URL", "https://fcm.googleapis.com:443x"),
    ],
)
def test_a_url_whose_port_is_not_a_port_stops_start_up_with_one_line(tmp_path, name, url):
    """Read as the URL is used (the queue's client, a provider's): a traceback each command, the password in it."""
    result = _import_settings({name: url}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "port" in lines[0], result.stderr
    assert "hunter2" not in result.stderr


def test_every_pushdesk_setting_read_from_the_environment_is_documented():
    """An operator finds each variable the settings read in the README or the operator's guide."""
    settings_source = (ROOT / "config" / "settings.py").read_text()
    read = set(re.findall(r"\"(PUSHDESK_[A-Z0-9_]*[A-Z0-9])\"", settings_source))
    documented = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()
    assert len(read) > 30
    assert sorted(name for name in read if f"`{name}`" not in documented and f"{name}=" not in documented) == []


@pytest.mark.parametrize("value", ["abc", "-1", "0", "2.5", "100000"])
def test_a_database_connect_timeout_that_is_not_a_number_of_seconds_stops_start_up(tmp_path, value):
    """libpq reads 0 or less as waiting for ever and refuses a word at every connection: the
    service started, and each request then waited on a hung server, or failed."""
    url = f"postgres://postgres@127.0.0.1:5432/pushdesk?connect_timeout={value}"
    result = _import_settings({"DATABASE_URL": url}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "DATABASE_URL" in lines[0] and "connect_timeout" in lines[0] and "from 1 to 300" in lines[0], lines[0]
    fine = _import_settings({"DATABASE_URL": url.replace(f"={value}", "=30")}, tmp_path)
    assert fine.returncode == 0, fine.stderr


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # An import task runs its budget, then finishes its batch: the queue kills it at 300 s.
        ({"PUSHDESK_IMPORT_TASK_SECONDS": "300"}, ["PUSHDESK_IMPORT_TASK_SECONDS", "240"]),
        # A send task's timeout is its budget and its rows' lease: past the queue's retry (420 s),
        # the broker hands the same task to a second worker while the first still sends.
        ({"PUSHDESK_SEND_TASK_SECONDS": "350"}, ["PUSHDESK_SEND_TASK_SECONDS", "PUSHDESK_SEND_LEASE_SECONDS", "420"]),
        ({"PUSHDESK_SEND_LEASE_SECONDS": "400"}, ["PUSHDESK_SEND_TASK_SECONDS", "PUSHDESK_SEND_LEASE_SECONDS", "420"]),
    ],
)
def test_a_task_budget_the_queue_would_cut_or_deliver_twice_stops_start_up(tmp_path, env, named):
    result = _import_settings(env, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(name in lines[0] for name in named), lines[0]


def test_task_budgets_up_to_the_queue_s_bounds_start(tmp_path):
    env = {
        "PUSHDESK_IMPORT_TASK_SECONDS": "240",
        "PUSHDESK_SEND_TASK_SECONDS": "299",
        "PUSHDESK_SEND_LEASE_SECONDS": "120",
    }
    result = _import_settings(env, tmp_path)
    assert result.returncode == 0, result.stderr


# Values each setting's type accepts that would leave the service broken: a busy loop, every push
# timing out, a retry or a session expiring after year 9999 (an overflow at the first one).
OUT_OF_RANGE = [
    ("PUSHDESK_STREAM_POLL_SECONDS", "0", "from 0.01 to 60"),
    ("PUSHDESK_STREAM_POLL_SECONDS", "-1", "from 0.01 to 60"),
    ("PUSHDESK_STREAM_POLL_SECONDS", "86400", "from 0.01 to 60"),
    ("PUSHDESK_SEND_TIMEOUT_SECONDS", "0", "from 0.1 to 60"),
    ("PUSHDESK_SEND_TIMEOUT_SECONDS", "90", "from 0.1 to 60"),
    ("PUSHDESK_SEND_BACKOFF_SECONDS", "1e300", "from 0 to 3600"),
    ("PUSHDESK_SEND_MAX_ATTEMPTS", "1000", "from 1 to 20"),
    ("PUSHDESK_LOGIN_LOCKOUT_SECONDS", "1000000000000", "from 1 to 604800"),
    ("SESSION_COOKIE_AGE", "1000000000000", "from 60 to 31536000"),
    # Worker processes on a machine, each holding a connection per task (and a resolve's slices
    # more): past 32 one machine alone outgrows PostgreSQL's 100 connections.
    ("PUSHDESK_WORKERS", "0", "from 1 to 32"),
    ("PUSHDESK_WORKERS", "-2", "from 1 to 32"),
    ("PUSHDESK_WORKERS", "500", "from 1 to 32"),
    # Rows claimed under one lease: a crashed worker leaves them all `unknown`.
    ("PUSHDESK_SEND_BATCH", "0", "from 1 to 10000"),
    ("PUSHDESK_SEND_BATCH", "1000000", "from 1 to 10000"),
    # Rows of one import transaction, held in memory, ending in the minute the queue leaves a task.
    ("PUSHDESK_IMPORT_BATCH_ROWS", "-1", "from 1 to 100000"),
    ("PUSHDESK_IMPORT_BATCH_ROWS", "10000000", "from 1 to 100000"),
    # Connections (and database cores) one resolve writes with at once.
    ("PUSHDESK_RESOLVE_SLICES", "0", "from 1 to 16"),
    ("PUSHDESK_RESOLVE_SLICES", "1000", "from 1 to 16"),
]


@pytest.mark.parametrize(("name", "value", "bounds"), OUT_OF_RANGE)
def test_a_value_that_would_break_the_service_stops_start_up_with_its_range(tmp_path, name, value, bounds):
    result = _import_settings({name: value}, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert name in lines[0] and bounds in lines[0], lines[0]


def test_a_lease_shorter_than_the_push_timeout_starts(tmp_path):
    """A lease bounds a whole batch, not one request: shorter than the timeout, a slow answer's row
    reads `unknown` (never sent twice), which the crash tests' 3-second leases rely on."""
    result = _import_settings({"PUSHDESK_SEND_LEASE_SECONDS": "3"}, tmp_path)
    assert result.returncode == 0, result.stderr


def test_workers_batches_and_slices_at_their_bounds_start(tmp_path):
    env = {
        "PUSHDESK_WORKERS": "32",
        "PUSHDESK_SEND_BATCH": "10000",
        "PUSHDESK_IMPORT_BATCH_ROWS": "100000",
        "PUSHDESK_RESOLVE_SLICES": "16",
    }
    result = _import_settings(env, tmp_path)
    assert result.returncode == 0, result.stderr
