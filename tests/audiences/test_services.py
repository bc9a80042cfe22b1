"""Segments, profiles and events through their services: permissions, locks, audit, semantics."""

import datetime as dt
import math
import threading

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.http import Http404
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.services import access_grant
from audiences.models import Event, Profile, Segment, SegmentMember
from audiences.rules.schema import RulesInvalid
from audiences.rules.validation import rules_validate_for
from audiences.selectors import profile_memberships, segments_visible_to
from audiences.services.events import events_ingest
from audiences.services.profiles import profile_upsert, profiles_delete, profiles_upsert
from audiences.services.segments import (
    segment_count_keep,
    segment_create,
    segment_delete,
    segment_members_change,
    segment_preview,
    segment_update,
)
from tests.factories import ProfileFactory
from tests.locks import ProfileHeld, ProfilesHeld, concurrently, wait_for_a_blocked_writer, wait_for_blocked_writers
from tests.pg_statistics import rows_read, statistics_say_empty

pytestmark = pytest.mark.django_db

PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}


def test_manager_creates_segment_and_gets_access_to_it(manager_alice, manager_mallory):
    segment = segment_create(name="Pro users", rules=PRO, by=manager_alice)
    assert list(segments_visible_to(manager_alice)) == [segment]
    assert list(segments_visible_to(manager_mallory)) == []
    assert AuditEvent.objects.filter(action="segment_created", object_id=str(segment.pk)).exists()


def test_viewer_cannot_create_segments(viewer_carol):
    with pytest.raises(PermissionDenied):
        segment_create(name="x", rules=PRO, by=viewer_carol)


def test_invalid_tree_is_refused_and_nothing_is_written(manager_alice):
    with pytest.raises(RulesInvalid) as info:
        segment_create(name="bad", rules={"all": []}, by=manager_alice)
    assert info.value.errors[0].path == "rules.all"
    assert not Segment.objects.exists()


def test_other_manager_gets_404_then_can_edit_once_granted(manager_alice, manager_mallory, admin_erin):
    segment = segment_create(name="Pro users", rules=PRO, by=manager_alice)
    with pytest.raises(Http404):
        segment_update(segment_id=segment.pk, name="mine now", by=manager_mallory)
    access_grant(obj=segment, to=manager_mallory, by=admin_erin)
    segment_update(segment_id=segment.pk, name="shared", by=manager_mallory)
    segment.refresh_from_db()
    assert segment.name == "shared"


def test_viewer_with_access_reads_but_cannot_change(manager_alice, viewer_carol, admin_erin):
    segment = segment_create(name="Pro users", rules=PRO, by=manager_alice)
    access_grant(obj=segment, to=viewer_carol, by=admin_erin)
    assert list(segments_visible_to(viewer_carol)) == [segment]
    with pytest.raises(PermissionDenied):
        segment_update(segment_id=segment.pk, name="x", by=viewer_carol)


def test_segment_cannot_use_a_segment_its_author_cannot_see(manager_alice, manager_mallory):
    hidden = segment_create(name="Mallory's", rules=PRO, by=manager_mallory)
    with pytest.raises(RulesInvalid) as info:
        segment_create(name="uses hidden", rules={"all": [{"segment": hidden.pk}]}, by=manager_alice)
    assert info.value.errors[0].code == "unknown_segment"


def test_update_refuses_a_cycle_through_another_segment(manager_alice):
    a = segment_create(name="a", rules=PRO, by=manager_alice)
    b = segment_create(name="b", rules={"all": [{"segment": a.pk}]}, by=manager_alice)
    with pytest.raises(RulesInvalid) as info:
        segment_update(segment_id=a.pk, rules={"any": [{"segment": b.pk}]}, by=manager_alice)
    assert info.value.errors[0].code == "cycle"
    a.refresh_from_db()
    assert a.rules == PRO


def _chain(by, length: int) -> list[Segment]:
    """Segments each using the one before: the first holds the pro profiles."""
    chain = [segment_create(name="s0", rules=PRO, by=by)]
    for n in range(1, length):
        chain.append(segment_create(name=f"s{n}", rules={"all": [{"segment": chain[-1].pk}]}, by=by))
    return chain


def test_a_segment_using_others_deeper_than_the_compiler_reads_is_refused_when_saved(manager_alice):
    """Each segment of a chain was accepted, and the eleventh level failed every count, preview and
    send ("segments reference each other too deeply")."""
    ProfileFactory(attributes={"plan": "pro"})
    chain = _chain(manager_alice, 11)  # the top uses ten levels of segments: the most the compiler reads
    assert segment_preview(segment_id=chain[-1].pk, by=manager_alice).count == 1
    with pytest.raises(RulesInvalid) as info:
        segment_create(name="s11", rules={"all": [PRO, {"segment": chain[-1].pk}]}, by=manager_alice)
    assert [(e.path, e.code) for e in info.value.errors] == [("rules.all[1].segment", "too_deep")]
    assert "go 11 levels deep" in info.value.errors[0].message
    assert not Segment.objects.filter(name="s11").exists()
    with pytest.raises(RulesInvalid):  # a journey's condition or any tree naming it, alike
        rules_validate_for({"segment": chain[-1].pk}, by=manager_alice)


def test_a_segment_change_making_a_segment_above_it_too_deep_is_refused(manager_alice):
    chain = _chain(manager_alice, 11)
    kept = segment_create(name="kept", kind=Segment.Kind.STATIC, by=manager_alice)
    with pytest.raises(RulesInvalid) as info:
        segment_update(segment_id=chain[0].pk, rules={"all": [{"segment": kept.pk}]}, by=manager_alice)
    assert info.value.errors[0].code == "too_deep"
    assert f"segment {chain[-1].pk}, which uses this one, would go 11 levels deep" in info.value.errors[0].message
    chain[0].refresh_from_db()
    assert chain[0].rules == PRO
    segment_update(segment_id=chain[1].pk, rules={"all": [{"segment": kept.pk}]}, by=manager_alice)  # shorter


def test_segment_used_by_another_cannot_be_deleted(manager_alice):
    a = segment_create(name="a", rules=PRO, by=manager_alice)
    b = segment_create(name="b", rules={"all": [{"segment": a.pk}]}, by=manager_alice)
    with pytest.raises(ValidationError, match="used by 'b'"):
        segment_delete(segment_id=a.pk, by=manager_alice)
    segment_update(segment_id=b.pk, rules=PRO, by=manager_alice)
    segment_delete(segment_id=a.pk, by=manager_alice)
    assert not Segment.objects.filter(pk=a.pk).exists()


def test_a_refused_deletion_names_no_segment_its_author_may_not_see(manager_alice, manager_mallory):
    mine = segment_create(name="Mine", rules=PRO, by=manager_alice)
    access_grant(obj=mine, to=manager_mallory, by=None)
    segment_create(name="Mallory's secret", rules={"all": [{"segment": mine.pk}]}, by=manager_mallory)
    segment_create(name="Alice's own", rules={"all": [{"segment": mine.pk}]}, by=manager_alice)
    with pytest.raises(ValidationError) as info:
        segment_delete(segment_id=mine.pk, by=manager_alice)
    assert info.value.messages == [
        "Segment 'Mine' is used by 'Alice's own' and a segment you cannot see: change those first."
    ]
    assert Segment.objects.filter(pk=mine.pk).exists()


