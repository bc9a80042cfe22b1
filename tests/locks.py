"""Tests of locks between transactions: writers in threads of their own, each with its own connection."""

import threading
import time

from django.db import connection, connections


def eventually(condition, *, timeout: float = 10.0, step: float = 0.01) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (asked every ``step``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def wait_for_a_blocked_writer() -> bool:
    """Whether another session of the test database waits for a lock (within 10 s)."""
    with connection.cursor() as cursor:
        for _ in range(200):
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
            threading.Event().wait(0.05)
    return False


def wait_for_blocked_writers(count: int) -> bool:
    """Whether ``count`` other sessions of the test database wait for a lock at once (within 10 s)."""

    def waiting() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0] >= count

    return eventually(waiting, step=0.05)


def concurrently(*steps) -> list[Exception]:
    """Run each step in a thread of its own, with its own connection; return what they raised
    (a deadlock aborts one of them)."""
    errors = []

    def run(step):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 (returned to the test)
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(step,)) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


class ProfileHeld:
    """A third writer holding one profile's row (FOR NO KEY UPDATE, as a profiles call does) in a
    session of its own from ``holding`` until ``released``: ``holder`` is a step of ``concurrently``."""

    def __init__(self, profile_id: int):
        self.profile_id = profile_id
        self.holding, self.released = threading.Event(), threading.Event()

    def holder(self) -> None:
        from django.db import transaction

        from audiences.models import Profile

        with transaction.atomic():
            Profile.objects.select_for_update(no_key=True).get(pk=self.profile_id)
            self.holding.set()
            self.released.wait(20)


class ProfilesHeld:
    """A writer holding the profiles table (ACCESS EXCLUSIVE) from ``holding`` until ``released``,
    so that a count started meanwhile waits with its rules already read: ``holder`` is a step of
    ``concurrently``."""

    def __init__(self):
        self.holding, self.released = threading.Event(), threading.Event()

    def holder(self) -> None:
        from django.db import transaction

        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("LOCK TABLE audiences_profile IN ACCESS EXCLUSIVE MODE")
            self.holding.set()
            self.released.wait(20)
