"""The per-app send-rate limit, shared by every worker (Redis, or the database in the embedded mode)."""

import os
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings

from delivery.throttle import DatabaseThrottle, RedisThrottle, throttle_acquire

_WORKER = """
import sys, time
from delivery.throttle import RedisThrottle
limiter = RedisThrottle(sys.argv[1])
key, rate = sys.argv[2], float(sys.argv[3])
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.time() < start:
    time.sleep(0.001)
got, first = 0, time.time()
while time.time() < start + 1.0:
    granted, wait = limiter.take(key=key, rate=rate, count=50)
    got += granted
    if not granted:
        time.sleep(min(wait, 0.01))
print(got, first, time.time())
"""


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")
def test_rate_limit_holds_across_two_worker_processes():
    key = f"test:{os.getpid()}:{time.time()}"
    rate = 200
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, settings.REDIS_URL, key, str(rate)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=settings.BASE_DIR,
            text=True,
        )
        for _ in range(2)
    ]
    # The window opens once both have started (imports take seconds on a busy machine).
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready"
    start = time.time() + 0.5
    for worker in workers:
        worker.stdin.write(f"{start}\n")
        worker.stdin.flush()
    said = [w.communicate(timeout=30)[0].split() for w in workers]
    grants = [int(got) for got, _, _ in said]
    # The window is a second, and longer by a take asked just before its end and answered after
    # (a slow moment on a busy machine): the bucket refills at its rate for as long as they asked.
    asked_for = max(float(last) for _, _, last in said) - min(float(first) for _, first, _ in said)
    burst = rate * 0.1
    assert sum(grants) <= rate * max(1.0, asked_for) + burst + 2, (grants, asked_for)
    assert sum(grants) >= rate * 0.8
    assert min(grants) > 0, "both workers get a share"


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")
def test_redis_limiter_grants_a_burst_then_says_how_long_to_wait():
    limiter = RedisThrottle(settings.REDIS_URL)
    key = f"test:burst:{time.time()}"
    started = time.monotonic()
    granted, wait = limiter.take(key=key, rate=100, count=1000)
    assert granted == 10
    assert 0 < wait <= 0.02
    again, _ = limiter.take(key=key, rate=100, count=5)
    # Right after the burst, only what refilled since (100 a second) is granted: nothing on a quiet
    # machine, a few when the machine was slow between the two calls.
    assert again <= int(100 * (time.monotonic() - started)) + 1


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), reason="threads need a server")
@pytest.mark.django_db(transaction=True)
def test_database_limiter_is_shared_by_concurrent_workers():
    limiter = DatabaseThrottle()
    rate = 100
    grants, times, window = [0, 0], [], []
    # The window opens once both are connected (a connection takes a while on a busy machine).
    both_connected = threading.Barrier(2, action=lambda: window.append(time.time() + 1.0))

    def work(index):
        from django.db import connection

        try:
            connection.ensure_connection()
            both_connected.wait(timeout=30)
            times.append(time.time())
            while time.time() < window[0]:
                granted, wait = limiter.take(key="app:shared", rate=rate, count=20)
                grants[index] += granted
                if not granted:
                    time.sleep(min(wait, 0.01))
            times.append(time.time())
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # A second, and longer by a take asked just before its end and answered after (a slow moment).
    asked_for = max(times) - min(times)
    assert rate * 0.7 <= sum(grants) <= rate * max(1.0, asked_for) + rate * 0.1 + 2, (grants, asked_for)


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")
def test_acquire_waits_for_tokens_under_every_limit():
    key = f"test:acquire:{time.time()}"
    started = time.monotonic()
    total = 0
    while total < 30:
        total += throttle_acquire(limits=[(f"{key}:app", 1000), (f"{key}:dispatch", 100)], count=30 - total)
    assert time.monotonic() - started >= 0.15  # 10 at once, then 100/s for the other 20


def test_no_limit_grants_everything_at_once():
    assert throttle_acquire(limits=[("app:x", 0)], count=500) == 500