def test_preview_counts_and_samples_and_keeps_the_count_only_when_asked(manager_alice):
    for n in range(25):
        ProfileFactory(attributes={"plan": "pro" if n % 2 else "free"})
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    preview = segment_preview(segment_id=segment.pk, by=manager_alice)
    assert preview.count == 12
    assert len(preview.sample) == 12
    assert all(p.attributes["plan"] == "pro" for p in preview.sample)
    segment.refresh_from_db()
    assert segment.last_count is None  # a preview is a read
    segment_preview(segment_id=segment.pk, by=manager_alice, keep=True)
    segment.refresh_from_db()
    assert segment.last_count == 12 and segment.last_counted_at is not None
    unsaved = segment_preview(
        rules={"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "free"}]}, by=manager_alice
    )
    assert unsaved.count == 13
    assert len(unsaved.sample) == 13


def _kept(segment) -> tuple:
    segment = Segment.objects.get(pk=segment.pk)
    return segment.last_count, segment.last_counted_at, segment.last_reach


def test_only_who_may_change_a_segment_keeps_its_count(
    manager_alice, manager_mallory, approver_bob, viewer_carol, under_review
):
    ProfileFactory(attributes={"plan": "pro"})
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    segment_count_keep(segment_id=segment.pk, by=manager_alice)
    ProfileFactory(attributes={"plan": "pro"})  # a count now says 2
    before = _kept(segment)
    assert before[0] == 1
    under_review(segment)
    access_grant(obj=segment, to=viewer_carol, by=None)
    for reader in (approver_bob, viewer_carol):  # each may read the segment, not change it
        assert segment_preview(segment_id=segment.pk, by=reader, keep=True).count == 2
        with pytest.raises(PermissionDenied):
            segment_count_keep(segment_id=segment.pk, by=reader)
    with pytest.raises(Http404):
        segment_count_keep(segment_id=segment.pk, by=manager_mallory)
    assert _kept(segment) == before

    assert segment_count_keep(segment_id=segment.pk, by=manager_alice).count == 2
    assert _kept(segment)[0] == 2


def test_a_count_keeps_the_reach_in_the_apps_its_counter_does_not_see(manager_alice, manager_mallory):
    from tests.factories import AppFactory, DeviceFactory

    shop, bank = AppFactory(name="Shop"), AppFactory(name="Bank")
    access_grant(obj=shop, to=manager_alice, by=None)
    access_grant(obj=bank, to=manager_mallory, by=None)
    ann, bea = ProfileFactory(attributes={"plan": "pro"}), ProfileFactory(attributes={"plan": "pro"})
    DeviceFactory(profile=ann, app=shop, platform="ios")
    DeviceFactory(profile=bea, app=bank, platform="android")
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    access_grant(obj=segment, to=manager_mallory, by=None)
    segment_count_keep(segment_id=segment.pk, by=manager_alice)
    _, alice_counted_at, reach = _kept(segment)
    assert [(f["app"], f["reachable"], "counted_at" in f) for f in reach] == [(shop.pk, 1, False)]

    DeviceFactory(profile=bea, app=shop, platform="ios")
    segment_count_keep(segment_id=segment.pk, by=manager_mallory)  # she sees the Bank app only
    count, _, reach = _kept(segment)
    assert count == 2
    # Alice's Shop figures stay, dated from her count; Mallory's Bank figures are new.
    assert [(f["app"], f["reachable"], f.get("counted_at")) for f in reach] == [
        (shop.pk, 1, alice_counted_at.isoformat()),
        (bank.pk, 1, None),
    ]
    segment_count_keep(segment_id=segment.pk, by=manager_alice)
    reach = _kept(segment)[2]
    assert [(f["app"], f["reachable"], "counted_at" in f) for f in reach] == [(bank.pk, 1, True), (shop.pk, 2, False)]


def test_a_count_of_rules_changed_since_it_began_is_not_kept(manager_alice):
    from audiences.services.segments import _figures_keep, segment_definition_read

    ProfileFactory(attributes={"plan": "pro"})
    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    read = Segment.objects.get(pk=segment.pk)
    preview = segment_preview(segment_id=segment.pk, by=manager_alice)
    segment_update(segment_id=segment.pk, rules={"none": [PRO]}, by=manager_alice)  # while it counted
    assert not _figures_keep(segment=read, by=manager_alice, preview=preview, read=segment_definition_read(read))
    assert _kept(segment) == (None, None, None)


@pytest.mark.embedded
def test_a_count_is_kept_only_while_the_definitions_it_read_are_unchanged(manager_alice):
    """What a count read is checked by the statement keeping it: the segment's own version, which
    a change of a segment it uses moves too, and those of the segments it uses, read there."""
    from django.db.models import F

    from audiences.services.segments import _figures_keep, segment_definition_read

    ProfileFactory(attributes={"plan": "pro"})
    ProfileFactory(attributes={"plan": "free"})
    ProfileFactory(attributes={"plan": "free"})
    inner = segment_create(name="Pro", rules=PRO, by=manager_alice)
    middle = segment_create(name="Uses pro", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    outer = segment_create(name="Uses it", rules={"any": [{"segment": middle.pk}]}, by=manager_alice)

    def count_then(change) -> bool:
        read = Segment.objects.get(pk=outer.pk)
        definition = segment_definition_read(read)
        preview = segment_preview(segment_id=outer.pk, by=manager_alice)
        change()
        return _figures_keep(segment=read, by=manager_alice, preview=preview, read=definition)

    assert count_then(lambda: None)
    assert _kept(outer)[0] == 1
    assert not count_then(lambda: segment_update(segment_id=inner.pk, rules={"none": [PRO]}, by=manager_alice))
    assert _kept(outer) == (None, None, None)
    # A segment it uses moved without the forgetting reaching it (a use of it saved meanwhile).
    for used in (inner, middle):
        assert not count_then(
            lambda used=used: Segment.objects.filter(pk=used.pk).update(definition_version=F("definition_version") + 1)
        )
    assert _kept(outer) == (None, None, None)
    assert count_then(lambda: segment_update(segment_id=inner.pk, name="Pro, renamed", by=manager_alice))
    assert _kept(outer)[0] == 2


@pytest.mark.django_db(transaction=True)
def test_a_count_that_read_a_used_segments_rules_before_they_changed_is_not_kept(manager_alice):
    """Count now read the rules of the segment its segment uses, then counted; their change
    committed meanwhile (forgetting the figures the using segment had), and the count then kept
    the size of the rules it had read: its own rules had not changed. The segment listed a size
    for rules it no longer has, until counted again."""
    ProfileFactory(attributes={"plan": "pro"})
    ProfileFactory(attributes={"plan": "free"})
    ProfileFactory(attributes={"plan": "free"})
    inner = segment_create(name="Pro", rules=PRO, by=manager_alice)
    outer = segment_create(name="Uses pro", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    profiles = ProfilesHeld()
    counted = []

    def count():
        profiles.holding.wait(10)
        counted.append(segment_count_keep(segment_id=outer.pk, by=manager_alice).count)

    def change():
        profiles.holding.wait(10)
        assert wait_for_blocked_writers(1)  # the count waits, its rules read
        segment_update(segment_id=inner.pk, rules={"none": [PRO]}, by=manager_alice)
        profiles.released.set()

    assert concurrently(profiles.holder, count, change) == []
    assert counted == [1]  # of the rules it read
    assert _kept(outer) == (None, None, None)
    assert segment_count_keep(segment_id=outer.pk, by=manager_alice).count == 2
    assert _kept(outer)[0] == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["rules", "members"])
def test_a_change_forgets_the_count_of_a_segment_using_it_that_is_locked_meanwhile(manager_alice, change):
    """A change of a segment's rules (or a kept list's members) left the count of a segment using it
    as it was when that segment was locked at the moment (edited, keeping a count): the forgetting
    skipped it. It now waits for it."""
    ProfileFactory(external_id="ann", attributes={"plan": "pro"})
    ProfileFactory(external_id="bea", attributes={"plan": "free"})
    if change == "rules":
        inner = segment_create(name="Pro", rules=PRO, by=manager_alice)
    else:
        inner = segment_create(name="Hand-picked", kind=Segment.Kind.STATIC, by=manager_alice)
        segment_members_change(segment_id=inner.pk, by=manager_alice, add=["ann"])
    outer = segment_create(name="Uses it", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    segment_count_keep(segment_id=outer.pk, by=manager_alice)
    assert _kept(outer)[0] == 1
    holding, released, blocked = threading.Event(), threading.Event(), []

    def edit():  # the using segment renamed, its transaction still open
        with transaction.atomic():
            segment_update(segment_id=outer.pk, name="Uses it, renamed", by=manager_alice)
            holding.set()
            released.wait(20)

    def forget():
        holding.wait(10)
        if change == "rules":
            segment_update(segment_id=inner.pk, rules={"none": [PRO]}, by=manager_alice)
        else:
            segment_members_change(segment_id=inner.pk, by=manager_alice, add=["bea"])

    def release():
        holding.wait(10)
        blocked.append(wait_for_a_blocked_writer())
        released.set()

    assert concurrently(edit, forget, release) == []
    assert _kept(outer) == (None, None, None)
    assert blocked == [True]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["rules", "members", "import"])
def test_an_edit_adding_a_use_of_a_segment_it_uses_through_another_and_a_change_of_that_one_both_save(
    manager_alice, change
):
    """An edit making a segment use directly one it used through another held its own row, then
    waited on committing for the used one (the new reference's key check); a change of that one
    held it and waited for the using segment, to forget its figures: 'deadlock detected', and one
    of the two saves failed. The edit now holds the segments its rules use before its own row, and
    the change waits for it. (An import into the used segment leaves its key alone, and only ever
    waited for the using segment.)"""
    from audiences.imports import segment_members_lock
    from audiences.models import SegmentReference
    from audiences.services.imports import segment_members_landed

    ProfileFactory(external_id="ann", attributes={"plan": "pro"})
    ProfileFactory(external_id="bea", attributes={"plan": "free"})
    if change == "rules":
        inner = segment_create(name="Pro", rules=PRO, by=manager_alice)
    else:
        kind = Segment.Kind.STATIC if change == "members" else Segment.Kind.IMPORTED
        inner = segment_create(name="Hand-picked", kind=kind, by=manager_alice)
    middle = segment_create(name="Uses it", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    outer = segment_create(name="Uses that", rules={"all": [{"segment": middle.pk}]}, by=manager_alice)
    both = {"all": [{"segment": middle.pk}, {"segment": inner.pk}]}
    holding, released, blocked = threading.Event(), threading.Event(), []

    def edit():  # the direct use added, its transaction still open
        with transaction.atomic():
            segment_update(segment_id=outer.pk, rules=both, by=manager_alice)
            holding.set()
            released.wait(20)

    def forget():
        holding.wait(10)
        if change == "rules":
            segment_update(segment_id=inner.pk, rules={"none": [PRO]}, by=manager_alice)
        elif change == "members":
            segment_members_change(segment_id=inner.pk, by=manager_alice, add=["bea"])
        else:  # an import's last batch into it, and its end
            with transaction.atomic():
                segment_members_lock(inner.pk)
                SegmentMember.objects.create(segment=inner, profile=Profile.objects.get(external_id="bea"))
                segment_members_landed(inner.pk)

    def release():
        holding.wait(10)
        blocked.append(wait_for_a_blocked_writer())
        released.set()

    assert concurrently(edit, forget, release) == []
    assert blocked == [True]
    assert Segment.objects.get(pk=outer.pk).rules == both
    assert SegmentReference.objects.filter(source=outer, target=inner).exists()
    # Forgotten by the edit and by the change, which reached it through both uses.
    assert Segment.objects.get(pk=outer.pk).definition_version == outer.definition_version + 2
    if change == "rules":
        assert Segment.objects.get(pk=inner.pk).rules == {"none": [PRO]}
    else:
        assert SegmentMember.objects.filter(segment=inner).count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_edit_adding_a_use_of_a_segment_deleted_meanwhile_is_refused_as_naming_no_segment(manager_alice):
    """The edit read the segment it named before the deletion committed, then failed on committing
    (the new reference's key check: an IntegrityError). It now holds the segments its rules use
    first: it waits for the deletion, then finds the segment gone."""
    going = segment_create(name="Going", rules=PRO, by=manager_alice)
    edited = segment_create(name="Edited", rules=PRO, by=manager_alice)
    holding, released, blocked, refused = threading.Event(), threading.Event(), [], []

    def delete():
        with transaction.atomic():
            segment_delete(segment_id=going.pk, by=manager_alice)
            holding.set()
            released.wait(20)

    def edit():
        holding.wait(10)
        try:
            segment_update(segment_id=edited.pk, rules={"all": [{"segment": going.pk}]}, by=manager_alice)
        except RulesInvalid as exc:
            refused.append(exc)

    def release():
        holding.wait(10)
        blocked.append(wait_for_a_blocked_writer())
        released.set()

    assert concurrently(delete, edit, release) == []
    assert blocked == [True]
    assert len(refused) == 1
    assert not Segment.objects.filter(pk=going.pk).exists()
    assert Segment.objects.get(pk=edited.pk).rules == PRO


@pytest.mark.django_db(transaction=True)
def test_two_edits_making_two_segments_use_each_other_save_the_first_and_refuse_the_second_as_a_cycle(
    manager_alice,
):
    """Each edit held the segment its new rules use, then waited for its own (held meanwhile, as a
    forgetting of kept figures locks them): each then waited for the other's hold, 'deadlock
    detected', and one of the two saves failed with it. The second now waits for the first to commit, and is refused
    as any cycle is when saved alone."""
    from audiences.models import SegmentReference

    first = segment_create(name="Pro", rules=PRO, by=manager_alice)
    second = segment_create(name="Also pro", rules=PRO, by=manager_alice)
    holding, released, blocked, refused = threading.Event(), threading.Event(), [], []

    def forget():  # both segments held as a forgetting holds them
        with transaction.atomic():
            list(Segment.objects.select_for_update(no_key=True).filter(pk__in=[first.pk, second.pk]).order_by("pk"))
            holding.set()
            released.wait(20)

    def edit(segment, used):
        holding.wait(10)
        try:
            segment_update(segment_id=segment.pk, rules={"all": [PRO, {"segment": used.pk}]}, by=manager_alice)
        except RulesInvalid as exc:
            refused.append(exc)

    def release():
        holding.wait(10)
        blocked.append(wait_for_blocked_writers(2))
        released.set()

    assert concurrently(forget, lambda: edit(first, second), lambda: edit(second, first), release) == []
    assert blocked == [True]
    assert len(refused) == 1
    assert "cycle between segments" in " ".join(refused[0].messages)
    assert SegmentReference.objects.filter(source__in=[first, second], target__in=[first, second]).count() == 1


@pytest.mark.embedded
def test_a_kept_lists_stamp_counts_its_erased_members_back_and_moves_on_a_change_of_its_members(manager_alice):
    """Deleting profiles leaves a kept list's membership stamp as it was (each list recording what the
    deletion removed, nothing naming the person), while its present count drops; an add or a removal
    since moves the stamp. Deleting the list removes what it recorded."""
    from audiences.models import SegmentErasure

    ProfileFactory(external_id="ann")
    bea, cy = ProfileFactory(external_id="bea"), ProfileFactory(external_id="cy")
    first = segment_create(name="First", kind=Segment.Kind.STATIC, by=manager_alice)
    second = segment_create(name="Second", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=first.pk, by=manager_alice, add=["ann", "bea", "cy"])
    segment_members_change(segment_id=second.pk, by=manager_alice, add=["bea"])
    newest = first.members.latest("pk").pk
    approved = first.definition_fingerprint()
    assert first.members_stamp() == (3, [3, newest])
    profiles_delete(profile_ids=[bea.pk, cy.pk], by=manager_alice)
    assert first.members_stamp() == (1, [3, newest])
    assert second.members_stamp() == (0, [1, second.erasures.get().newest])
    assert first.definition()[str(first.pk)]["count"] == 1  # what the review says it holds
    assert first.definition_fingerprint() == approved
    assert sorted(SegmentErasure.objects.values_list("segment_id", "members")) == [(first.pk, 2), (second.pk, 1)]
    segment_members_change(segment_id=first.pk, by=manager_alice, remove=["ann"])
    assert first.members_stamp()[:1] == (0,) and first.members_stamp()[1][0] == 2
    ProfileFactory(external_id="dee")
    segment_members_change(segment_id=first.pk, by=manager_alice, add=["dee"])
    assert first.members_stamp() == (1, [3, first.members.get().pk])
    assert first.definition_fingerprint() != approved
    segment_delete(segment_id=second.pk, by=manager_alice)
    assert list(SegmentErasure.objects.values_list("segment_id", flat=True)) == [first.pk]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
def test_a_segments_deletion_and_an_erasure_remove_their_shared_members_in_id_order(manager_alice):
    """A segment's deletion removed its members in the order its plan read them (the list's index,
    by profile: 'x', 'h', 'y'), a deletion of profiles in id order ('y', then 'x'). The segment's
    deletion holding 'x' waited for 'h' (held by a third writer) while the erasure took 'y' and
    waited for 'x'; once 'h' was let go the segment's deletion waited for 'y' ('deadlock
    detected', one of them ended). It now locks its members by id first: the erasure waits for 'y'
    holding no member, finds the list's members gone, and records no erasure for it."""
    from audiences.models import SegmentErasure

    x, h, y = (ProfileFactory(external_id=name, attributes={}) for name in ["x", "h", "y"])
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    for external_id in ["y", "h", "x"]:  # numbered in this order
        segment_members_change(segment_id=segment.pk, by=manager_alice, add=[external_id])
    held_member = SegmentMember.objects.get(profile=h).pk
    holding, released = threading.Event(), threading.Event()

    def holder():  # a third writer's lock on 'h' (another deletion removing it holds it so)
        with transaction.atomic():
            SegmentMember.objects.select_for_update().get(pk=held_member)
            holding.set()
            released.wait(20)

    def deletion():
        holding.wait(10)
        with connection.cursor() as cursor:  # the list's index, as on a large list
            cursor.execute("SET enable_bitmapscan = off")
            cursor.execute("SET enable_seqscan = off")
        segment_delete(segment_id=segment.pk, by=manager_alice)

    def erasure():
        assert wait_for_blocked_writers(1)  # the segment's deletion waits for 'h'
        profiles_delete(profile_ids=[x.pk, y.pk], by=manager_alice)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    assert concurrently(holder, deletion, erasure, release) == []
    assert not Segment.objects.filter(pk=segment.pk).exists()
    assert not SegmentMember.objects.exists()
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["h"]
    assert not SegmentErasure.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
def test_a_segment_deleted_while_an_erasure_removes_its_members_goes_with_what_it_recorded(manager_alice):
    """The erasure holds the list's members it removes until it commits: the segment's deletion
    waits for them, then removes the erasure's record on the list with it (none names a list gone)."""
    from audiences.models import SegmentErasure

    ann, bea = ProfileFactory(external_id="ann"), ProfileFactory(external_id="bea")
    segment = segment_create(name="VIP", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=segment.pk, by=manager_alice, add=["ann", "bea"])
    erased, blocked = threading.Event(), []

    def erasure():
        with transaction.atomic():
            profiles_delete(profile_ids=[ann.pk, bea.pk], by=manager_alice)
            erased.set()
            blocked.append(wait_for_a_blocked_writer())

    def deletion():
        erased.wait(10)
        segment_delete(segment_id=segment.pk, by=manager_alice)

    assert concurrently(erasure, deletion) == []
    assert blocked == [True]
    assert not Segment.objects.exists() and not Profile.objects.exists()
    assert not SegmentErasure.objects.exists()


def test_a_static_segments_member_change_forgets_its_kept_count_as_a_rules_change_does(manager_alice):
    """A static segment's kept count ("counted 3 hours ago") stayed when members were added or
    removed, read on its page and its campaigns' as the reach of the members it had."""
    from audiences.services.segments import _figures_keep, segment_definition_read

    ProfileFactory(external_id="ann")
    ProfileFactory(external_id="bea")
    segment = segment_create(name="Hand-picked", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=segment.pk, by=manager_alice, add=["ann"])
    segment_count_keep(segment_id=segment.pk, by=manager_alice)
    assert _kept(segment)[0] == 1
    segment_members_change(segment_id=segment.pk, by=manager_alice, add=["ann", "nobody"])  # nothing changes
    assert _kept(segment)[0] == 1
    segment_members_change(segment_id=segment.pk, by=manager_alice, add=["bea"])
    assert _kept(segment) == (None, None, None)
    segment_count_keep(segment_id=segment.pk, by=manager_alice)
    assert _kept(segment)[0] == 2
    segment_members_change(segment_id=segment.pk, by=manager_alice, remove=["ann"])
    assert _kept(segment) == (None, None, None)
    # A count begun before the members changed is not kept.
    read = Segment.objects.get(pk=segment.pk)
    preview = segment_preview(segment_id=segment.pk, by=manager_alice)
    segment_members_change(segment_id=segment.pk, by=manager_alice, add=["ann"])
    assert not _figures_keep(segment=read, by=manager_alice, preview=preview, read=segment_definition_read(read))
    assert _kept(segment) == (None, None, None)


def test_preview_of_unsaved_tree_is_validated(manager_alice):
    with pytest.raises(RulesInvalid):
        segment_preview(rules={"any": [{"field": "nope", "op": "eq", "value": 1}]}, by=manager_alice)


def test_static_members_are_added_and_removed_by_external_id(manager_alice):
    ProfileFactory(external_id="a")
    ProfileFactory(external_id="b")
    segment = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    added, removed, unknown = segment_members_change(segment_id=segment.pk, add=["a", "b", "zz"], by=manager_alice)
    assert (added, removed, unknown) == (2, 0, ["zz"])
    added, removed, unknown = segment_members_change(segment_id=segment.pk, add=["a"], remove=["b"], by=manager_alice)
    assert (added, removed) == (0, 1)
    assert list(SegmentMember.objects.filter(segment=segment).values_list("profile__external_id", flat=True)) == ["a"]


def test_an_external_id_listed_to_add_and_to_remove_is_refused_and_nothing_changes(manager_alice):
    """Both lists at once added the profile, then removed it, and said '1 added, 1 removed'."""
    for external_id in ("a", "b", "c"):
        ProfileFactory(external_id=external_id)
    segment = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=segment.pk, add=["a"], by=manager_alice)
    audited = AuditEvent.objects.count()
    with pytest.raises(ValidationError) as info:
        segment_members_change(segment_id=segment.pk, add=["b", " c"], remove=["a", "c "], by=manager_alice)
    assert info.value.message_dict == {
        "remove_members": ["Listed both to add and to remove: c. Keep each external id in one list."]
    }
    assert list(segment.members.values_list("profile__external_id", flat=True)) == ["a"]
    assert AuditEvent.objects.count() == audited


def test_static_members_added_count_only_those_not_members_already_without_counting_the_segment(manager_alice):
    from django.test.utils import CaptureQueriesContext

    for external_id in ("a", "b", "c"):
        ProfileFactory(external_id=external_id)
    segment = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=segment.pk, add=["a", "b"], by=manager_alice)
    with CaptureQueriesContext(connection) as queries:
        added, removed, unknown = segment_members_change(
            segment_id=segment.pk, add=["a", "c", "zz"], remove=["b"], by=manager_alice
        )
    assert (added, removed, unknown) == (1, 1, ["zz"])
    assert sorted(segment.members.values_list("profile__external_id", flat=True)) == ["a", "c"]
    assert AuditEvent.objects.filter(action="segment_members_changed").latest("pk").summary == {
        "added": 1,
        "removed": 1,
    }
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"] and "segmentmember" in q["sql"]]
    assert counts and all('"profile_id" IN' in sql for sql in counts)  # the profiles named, not every member


@pytest.mark.django_db(transaction=True)
def test_a_profile_deletion_waits_for_a_static_segment_adding_it_and_removes_the_member(manager_alice):
    """Members have no database constraint on their profile: adding one holds the profile locked."""
    ann = ProfileFactory(external_id="ann")
    segment = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    added, blocked = threading.Event(), []

    def change():
        with transaction.atomic():
            segment_members_change(segment_id=segment.pk, add=["ann"], by=manager_alice)
            added.set()
            blocked.append(wait_for_a_blocked_writer())

    def deletion():
        added.wait(10)
        profiles_delete(profile_ids=[ann.pk], by=manager_alice)

    assert not concurrently(change, deletion)
    assert blocked == [True]
    assert not Profile.objects.exists()
    assert not SegmentMember.objects.exists()


def _event(external_id: str, *, name: str = "app_open", ago: dt.timedelta = dt.timedelta(0)) -> dict:
    return {"external_id": external_id, "name": name, "occurred_at": timezone.now() - ago}


@pytest.mark.django_db(transaction=True)
def test_a_profile_deletion_waits_for_an_events_call_and_removes_its_events(manager_alice):
    """Events have no database constraint on their profile: a call holds its profiles locked until
    it commits, so a deletion that started meanwhile waits, then removes the new events too. (The
    events are older than the profile's last visit, so the call does not write the profile.)"""
    ann = ProfileFactory(external_id="ann", last_seen_at=timezone.now())
    stored, blocked = threading.Event(), []
    earlier = dt.timedelta(hours=1)

    def call():
        with transaction.atomic():
            events_ingest(
                items=[_event("ann", ago=earlier), _event("ann", name="purchase", ago=earlier)], by=manager_alice
            )
            stored.set()
            blocked.append(wait_for_a_blocked_writer())

    def deletion():
        stored.wait(10)
        profiles_delete(profile_ids=[ann.pk], by=manager_alice)

    assert not concurrently(call, deletion)
    assert blocked == [True]
    assert not Profile.objects.exists()
    assert not Event.objects.exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writer", ["profiles call", "import batch"])
def test_an_events_call_moves_the_last_visits_before_it_creates_profiles(manager_alice, writer):
    """The order every writer of profiles takes: the known profiles, by id, then the new ones. An
    events call created 'new' before it locked 'ann' to move her last visit: a profiles call (or an
    import's batch) holding 'ann' and creating 'new' waited for it in a circle ('deadlock detected')."""
    from audiences.imports import Batch, write_batch

    ann = ProfileFactory(external_id="ann", attributes={})
    held = ProfileHeld(ann.pk)  # a third writer's lock on it
    holding, released = held.holding, held.released

    def write():
        holding.wait(10)
        if writer == "profiles call":
            items = [{"external_id": "ann", "attributes": {"plan": "pro"}}, {"external_id": "new", "attributes": {}}]
            profiles_upsert(items=items, by=manager_alice)
        else:
            rows = Batch(["ann", "new"], ['{"plan": "pro"}', "{}"], [None, None], [None, None])
            with transaction.atomic():
                write_batch(rows, now=timezone.now(), segment_id=None, import_id=1, replace=False)

    def call():
        assert wait_for_blocked_writers(1)  # the writer waits for 'ann' first
        events_ingest(items=[_event("ann"), _event("new")], by=manager_alice)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    assert concurrently(held.holder, write, call, release) == []
    assert Profile.objects.get(pk=ann.pk).attributes == {"plan": "pro"}
    assert sorted(Profile.objects.exclude(last_seen_at=None).values_list("external_id", flat=True)) == ["ann", "new"]
    assert Event.objects.count() == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
def test_an_events_call_stores_its_events_past_a_held_profile_and_moves_its_last_visit_after(manager_alice):
    """A call moved its known profiles' last visits before anything else, holding those row locks
    through the thousand events' insert: calls sharing profiles waited for each other (p99 per call
    up by half in the events benchmark). It now moves those no one holds at its end, and the others
    once it has committed, holding nothing."""
    ann = ProfileFactory(external_id="ann", attributes={})
    holding, released = threading.Event(), threading.Event()
    seen: dict = {}

    def holder():
        with transaction.atomic():
            Profile.objects.select_for_update(no_key=True).get(pk=ann.pk)
            holding.set()
            released.wait(20)

    def call():
        holding.wait(10)
        events_ingest(items=[_event("ann")], by=manager_alice)

    def watch():
        holding.wait(10)
        assert wait_for_blocked_writers(1)  # the call, after its commit, waits to move her last visit
        seen["events"] = Event.objects.count()
        seen["last_seen"] = Profile.objects.get(pk=ann.pk).last_seen_at
        released.set()

    assert concurrently(holder, call, watch) == []
    assert seen == {"events": 1, "last_seen": None}  # stored while she was held, her visit not moved yet
    assert Profile.objects.get(pk=ann.pk).last_seen_at is not None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
def test_an_events_call_locks_its_known_profiles_in_id_order_as_a_deletion_does(manager_alice):
    """'b' was created before 'a'. An events call locked its known profiles by external id ('a'
    then 'b'), a deletion by id ('b' then 'a'): the deletion holding 'b' and waiting for 'a' (held
    by a third writer), the call took 'a' and waited for 'b' ('deadlock detected' once the third
    writer let go). The call now locks them by id: it waits for 'b' holding nothing, and stores
    its events on new profiles once the deletion commits."""
    b = ProfileFactory(external_id="b")
    a = ProfileFactory(external_id="a")
    held = ProfileHeld(a.pk)  # a third writer's lock on it
    holding, released = held.holding, held.released

    def deletion():
        holding.wait(10)
        profiles_delete(profile_ids=[a.pk, b.pk], by=manager_alice)

    def call():
        assert wait_for_blocked_writers(1)  # the deletion holds 'b' and waits for 'a'
        events_ingest(items=[_event("a"), _event("b")], by=manager_alice)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    assert concurrently(held.holder, deletion, call, release) == []
    again = dict(Profile.objects.values_list("external_id", "pk"))
    assert sorted(again) == ["a", "b"] and not {a.pk, b.pk} & set(again.values())
    assert sorted(Event.objects.values_list("profile_id", flat=True)) == sorted(again.values())


@pytest.mark.django_db(transaction=True)
def test_an_events_call_waits_for_a_profile_deletion_and_stores_its_events_on_a_new_profile(manager_alice):
    """The deletion holds the profile: the call waits, finds it gone, and creates it again."""
    ann = ProfileFactory(external_id="ann")
    deleting, blocked = threading.Event(), []

    def deletion():
        with transaction.atomic():
            profiles_delete(profile_ids=[ann.pk], by=manager_alice)
            deleting.set()
            blocked.append(wait_for_a_blocked_writer())

    def call():
        deleting.wait(10)
        events_ingest(items=[_event("ann")], by=manager_alice)

    assert not concurrently(deletion, call)
    assert blocked == [True]
    again = Profile.objects.get()
    assert again.external_id == "ann" and again.pk != ann.pk
    assert list(Event.objects.values_list("profile_id", flat=True)) == [again.pk]


def test_deleting_a_profile_removes_its_events_by_query_without_reading_them(manager_alice):
    from django.test.utils import CaptureQueriesContext

    from tests.factories import EventFactory

    ann, bob = ProfileFactory(external_id="ann"), ProfileFactory(external_id="bob")
    for profile in (ann, ann, ann, bob):
        EventFactory(profile=profile)
    with CaptureQueriesContext(connection) as queries:
        assert profiles_delete(profile_ids=[ann.pk], by=manager_alice) == 1
    reads = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and '"audiences_event"' in q["sql"]]
    assert reads == []  # a GDPR erasure of a profile with a million events loads none of them
    assert list(Event.objects.values_list("profile__external_id", flat=True)) == ["bob"]


