"""Every send accounted for, whatever the order of what happens to it: a few dispatches walked
through random claims, outcomes written back (accepted, failed, unknown, retried), leases running
out under rows in flight, outcomes arriving after that (landing: the worker was slow), stops,
completions and opens.

After every step, each dispatch's counters and its rollup are what a count of its rows says, and
no row is claimed again unless a retry put it back in the queue (a row whose lease ran out, or
that was stopped, is never sent again). At the end, once what is left is sent, every row has a
final outcome and every dispatch is final. Each walk draws its steps from a seeded generator; a
failure names its seed and the steps so far.
"""

import datetime as dt
import random
from collections import Counter

import pytest
from django.conf import settings
from django.utils import timezone

from delivery.models import Delivery, Dispatch
from delivery.services.claims import Result, deliveries_claim, deliveries_write_back
from delivery.services.dispatches import (
    deliveries_expire_leases,
    dispatch_complete_if_done,
    dispatch_create,
    dispatch_prepare,
    dispatch_stop,
)
from delivery.services.opens import delivery_open_report
from tests.delivery.test_rollups import counted, rolled_up
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = [pytest.mark.django_db]

STEPS = 60
COUNTERS = ("total", "accepted", "failed", "skipped", "unknown", "opened")


class Walk:
    """An app's sends (twelve phones, two profiles without one) moved one random step at a time by
    the services the senders, the watchdog and the apps call; ``in_flight`` holds the rows claimed
    and not yet answered, as a sender's batch does."""

    def __init__(self, rng: random.Random, by, django_capture_on_commit_callbacks):
        self.rng, self.by, self.capture = rng, by, django_capture_on_commit_callbacks
        self.clock = timezone.now()
        self.app = AppFactory()
        self.content = PushContentFactory(app=self.app)
        self.profiles = ProfileFactory.create_batch(14)
        for n, profile in enumerate(self.profiles[:12]):  # two without a device: skipped at once
            DeviceFactory(
                profile=profile, app=self.app, platform="ios" if n % 2 else "android", push_enabled=n % 5 != 4
            )
        self.dispatches: list[int] = []
        self.in_flight: dict[int, list] = {}
        self.claimed: Counter = Counter()  # row id -> times claimed
        self.requeued: Counter = Counter()  # row id -> times a retry put it back in the queue
        for _ in range(2):
            self.send()

    def send(self) -> str:
        chosen = self.rng.sample(self.profiles, self.rng.randint(6, len(self.profiles)))
        with self.capture(execute=False):  # no worker: the walk sends
            dispatch = dispatch_create(
                app_id=self.app.pk,
                kind=Dispatch.Kind.API_TRIGGER,
                spec=self.content.spec(),
                profile_ids=[p.pk for p in chosen],
            )
            dispatch_prepare(dispatch_id=dispatch.pk)
        self.dispatches.append(dispatch.pk)
        self.in_flight[dispatch.pk] = []
        return f"send {dispatch.pk} to {len(chosen)}"

    def _sending(self) -> list[int]:
        return list(
            Dispatch.objects.filter(pk__in=self.dispatches, status=Dispatch.Status.SENDING)
            .order_by("pk")
            .values_list("pk", flat=True)
        )

    def claim(self) -> str:
        sending = self._sending()
        if not sending:
            return "nothing to claim"
        dispatch_id = self.rng.choice(sending)
        rows = deliveries_claim(dispatch_id, limit=self.rng.randint(1, 5), now=self.clock)
        for row in rows:
            self.claimed[row.id] += 1
            assert self.claimed[row.id] <= self.requeued[row.id] + 1, f"row {row.id} claimed again"
        self.in_flight[dispatch_id].extend(rows)
        return f"claim {[r.id for r in rows]} of {dispatch_id}"

    def write_back(self) -> str:
        busy = [pk for pk in self.dispatches if self.in_flight[pk]]
        if not busy:
            return self.claim()
        dispatch_id = self.rng.choice(busy)
        rows = self.in_flight[dispatch_id]
        answered = self.rng.sample(rows, self.rng.randint(1, len(rows)))
        results = []
        for row in answered:
            rows.remove(row)
            kind = self.rng.choices(("accepted", "failed", "unknown", "retry"), weights=(6, 2, 1, 2))[0]
            if kind == "retry":
                results.append(Result(row.id, "queued", reason="429", next_attempt_at=self.clock))
            else:
                reason = {"accepted": "", "failed": "Unregistered", "unknown": "timeout"}[kind]
                results.append(Result(row.id, kind, reason=reason, provider_id=f"p-{row.id}" if reason == "" else ""))
        platforms = {row.id: row.platform for row in answered}
        claims = {row.id: row.attempts for row in answered}
        ids = [r.id for r in results]
        before = {
            pk: (status, reason)
            for pk, status, reason in Delivery.objects.filter(pk__in=ids).values_list("pk", "status", "reason")
        }
        closed = Dispatch.objects.get(pk=dispatch_id).status != Dispatch.Status.SENDING
        written = deliveries_write_back(dispatch_id, results, now=self.clock, platforms=platforms, claims=claims)
        after = dict(Delivery.objects.filter(pk__in=ids).values_list("pk", "status"))
        for r in results:
            # A row still in flight takes its outcome (a retry of a stopped send ends skipped), and
            # so does one whose lease ran out meanwhile (a retry fails: it is never sent again).
            if before[r.id] == ("unknown", "lease_expired"):
                assert after[r.id] == ("failed" if r.status == "queued" else r.status), (r, after[r.id])
            elif before[r.id][0] != "sending":
                assert after[r.id] == before[r.id][0], (r, before[r.id], after[r.id])
            elif r.status == "queued":
                assert after[r.id] == ("skipped" if closed else "queued"), (r, after[r.id])
                self.requeued[r.id] += after[r.id] == "queued"
            else:
                assert after[r.id] == r.status, (r, after[r.id])
        return f"write back {[(r.id, r.status) for r in results]} to {dispatch_id}: {dict(written)}"

    def expire(self) -> str:
        """The leases of every row in flight run out (a worker was slow): they end ``unknown``;
        their outcomes may still arrive, and land from the claim that sent them."""
        return f"expired {deliveries_expire_leases(now=self._leases_over())}"

    def _leases_over(self) -> dt.datetime:
        """A time past every lease: PostgreSQL stamps them by its clock, SQLite by the claim's."""
        return max(self.clock, timezone.now()) + dt.timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS + 5)

    def stop(self) -> str:
        """A send stopped, most often one with rows in flight (their outcomes arrive after it)."""
        sending = self._sending()
        busy = [pk for pk in sending if self.in_flight[pk]]
        if not sending:
            return self.send()
        dispatch_id = self.rng.choice(busy if busy and self.rng.random() < 0.8 else sending)
        flying = set(Delivery.objects.filter(dispatch_id=dispatch_id, status="sending").values_list("pk", flat=True))
        dispatch_stop(dispatch_id=dispatch_id, by=self.by)
        # Its queued rows end skipped; those in flight finish with their outcomes, still to come.
        assert not Delivery.objects.filter(dispatch_id=dispatch_id, status="queued").exists()
        assert set(Delivery.objects.filter(pk__in=flying, status="sending").values_list("pk", flat=True)) == flying
        return f"stop {dispatch_id}"

    def complete(self) -> str:
        dispatch_id = self.rng.choice(self.dispatches)
        return f"complete {dispatch_id}: {dispatch_complete_if_done(dispatch_id=dispatch_id)}"

    def open(self) -> str:
        accepted = list(
            Delivery.objects.filter(dispatch_id__in=self.dispatches, status="accepted", opened_at__isnull=True)
            .order_by("pk")
            .values_list("pk", "dispatch__app_id")
        )
        if not accepted:
            return self.claim()
        row, app_id = self.rng.choice(accepted)
        delivery_open_report(delivery_id=row, app_id=app_id, by=self.by, when=self.clock)
        return f"open {row}"

    def tick(self) -> str:
        self.clock += dt.timedelta(minutes=self.rng.choice((1, 10, 20)))
        return f"clock {self.clock:%H:%M}"

    def step(self) -> str:
        action = self.rng.choices(
            (self.send, self.claim, self.write_back, self.expire, self.stop, self.complete, self.open, self.tick),
            weights=(1, 5, 5, 1, 1, 2, 2, 2),
        )[0]
        return action()

    def drain(self) -> None:
        """What is left sent and answered, then every dispatch completed."""
        deliveries_expire_leases(now=self._leases_over())
        for dispatch_id in self._sending():  # as the senders do: a stopped send sends nothing more
            while rows := deliveries_claim(dispatch_id, limit=50, now=self.clock + dt.timedelta(days=1)):
                deliveries_write_back(dispatch_id, [Result(r.id, "accepted") for r in rows], now=self.clock)
            dispatch_complete_if_done(dispatch_id=dispatch_id)


