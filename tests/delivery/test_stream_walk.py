"""An API-triggered campaign's standing stream walked through random appends, sends to the push
simulator (some answered with a retry, some with a dead token), opens, watches and closes.

After every step the stream's rollup and its live figures are a count of its rows, and after a
watch so are its counters; no phone has received more pushes than its rows accepted (nothing sent
twice); a closed stream's queued rows end ``skipped``/``stopped`` and nothing of it is sent after.
Each walk draws its steps from a seeded generator; a failure names its seed and the steps so far.
"""

import datetime as dt
import random
from collections import Counter

import pytest
from django.conf import settings
from django.utils import timezone

from delivery.models import Delivery, Dispatch
from delivery.services.claims import deliveries_claim
from delivery.services.dispatches import deliveries_expire_leases, dispatch_counted_now
from delivery.services.opens import delivery_open_report
from delivery.services.stream_senders import streams_send
from delivery.services.streams import (
    _CURRENT_CHECKS,
    Recipient,
    stream_append,
    stream_current_check_register,
    streams_close,
    streams_watch,
)
from tests.delivery.test_accounting_walk import counters_of, rows_counted
from tests.delivery.test_rollups import counted, rolled_up
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, orders_stream

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stream_gates_open")]

STEPS = 40


class Walk:
    """An app's transactional stream (nine phones, one with push off, a profile without a phone)
    moved one random step at a time by the services the API, the senders and the watch call."""

    def __init__(self, rng: random.Random, app, sim, by, capture, current: dict):
        self.rng, self.app, self.sim, self.by, self.capture = rng, app, sim, by, capture
        self.current = current  # the source whose streams are current
        self.content = PushContentFactory(app=app)
        self.profiles = ProfileFactory.create_batch(10)
        self.devices = [
            DeviceFactory(profile=p, app=app, platform="ios" if n % 2 else "android", push_enabled=n != 9)
            for n, p in enumerate(self.profiles[:-1])  # the last profile has no phone, one has push off
        ]
        self.source = 9000 + rng.randint(0, 999)
        self.streams: list[Dispatch] = []
        self.open_stream()

    def open_stream(self) -> str:
        self.source += 1
        self.current["id"] = self.source
        self.streams.append(orders_stream(self.content, source_id=self.source))
        return f"stream {self.streams[-1].pk}"

    @property
    def live(self) -> Dispatch:
        return self.streams[-1]

    def append(self) -> str:
        chosen = self.rng.sample(self.profiles, self.rng.randint(1, 4))
        stream_append(
            dispatch_id=self.live.pk,
            kind=self.live.kind,
            app_id=self.app.pk,
            recipients=[Recipient(p.pk) for p in chosen],
            source_lock=("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [self.app.pk]),
        )
        return f"append {[p.pk for p in chosen]} to {self.live.pk}"

    def fault(self) -> str:
        """The provider's next answer for a phone: a retry (429) or a dead token."""
        device = self.rng.choice([d for d in self.devices if d.push_enabled])
        failure = self.rng.choice([429, (410, "Unregistered") if device.platform == "ios" else (404, "UNREGISTERED")])
        self.sim.state.fail_token(token=device.token, failures=[failure])
        return f"fault {failure} for {device.pk}"

    def send(self) -> str:
        report = streams_send(budget=0, dispatch_ids=[s.pk for s in self.streams])
        return f"send: claimed {report.claimed}"

    def crash(self) -> str:
        """A sender dies holding a claim: its rows are never sent, and end ``unknown`` once their
        leases run out (the watchdog)."""
        appended = self.append()  # what a call appends as the sender takes it
        held = deliveries_claim(self.live.pk, limit=self.rng.randint(1, 3), now=timezone.now())
        later = timezone.now() + dt.timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS + 5)
        expired = deliveries_expire_leases(now=later)
        assert expired == len(held), (held, expired)
        return f"{appended}, crash holding {[r.id for r in held]}"

    def open(self) -> str:
        rows = list(
            Delivery.objects.filter(dispatch__in=self.streams, status="accepted", opened_at__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not rows:
            return self.append()
        row = self.rng.choice(rows)
        delivery_open_report(delivery_id=row, app_id=self.app.pk, by=self.by, when=timezone.now())
        return f"open {row}"

    def watch(self) -> str:
        streams_watch()
        for stream in self.streams:
            stream.refresh_from_db()
            assert counters_of(stream) == rows_counted(stream), stream.pk
        return "watch"

    def close(self) -> str:
        """The campaign stopped: its stream closes (queued rows end stopped), and a new one opens
        when it is live again."""
        with self.capture(execute=True):  # its counters are recounted once the close commits
            streams_close(kind=self.live.kind, source_id=self.source, by=None, reason="stopped")
        closed = self.live
        assert not Delivery.objects.filter(dispatch=closed, status="queued").exists()
        return f"close {closed.pk}, " + self.open_stream()

    def step(self) -> str:
        action = self.rng.choices(
            (self.append, self.fault, self.send, self.crash, self.open, self.watch, self.close),
            weights=(6, 2, 4, 2, 2, 1, 1),
        )[0]
        return action()


def assert_accounted(walk: Walk, context) -> None:
    ids = [s.pk for s in walk.streams]
    assert rolled_up(ids) == counted(ids), context
    for stream in Dispatch.objects.filter(pk__in=ids):
        live = dispatch_counted_now(stream)
        if stream.status in Dispatch.RUNNING_STATUSES:
            assert counters_of(live) == rows_counted(stream), (stream.pk, context)
    # Nothing sent twice: each phone received as many pushes as its rows were accepted.
    accepted = Counter(
        Delivery.objects.filter(dispatch_id__in=ids, status="accepted").values_list("device__token", flat=True)
    )
    received = {token: n for token, n in walk.sim.state.snapshot_counts().items() if n}
    assert received == dict(accepted), context


@pytest.fixture
def current_source():
    """Streams of one source at a time are current (the campaigns' own check reads their approval)."""
    saved = dict(_CURRENT_CHECKS)
    current = {}
    stream_current_check_register(
        kind=Dispatch.Kind.API_TRIGGER, check=lambda source_id, version: source_id == current["id"]
    )
    yield current
    _CURRENT_CHECKS.clear()
    _CURRENT_CHECKS.update(saved)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_stream_is_accounted_for_after_every_step(
    seed, pushsim, pushsim_app, admin_erin, settings, current_source, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0  # a retried row is ready again at the next send
    walk = Walk(
        random.Random(seed), pushsim_app, pushsim, admin_erin, django_capture_on_commit_callbacks, current_source
    )
    history = []
    for _ in range(STEPS):
        history.append(walk.step())
        assert_accounted(walk, (seed, history))
    walk.send()
    walk.close()
    history.append(walk.watch())
    assert_accounted(walk, (seed, history, "closed"))
    rows = Delivery.objects.filter(dispatch__in=walk.streams)
    assert not rows.filter(finished_at__isnull=True).exists()
    assert {"accepted", "failed", "skipped", "unknown"} <= set(rows.values_list("status", flat=True))