def test_a_viewer_cannot_delete_profiles(viewer_carol):
    ann = ProfileFactory()
    with pytest.raises(PermissionDenied):
        profiles_delete(profile_ids=[ann.pk], by=viewer_carol)
    assert Profile.objects.filter(pk=ann.pk).exists()


def test_profile_page_lists_memberships_of_visible_segments(manager_alice, manager_mallory):
    ann = ProfileFactory(external_id="ann", attributes={"plan": "pro"})
    mine = segment_create(name="Pro", rules=PRO, by=manager_alice)
    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=static.pk, add=["ann"], by=manager_alice)
    segment_create(name="Mallory's pro", rules=PRO, by=manager_mallory)
    segment_create(
        name="Free",
        rules={"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "free"}]},
        by=manager_alice,
    )
    assert [s.name for s in profile_memberships(manager_alice, ann)] == ["Kept", "Pro"]
    assert mine in profile_memberships(manager_alice, ann)


# --- profiles ------------------------------------------------------------------------------------


def test_upsert_creates_then_merges_attributes_and_null_removes(manager_alice):
    first = profile_upsert(external_id="u1", attributes={"plan": "free", "age": 30}, locale="fr", by=manager_alice)
    assert first.status == "created"
    second = profile_upsert(external_id="u1", attributes={"plan": "pro", "age": None, "city": "Lyon"}, by=manager_alice)
    assert second.status == "updated"
    profile = Profile.objects.get(external_id="u1")
    assert profile.attributes == {"plan": "pro", "city": "Lyon"}
    assert profile.locale == "fr"
    assert profile_upsert(external_id="u1", attributes={"plan": "pro"}, by=manager_alice).status == "unchanged"


def test_approver_and_viewer_cannot_write_profiles(approver_bob, viewer_carol):
    for user in (approver_bob, viewer_carol):
        with pytest.raises(PermissionDenied):
            profile_upsert(external_id="u1", by=user)
    assert not Profile.objects.exists()


def test_bulk_upsert_applies_a_repeated_id_in_order(manager_alice):
    results = profiles_upsert(
        items=[
            {"external_id": "x", "attributes": {"n": 1}},
            {"external_id": "y"},
            {"external_id": "x", "attributes": {"n": 2, "m": 1}},
        ],
        by=manager_alice,
    )
    assert [r.status for r in results] == ["created", "created", "updated"]  # x's second item updates it
    assert Profile.objects.get(external_id="x").attributes == {"n": 2, "m": 1}


@pytest.mark.embedded
def test_new_profiles_are_written_once_with_what_their_items_say(manager_alice):
    from django.test.utils import CaptureQueriesContext

    seen = timezone.now() - dt.timedelta(hours=1)
    with CaptureQueriesContext(connection) as queries:
        results = profiles_upsert(
            items=[
                {"external_id": "x", "attributes": {"n": 1, "gone": True}, "locale": "fr"},
                {"external_id": "y", "timezone": "Europe/Paris", "last_seen_at": seen},
                {"external_id": "x", "attributes": {"n": 2, "gone": None}, "last_seen_at": seen},
            ],
            by=manager_alice,
        )
    assert [r.status for r in results] == ["created", "created", "updated"]
    assert not [q["sql"] for q in queries if q["sql"].startswith('UPDATE "audiences_profile"')]
    x, y = Profile.objects.order_by("external_id")
    assert (x.attributes, x.locale, x.timezone, x.last_seen_at) == ({"n": 2}, "fr", "", seen)
    assert (y.attributes, y.locale, y.timezone, y.last_seen_at) == ({}, "", "Europe/Paris", seen)


def test_bulk_upsert_refuses_bad_items_before_writing(manager_alice):
    with pytest.raises(ValidationError):
        profiles_upsert(
            items=[{"external_id": "ok"}, {"external_id": "bad", "timezone": "Mars/Olympus"}], by=manager_alice
        )
    assert not Profile.objects.exists()


@pytest.mark.embedded
def test_bulk_upsert_of_a_thousand_profiles_takes_few_queries(manager_alice, django_assert_max_num_queries):
    profiles_upsert(items=[{"external_id": f"p{n}"} for n in range(0, 1000, 2)], by=manager_alice)
    items = [{"external_id": f"p{n}", "attributes": {"n": n}} for n in range(1000)]
    # One insert of the 500 new profiles and one update of the 500 known ones on PostgreSQL.
    # Django caps a statement at 999 parameters on SQLite: there each is split by that cap (rows
    # of 7 columns: 4 statements for 500 rows), in process, with no round trip per statement.
    statements_per_write = math.ceil(500 / connection.ops.bulk_batch_size(["column"] * 7, items))
    with django_assert_max_num_queries(8 + 2 * statements_per_write):
        results = profiles_upsert(items=items, by=manager_alice)
    assert [r.status for r in results[:2]] == ["updated", "created"]
    assert Profile.objects.count() == 1000


# --- events --------------------------------------------------------------------------------------


def test_events_create_unknown_profiles_and_move_last_seen_forward(manager_alice):
    now = timezone.now()
    ProfileFactory(external_id="known", last_seen_at=now)
    ids = events_ingest(
        items=[
            {
                "external_id": "known",
                "name": "purchase",
                "properties": {"amount": 5},
                "occurred_at": now - dt.timedelta(days=1),
            },
            {"external_id": "new", "name": "app_open", "occurred_at": now - dt.timedelta(hours=1)},
        ],
        by=manager_alice,
    )
    assert len(ids) == 2
    assert Profile.objects.get(external_id="known").last_seen_at == now  # an older event does not move it back
    assert Profile.objects.get(external_id="new").last_seen_at == now - dt.timedelta(hours=1)
    assert Event.objects.get(pk=ids[0]).properties == {"amount": 5}


def test_events_move_last_seen_by_hot_updates_writing_no_index_entry(manager_alice):
    """Moving last_seen_at changes no indexed column of the profile, so PostgreSQL updates the row
    alone (HOT) instead of adding an entry to each of its indexes, a GIN entry per attribute included."""
    profiles = ProfileFactory.create_batch(3, attributes={"plan": "pro", "age": 30}, last_seen_at=None)
    when = timezone.now()
    with connection.cursor() as cursor:

        def updates():
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables WHERE relname = 'audiences_profile'"
            )
            return cursor.fetchone()

        before = updates()
        events_ingest(
            items=[{"external_id": p.external_id, "name": "app_open", "occurred_at": when} for p in profiles],
            by=manager_alice,
        )
        after = updates()
    moved, hot = after[0] - before[0], after[1] - before[1]
    # PostgreSQL never updates a row HOT when an indexed column changed; it may not when the row's
    # page has no room left for the new version (the table's pages as earlier tests left them):
    # one HOT update shows the statement changes no indexed column, and no index names the column.
    assert moved == 3 and hot >= 1, (moved, hot)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'audiences_profile'::regclass "
            "AND a.attname = 'last_seen_at'"
        )
        assert cursor.fetchone()[0] == 0
    assert set(Profile.objects.values_list("last_seen_at", flat=True)) == {when}


