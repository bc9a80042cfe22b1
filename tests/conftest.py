"""Test-wide set-up: PostgreSQL and Redis (the real servers), the push simulator, the named cast, API clients."""

import os
import weakref

import pytest
from django.db.backends.signals import connection_created
from rest_framework.test import APIClient

from tests.factories import TEST_PASSWORD, UserFactory
from tests.fakes.pushsim import (  # noqa: F401 (fixtures: see tests/fakes/pushsim.py)
    apns_credentials,
    fcm_credentials,
    pushsim,
    pushsim_app,
    pushsim_server,
    pushsim_tls_app,
)


def pytest_configure(config):
    # Tasks run in the test's own process and transaction (django-q2 reads its settings once,
    # at import, so its Conf is set here). Tests that need real workers start `qcluster`
    # processes, which read the environment as production does.
    from django_q.conf import Conf

    from tests.flush import install

    Conf.SYNC = True
    install()  # transactional tests' flush: delete rows instead of TRUNCATE (tests/flush.py)
    connection_created.connect(_name_the_session, dispatch_uid="tests-session-name")


def _name_the_session(sender, connection, **kwargs):
    """Each PostgreSQL session of the test process is named after its thread and the test that
    opened it, so that one left open at the end (see ``django_db_setup``) says whose it is."""
    import os
    import threading

    if connection.vendor == "postgresql":  # on the driver's connection: no query a test counts
        # The thread, and the test that opened it (the end of its id: PostgreSQL keeps 63 bytes).
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit("::", 1)[-1].split(" ")[0]
        name = f"{threading.current_thread().name[:20]} {test}"[:63]
        connection.connection.execute("SELECT set_config('application_name', %s, false)", [name])
        if threading.current_thread() is threading.main_thread():  # where it was opened, if it is left open
            import traceback

            _OPENED_AT[connection.connection.info.backend_pid] = "".join(traceback.format_stack(limit=30)[:-1])
            _MAIN_THREAD_WRAPPERS.add(connection)


