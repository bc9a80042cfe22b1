"""The fault tests run on a PostgreSQL and a Redis of their own (see ``servers.py``).

``own_servers`` starts both, migrates a database there and points this process (Django's
connection, cache and task broker) and the workers it starts at them; afterwards everything
points back at the servers the rest of the suite uses. ``postgres_server`` and ``redis_server``
restart the throwaway ones. ``machine_servers`` holds a connection open to the suite's own
PostgreSQL and a key in its Redis, to show they outlive the faults.
"""

import uuid
from dataclasses import dataclass

import psycopg
import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test.utils import override_settings

from tests.faults.servers import ThrowawayPostgres, ThrowawayRedis, missing

FAULTS_DATABASE = "pushdesk_faults"


@dataclass
class Servers:
    postgres: ThrowawayPostgres
    redis: ThrowawayRedis


@dataclass
class MachineServers:
    """A connection open to the suite's PostgreSQL and a key written to its Redis, before the faults."""

    database: psycopg.Connection
    backend_pid: int
    postmaster_started: object
    redis: redis.Redis
    redis_run_id: str
    key: str
    value: str
    ports: tuple[int, int]


def _machine_database_url(db: dict) -> str:
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="module")
def machine_servers(django_db_setup, django_db_blocker):
    if not settings.REDIS_URL or connections["default"].vendor != "postgresql":
        pytest.skip("needs PostgreSQL and Redis")
    db = connections["default"].settings_dict
    database = psycopg.connect(_machine_database_url(db), autocommit=True)
    pid, started = database.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()").fetchone()
    client = redis.Redis.from_url(settings.REDIS_URL)
    key, value = f"pushdesk:faults:witness:{uuid.uuid4().hex}", uuid.uuid4().hex
    client.set(key, value, ex=3600)
    witness = MachineServers(
        database=database,
        backend_pid=pid,
        postmaster_started=started,
        redis=client,
        redis_run_id=client.info("server")["run_id"],
        key=key,
        value=value,
        ports=(int(db["PORT"] or 5432), client.connection_pool.connection_kwargs.get("port", 6379)),
    )
    yield witness
    client.delete(key)
    client.close()
    database.close()


@pytest.fixture(scope="module")
def own_servers(machine_servers, django_db_blocker):
    """Start the throwaway servers and point Django and the workers at them for the module's tests."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    from django.contrib.contenttypes.models import ContentType
    from django_q.conf import Conf

    postgres, redis_server = ThrowawayPostgres(), ThrowawayRedis()
    connection = connections["default"]
    saved_database = dict(connection.settings_dict)
    saved_broker = Conf.REDIS
    override = None
    try:
        postgres.start()
        redis_server.start()
        with psycopg.connect(postgres.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {FAULTS_DATABASE}")
        redis_url = redis_server.url(1)
        with django_db_blocker.unblock():
            connection.close()
            connection.settings_dict.update(
                HOST="127.0.0.1", PORT=str(postgres.port), NAME=FAULTS_DATABASE, USER="postgres", PASSWORD=""
            )
            ContentType.objects.clear_cache()
            call_command("migrate", verbosity=0, interactive=False)
        override = override_settings(
            REDIS_URL=redis_url,
            CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}},
            Q_CLUSTER={**settings.Q_CLUSTER, "redis": redis_url},
        )
        override.enable()
        Conf.REDIS = redis_url
        yield Servers(postgres=postgres, redis=redis_server)
    finally:
        if override is not None:
            override.disable()
        Conf.REDIS = saved_broker
        with django_db_blocker.unblock():
            try:
                connection.close()
            except Exception:  # noqa: S110 (a connection to a server that went away: gone either way)
                pass
            connection.settings_dict.clear()
            connection.settings_dict.update(saved_database)
            ContentType.objects.clear_cache()
        postgres.stop()
        redis_server.stop()


@pytest.fixture
def postgres_server(own_servers):
    """Restart the throwaway PostgreSQL; whatever happens, it is running again after the test."""
    from tests.faults.test_end_to_end import reconnect

    yield own_servers.postgres.restart
    if not own_servers.postgres.ready():
        own_servers.postgres.restart()
    reconnect()


@pytest.fixture
def redis_server(own_servers):
    """Restart the throwaway Redis (losing what it held); whatever happens, it is running again after the test."""
    yield own_servers.redis.restart
    if not own_servers.redis.up():
        own_servers.redis.start()