def test_an_events_call_reads_only_its_profiles_when_the_statistics_say_the_table_is_empty(manager_alice):
    """A vacuum of an emptied table leaves it pages and no rows until the next analyze: a plan made
    then must still find the call's profiles through their ids, not join them to every profile."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'many-' || n, '{}', '', '', now(), now() FROM generate_series(1, 5000) n"
        )
    statistics_say_empty("audiences_profile")
    before = rows_read("audiences_profile")
    events_ingest(
        items=[{"external_id": f"many-{n}", "name": "app_open", "occurred_at": timezone.now()} for n in range(1, 11)],
        by=manager_alice,
    )
    read = rows_read("audiences_profile") - before
    assert Profile.objects.filter(last_seen_at__isnull=False).count() == 10
    assert read < 100, read


def test_events_keep_ids_and_times_exactly_whatever_their_characters_and_zone(manager_alice):
    """The call's ids and times travel to PostgreSQL as JSON text: quotes, backslashes, letters
    beyond ASCII and a zone other than UTC with microseconds come back as they were sent."""
    paris = dt.timezone(dt.timedelta(hours=1))
    when = dt.datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=paris)
    names = ['quote"d', "back\\slash", "café-é", "emoji-🎉", "日本"]
    events_ingest(items=[{"external_id": x, "name": "a", "occurred_at": when} for x in names], by=manager_alice)
    assert dict(Profile.objects.values_list("external_id", "last_seen_at")) == dict.fromkeys(names, when)
    later = when + dt.timedelta(microseconds=1)
    events_ingest(items=[{"external_id": x, "name": "b", "occurred_at": later} for x in names], by=manager_alice)
    assert Profile.objects.count() == len(names)  # known the second time: none created again
    assert dict(Profile.objects.values_list("external_id", "last_seen_at")) == dict.fromkeys(names, later)


@pytest.mark.parametrize(
    ("external_id", "message"), [("a\x00b", "NUL"), ("a\ud800b", "surrogate")], ids=["nul", "lone-surrogate"]
)
def test_events_refuse_an_id_postgresql_cannot_store_naming_the_field(manager_alice, external_id, message):
    """The API refuses these in the body; a caller of the service gets the same clear refusal, not a database error."""
    now = timezone.now()
    items = [
        {"external_id": "fine", "name": "a", "occurred_at": now},
        {"external_id": external_id, "name": "a", "occurred_at": now},
    ]
    with pytest.raises(ValidationError) as refused:
        events_ingest(items=items, by=manager_alice)
    assert message in refused.value.message_dict["[1].external_id"][0]
    assert not Profile.objects.exists() and not Event.objects.exists()


def test_events_come_back_in_order_and_move_each_profile_to_its_newest(manager_alice):
    now = timezone.now()
    ProfileFactory(external_id="old", last_seen_at=now - dt.timedelta(days=3))
    items = [
        {"external_id": x, "name": f"e{n}", "occurred_at": now - dt.timedelta(minutes=n)}
        for n, x in enumerate(["old", "fresh", "old", "fresh", "other"] * 40)
    ]
    ids = events_ingest(items=items, by=manager_alice)
    stored = Event.objects.in_bulk(ids)
    assert [stored[pk].name for pk in ids] == [item["name"] for item in items]
    assert [stored[pk].profile.external_id for pk in ids] == [item["external_id"] for item in items]
    seen = dict(Profile.objects.values_list("external_id", "last_seen_at"))
    assert seen == {"old": now, "fresh": now - dt.timedelta(minutes=1), "other": now - dt.timedelta(minutes=4)}
    assert Event.objects.get(pk=ids[1]).properties == {}


def test_event_listeners_hear_the_written_events_inside_their_transaction(
    manager_alice, django_capture_on_commit_callbacks
):
    from audiences.services import events as service

    known = ProfileFactory(external_id="a")
    heard = []

    def listener(**kwargs):
        heard.append({**kwargs, "stored": Event.objects.filter(pk__in=kwargs["event_ids"]).count()})

    service.event_listeners_register(listener)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            ids = events_ingest(
                items=[
                    {"external_id": "a", "name": "purchase", "occurred_at": timezone.now()},
                    {"external_id": "b", "name": "app_open", "occurred_at": timezone.now() - dt.timedelta(hours=1)},
                ],
                by=manager_alice,
            )
            assert len(heard) == 1  # before the commit, not from an on-commit callback
    finally:
        service._EVENT_LISTENERS.remove(listener)
    assert not callbacks
    created = Profile.objects.get(external_id="b")
    stored = Event.objects.in_bulk(ids)
    assert heard == [
        {
            "event_ids": ids,
            "events": [
                (known.pk, "purchase", stored[ids[0]].occurred_at),
                (created.pk, "app_open", stored[ids[1]].occurred_at),
            ],
            "names": {"purchase", "app_open"},
            "stamps": None,
            "stored": 2,
        }
    ]


@pytest.mark.embedded
def test_a_failing_event_listener_keeps_the_events_undoes_its_writes_and_is_replayed_later(manager_alice):
    """A listener that raises has its own writes undone (the call is written again without it),
    while the events and what the other listeners wrote commit; the batch is recorded and the
    listener runs again for it once due (a minute, then twice as long each time), for the events
    that still exist, until it succeeds. A replay whose listener is gone is dropped."""
    from audiences.models import EventReplay
    from audiences.services import events as service

    broken = {"on": True}
    heard = []

    def flaky(**kwargs):
        Profile.objects.create(external_id=f"written-by-flaky-{len(heard)}")
        heard.append(("flaky", kwargs["event_ids"], kwargs["events"], kwargs["names"], kwargs["stamps"]))
        if broken["on"]:
            raise RuntimeError("listener broken")

    def steady(**kwargs):
        Profile.objects.create(external_id="written-by-steady")

    service.event_listeners_register(flaky)
    service.event_listeners_register(steady)
    now = timezone.now()
    try:
        ids = events_ingest(
            items=[
                {"external_id": "a", "name": "purchase", "occurred_at": now},
                {"external_id": "b", "name": "app_open", "occurred_at": now},
                {"external_id": "c", "name": "app_open", "occurred_at": now},
            ],
            by=manager_alice,
        )
        assert Event.objects.count() == 3 and Profile.objects.filter(external_id="written-by-steady").exists()
        assert not Profile.objects.filter(external_id__startswith="written-by-flaky").exists()
        replay = EventReplay.objects.get()
        assert (replay.listener, replay.event_ids, replay.attempts) == (_name(flaky), ids, 1)
        assert replay.error == "RuntimeError: listener broken"
        assert now + dt.timedelta(minutes=1) <= replay.next_attempt_at <= timezone.now() + dt.timedelta(minutes=1)

        first_due = replay.next_attempt_at
        assert service.events_replay_due(now=first_due - dt.timedelta(seconds=1))["replayed"] == 0
        assert service.events_replay_due(now=first_due) == {
            "replayed": 0,
            "failed": 1,
            "dropped": 0,
            "events": {"replayed": 0, "failed": 3, "dropped": 0},
        }
        replay.refresh_from_db()
        assert (replay.attempts, replay.next_attempt_at) == (2, first_due + dt.timedelta(minutes=2))
        assert not Profile.objects.filter(external_id__startswith="written-by-flaky").exists()

        Profile.objects.get(external_id="b").delete()  # its event goes with it
        broken["on"] = False
        heard.clear()
        assert service.events_replay_due(now=replay.next_attempt_at) == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 3, "failed": 0, "dropped": 0},
        }
        a, c = Profile.objects.get(external_id="a").pk, Profile.objects.get(external_id="c").pk
        stored = Event.objects.in_bulk([ids[0], ids[2]])
        assert heard == [
            (
                "flaky",
                [ids[0], ids[2]],
                [(a, "purchase", stored[ids[0]].occurred_at), (c, "app_open", stored[ids[2]].occurred_at)],
                {"purchase", "app_open"},
                None,
            )
        ]
        assert Profile.objects.filter(external_id="written-by-flaky-0").exists()
        assert not EventReplay.objects.exists()
    finally:
        service._EVENT_LISTENERS.remove(flaky)
        service._EVENT_LISTENERS.remove(steady)

    EventReplay.objects.create(listener=_name(flaky), event_ids=[ids[0]], next_attempt_at=now)
    assert service.events_replay_due() == {
        "replayed": 0,
        "failed": 0,
        "dropped": 1,
        "events": {"replayed": 0, "failed": 0, "dropped": 1},
    }
    assert not EventReplay.objects.exists()


def test_the_replay_beat_replays_what_is_due_and_nothing_on_a_copy_of_another_instance(db):
    from audiences.models import EventReplay
    from audiences.tasks import events_replay_task
    from operations.models import Instance

    EventReplay.objects.create(listener="gone.listener", event_ids=[1], next_attempt_at=timezone.now())
    Instance.objects.filter(pk=1).update(name="production-eu")
    assert events_replay_task()["refused"] is True
    assert EventReplay.objects.exists()
    Instance.objects.filter(pk=1).update(name=settings.PUSHDESK_INSTANCE)
    assert events_replay_task() == {
        "replayed": 0,
        "failed": 0,
        "dropped": 1,
        "events": {"replayed": 0, "failed": 0, "dropped": 1},
    }
    assert not EventReplay.objects.exists()


def test_a_listener_that_lost_a_deadlock_is_tried_again_at_once_and_keeps_its_writes(manager_alice):
    """A deadlock's victim (PostgreSQL's own error, raised here by the server) rolls the call back
    and the call runs again at once, as the integrator's retry would have: the events once, the
    second run's writes, and no replay waiting."""
    from audiences.models import EventReplay
    from audiences.services import events as service

    runs = []

    def listener(**kwargs):
        runs.append(kwargs["event_ids"])
        Profile.objects.create(external_id=f"written-by-run-{len(runs)}")
        if len(runs) == 1:
            with connection.cursor() as cursor:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = 'deadlock_detected'; END $$")

    service.event_listeners_register(listener)
    try:
        ids = events_ingest(items=[{"external_id": "a", "name": "x", "occurred_at": timezone.now()}], by=manager_alice)
    finally:
        service._EVENT_LISTENERS.remove(listener)
    assert len(runs) == 2 and runs[1] == ids and Event.objects.count() == 1
    assert list(
        Profile.objects.filter(external_id__startswith="written-by-run").values_list("external_id", flat=True)
    ) == ["written-by-run-2"]
    assert not EventReplay.objects.exists()