_OPENED_AT: dict[int, str] = {}  # a session the test process's main thread opened: the stack that opened it
# The main thread's connection wrappers. Django keeps one per alias and context: pytest-django's
# session-wide live server, set up by the first browser test of a process, can find none in its
# context and make a second one, which the tests after it use while the end of the session sees the
# first; without this the second's session stayed open to the end (and was waited for, then killed).
_MAIN_THREAD_WRAPPERS: weakref.WeakSet = weakref.WeakSet()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, which it drops at the end: first the sessions still open on
    it from processes or threads the tests started (one shutting down as the last test ends, or a
    finished thread's connection that only the garbage collector closes) are given ten seconds to
    close, then closed, so the drop does not fail and leave the database."""
    yield
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        return
    import gc
    import time
    import warnings

    gc.collect()
    for wrapper in list(_MAIN_THREAD_WRAPPERS):  # the main thread's other wrappers, as its own closes
        if wrapper is not connections["default"]:
            wrapper.close()

    query = "SELECT {} FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        deadline = time.monotonic() + 10
        while True:
            cursor.execute(query.format("pid, application_name, backend_start, left(query, 80)"))
            others = cursor.fetchall()
            if not others or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if others:
            opened = "".join(
                f"\nsession {pid} was opened at:\n{_OPENED_AT[pid]}" for pid, *_ in others if pid in _OPENED_AT
            )
            warnings.warn(f"Sessions left open on the test database, closed: {others}{opened}", stacklevel=1)
            cursor.execute(query.format("pg_terminate_backend(pid)"))


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The production hasher is slow on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


_DB_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "live_server"}


@pytest.fixture(autouse=True)
def _fresh_cache(request):
    from django.core.cache import caches
    from django.core.cache.backends.db import DatabaseCache

    from accounts.authentication import api_keys_forget
    from campaigns.services.triggers import campaign_caches_forget
    from delivery.services.stream_senders import _UNREADABLE_SAID
    from journeys.services.entries import journey_caches_forget

    # The version stamps live beside the cache: every stamp starts unset. Without Redis the cache
    # is a table: cleared once the test's database is set up, and not at all for a test that
    # may not use the database (it can read no stamp either).
    cache = caches["default"]
    if not isinstance(cache, DatabaseCache):
        cache.clear()
    elif _DB_FIXTURES & set(request.fixturenames) or request.node.get_closest_marker("django_db"):
        request.getfixturevalue("db")
        cache.clear()
    api_keys_forget()
    campaign_caches_forget()
    journey_caches_forget()
    _UNREADABLE_SAID.forget_all()  # streams' ids come again in another test's database
    yield


@pytest.fixture
def admin_erin(db):
    return UserFactory(username="admin_erin", role="Administrator")


@pytest.fixture
def approver_bob(db):
    return UserFactory(username="approver_bob", role="Approver")


@pytest.fixture
def manager_alice(db):
    return UserFactory(username="manager_alice", role="Manager")


@pytest.fixture
def manager_mallory(db):
    return UserFactory(username="manager_mallory", role="Manager")


@pytest.fixture
def viewer_carol(db):
    return UserFactory(username="viewer_carol", role="Viewer")


@pytest.fixture
def outsider_dave(db):
    """Signed in to the admin, but with no role at all."""
    return UserFactory(username="outsider_dave", role=None)


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def api_key_for(db):
    """Make an API key for a user and return an APIClient that sends it."""
    from accounts.services import api_key_create

    def make(user, scopes=("read",), **kwargs):
        _, raw = api_key_create(user=user, name="test", scopes=list(scopes), by=user, **kwargs)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.raw_key = raw
        return client

    return make


def _embedded_environment(var_dir) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUSHDESK_", "DATABASE_URL", "REDIS_URL", "SECRET_KEY"))
    }
    env["PUSHDESK_VAR_DIR"] = str(var_dir)
    return env


@pytest.fixture
def embedded_env(tmp_path):
    """The environment of a ``manage.py`` run in the embedded default (SQLite in ``tmp_path``):
    this process's, without the test settings' database, Redis and Pushdesk variables."""
    return _embedded_environment(tmp_path)


@pytest.fixture(scope="session")
def _embedded_var_migrated(tmp_path_factory):
    """A folder of the embedded default whose SQLite database ``migrate`` made, once per process."""
    from tests.processes import manage

    folder = tmp_path_factory.mktemp("embedded-migrated")
    migrate = manage(["migrate", "--noinput"], _embedded_environment(folder), timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    return folder


@pytest.fixture
def embedded_env_migrated(embedded_env, tmp_path, _embedded_var_migrated):
    """``embedded_env`` with its database migrated: a copy of the folder migrated once for the tests
    that need one but do not test the migration (each ``manage.py migrate`` takes 7 s or more)."""
    import shutil

    shutil.copytree(_embedded_var_migrated, tmp_path, dirs_exist_ok=True)
    return embedded_env


@pytest.fixture
def login(client):
    """Sign ``client`` in as a user through the login form's backend (their password), not
    ``force_login``: ``login(user)`` returns the client."""

    def as_user(user):
        assert client.login(username=user.username, password=TEST_PASSWORD)
        return client

    return as_user


@pytest.fixture
def stream_gates_open():
    """Gates that let every API-trigger and journey send through, for tests of the streams' own
    mechanics whose standing dispatches have no campaign or journey behind them (a stream asks its
    source's gate as it opens, and a journey's stream takes rows only for profiles enrolled at its
    step; campaigns and journeys test their gates themselves)."""
    from delivery.models import Dispatch
    from delivery.services import streams
    from delivery.services.dispatches import _GATES, dispatch_gate_register

    saved, checks = dict(_GATES), dict(streams._RECIPIENT_CHECKS)
    for kind in (Dispatch.Kind.API_TRIGGER, Dispatch.Kind.JOURNEY):
        dispatch_gate_register(kind=kind, gate=lambda **kwargs: None)
    streams._RECIPIENT_CHECKS.clear()
    streams._append_sql.cache_clear()
    yield
    _GATES.clear()
    _GATES.update(saved)
    streams._RECIPIENT_CHECKS.update(checks)
    streams._append_sql.cache_clear()


@pytest.fixture
def tasks_queued(monkeypatch):
    """Tasks go to the queue for the workers, as in production (the tests run them in their own
    process, as PUSHDESK_TASKS_SYNC does), so ``status`` looks for workers and stream senders."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)


@pytest.fixture
def workers_running(db, tasks_queued):
    """A deployment whose processes run, as ``status --check`` reads it: every schedule of the beat
    ran a moment ago and is due in a minute, a qcluster reports to the queue, and each stream
    sender slot beats."""
    import uuid

    from django.conf import settings
    from django.utils import timezone
    from django_q.brokers import get_broker
    from django_q.models import Schedule, Task
    from django_q.signing import SignedPackage
    from django_q.status import Stat, Status

    from delivery.services.stream_senders import _beat

    now = timezone.now()
    for schedule in Schedule.objects.all():
        task = Task.objects.create(
            id=uuid.uuid4().hex, name=f"beat-{schedule.pk}", func=schedule.func, started=now, stopped=now, success=True
        )
        Schedule.objects.filter(pk=schedule.pk).update(task=task.pk, next_run=now + timezone.timedelta(minutes=1))
    cluster = Status(pid=4321, cluster_id=uuid.uuid4())
    cluster.status = "Idle"
    broker = get_broker()
    broker.set_stat(Stat.get_key(cluster.cluster_id), SignedPackage.dumps(cluster, True), 60)
    for slot in range(settings.PUSHDESK_STREAM_SENDERS):
        _beat(slot, dedicated=True)
    yield cluster
    if "redis" in settings.Q_CLUSTER:
        broker.connection.delete(Stat.get_key(cluster.cluster_id))
    else:
        broker.cache.delete(Stat.get_key(cluster.cluster_id))
