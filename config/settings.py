"""Pushdesk settings: one module, driven by environment variables.

Two modes, chosen by ``PUSHDESK_MODE``:

* ``embedded`` (the default): SQLite in WAL mode, django-q2's ORM broker, a generated
  encryption key kept in ``var/``. What ``make run`` uses.
* ``production``: every secret must come from the environment; start-up stops with one
  line naming what to set when one is missing.
"""

import logging
import math
import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PUSHDESK_VAR_DIR", BASE_DIR / "var"))
if not VAR_DIR.is_absolute():
    sys.stderr.write(
        f"pushdesk: configuration error: PUSHDESK_VAR_DIR={str(VAR_DIR)!r} is not an absolute path; set it to one.\n"
    )
    sys.exit(2)


def _refuse_start(message: str) -> None:
    """Stop start-up with one clear line on stderr (no traceback)."""
    sys.stderr.write(f"pushdesk: configuration error: {message}\n")
    sys.exit(2)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    _refuse_start(f"{name}={raw!r} is not a boolean; set it to 1 or 0.")
    return default


def _env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bounds = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        _refuse_start(f"{name}={raw!r} is not a whole number {bounds}; set it to one, or unset it.")
    return value


def _env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        bounds = f"of at least {minimum:g}" if maximum is None else f"from {minimum:g} to {maximum:g}"
        _refuse_start(f"{name}={raw!r} is not a number {bounds}; set it to one, or unset it.")
    return value


def _env_gc_threshold(name: str, default: tuple[int, int, int]) -> tuple[int, ...]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    if not raw.strip():
        return ()
    try:
        value = tuple(int(part) for part in raw.split(","))
    except ValueError:
        value = ()
    if len(value) != 3 or min(value) < 1:
        _refuse_start(
            f"{name}={raw!r} is not three whole numbers of at least 1 (e.g. 10000,10,10); set them, or empty it."
        )
    return value


