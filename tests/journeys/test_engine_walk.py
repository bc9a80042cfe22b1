"""A journey's step counters walked at random: profiles entering on an event (some again after
their stay), waits coming due as the clock moves, a split, a condition whose segment changes under
it, pushes, the exit event, and finally a stop.

After every step each counter the journey's page shows (``StepStat``: entered, passed per branch,
pushed, exited, exit event, stopped) is what the enrollments' own histories say; no profile is
inside twice at once; and each push's dispatch holds exactly the profiles whose history went
through it. Each walk draws its steps from a seeded generator; a failure names its seed and the
steps so far.
"""

import datetime as dt
import random
from collections import Counter

import pytest
from django.utils import timezone

from audiences.models import SegmentMember
from audiences.services.events import events_ingest
from delivery.models import Delivery, Dispatch
from journeys.models import Enrollment, StepStat
from journeys.services.engine import journeys_run_due
from journeys.services.lifecycle import journey_stop
from tests.factories import DeviceFactory, ProfileFactory, SegmentMemberFactory

pytestmark = pytest.mark.django_db

STEPS = 40


def walk_graph(*, vips: int, content: int) -> dict:
    """pause (1 h) → split A (50 %) / B → A: push → settle (30 min) → done; B: check (VIPs) → push / done."""
    return {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": 3600, "next": "split"},
            {
                "id": "split",
                "type": "split",
                "branches": [
                    {"label": "A", "percent": 50, "next": "push"},
                    {"label": "B", "percent": 50, "next": "check"},
                ],
            },
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "VIP", "segment": vips, "next": "push"}],
                "else": "done",
            },
            {"id": "push", "type": "push", "content": content, "next": "settle"},
            {"id": "settle", "type": "wait", "seconds": 1800, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


def counted_from_histories(journey) -> Counter:
    """The step counters as the enrollments' histories and exits say them: (step, metric) -> n."""
    counts: Counter = Counter()
    for history, status, reason, step in Enrollment.objects.filter(journey=journey).values_list(
        "history", "status", "exit_reason", "step"
    ):
        for at, _, outcome in history:
            if outcome != "waited":  # a wait's end is its profile passing, not arriving
                counts[at, "entered"] += 1
            if outcome in ("passed", "waited"):
                counts[at, "passed"] += 1
            elif outcome.startswith("branch:"):
                counts[at, f"passed:{outcome.removeprefix('branch:')}"] += 1
            elif outcome.startswith("pushed:"):
                counts[at, "pushed"] += 1
            elif outcome in ("exit", "failed"):
                counts[at, "exited" if outcome == "exit" else "failed"] += 1
        if status == Enrollment.Status.EXITED:
            counts[step, "exit_event" if reason.startswith("exit event") else "stopped"] += 1
    return counts


def kept_counters(journey) -> Counter:
    kept: Counter = Counter()
    for step, metric, n in StepStat.objects.filter(version__journey=journey).values_list("step", "metric", "count"):
        kept[step, metric] += n  # the sum of its shards
    return Counter({key: n for key, n in kept.items() if n})


class Walk:
    def __init__(self, rng: random.Random, journey, by, vips, capture):
        self.rng, self.journey, self.by, self.vips, self.capture = rng, journey, by, vips, capture
        self.clock = timezone.now()
        self.profiles = self._four_of_each_group(journey)
        for profile in self.profiles:
            DeviceFactory(profile=profile, app=journey.app, platform="android")

    @staticmethod
    def _four_of_each_group(journey) -> list:
        """Eight profiles, the split's A and B alternating: its groups come of a hash of the journey's
        and the profile's ids, which differ from run to run, so that a seed's walk would otherwise
        send everyone through one branch on some runs."""
        from journeys.services.engine import _split_bucket

        groups: dict[bool, list] = {True: [], False: []}
        while min(len(members) for members in groups.values()) < 4:
            profile = ProfileFactory()
            groups[_split_bucket(journey.pk, "split", profile.pk) < 50].append(profile)
        return [profile for pair in zip(groups[True][:4], groups[False][:4], strict=True) for profile in pair]

    def _events(self, name: str, profiles) -> None:
        with self.capture(execute=True):  # the entries run their first steps once the events commit
            events_ingest(
                items=[{"external_id": p.external_id, "name": name, "occurred_at": self.clock} for p in profiles],
                by=self.by,
            )

    def visit(self) -> str:
        chosen = self.rng.sample(self.profiles, self.rng.randint(1, 3))
        self._events("visit", chosen * self.rng.choice((1, 1, 2)))  # sometimes one call names a profile twice
        return f"visit {[p.pk for p in chosen]}"

    def purchase(self) -> str:
        """The exit event, most often of a profile inside."""
        inside = set(
            Enrollment.objects.filter(journey=self.journey, status__in=Enrollment.OPEN_STATUSES).values_list(
                "profile_id", flat=True
            )
        )
        candidates = [p for p in self.profiles if p.pk in inside]
        profile = self.rng.choice(candidates if candidates and self.rng.random() < 0.8 else self.profiles)
        self._events("purchase", [profile])
        return f"purchase {profile.pk}"

    def vip(self) -> str:
        """A profile joins the condition's segment, or leaves it."""
        profile = self.rng.choice(self.profiles)
        member = SegmentMember.objects.filter(segment=self.vips, profile=profile)
        if member.exists():
            member.delete()
            return f"{profile.pk} leaves the VIPs"
        SegmentMemberFactory(segment=self.vips, profile=profile)
        return f"{profile.pk} joins the VIPs"

    def run(self) -> str:
        self.clock += dt.timedelta(minutes=self.rng.choice((10, 31, 45, 61, 90)))
        report = journeys_run_due(now=self.clock)
        return f"run at +{(self.clock - timezone.now()).total_seconds() / 60:.0f} min: {report.transitions} moves"

    def step(self) -> str:
        action = self.rng.choices((self.visit, self.purchase, self.vip, self.run), weights=(4, 2, 2, 4))[0]
        return action()


def assert_counted(journey, context) -> None:
    assert kept_counters(journey) == counted_from_histories(journey), context
    inside = Counter(
        Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).values_list(
            "profile_id", flat=True
        )
    )
    assert all(n == 1 for n in inside.values()), (inside, context)
    pushed: Counter = Counter()  # (dispatch, profile) -> pushes the histories say
    for profile_id, history in Enrollment.objects.filter(journey=journey).values_list("profile_id", "history"):
        for _, _, outcome in history:
            if outcome.startswith("pushed:"):
                pushed[int(outcome.removeprefix("pushed:")), profile_id] += 1
    made: Counter = Counter()  # what the pushes made: a batch's audience, or the rows appended to a stream
    for dispatch in Dispatch.objects.filter(kind=Dispatch.Kind.JOURNEY, source_id=journey.live_version_id):
        if dispatch.profile_ids is not None:
            made.update((dispatch.pk, profile_id) for profile_id in dispatch.profile_ids)
        else:
            made.update(Delivery.objects.filter(dispatch=dispatch).values_list("dispatch_id", "profile_id"))
    assert made == pushed, context


@pytest.mark.parametrize("seed", [1, 2])
def test_the_step_counters_are_the_enrollments_histories_after_every_step(
    seed, make_journey, publish, manager_alice, vips, welcome, django_capture_on_commit_callbacks
):
    journey = publish(
        make_journey(
            graph=walk_graph(vips=vips.pk, content=welcome.pk),
            entry_kind="event",
            entry_event="visit",
            entry_segment=None,
            reentry="after_wait",
            exit_event="purchase",
        )
    )
    walk = Walk(random.Random(seed), journey, manager_alice, vips, django_capture_on_commit_callbacks)
    history = []
    for _ in range(STEPS):
        history.append(walk.step())
        assert_counted(journey, (seed, history))
    history.append(walk.visit())  # someone inside when it stops
    journey_stop(journey_id=journey.pk, by=manager_alice)
    history.append("stop")
    assert Enrollment.objects.filter(journey=journey, exit_reason="journey stopped").exists()
    assert_counted(journey, (seed, history))
    counters = kept_counters(journey)
    assert counters["push", "pushed"] and counters["split", "passed:A"] and counters["split", "passed:B"]
    assert not Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).exists()