def counters_of(dispatch: Dispatch) -> dict:
    return {name: getattr(dispatch, name) for name in COUNTERS}


def rows_counted(dispatch: Dispatch) -> dict:
    """The dispatch's counters as a count of its rows says them."""
    rows = Delivery.objects.filter(dispatch=dispatch)
    by_status = Counter(rows.values_list("status", flat=True))
    return {
        "total": rows.count(),
        **{status: by_status[status] for status in ("accepted", "failed", "skipped", "unknown")},
        "opened": rows.filter(opened_at__isnull=False).count(),
    }


def assert_accounted(dispatch_ids: list[int], context) -> None:
    """Each dispatch's counters and the rollup are a count of the rows."""
    assert rolled_up(dispatch_ids) == counted(dispatch_ids), context
    for dispatch in Dispatch.objects.filter(pk__in=dispatch_ids):
        rows = Delivery.objects.filter(dispatch=dispatch)
        assert counters_of(dispatch) == rows_counted(dispatch), (dispatch.pk, context)
        # Per platform, accepted and failed move with each write; the whole is counted when the
        # dispatch finishes (the skips of its resolve, the leases run out).
        final = dispatch.status in Dispatch.FINAL_STATUSES
        platforms: Counter = Counter()
        for platform, status in rows.filter(finished_at__isnull=False).values_list("device__platform", "status"):
            if final or status in ("accepted", "failed"):
                platforms[platform or "none", status] += 1
        shown = Counter(
            {
                (p, s): n
                for p, counts in (dispatch.by_platform or {}).items()
                for s, n in counts.items()
                if n and (final or s in ("accepted", "failed"))
            }
        )
        assert shown == platforms, (dispatch.pk, dispatch.status, context)


@pytest.mark.embedded  # the same bookkeeping on SQLite
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_row_of_every_send_is_accounted_for_after_every_step(
    seed, open_gate, admin_erin, django_capture_on_commit_callbacks
):
    walk = Walk(random.Random(seed), admin_erin, django_capture_on_commit_callbacks)
    history = []
    assert_accounted(walk.dispatches, (seed, history))
    for _ in range(STEPS):
        history.append(walk.step())
        assert_accounted(walk.dispatches, (seed, history))
    walk.drain()
    assert_accounted(walk.dispatches, (seed, history, "drained"))
    rows = Delivery.objects.filter(dispatch_id__in=walk.dispatches)
    assert not rows.filter(finished_at__isnull=True).exists()
    assert set(rows.values_list("status", flat=True)) <= set(Delivery.FINAL_STATUSES)
    assert set(Dispatch.objects.filter(pk__in=walk.dispatches).values_list("status", flat=True)) <= set(
        Dispatch.FINAL_STATUSES
    )
    assert walk.requeued and rows.filter(status="unknown").exists(), "the walk retried and lost rows"