@pytest.mark.embedded
def test_event_times_are_stored_to_the_microsecond_whatever_their_zone_and_era(manager_alice):
    """Times travel to PostgreSQL as whole microseconds since the epoch: none moves, not a
    microsecond, before 1970, across a zone's offset, in any year; the profiles are seen then."""
    paris = dt.timezone(dt.timedelta(hours=1, minutes=30))
    times = [
        dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 2, 4, 20, 15, 123_457, tzinfo=paris),
        dt.datetime(2001, 9, 9, 1, 46, 40, 1, tzinfo=dt.UTC),
        timezone.now().replace(microsecond=999_999) - dt.timedelta(seconds=2),
    ]
    items = [{"external_id": f"t{n}", "name": "x", "occurred_at": when} for n, when in enumerate(times)]
    ids = events_ingest(items=items, by=manager_alice)
    stored = Event.objects.in_bulk(ids)
    assert [stored[pk].occurred_at for pk in ids] == times
    seen = dict(Profile.objects.values_list("external_id", "last_seen_at"))
    assert [seen[f"t{n}"] for n in range(len(times))] == times
    events_ingest(items=[{"external_id": "t0", "name": "x", "occurred_at": times[1]}], by=manager_alice)
    assert Profile.objects.get(external_id="t0").last_seen_at == times[1]  # known: moved forward


