"""A condition's segments read after a batch kept their verdict: the engine compares a condition's
segments with the approved ones again only once one of their change marks moved (``updated_at`` of
each segment its branches read and of each their rules use, at any depth). Each change of what
decides who is in the segment, its own rules, a used segment's rules, a used kept list's members,
moves a mark, so the next batch refuses the condition's profiles as the first would have; an edit
put back reads as approved again."""

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from audiences.imports import segment_members_lock
from audiences.models import Segment
from audiences.services.segments import segment_create, segment_members_change, segment_update
from journeys.models import Enrollment
from journeys.services import engine
from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment
from tests.factories import ProfileFactory, SegmentMemberFactory

FRENCH = {"all": [{"field": "locale", "op": "starts_with", "value": "fr"}]}
GERMAN = {"all": [{"field": "locale", "op": "starts_with", "value": "de"}]}


def _condition_graph(segment_id):
    return {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "In", "segment": segment_id, "next": "in"}],
                "else": "others",
            },
            {"id": "in", "type": "exit"},
            {"id": "others", "type": "exit"},
        ]
    }


@pytest.fixture
def hourly(make_journey, publish):
    """Publish a journey entering everyone each hour and branching on a segment; return a function
    running one batch at ``hours`` after the first (everyone entered afresh) and answering each
    given profile's (status, step)."""
    made = {}

    def make(segment):
        made["journey"] = publish(make_journey(graph=_condition_graph(segment.pk), entry_every_hours=1))
        made["start"] = timezone.now()
        return made["journey"]

    def run(hours, *profiles):
        journey = made["journey"]
        Enrollment.objects.filter(journey=journey).delete()
        at = made["start"] + dt.timedelta(hours=hours)
        journey_enter_segment(journey_id=journey.pk, now=at)
        journeys_run_due(now=at)
        return [
            (e.status, e.step, e.exit_reason)
            for e in (Enrollment.objects.get(journey=journey, profile=p) for p in profiles)
        ]

    return make, run


def _verdict_kept(journey):
    return (journey.live_version_id, "check") in engine._FROZEN_CHECKED


def test_a_condition_segment_whose_rules_change_after_a_batch_is_refused_in_the_next(hourly, manager_alice):
    make, run = hourly
    french = ProfileFactory(locale="fr-FR")
    outer = segment_create(name="French", rules=FRENCH, by=manager_alice)
    journey = make(outer)
    assert run(0, french) == [("completed", "in", "")]
    assert _verdict_kept(journey)
    segment_update(segment_id=outer.pk, by=manager_alice, rules=GERMAN)
    ((status, step, reason),) = run(2, french)
    assert (status, step) == ("failed", "check")
    assert f"segment #{outer.pk} is defined otherwise than when version 1 was approved" in reason
    segment_update(segment_id=outer.pk, by=manager_alice, rules=FRENCH)  # put back: as approved
    assert run(4, french) == [("completed", "in", "")]


def test_a_change_of_a_nested_segment_s_rules_after_a_batch_is_refused_in_the_next(hourly, manager_alice):
    """The using segment's own row is written by a queryset update that leaves its ``updated_at``
    (its kept figures forgotten, ``definition_version`` moved): the nested segment's mark moves."""
    make, run = hourly
    french, german = ProfileFactory(locale="fr-FR"), ProfileFactory(locale="de-DE")
    inner = segment_create(name="French", rules=FRENCH, by=manager_alice)
    outer = segment_create(name="Uses French", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    journey = make(outer)
    assert run(0, french, german) == [("completed", "in", ""), ("completed", "others", "")]
    assert _verdict_kept(journey)
    before = Segment.objects.get(pk=outer.pk)
    segment_update(segment_id=inner.pk, by=manager_alice, rules=GERMAN)
    after = Segment.objects.get(pk=outer.pk)
    assert after.updated_at == before.updated_at and after.definition_version > before.definition_version
    for status, step, reason in run(2, french, german):
        assert (status, step) == ("failed", "check")
        assert f"segment #{outer.pk} is defined otherwise" in reason
    segment_update(segment_id=inner.pk, by=manager_alice, rules=FRENCH)
    assert run(4, french, german) == [("completed", "in", ""), ("completed", "others", "")]


@pytest.mark.parametrize("depth", [1, 2], ids=["list-used", "list-used-through-another"])
@pytest.mark.parametrize("change", ["admin", "import-batch"])
def test_a_change_of_a_nested_kept_list_s_members_after_a_batch_is_refused_in_the_next(
    hourly, vips, manager_alice, depth, change
):
    make, run = hourly
    member, joining = ProfileFactory(external_id="m-1"), ProfileFactory(external_id="m-2")
    SegmentMemberFactory(segment=vips, profile=member)
    outer = vips
    for level in range(depth):
        outer = segment_create(name=f"Uses {level}", rules={"all": [{"segment": outer.pk}]}, by=manager_alice)
    journey = make(outer)
    assert run(0, member, joining) == [("completed", "in", ""), ("completed", "others", "")]
    assert _verdict_kept(journey)
    if change == "admin":
        segment_members_change(segment_id=vips.pk, by=manager_alice, add=["m-2"])
    else:
        with transaction.atomic():
            segment_members_lock(vips.pk)
            SegmentMemberFactory(segment=vips, profile=joining)
    for status, step, reason in run(2, member, joining):
        assert (status, step) == ("failed", "check")
        assert f"segment #{outer.pk} is defined otherwise" in reason