def _env_url(name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip() or default
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not parts.hostname:
        _refuse_start(
            f"{name}={_without_password(raw)!r} is not a {' or '.join(schemes)} URL with a host; set it to one."
        )
    try:
        parts.port  # noqa: B018 (read for its check: a port that is not a number from 0 to 65535 raises)
    except ValueError:
        _refuse_start(
            f"{name}={_without_password(raw)!r} has a port that is not a number from 0 to 65535; set it to one."
        )
    return raw


def _without_password(url: str) -> str:
    """The URL with what comes before its host's ``@`` masked, however malformed (no scheme, an
    unescaped ``@`` in the password): only a user name before a ``:`` is kept."""
    head, at, host = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.rpartition("://")
    user, colon, _ = userinfo.partition(":")
    masked = f"{user}:***" if colon and "/" not in user else "***"
    return f"{scheme}{sep}{masked}@{host}"


def _env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def _read_or_create_key(path: Path, make) -> str:
    """Return the key stored at ``path``, creating it (mode 0600) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make())
    return path.read_text().strip()


MODE = os.environ.get("PUSHDESK_MODE", "embedded").strip().lower()
if MODE not in {"embedded", "production"}:
    _refuse_start(f"PUSHDESK_MODE={MODE!r} is unknown; set it to 'embedded' or 'production'.")
PRODUCTION = MODE == "production"

# DEBUG is off unless asked for, in the embedded mode too: users never see Django's debug pages.
DEBUG = _env_bool("DEBUG", default=False)

# This deployment's name. The database records the instance it belongs to; where the two differ
# (a restored backup, a staging clone) nothing is sent until `manage.py instance_claim`. It also
# prefixes the cache, broker and rate-limiter keys, so copies sharing a Redis do not mix.
PUSHDESK_INSTANCE = os.environ.get("PUSHDESK_INSTANCE", "").strip()
if not PUSHDESK_INSTANCE:
    if PRODUCTION:
        _refuse_start(
            "PUSHDESK_INSTANCE is not set; set it to this deployment's name (e.g. production-eu), "
            "a different one on every copy."
        )
    PUSHDESK_INSTANCE = "local"
if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", PUSHDESK_INSTANCE):
    _refuse_start(
        f"PUSHDESK_INSTANCE={PUSHDESK_INSTANCE!r} is not a name; use lowercase letters, digits, '-' and '_' (at most 63)."
    )

# --- secrets -----------------------------------------------------------------------------
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        _refuse_start("SECRET_KEY is not set; set it to a long random string (50+ characters).")
    import secrets as _secrets

    SECRET_KEY = _read_or_create_key(VAR_DIR / "secret.key", lambda: _secrets.token_urlsafe(50))
elif PRODUCTION and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    _refuse_start("SECRET_KEY is too short or too simple; set it to a long random string (50+ characters).")

# Comma-separated Fernet keys; the first encrypts, all decrypt (so keys can be rotated).
PUSHDESK_ENCRYPTION_KEY = os.environ.get("PUSHDESK_ENCRYPTION_KEY", "")
if not PUSHDESK_ENCRYPTION_KEY:
    if PRODUCTION:
        _refuse_start(
            "PUSHDESK_ENCRYPTION_KEY is not set; set it to a Fernet key "
            '(.venv/bin/python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())").'
        )
    from cryptography.fernet import Fernet as _Fernet

    PUSHDESK_ENCRYPTION_KEY = _read_or_create_key(VAR_DIR / "encryption.key", lambda: _Fernet.generate_key().decode())
else:
    from cryptography.fernet import Fernet as _Fernet

    for _position, _key in enumerate(PUSHDESK_ENCRYPTION_KEY.split(","), start=1):
        try:
            _Fernet(_key.strip())
        except Exception:
            _refuse_start(
                f"PUSHDESK_ENCRYPTION_KEY: key {_position} is not a Fernet key (32 url-safe base64-encoded bytes); "
                'make one with .venv/bin/python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())".'
            )

ALLOWED_HOSTS = _env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
for _host in ALLOWED_HOSTS:
    if "/" in _host or " " in _host:
        _refuse_start(
            f"ALLOWED_HOSTS: {_host!r} is not a host name; list names such as push.example.com, comma-separated."
        )
if PRODUCTION and not ALLOWED_HOSTS:
    _refuse_start("ALLOWED_HOSTS is not set; set it to the host names the site answers on, comma-separated.")
CSRF_TRUSTED_ORIGINS = _env_list("CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    if urlsplit(_origin).scheme not in {"http", "https"} or not urlsplit(_origin).netloc:
        _refuse_start(f"CSRF_TRUSTED_ORIGINS: {_origin!r} is not an origin; write it as https://HOST, comma-separated.")

# --- applications ------------------------------------------------------------------------
INSTALLED_APPS = [
    "config.apps.PushdeskAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "operations",  # before django_q: its qinfo (secrets masked) replaces django-q2's
    "django_q",
    "accounts",
    "audiences",
    "delivery",
    "campaigns",
    "journeys",
]

MIDDLEWARE = [
    "operations.middleware.ProbeMiddleware",
    "operations.middleware.DrainBodyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.middleware.common.CommonMiddleware",
    "accounts.middleware.RefuseNulMiddleware",
    # Before anything reads a multipart body: it watches the parts' headers as the body is read.
    "accounts.middleware.UnreadablePartsMiddleware",
    "accounts.api_route.ApiRouteMiddleware",
    # After the API's own route: a routed call (a trigger, an events call) reads no session.
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.AdminMessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "operations.context_processors.instance",
            ],
        },
    },
]

# --- database ----------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if not DATABASE_URL:
    if PRODUCTION:
        _refuse_start("DATABASE_URL is not set; set it to postgres://USER:PASSWORD@HOST:5432/NAME.")
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'pushdesk.sqlite3'}"
try:
    # Connections are kept 60 s in production and checked before each request reuses one, so a
    # database restart costs a reconnect, not an error on the next request.
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0 if DEBUG else 60, conn_health_checks=True)
except Exception as exc:  # dj_database_url raises ValueError and friends with unhelpful text
    _refuse_start(
        f"DATABASE_URL is malformed ({exc.__class__.__name__}); set it to "
        "postgres://USER:PASSWORD@HOST:5432/NAME or sqlite:///PATH."
    )
if _db.get("ENGINE") not in {"django.db.backends.postgresql", "django.db.backends.sqlite3"} or not _db.get("NAME"):
    _refuse_start(
        "DATABASE_URL must name a PostgreSQL or SQLite database; "
        "set it to postgres://USER:PASSWORD@HOST:5432/NAME or sqlite:///PATH."
    )
if PRODUCTION and _db["ENGINE"] != "django.db.backends.postgresql":
    _refuse_start(
        "DATABASE_URL must be a PostgreSQL database in production; set it to postgres://USER:PASSWORD@HOST:5432/NAME."
    )
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    _db["CONN_MAX_AGE"] = 0
    # Covering indexes (``include=``) are PostgreSQL's: SQLite builds the same index without the
    # included columns, which only spare PostgreSQL a read of the table. Nothing to warn about.
    SILENCED_SYSTEM_CHECKS = ["models.W040"]
if _db["ENGINE"] == "django.db.backends.postgresql":
    # Django's cursors bind values client-side and never prepare; the hot paths' few fixed
    # statements use a server-binding cursor that prepares them (config.db.prepared_cursor),
    # which psycopg allows once a threshold is set. Behind PgBouncer in transaction mode, that
    # needs PgBouncer 1.21 or later with max_prepared_statements.
    _db.setdefault("OPTIONS", {})["prepare_threshold"] = 5
    # A server that takes the connection and never answers (hung, or a failover half done) is
    # one that does not answer after this many seconds, as one that refuses it: /readyz answers
    # 503 and a command says so, where libpq would wait for ever. `?connect_timeout=N` in
    # DATABASE_URL sets another.
    _db["OPTIONS"].setdefault("connect_timeout", 5)
    # libpq reads 0 or less as waiting for ever, and refuses a word at every connection, not here.
    _connect_timeout = _db["OPTIONS"]["connect_timeout"]
    if type(_connect_timeout) is not int or not 1 <= _connect_timeout <= 300:
        _refuse_start(
            f"DATABASE_URL's connect_timeout={_connect_timeout!r} is not a whole number of seconds from 1 to 300; "
            "set ?connect_timeout=N to one, or leave it out (5)."
        )
    # Django's backend, whose health check asks the server only when the socket says something
    # happened (config.postgresql).
    _db["ENGINE"] = "config.postgresql"
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis, cache, task queue --------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL:
    REDIS_URL = _env_url("REDIS_URL", "", schemes=("redis", "rediss", "unix"))
    # Redis' client reads a path that is not a number as database 0, and /1/2 as 12.
    if urlsplit(REDIS_URL).scheme != "unix" and not re.fullmatch(r"/?|/\d+", urlsplit(REDIS_URL).path):
        _refuse_start(
            f"REDIS_URL={_without_password(REDIS_URL)!r} names no database number; "
            "end it with /N (0 to 15 on a default Redis), or with nothing for 0."
        )
elif PRODUCTION:
    _refuse_start(
        "REDIS_URL is not set; set it to redis://[:PASSWORD@]HOST:6379/DB (the queue, cache and rate limiter)."
    )
if REDIS_URL and "PYTEST_XDIST_WORKER" in os.environ and "XDIST_REDIS_DB" not in os.environ:
    # The test suite's parallel processes share one Redis server, as they share one PostgreSQL
    # server (where each gets a database of its own): each takes the database its number below
    # the one set. Processes the tests start inherit the chosen URL and keep it.
    _parts = urlsplit(REDIS_URL)
    _redis_db = (int(_parts.path.strip("/") or 0) - int(os.environ["PYTEST_XDIST_WORKER"].lstrip("gw") or 0)) % 16
    REDIS_URL = os.environ["REDIS_URL"] = _parts._replace(path=f"/{_redis_db}").geturl()
    os.environ["XDIST_REDIS_DB"] = str(_redis_db)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": PUSHDESK_INSTANCE,
            # A Redis that takes connections but never answers (hung, or a failover half done)
            # fails a request in seconds, as one that refuses them does (sign-in answers 503 saying
            # why): set here rather than left to the client's default (5 s in redis-py 8).
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 3},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "pushdesk_cache",
            "KEY_PREFIX": PUSHDESK_INSTANCE,
        }
    }

# The broker's keys are django_q:<name>:…; the instance's name by default.
PUSHDESK_QUEUE_NAME = os.environ.get("PUSHDESK_QUEUE_NAME", "").strip() or PUSHDESK_INSTANCE
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", PUSHDESK_QUEUE_NAME):
    _refuse_start(f"PUSHDESK_QUEUE_NAME={PUSHDESK_QUEUE_NAME!r} is not a name; use letters, digits, '.', '-' and '_'.")

# django-q2 reads Q_CLUSTER_NAME to pick one of several clusters (ALT_CLUSTERS), which Pushdesk has
# not: its web processes queue every task where its workers take them.
_Q_CLUSTER_NAME = os.environ.get("Q_CLUSTER_NAME", "").strip()
if _Q_CLUSTER_NAME and _Q_CLUSTER_NAME != PUSHDESK_QUEUE_NAME:
    _refuse_start(
        f"Q_CLUSTER_NAME={_Q_CLUSTER_NAME!r} is set; Pushdesk's processes share one task queue, "
        "named by PUSHDESK_QUEUE_NAME: unset Q_CLUSTER_NAME (and set PUSHDESK_QUEUE_NAME to name the queue)."
    )

Q_CLUSTER = {
    "name": PUSHDESK_QUEUE_NAME,
    # Processes per machine, about one per core, each holding a database connection per task (a
    # resolve opens PUSHDESK_RESOLVE_SLICES more): 32 resolving with the default 2 slices is 96
    # connections, PostgreSQL's default 100 for one machine alone; each process holds its memory.
    "workers": _env_int("PUSHDESK_WORKERS", 2, minimum=1, maximum=32),
    # A task is killed after `timeout`; the broker re-presents an unacknowledged task after
    # `retry`. retry > timeout so a slow task is never run twice by the queue itself.
    "timeout": 300,
    "retry": 420,
    "max_attempts": 3,
    "queue_limit": 8,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "cache": "default",
    "label": "Task queue",
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    # django-q2's own, finding the qclusters through a registry rather than KEYS over the database.
    Q_CLUSTER["broker_class"] = "operations.broker.RegisteredStatsRedis"
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 0.5
# A worker asked to stop (SIGTERM, Ctrl-C) finishes its batches in flight, then is killed after this.
PUSHDESK_STOP_SECONDS = _env_int("PUSHDESK_STOP_SECONDS", 45, minimum=1)
if _env_bool("PUSHDESK_TASKS_SYNC", default=False):
    Q_CLUSTER["sync"] = True

# --- auth ----------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "accounts.backends.RoleBackend",  # ModelBackend whose group permissions are roles' only
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # no guardian anonymous user: anonymous requests get nothing
GUARDIAN_RAISE_403 = False
GUARDIAN_RENDER_403 = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "admin:login"
# Admin sign-in throttling, per username and per address.
PUSHDESK_LOGIN_MAX_FAILURES = _env_int("PUSHDESK_LOGIN_MAX_FAILURES", 5, minimum=1)
# At most a week: a lockout's end past year 9999 failed every sign-in of the embedded mode.
PUSHDESK_LOGIN_LOCKOUT_SECONDS = _env_int("PUSHDESK_LOGIN_LOCKOUT_SECONDS", 900, minimum=1, maximum=7 * 24 * 3600)
# Reverse proxies in front of the web app that append to X-Forwarded-For (0: none). Behind a
# proxy, REMOTE_ADDR is the proxy's: without this every sign-in shares one address's lockout.
PUSHDESK_TRUSTED_PROXIES = _env_int("PUSHDESK_TRUSTED_PROXIES", 0)

# --- i18n, static ----------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
# Times without a zone of their own are shown in UTC, the zone named (config/formats/en/formats.py).
FORMAT_MODULE_PATH = ["config.formats"]
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
for _name, _path in (("STATIC_ROOT", STATIC_ROOT), ("MEDIA_ROOT", MEDIA_ROOT)):
    if not _path.is_absolute():
        _refuse_start(f"{_name}={str(_path)!r} is not an absolute path; set it to one.")
# WhiteNoise serves the static files from every web process. In production they are collected
# (`manage.py collectstatic`) with content-hashed names and compressed copies, cached for a year;
# the embedded mode serves them from the apps' folders as they are.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"

# --- security ------------------------------------------------------------------------------
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# At most a year: a session ending past year 9999 failed every sign-in.
SESSION_COOKIE_AGE = _env_int("SESSION_COOKIE_AGE", 60 * 60 * 8, minimum=60, maximum=365 * 24 * 3600)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = _env_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = _env_int("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 365)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# --- API -----------------------------------------------------------------------------------
# The largest request body (bytes) outside file uploads: a full 1,000-item bulk call of the largest
# documented items (profiles with 16 KB of attributes) with room to spare. Over it, the API answers
# 413 `request_too_large`.
DATA_UPLOAD_MAX_MEMORY_SIZE = _env_int("PUSHDESK_MAX_REQUEST_BYTES", 24 * 1024 * 1024, minimum=1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.authentication.HasRequiredScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["accounts.parsers.ApiJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "accounts.negotiation.ApiContentNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "accounts.api.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "accounts.pagination.ApiPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
    # DRF's reading of ``?format=`` answers 404 to a format it does not know: the negotiation
    # (accounts.negotiation) reads it instead, refusing such a format with a 400 naming it.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Pushdesk API",
    "DESCRIPTION": "Profiles, devices, events, segments, campaigns, dispatches and journeys.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "ENUM_NAME_OVERRIDES": {
        "JourneyStatusEnum": "journeys.models.Journey.Status",
        "DeliveryStatusEnum": "delivery.models.Delivery.Status",
        "DispatchStatusEnum": "delivery.models.Dispatch.Status",
        "DispatchKindEnum": "delivery.models.Dispatch.Kind",
        "SegmentWarningCodeEnum": "audiences.selectors.UNREAD_CODES",
    },
    # The security scheme and each operation's requirement: accounts.authentication.ApiKeyAuthenticationScheme.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "accounts.api.document_error_responses",
    ],
}

# Error reports mask keys and secrets, and the passwords inside DATABASE_URL and REDIS_URL.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.reporting.SettingsReportFilter"

# --- logging -------------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").strip().upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    _refuse_start(f"LOG_LEVEL={LOG_LEVEL!r} is unknown; set it to DEBUG, INFO, WARNING, ERROR or CRITICAL.")
# `plain` lines for a terminal or journald; `json` (one object a line) for a log pipeline.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in {"plain", "json"}:
    _refuse_start(f"LOG_FORMAT={LOG_FORMAT!r} is unknown; set it to plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "filters": {
        "unknown_host": {"()": "config.requestlog.UnknownHost"},
        "refused_body": {"()": "config.requestlog.RefusedBody"},
        "queue_service_down": {"()": "operations.queuelog.QueueServiceDown"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # A request for a host outside ALLOWED_HOSTS (a scanner's): one warning, not a traceback.
        "django.security.DisallowedHost": {"filters": ["unknown_host"]},
        # A body refused as it is read (too big, too many fields or files, malformed): one warning too.
        **{
            f"django.security.{name}": {"filters": ["refused_body"]}
            for name in ("RequestDataTooBig", "TooManyFieldsSent", "TooManyFilesSent")
        },
        "django.request": {"filters": ["refused_body"]},
        # The workers while Redis or the database does not answer: a line a minute, not two a second.
        "django-q": {"filters": ["queue_service_down"]},
        # Django's loggers follow LOG_LEVEL (Django set them to INFO, so LOG_LEVEL=ERROR still wrote a
        # warning per 404), but not below INFO: its DEBUG lines (a template's every missing variable)
        # are Django's debugging, not the application's. Its handlers go: ADMINS is not used, and the
        # root's console writes its lines.
        "django": {"level": max(logging.INFO, logging.getLevelName(LOG_LEVEL)), "handlers": []},
        "django.db.backends": {"level": "WARNING"},
        # hpack logs each HTTP/2 header block it encodes at DEBUG, Huffman-coded, not hidden: the
        # providers' bearer tokens (APNs provider token, FCM access token) of a connection test.
        "hpack": {"level": max(logging.INFO, logging.getLevelName(LOG_LEVEL))},
    },
}

# The Prometheus endpoint (/metrics) answers requests bearing this token; unset: no endpoint.
PUSHDESK_METRICS_TOKEN = os.environ.get("PUSHDESK_METRICS_TOKEN", "").strip()
if PUSHDESK_METRICS_TOKEN and len(PUSHDESK_METRICS_TOKEN) < 20:
    _refuse_start("PUSHDESK_METRICS_TOKEN is too short; set it to 20+ random characters, or unset it.")

# Error reporting to Sentry (or a compatible service) when SENTRY_DSN is set; needs `sentry-sdk`.
SENTRY_DSN = os.environ.get("SENTRY_DSN", "").strip()
if SENTRY_DSN:
    if urlsplit(SENTRY_DSN).scheme not in {"http", "https"} or not urlsplit(SENTRY_DSN).hostname:
        _refuse_start("SENTRY_DSN is not a DSN; set it to https://KEY@HOST/PROJECT, or unset it.")
    try:
        import sentry_sdk
    except ImportError:
        _refuse_start("SENTRY_DSN is set but sentry-sdk is not installed; pip install sentry-sdk, or unset it.")
    # No frame's local variables and no request body: a credential being parsed, an API call's
    # context or an uploaded key would otherwise travel with an error's report.
    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=PUSHDESK_INSTANCE,
        send_default_pii=False,
        include_local_variables=False,
        max_request_body_size="never",
    )

# --- Pushdesk ------------------------------------------------------------------------------
# Base URLs of the push providers: settings, so tests, benchmarks and the demo point the
# real clients at the push simulator on loopback.
PUSHDESK_APNS_PRODUCTION_URL = _env_url(
    "PUSHDESK_APNS_PRODUCTION_URL", "https://api.push.apple.com", schemes=("https", "http")
)
PUSHDESK_APNS_SANDBOX_URL = _env_url(
    "PUSHDESK_APNS_SANDBOX_URL", "https://api.sandbox.push.apple.com", schemes=("https", "http")
)
PUSHDESK_FCM_URL = _env_url("PUSHDESK_FCM_URL", "https://fcm.googleapis.com", schemes=("https", "http"))
PUSHDESK_CA_BUNDLE = os.environ.get("PUSHDESK_CA_BUNDLE", "")  # empty: the system's trust store
if PUSHDESK_CA_BUNDLE and not Path(PUSHDESK_CA_BUNDLE).is_file():
    _refuse_start(
        f"PUSHDESK_CA_BUNDLE={PUSHDESK_CA_BUNDLE!r} is not a readable file; set it to a PEM file of CAs, or unset it."
    )
PUSHDESK_API_KEY_PREFIX = "pdk"
# Ingest calls (devices, opens, profiles, events) allowed per API key and second, all of them
# sharing one rate (a burst of a tenth of that is absorbed); 0: no limit. The key a mobile app
# ships is public: this bounds what one script holding it writes.
PUSHDESK_INGEST_RATE_PER_KEY = _env_float("PUSHDESK_INGEST_RATE_PER_KEY", 1000)

# --- audiences -------------------------------------------------------------------------------
# CSV imports: the largest file accepted, and rows written per batch (one transaction each).
PUSHDESK_IMPORT_MAX_BYTES = _env_int("PUSHDESK_IMPORT_MAX_BYTES", 1024**3, minimum=1)
# A batch is held in memory and written in one transaction, and the one under way when a task's
# budget ends has the minute the queue leaves: 100,000 rows take seconds at the measured 40,000
# rows/s, and that minute at 2,000; ten times that could outlive the task, and fill the worker's memory.
PUSHDESK_IMPORT_BATCH_ROWS = _env_int("PUSHDESK_IMPORT_BATCH_ROWS", 20000, minimum=1, maximum=100_000)
# An import task hands over to a fresh task after this many seconds, then ends the batch under way:
# a minute is left of Q_CLUSTER's timeout for it, past which the queue kills the task.
PUSHDESK_IMPORT_TASK_SECONDS = _env_int(
    "PUSHDESK_IMPORT_TASK_SECONDS", 200, minimum=1, maximum=Q_CLUSTER["timeout"] - 60
)
# An import under way with no batch written for longer than this (a minute more than the queue
# lets a task run, at least) has lost its worker: the imports watchdog takes it up again or ends it,
# so the imports of its segment waiting for their turn go on.
PUSHDESK_IMPORT_STALL_SECONDS = _env_int(
    "PUSHDESK_IMPORT_STALL_SECONDS", Q_CLUSTER["timeout"] + 60, minimum=Q_CLUSTER["timeout"] + 60, maximum=24 * 3600
)
# Bulk API calls: most profiles or events per call.
AUDIENCES_BULK_MAX_ITEMS = 1000
# Preview: how many sample profiles are shown with the count.
AUDIENCES_PREVIEW_SAMPLE = 20

# --- send pipeline ---------------------------------------------------------------------------
# URL schemes push content may link to (image and "open URL"), and deep-link schemes.
PUSHDESK_URL_SCHEMES = _env_list("PUSHDESK_URL_SCHEMES", ["https"])
PUSHDESK_DEEP_LINK_SCHEMES = _env_list("PUSHDESK_DEEP_LINK_SCHEMES", ["https", "pushdesk"])
for _name, _schemes in (
    ("PUSHDESK_URL_SCHEMES", PUSHDESK_URL_SCHEMES),
    ("PUSHDESK_DEEP_LINK_SCHEMES", PUSHDESK_DEEP_LINK_SCHEMES),
):
    for _scheme in _schemes:
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", _scheme):
            _refuse_start(f"{_name}: {_scheme!r} is not a URL scheme; list schemes such as https, comma-separated.")
# Deliveries claimed per batch by a send task; also the most a crashed worker can leave `unknown`.
# At most 10,000: the rows are claimed under one lease (sent within it, or `unknown`), held in
# memory with their devices and profiles, and all left `unknown` by a worker that dies.
PUSHDESK_SEND_BATCH = _env_int("PUSHDESK_SEND_BATCH", 1000, minimum=1, maximum=10_000)
# Send tasks started per dispatch (they share its rows; more than the workers brings nothing).
PUSHDESK_SEND_TASKS = _env_int("PUSHDESK_SEND_TASKS", Q_CLUSTER["workers"], minimum=1)
# A segment's resolve is written by this many connections at once, each a range of profile ids,
# when the profiles' ids span at least this many per slice (one statement runs on one core).
# Each slice is a connection and a database core: past 16, one resolve takes more of PostgreSQL's
# default 100 connections than the workers, and more cores than a database server spares for it.
PUSHDESK_RESOLVE_SLICES = _env_int("PUSHDESK_RESOLVE_SLICES", 2, minimum=1, maximum=16)
PUSHDESK_RESOLVE_SLICE_PROFILES = _env_int("PUSHDESK_RESOLVE_SLICE_PROFILES", 100_000, minimum=1)
# The most active test devices a test send goes to: a test send is content not yet approved, and
# one to a test list grown to thousands of phones would be a campaign nobody approved. Past it,
# the test is refused, saying how many the app has.
PUSHDESK_TEST_SEND_MAX_DEVICES = _env_int("PUSHDESK_TEST_SEND_MAX_DEVICES", 50, minimum=1, maximum=10_000)
# Rows still `sending` after this many seconds become `unknown` (never re-sent).
PUSHDESK_SEND_LEASE_SECONDS = _env_int("PUSHDESK_SEND_LEASE_SECONDS", 120, minimum=1)
# Attempts per delivery (first send + retries of transient failures), and the backoff base.
# The backoff doubles with each attempt: bounded, the last retry's time stays a date (an hour
# doubled 19 times is 60 years), where it was past year 9999 and failed the send task.
PUSHDESK_SEND_MAX_ATTEMPTS = _env_int("PUSHDESK_SEND_MAX_ATTEMPTS", 5, minimum=1, maximum=20)
PUSHDESK_SEND_BACKOFF_SECONDS = _env_float("PUSHDESK_SEND_BACKOFF_SECONDS", 2, maximum=3600)
# A send task hands over to a fresh one after this many seconds (below Q_CLUSTER's timeout).
PUSHDESK_SEND_TASK_SECONDS = _env_int("PUSHDESK_SEND_TASK_SECONDS", 200, minimum=1)
# A send task (and a stream sender's) is killed after its budget and its rows' lease
# (delivery.services.dispatches._task_timeout); past the queue's retry, the broker would hand it to
# a second worker while the first still sends.
if PUSHDESK_SEND_TASK_SECONDS + PUSHDESK_SEND_LEASE_SECONDS >= Q_CLUSTER["retry"]:
    _refuse_start(
        f"PUSHDESK_SEND_TASK_SECONDS + PUSHDESK_SEND_LEASE_SECONDS is {PUSHDESK_SEND_TASK_SECONDS} + "
        f"{PUSHDESK_SEND_LEASE_SECONDS}, a send task's time limit, which must stay under the task queue's retry "
        f"({Q_CLUSTER['retry']} s) or the queue hands the task to a second worker while it still sends; lower one."
    )
# Per request to APNs/FCM: seconds before giving up (the message then ends `unknown`), and
# HTTP/2 connections per provider host from each worker (each multiplexes up to 100 streams).
# 0 timed every request out (every push `unknown`).
PUSHDESK_SEND_TIMEOUT_SECONDS = _env_float("PUSHDESK_SEND_TIMEOUT_SECONDS", 10, minimum=0.1, maximum=60)
PUSHDESK_SEND_CONNECTIONS = _env_int("PUSHDESK_SEND_CONNECTIONS", 4, minimum=1)
# The push simulator (``manage.py pushsim``, started by ``make run``): where an App marked
# "send to the push simulator" sends. h2c on loopback by default; see the README.
PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL = _env_url(
    "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL", "http://127.0.0.1:8440", schemes=("https", "http")
)
PUSHDESK_PUSHSIM_APNS_SANDBOX_URL = _env_url(
    "PUSHDESK_PUSHSIM_APNS_SANDBOX_URL", "http://127.0.0.1:8441", schemes=("https", "http")
)
PUSHDESK_PUSHSIM_FCM_URL = _env_url("PUSHDESK_PUSHSIM_FCM_URL", "http://127.0.0.1:8440", schemes=("https", "http"))

# --- retention (manage.py retention_apply, daily) ----------------------------------------------
# Each is at most a century (0 keeps forever): a cut millions of days back is before year 1, and
# retention_apply, status and the metrics failed on it.
_RETENTION_MAX_DAYS = 36_500
# Deliveries of dispatches finished more than this many days ago are deleted (the dispatch and
# its counters stay); 0 keeps them forever.
PUSHDESK_RETENTION_DELIVERY_DAYS = _env_int("PUSHDESK_RETENTION_DELIVERY_DAYS", 180, maximum=_RETENTION_MAX_DAYS)
# Audit events older than this many days are deleted; 0 (the default) keeps them forever. The
# audit log is append-only: the database itself refuses to delete an event younger than 365 days.
PUSHDESK_RETENTION_AUDIT_DAYS = _env_int("PUSHDESK_RETENTION_AUDIT_DAYS", 0, maximum=_RETENTION_MAX_DAYS)
# Profiles' events that occurred more than this many days ago are deleted; 0 (the default) keeps
# them forever, as segments may count events over any window: retention refuses to run while a
# rules segment or a journey condition counts events further back than this.
PUSHDESK_RETENTION_EVENT_DAYS = _env_int("PUSHDESK_RETENTION_EVENT_DAYS", 0, maximum=_RETENTION_MAX_DAYS)
# The task queue's failed tasks that stopped more than this many days ago are deleted (it keeps
# only Q_CLUSTER's save_limit successes itself, but every failure); 0 keeps them forever.
PUSHDESK_RETENTION_TASK_DAYS = _env_int("PUSHDESK_RETENTION_TASK_DAYS", 30, maximum=_RETENTION_MAX_DAYS)
# Idempotency-Key records of trigger and events calls (each with its stored answer) older than this
# many days are deleted: a retry with the same key after that is a new call. 0 keeps them forever.
PUSHDESK_RETENTION_IDEMPOTENCY_DAYS = _env_int("PUSHDESK_RETENTION_IDEMPOTENCY_DAYS", 30, maximum=_RETENTION_MAX_DAYS)
if 0 < PUSHDESK_RETENTION_AUDIT_DAYS < 365:
    _refuse_start(
        f"PUSHDESK_RETENTION_AUDIT_DAYS={PUSHDESK_RETENTION_AUDIT_DAYS} is under 365; audit events are kept a year "
        "at least: set 365 or more, or 0 to keep them forever."
    )

# --- campaigns -----------------------------------------------------------------------------
# API triggers allowed per API key and second (a burst of a tenth of that is absorbed); 0: no limit.
PUSHDESK_TRIGGER_RATE_PER_KEY = _env_float("PUSHDESK_TRIGGER_RATE_PER_KEY", 1000)
# Per-process caches of API keys, permissions and approved campaigns are reloaded when their
# version stamp changes, and at the latest after this many seconds.
PUSHDESK_CACHE_SECONDS = _env_float("PUSHDESK_CACHE_SECONDS", 60)

# --- the processes' garbage collector (config.runtime) -------------------------------------------
# The cyclic collector's thresholds in the web, the workers and the stream sender, once each is
# ready ("700,10,10" is Python's own; empty: Python's defaults, nothing frozen).
PUSHDESK_GC_THRESHOLD = _env_gc_threshold("PUSHDESK_GC_THRESHOLD", (10_000, 10, 10))


# --- streams (standing dispatches of API triggers and event-entered journeys) ---------------
# Stream sender slots: one `manage.py send_stream --slot N` process each (a slot without one gets
# a sender task in a qcluster worker from the watchdog).
PUSHDESK_STREAM_SENDERS = _env_int("PUSHDESK_STREAM_SENDERS", 1, minimum=1)
# Without a wake-up (the embedded mode, or a lost one), senders look for work this often: 0 would
# be a loop asking the database without a pause, an hour a stream sending an hour late.
PUSHDESK_STREAM_POLL_SECONDS = _env_float("PUSHDESK_STREAM_POLL_SECONDS", 0.5, minimum=0.01, maximum=60)