def test_the_wait_between_replays_doubles_up_to_an_hour():
    from audiences.services.events import _replay_wait

    assert [_replay_wait(n).total_seconds() / 60 for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def _name(fn):
    return f"{fn.__module__}.{fn.__qualname__}"


def test_viewer_cannot_send_events(viewer_carol):
    with pytest.raises(PermissionDenied):
        events_ingest(items=[{"external_id": "a", "name": "x", "occurred_at": timezone.now()}], by=viewer_carol)


def test_a_segment_count_hashes_a_large_static_segment_instead_of_probing_per_profile(db):
    """The count sets its own work_mem for its transaction (never the session's), so that the members of a
    large static segment are hashed once instead of each profile probing the members' index. The
    server's default 4 MB stops holding them at a few hundred thousand; here 64 kB stands in for
    it against 50,000 members."""
    from django.db import connection, transaction

    from audiences.rules.compiler import segment_count, segment_profiles
    from config.db import COUNT_WORK_MEM

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's session settings")
    static = Segment.objects.create(name="Big list", kind=Segment.Kind.STATIC)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'big-' || g, '{}', '', '', now(), now() FROM generate_series(1, 100000) g"
        )
        cursor.execute(
            "INSERT INTO audiences_segmentmember (segment_id, profile_id, added_at) "
            "SELECT %s, id, now() FROM audiences_profile WHERE external_id LIKE 'big-%%' AND id %% 2 = 0",
            [static.pk],
        )
        cursor.execute("ANALYZE audiences_profile")
        cursor.execute("ANALYZE audiences_segmentmember")
    rules = {
        "any": [{"attribute": "plan", "type": "string", "op": "eq", "value": "vip"}, {"all": [{"segment": static.pk}]}]
    }
    segment = Segment(kind=Segment.Kind.RULES, rules=rules)
    seen = []

    def record(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert segment_count(segment) == 50_000
    assert any(f"SET LOCAL work_mem = '{COUNT_WORK_MEM}'" in sql for sql in seen)
    plans = {}
    for memory in ("64kB", COUNT_WORK_MEM):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL work_mem = '{memory}'")
            plans[memory] = segment_profiles(segment).order_by().explain()
    assert "hashed SubPlan" in plans[COUNT_WORK_MEM], plans
    assert "hashed SubPlan" not in plans["64kB"], plans


def test_a_change_of_a_segment_forgets_the_kept_counts_of_the_segments_using_it(manager_alice):
    """A count kept on a segment is of what it held; one whose rules use another's membership held
    what that one held. A change of the list's members, or of the used segment's rules, forgets the
    kept figures of every segment using it (those using those included), as it forgets its own."""
    for external_id in ("a", "b"):
        ProfileFactory(external_id=external_id, attributes={"plan": "pro"})
    static = segment_create(name="List", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=static.pk, by=manager_alice, add=["a"])
    pro = segment_create(name="Pro", rules=PRO, by=manager_alice)
    listed = segment_create(name="Listed", rules={"all": [{"segment": static.pk}]}, by=manager_alice)
    both = segment_create(name="Both", rules={"all": [{"segment": listed.pk}, {"segment": pro.pk}]}, by=manager_alice)

    def kept() -> dict:
        for segment in (listed, both):
            segment_count_keep(segment_id=segment.pk, by=manager_alice)
        return dict(Segment.objects.filter(pk__in=[listed.pk, both.pk]).values_list("name", "last_count"))

    assert kept() == {"Listed": 1, "Both": 1}
    segment_members_change(segment_id=static.pk, by=manager_alice, add=["b"])
    assert dict(Segment.objects.filter(pk__in=[listed.pk, both.pk]).values_list("name", "last_count")) == {
        "Listed": None,
        "Both": None,
    }
    assert kept() == {"Listed": 2, "Both": 2}
    segment_update(segment_id=pro.pk, by=manager_alice, rules={"all": [{"attribute": "plan", "op": "exists"}]})
    assert dict(Segment.objects.filter(pk__in=[listed.pk, both.pk]).values_list("name", "last_count")) == {
        "Listed": 2,
        "Both": None,
    }


def test_an_edit_of_a_segment_s_rules_keeps_a_segment_they_use_that_its_editor_cannot_see(
    manager_alice, manager_mallory
):
    """Only a segment added anew needs its editor's access: one the saved rules use already may stay."""
    vips = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    gold = segment_create(name="Gold", kind=Segment.Kind.STATIC, by=manager_alice)
    top = segment_create(name="Top", rules={"all": [PRO["all"][0], {"segment": vips.pk}]}, by=manager_alice)
    access_grant(obj=top, to=manager_mallory, by=None)
    kept = {"any": [{"attribute": "plan", "type": "string", "op": "eq", "value": "gold"}, {"segment": vips.pk}]}
    assert segment_update(segment_id=top.pk, by=manager_mallory, name="Top buyers", rules=kept).rules == kept
    with pytest.raises(RulesInvalid, match=f"there is no segment {gold.pk} you may use"):
        segment_update(
            segment_id=top.pk, by=manager_mallory, rules={"all": [{"segment": vips.pk}, {"segment": gold.pk}]}
        )
    top.refresh_from_db()
    assert (top.name, top.rules) == ("Top buyers", kept)


def test_an_edit_of_a_segment_s_rules_keeps_an_app_they_name_that_its_editor_cannot_see(manager_alice, manager_mallory):
    from tests.factories import AppFactory

    shop, garden = AppFactory(name="Shop"), AppFactory(name="Garden")
    access_grant(obj=shop, to=manager_alice, by=None)
    access_grant(obj=garden, to=manager_alice, by=None)
    top = segment_create(name="Top", rules={"all": [{"reachable": {"app": shop.pk}}]}, by=manager_alice)
    access_grant(obj=top, to=manager_mallory, by=None)
    kept = {"all": [PRO["all"][0], {"reachable": {"app": shop.pk, "platform": "ios"}}]}
    assert segment_update(segment_id=top.pk, by=manager_mallory, rules=kept).rules == kept
    with pytest.raises(RulesInvalid, match=f"there is no app {garden.pk} you may use"):
        segment_update(segment_id=top.pk, by=manager_mallory, rules={"all": [{"reachable": {"app": garden.pk}}]})
