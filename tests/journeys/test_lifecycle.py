"""The journey lifecycle: create, edit, submit, approve, request changes, cancel, stop, archive, versions."""

import threading

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404
from django.utils.html import escape

from accounts.models import ApprovalRequest, AuditEvent
from accounts.services import TransitionError
from journeys.graph import GraphInvalid
from journeys.models import Enrollment, Journey, JourneyVersion
from journeys.services.lifecycle import (
    journey_approve,
    journey_archive,
    journey_cancel_request,
    journey_delete,
    journey_draft_discard,
    journey_request_changes,
    journey_stop,
    journey_submit,
    journey_version_edit,
)
from tests.factories import ProfileFactory
from tests.journeys.conftest import simple_graph


def _reload(journey):
    return Journey.objects.get(pk=journey.pk)


def test_new_journey_is_a_draft_with_a_first_draft_version(make_journey, manager_alice):
    journey = make_journey()
    assert journey.status == "draft" and journey.owner == manager_alice
    (version,) = journey.versions.all()
    assert (version.number, version.status) == (1, "draft")
    assert AuditEvent.objects.filter(action="journey_created", object_id=str(journey.pk)).exists()


def test_viewer_cannot_create_a_journey(make_journey, viewer_carol):
    with pytest.raises(PermissionDenied):
        make_journey(by=viewer_carol)


def test_invalid_graph_publishes_nothing_and_names_the_step(make_journey):
    graph = {"steps": [{"id": "pause", "type": "wait", "seconds": -1, "next": "end"}, {"id": "end", "type": "exit"}]}
    with pytest.raises(GraphInvalid, match="Step 'pause': the wait is negative"):
        make_journey(graph=graph)
    assert not Journey.objects.exists()


def test_condition_on_a_deleted_segment_is_refused_at_submit(make_journey, manager_alice, vips, welcome):
    from audiences.models import Segment

    journey = make_journey()
    Segment.objects.filter(pk=vips.pk).delete()
    with pytest.raises(GraphInvalid, match=rf"Step 'check': branch 'VIP': segment {vips.pk} does not exist"):
        journey_submit(journey_id=journey.pk, by=manager_alice)
    assert _reload(journey).status == "draft"
    assert not ApprovalRequest.objects.exists()


def test_push_content_of_another_app_is_refused(make_journey, vips, manager_alice):
    from accounts.services import access_grant
    from tests.factories import PushContentFactory

    other = PushContentFactory(name="Elsewhere")
    access_grant(obj=other.app, to=manager_alice, by=None)  # hers too: named, as she may read it
    with pytest.raises(GraphInvalid, match="Step 'push': push content 'Elsewhere' belongs to another app"):
        make_journey(graph=simple_graph(condition_segment=vips.pk, content=other.pk))


def test_a_condition_rule_error_says_where_it_is_in_the_builders_words(make_journey, vips, welcome):
    """A branch's invalid rule read "the rule is invalid: rules.all[0].value: the value is empty":
    a JSON path, where the branch shows the rule builder; it says the place as a segment's page
    does ("Condition 1 (age is more than)"), and "The rules" for an empty group."""
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    empty_age = {"all": [{"attribute": "age", "type": "number", "op": "gt", "value": ""}]}
    graph["steps"][1]["branches"] = [{"label": "Adults", "rules": empty_age, "next": "push"}]
    with pytest.raises(GraphInvalid) as refused:
        make_journey(graph=graph)
    assert (
        "Step 'check': branch 'Adults': the rule is invalid: Condition 1 (age is more than): the value is empty"
        in str(refused.value)
    )
    graph["steps"][1]["branches"][0]["rules"] = {"all": []}
    with pytest.raises(GraphInvalid) as refused:
        make_journey(graph=graph)
    assert "the rule is invalid: The rules: the group is empty: add at least one condition" in str(refused.value)
    assert "rules.all" not in str(refused.value)


def test_a_step_naming_content_or_a_segment_outside_access_is_refused_as_a_missing_one(make_journey, vips, welcome):
    """A push step naming another team's content answered "push content 'Launch (Other team)'
    belongs to another app": any id tried read out the name of a content and of its app; and a
    condition on a segment outside access said so, where a missing one "does not exist"."""
    from audiences.models import Segment
    from delivery.models import PushContent
    from tests.factories import AppFactory, PushContentFactory, SegmentFactory

    hidden = PushContentFactory(name="Launch", app=AppFactory(name="Other team"))
    secret = SegmentFactory(name="Secret")
    no_content = PushContent.objects.order_by("-pk").first().pk + 1000
    no_segment = Segment.objects.order_by("-pk").first().pk + 1000

    def refusal(*, segment: int, content: int, unknown: int) -> list[str]:
        with pytest.raises(GraphInvalid) as refused:
            make_journey(graph=simple_graph(condition_segment=segment, content=content))
        return [message.replace(str(unknown), "N") for message in refused.value.errors_list]

    outside = refusal(segment=vips.pk, content=hidden.pk, unknown=hidden.pk)
    assert outside == refusal(segment=vips.pk, content=no_content, unknown=no_content)
    assert outside == ["Step 'push': there is no push content N you may use."]
    outside = refusal(segment=secret.pk, content=welcome.pk, unknown=secret.pk)
    assert outside == refusal(segment=no_segment, content=welcome.pk, unknown=no_segment)
    assert outside == ["Step 'check': branch 'VIP': there is no segment N you may use."]


def test_push_content_that_shows_a_call_context_is_refused_naming_the_step(make_journey, vips, team):
    """A journey's push gives no call's context (its event entries carry none): the value would
    show empty. A default, or the journey's own name, is accepted."""
    from tests.factories import PushContentFactory

    coded = PushContentFactory(app=team, name="Coded", title="Hi", body="Your code: {{ context.code }}")
    with pytest.raises(
        GraphInvalid, match=r"Step 'push': push content 'Coded' shows \{\{ context.code \}\} in its body"
    ):
        make_journey(graph=simple_graph(condition_segment=vips.pk, content=coded.pk))
    fine = PushContentFactory(
        app=team, title="{{ context.journey.name }}", body="Code: {{ context.code | default: 'none' }}"
    )
    assert make_journey(graph=simple_graph(condition_segment=vips.pk, content=fine.pk)).status == "draft"


def test_submit_locks_the_version_and_approval_makes_it_live(make_journey, manager_alice, approver_bob):
    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    assert _reload(journey).status == "in_review"
    with pytest.raises(TransitionError, match="in review"):
        journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    version = journey_approve(journey_id=journey.pk, by=approver_bob, comment="ok")
    journey = _reload(journey)
    assert journey.status == "live" and journey.live_version == version
    assert version.status == "live" and version.approved_fingerprint == request.fingerprint
    assert version.frozen_specs["push"]["spec"]["body"] == "Welcome aboard"
    assert ApprovalRequest.objects.get(pk=request.pk).status == "approved"


def test_manager_cannot_approve_their_own_journey(make_journey, manager_alice):
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied):
        journey_approve(journey_id=journey.pk, by=manager_alice)


def test_an_approver_who_changed_the_content_in_review_is_refused_for_it_before_the_change_is_named(
    make_journey, manager_alice, approver_bob, welcome
):
    """As a campaign's: refused for two reasons, the approver hears first that they may not decide
    the request (they changed what it asks to approve), then, were they allowed, that it changed."""
    from delivery.services.contents import pushcontent_save

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    welcome.body = "Everything half price"
    pushcontent_save(content=welcome, by=approver_bob)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert _reload(journey).status == "in_review"
    assert ApprovalRequest.objects.get().status == "pending"


def test_the_submitter_is_refused_as_the_submitter_before_a_change_since_submission_is_named(
    make_journey, manager_alice, welcome
):
    from delivery.services.contents import pushcontent_save

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    welcome.body = "Everything half price"
    pushcontent_save(content=welcome, by=manager_alice)
    with pytest.raises(PermissionDenied):
        journey_approve(journey_id=journey.pk, by=manager_alice)
    assert ApprovalRequest.objects.get().status == "pending"


def test_request_changes_returns_to_draft_with_the_comment(make_journey, manager_alice, approver_bob):
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_request_changes(journey_id=journey.pk, by=approver_bob, comment="Wait a day first")
    journey = _reload(journey)
    assert journey.status == "draft"
    assert journey.versions.get().status == "draft"
    assert ApprovalRequest.objects.get().comment == "Wait a day first"


def test_cancel_request_returns_to_draft(make_journey, manager_alice):
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_cancel_request(journey_id=journey.pk, by=manager_alice)
    assert _reload(journey).status == "draft"


def test_content_edited_during_review_cannot_be_approved(make_journey, manager_alice, approver_bob, welcome):
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    welcome.body = "Something else"
    welcome.save()
    with pytest.raises(ValidationError, match="changed since it was submitted"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert _reload(journey).status == "in_review"


@pytest.mark.django_db(transaction=True)
def test_a_content_save_during_approval_is_not_frozen_as_what_was_approved(
    make_journey, manager_alice, approver_bob, welcome, monkeypatch
):
    """A save of the push content commits between the approval's checks and its freeze."""
    from delivery.models import PushContent, spec_fingerprint
    from delivery.services.contents import pushcontent_save
    from journeys.services import lifecycle

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    record = lifecycle.approval_request_record

    def edit() -> None:
        try:
            content = PushContent.objects.get(pk=welcome.pk)
            content.body = "Something the approver never saw"
            pushcontent_save(content=content, by=manager_alice)
        finally:
            connection.close()

    editor = threading.Thread(target=edit)

    def decide_while_the_content_is_saved(**kwargs):
        answer = record(**kwargs)
        editor.start()
        editor.join(timeout=3)  # it commits here, unless approval holds the content
        return answer

    monkeypatch.setattr(lifecycle, "approval_request_record", decide_while_the_content_is_saved)
    journey_approve(journey_id=journey.pk, by=approver_bob)
    editor.join(timeout=30)

    frozen = JourneyVersion.objects.get(journey=journey, status="live").frozen_specs["push"]
    assert frozen["spec"]["body"] == "Welcome aboard"
    assert spec_fingerprint(frozen["spec"]) == frozen["fingerprint"]
    assert PushContent.objects.get(pk=welcome.pk).body == "Something the approver never saw"  # saved after


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("edited", ["the entry segment's rules", "the condition's kept list", "a list a rule nests"])
def test_a_segment_save_during_approval_is_not_frozen_as_what_was_approved(
    edited, make_journey, manager_alice, approver_bob, everyone, vips, welcome, monkeypatch
):
    """A save of a segment the journey reads (its entry segment, the segment a condition tests, one
    nested in a condition's rules) commits between the approval's check of the version against its
    request and the freeze of its segments: the version freezes the definitions the check read (one
    read serves both), the ones the approver reviewed, and the save then reads as an edit since the
    approval, which the journey refuses to read until a new version is approved."""
    from audiences.services.segments import segment_create, segment_members_change, segment_update
    from journeys.services import lifecycle

    ProfileFactory(external_id="late-vip")
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    loyal = segment_create(name="Loyal", kind="static", by=manager_alice)
    regulars = segment_create(name="Regulars", rules={"all": [{"segment": loyal.pk}]}, by=manager_alice)
    graph["steps"][1]["branches"].append(
        {"label": "Regular", "rules": {"any": [{"segment": regulars.pk}]}, "next": "push"}
    )
    journey = make_journey(graph=graph)
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    submitted = lifecycle.segment_fingerprints(journey.versions.get())
    saves = {
        "the entry segment's rules": lambda: segment_update(
            segment_id=everyone.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "exists"}]}
        ),
        "the condition's kept list": lambda: segment_members_change(
            segment_id=vips.pk, by=manager_alice, add=["late-vip"]
        ),
        "a list a rule nests": lambda: segment_members_change(segment_id=loyal.pk, by=manager_alice, add=["late-vip"]),
    }
    record = lifecycle.approval_request_record
    failed = []

    def edit() -> None:
        try:
            saves[edited]()
        except Exception as exc:
            failed.append(exc)
        finally:
            connection.close()

    editor = threading.Thread(target=edit)

    def record_while_the_segment_is_saved(**kwargs):
        answer = record(**kwargs)
        editor.start()
        editor.join(timeout=3)  # it commits here, unless the approval holds the segment
        return answer

    monkeypatch.setattr(lifecycle, "approval_request_record", record_while_the_segment_is_saved)
    journey_approve(journey_id=journey.pk, by=approver_bob, request_id=request.pk)
    editor.join(timeout=30)

    assert not failed
    version = JourneyVersion.objects.get(journey=journey, status="live")
    assert version.approved_segments == submitted
    assert version.approved_fingerprint == request.fingerprint
    assert lifecycle.segment_fingerprints(version) != submitted  # saved after
    assert "is defined otherwise than when version 1 was approved" in lifecycle.segments_changed_text(version)


def test_editing_a_live_journey_makes_a_new_draft_version_and_the_live_one_is_untouched(
    make_journey, publish, manager_alice
):
    journey = publish(make_journey())
    live = journey.live_version
    draft = journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    assert (draft.number, draft.status, draft.exit_event) == (2, "draft", "purchase")
    live.refresh_from_db()
    assert (live.status, live.exit_event) == ("live", "")
    assert _reload(journey).status == "live"
    # a second edit changes the same draft
    again = journey_version_edit(
        journey_id=journey.pk, by=manager_alice, reentry="after_wait", reentry_wait_seconds=600
    )
    assert again.pk == draft.pk and JourneyVersion.objects.filter(journey=journey).count() == 2


def test_approved_new_version_replaces_the_live_one(make_journey, publish, manager_alice):
    journey = publish(make_journey())
    first = journey.live_version
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    journey = publish(journey)
    first.refresh_from_db()
    assert first.status == "retired" and journey.live_version.number == 2


def test_stop_then_archive(make_journey, publish, manager_alice):
    journey = publish(make_journey())
    with pytest.raises(TransitionError):
        journey_archive(journey_id=journey.pk, by=manager_alice)
    journey_stop(journey_id=journey.pk, by=manager_alice)
    assert _reload(journey).status == "stopped"
    journey_archive(journey_id=journey.pk, by=manager_alice)
    assert _reload(journey).status == "archived"


def test_only_drafts_that_never_went_live_can_be_deleted(make_journey, publish, manager_alice):
    draft = make_journey(name="Draft")
    journey_delete(journey_id=draft.pk, by=manager_alice)
    assert not Journey.objects.filter(pk=draft.pk).exists()
    ProfileFactory.create_batch(2)
    live = publish(make_journey())
    with pytest.raises(TransitionError):
        journey_delete(journey_id=live.pk, by=manager_alice)
    # Nor once it stopped: its enrollments (which the database does not check against their
    # journey) always have their journey and version.
    from journeys.services.entries import journey_enter_segment

    entered = journey_enter_segment(journey_id=live.pk)
    assert entered == 2
    journey_stop(journey_id=live.pk, by=manager_alice)
    with pytest.raises(TransitionError):
        journey_delete(journey_id=live.pk, by=manager_alice)
    assert Enrollment.objects.filter(journey=live, version__journey=live).count() == entered


def test_outsider_cannot_see_or_change_a_journey(make_journey, outsider_dave):
    journey = make_journey()
    with pytest.raises(Http404):
        journey_submit(journey_id=journey.pk, by=outsider_dave)


def test_viewer_cannot_submit(make_journey, viewer_carol):
    journey = make_journey()
    with pytest.raises(PermissionDenied):
        journey_submit(journey_id=journey.pk, by=viewer_carol)


def test_approval_inbox_approves_through_the_registered_subject(make_journey, manager_alice, approver_bob):
    from accounts.approvals import approval_subject_for
    from accounts.selectors import approvals_waiting_for

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    (request,) = approvals_waiting_for(approver_bob)
    handler = approval_subject_for(Journey)
    assert "Onboarding — version 1" in handler.review_html(journey, request=request, user=approver_bob)
    handler.approve(subject_id=journey.pk, by=approver_bob, comment="")
    assert _reload(journey).status == "live"


@pytest.mark.parametrize(
    ("fields", "entry", "exit_text"),
    [
        (
            {"entry_kind": "event", "entry_segment": None, "entry_event": "signed_up", "reentry": "after_wait"}
            | {"reentry_wait_seconds": 2 * 86400, "exit_event": "purchased"},
            "When the event 'signed_up' arrives; re-entry after 2 days",
            "the event 'purchased'",
        ),
        (
            {"entry_every_hours": 6, "reentry": "after_wait", "reentry_wait_seconds": 90 * 60},
            "Everyone in 'Everyone', read again every 6 h; re-entry after 90 minutes",
            "none",
        ),
        ({}, "Everyone in 'Everyone', read once; a profile enters once", "none"),
    ],
    ids=["event-entry", "segment-read-again", "segment-once"],
)
def test_the_approver_reads_the_entry_re_entry_and_exit_as_they_were_set(
    make_journey, manager_alice, approver_bob, fields, entry, exit_text
):
    from accounts.approvals import approval_subject_for
    from accounts.selectors import approvals_waiting_for

    journey = make_journey(**fields)
    journey_submit(journey_id=journey.pk, by=manager_alice)
    (request,) = approvals_waiting_for(approver_bob)
    html = approval_subject_for(Journey).review_html(journey, request=request, user=approver_bob)
    assert f"<tr><th>Entry</th><td>{escape(entry)}</td></tr>" in html
    assert f"<tr><th>Exit criteria</th><td>{escape(exit_text)}</td></tr>" in html


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"entry_every_hours": 2**31}, "entry_every_hours"),
        ({"reentry": "after_wait", "reentry_wait_seconds": 2**31}, "reentry_wait_seconds"),
        ({"reentry": "never", "reentry_wait_seconds": 10**12}, "reentry_wait_seconds"),
    ],
)
def test_a_whole_number_past_its_column_is_refused_naming_it_and_nothing_is_written(make_journey, fields, field):
    with pytest.raises(ValidationError) as refused:
        make_journey(**fields)
    assert field in refused.value.message_dict
    assert not Journey.objects.exists()


def test_stopping_a_journey_closes_its_version_in_review_so_no_approval_brings_it_back_live(
    make_journey, publish, manager_alice, approver_bob
):
    ProfileFactory.create_batch(2)
    journey = publish(make_journey())
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_stop(journey_id=journey.pk, by=manager_alice)
    request.refresh_from_db()
    assert (request.status, request.comment) == ("cancelled", "The journey was stopped.")
    assert list(journey.versions.order_by("number").values_list("status", flat=True)) == ["live", "draft"]
    with pytest.raises(TransitionError):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert _reload(journey).status == "stopped"
    assert _reload(journey).live_version.number == 1


def test_an_approval_never_makes_a_finished_journey_live_again(make_journey, publish, manager_alice, approver_bob):
    """Whatever left a version in review (a stop from before this rule), a stopped or archived
    journey stays so: the approval is refused."""
    journey = publish(make_journey())
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    Journey.objects.filter(pk=journey.pk).update(status="archived")
    with pytest.raises(TransitionError, match="archived"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert _reload(journey).status == "archived"
    assert ApprovalRequest.objects.filter(status="pending").count() == 1


def test_deleting_the_entry_segment_of_a_journey_is_refused_naming_the_journey(
    make_journey, publish, manager_alice, everyone
):
    """It said "used by another segment's rules", which sent the manager looking in the wrong place."""
    from accounts.services import access_grant
    from audiences.services.segments import segment_delete

    publish(make_journey())
    with pytest.raises(ValidationError) as refused:
        segment_delete(segment_id=everyone.pk, by=manager_alice)
    assert refused.value.messages == ["Segment 'Everyone' is the entry of journey 'Onboarding': change it first."]
    # Someone who may use the segment but not see the journey learns that it is used, not by what.
    from tests.factories import UserFactory

    manager_oscar = UserFactory(username="manager_oscar", role="Manager")
    access_grant(obj=everyone, to=manager_oscar, by=None)
    with pytest.raises(ValidationError) as refused:
        segment_delete(segment_id=everyone.pk, by=manager_oscar)
    assert refused.value.messages == ["Segment 'Everyone' is the entry of a journey you cannot see: change it first."]


def test_deleting_a_segment_a_live_journeys_condition_tests_is_refused_naming_the_step(
    make_journey, publish, manager_alice, vips, welcome
):
    """It was deleted: the branch then held for no one and its profiles silently took "all others",
    the pushes behind it stopped, with no word to the marketer who deleted it."""
    from audiences.models import Segment
    from audiences.services.segments import segment_delete

    publish(make_journey())  # a condition on VIPs, step 'check'
    with pytest.raises(ValidationError) as refused:
        segment_delete(segment_id=vips.pk, by=manager_alice)
    assert refused.value.messages == [
        "Segment 'VIPs' is used by journey “Onboarding”, version 1 (live): step 'check': change it first."
    ]
    assert Segment.objects.filter(pk=vips.pk).exists()
    # Someone who may use the segment but not see the journey learns that it is used, not by what.
    from accounts.services import access_grant
    from tests.factories import UserFactory

    manager_oscar = UserFactory(username="manager_oscar", role="Manager")
    access_grant(obj=vips, to=manager_oscar, by=None)
    with pytest.raises(ValidationError) as refused:
        segment_delete(segment_id=vips.pk, by=manager_oscar)
    assert refused.value.messages == ["Segment 'VIPs' is used by a journey you cannot see: change it first."]
    assert Segment.objects.filter(pk=vips.pk).exists()


def test_a_condition_rule_naming_a_segment_keeps_it_while_a_draft_may_still_run_it(
    make_journey, manager_alice, vips, welcome
):
    """A rule naming the segment keeps it as a branch on it does; a draft is approved as it stands, so
    it keeps it too, until its condition names another."""
    from audiences.models import Segment
    from audiences.services.segments import segment_delete

    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    graph["steps"][1]["branches"] = [{"label": "VIP", "rules": {"any": [{"segment": vips.pk}]}, "next": "push"}]
    journey = make_journey(graph=graph, name="Rules")
    with pytest.raises(ValidationError) as refused:
        segment_delete(segment_id=vips.pk, by=manager_alice)
    assert refused.value.messages == [
        "Segment 'VIPs' is used by journey “Rules”, version 1 (draft): step 'check': change it first."
    ]
    locale = {"all": [{"field": "locale", "op": "starts_with", "value": "fr"}]}
    graph["steps"][1]["branches"] = [{"label": "French", "rules": locale, "next": "push"}]
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph)
    segment_delete(segment_id=vips.pk, by=manager_alice)
    assert not Segment.objects.filter(pk=vips.pk).exists()


def test_the_delete_page_of_a_segment_a_journey_tests_says_so_and_its_post_deletes_nothing(
    make_journey, publish, login, manager_alice, vips
):
    from audiences.models import Segment

    publish(make_journey())
    client = login(manager_alice)
    page = client.get(f"/admin/audiences/segment/{vips.pk}/delete/")
    html = page.content.decode()
    assert page.status_code == 200
    assert escape("journey “Onboarding”, version 1 (live): step 'check'") in html
    assert "Yes, I’m sure" not in html  # Django's confirmation gives no button for a protected object
    client.post(f"/admin/audiences/segment/{vips.pk}/delete/", {"post": "yes"})
    assert Segment.objects.filter(pk=vips.pk).exists()
    # The list's action refuses it as well, saying why.
    answer = client.post(
        "/admin/audiences/segment/",
        {"action": "delete_segments", "_selected_action": [vips.pk], "post": "yes"},
        follow=True,
    )
    assert "is used by journey “Onboarding”" in answer.content.decode()
    assert Segment.objects.filter(pk=vips.pk).exists()


def test_a_colleague_edits_and_submits_a_journey_keeping_segments_they_were_not_granted(
    make_journey, manager_alice, manager_mallory, vips, welcome
):
    """As for a campaign, what a user sets now must be within their access; what the journey already
    named stays (it said "Choose a segment you have access to." to any edit, the exit event's too)."""
    from tests.factories import SegmentFactory

    journey = make_journey()  # alice's: enters Everyone, a condition on VIPs; mallory was granted neither
    draft = journey_version_edit(journey_id=journey.pk, by=manager_mallory, exit_event="purchase")
    assert draft.exit_event == "purchase"
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
    assert journey_version_edit(journey_id=journey.pk, by=manager_mallory, graph=graph).graph == graph
    journey_submit(journey_id=journey.pk, by=manager_mallory)
    assert _reload(journey).status == "in_review"
    # What she names now must be hers to use.
    journey_cancel_request(journey_id=journey.pk, by=manager_mallory)
    secret = SegmentFactory(name="Secret")
    with pytest.raises(GraphInvalid, match=rf"Step 'check': branch 'VIP': there is no segment {secret.pk} you may use"):
        journey_version_edit(
            journey_id=journey.pk,
            by=manager_mallory,
            graph=simple_graph(condition_segment=secret.pk, content=welcome.pk),
        )
    with pytest.raises(ValidationError) as refused:
        journey_version_edit(journey_id=journey.pk, by=manager_mallory, entry_segment=secret)
    assert refused.value.message_dict == {"entry_segment": ["Choose a segment you have access to."]}


def test_a_segment_or_content_named_by_many_steps_is_looked_up_once(
    make_journey, manager_alice, vips, welcome, django_assert_max_num_queries
):
    from journeys.services.lifecycle import version_reference_checks

    checks = version_reference_checks(app_id=welcome.app_id, by=manager_alice)
    assert checks["check_segment"](vips.pk) == "" and checks["check_content"](welcome.pk) == ""
    with django_assert_max_num_queries(0):
        assert checks["check_segment"](vips.pk) == "" and checks["check_content"](welcome.pk) == ""


def test_an_event_entry_keeps_no_segment_nor_a_segment_entry_an_event(make_journey, manager_alice, everyone):
    """The form sends the segment still chosen when the entry becomes an event: it was kept, unseen
    by the approver, and refused the segment's deletion as 'the entry' of a journey entered by events."""
    from audiences.models import Segment
    from audiences.services.segments import segment_delete

    journey = make_journey(entry_kind="event", entry_event="signed_up", entry_every_hours=6)
    version = journey.versions.get()
    assert (version.entry_segment, version.entry_every_hours, version.entry_event) == (None, 0, "signed_up")
    edited = journey_version_edit(journey_id=journey.pk, by=manager_alice, entry_kind="segment", entry_segment=everyone)
    assert (edited.entry_segment, edited.entry_event) == (everyone, "")
    edited = journey_version_edit(journey_id=journey.pk, by=manager_alice, entry_kind="event", entry_event="paid")
    assert edited.entry_segment is None
    segment_delete(segment_id=everyone.pk, by=manager_alice)
    assert not Segment.objects.filter(pk=everyone.pk).exists()


def test_an_approver_who_changed_the_journey_or_a_push_it_sends_cannot_approve_it(
    make_journey, manager_alice, approver_bob, welcome, everyone, vips
):
    """Four eyes, as for a campaign: an approver who edited the version in review, or a push
    content its steps send, since the journey's last approval, leaves the decision to another."""
    from accounts.services import access_grant
    from delivery.services.contents import pushcontent_save
    from tests.factories import UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    for user in (approver_bob, approver_zoe):
        for obj in (welcome.app, everyone, vips):
            access_grant(obj=obj, to=user, by=None)
    journey = make_journey()
    journey_version_edit(journey_id=journey.pk, by=approver_bob, exit_event="purchase")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    journey_approve(journey_id=journey.pk, by=approver_zoe)

    # A new version, its push's content reworded by Bob.
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="")
    welcome.body = "Welcome aboard, and enjoy"
    pushcontent_save(content=welcome, by=approver_bob)
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert journey_approve(journey_id=journey.pk, by=approver_zoe).number == 2


def test_an_approver_who_changed_a_segment_the_journey_reads_cannot_approve_it(
    make_journey, manager_alice, approver_bob, welcome, everyone, vips
):
    """Four eyes over the audience too: an approver who edited the entry segment's rules, or the
    members of a kept list a condition reads, since the journey's last approval, leaves the
    decision to another approver."""
    from accounts.services import access_grant
    from audiences.services.segments import segment_members_change, segment_update
    from tests.factories import ProfileFactory, UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    for user in (approver_bob, approver_zoe):
        for obj in (welcome.app, everyone, vips):
            access_grant(obj=obj, to=user, by=None)
    journey = make_journey()
    segment_update(segment_id=everyone.pk, by=approver_bob, rules={"all": [{"field": "locale", "op": "exists"}]})
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    journey_approve(journey_id=journey.pk, by=approver_zoe)

    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    segment_members_change(segment_id=vips.pk, by=approver_bob, add=[ProfileFactory().external_id])
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert journey_approve(journey_id=journey.pk, by=approver_zoe).number == 2


def test_an_approver_whose_draft_was_discarded_may_approve_the_next_one(
    make_journey, manager_alice, approver_bob, welcome, everyone, vips
):
    """The edits of a discarded draft are gone: the approver who made them did not change what the
    next request asks to approve (the live version, edited by someone else). A rename stays."""
    from accounts.services import access_grant
    from tests.factories import UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    for user in (approver_bob, approver_zoe):
        for obj in (welcome.app, everyone, vips):
            access_grant(obj=obj, to=user, by=None)
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_approve(journey_id=journey.pk, by=approver_zoe)

    journey_version_edit(journey_id=journey.pk, by=approver_bob, exit_event="purchase")  # Bob's draft...
    journey_draft_discard(journey_id=journey.pk, by=manager_alice)  # ...thrown away
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribed")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    assert journey_approve(journey_id=journey.pk, by=approver_bob).number == 3

    # Bob edits again after a discard: that edit stands.
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="")
    journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    journey_version_edit(journey_id=journey.pk, by=approver_bob, exit_event="purchase")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        journey_approve(journey_id=journey.pk, by=approver_bob)


# --- Discarding the draft of a live journey ------------------------------------------------------


def _live_with_a_draft(make_journey, publish, manager_alice, **changes):
    journey = publish(make_journey())
    journey_version_edit(journey_id=journey.pk, by=manager_alice, **(changes or {"exit_event": "purchase"}))
    return _reload(journey)


def test_discarding_the_draft_of_a_live_journey_leaves_the_live_version_running_as_before(
    make_journey, publish, manager_alice
):
    from journeys.models import StepStat
    from journeys.selectors import version_step_stats
    from journeys.services.engine import journeys_run_due
    from journeys.services.entries import journey_enter_segment

    ProfileFactory.create_batch(3)
    journey = publish(make_journey())
    live = journey.live_version
    assert journey_enter_segment(journey_id=journey.pk) == 3
    journeys_run_due()
    stats = version_step_stats(live)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    draft = JourneyVersion.objects.get(journey=journey, status="draft")

    journey_draft_discard(journey_id=journey.pk, by=manager_alice)

    journey = _reload(journey)
    assert (journey.status, journey.live_version_id) == ("live", live.pk)
    assert [(v.number, v.status, v.exit_event) for v in journey.versions.all()] == [(1, "live", "")]
    assert not JourneyVersion.objects.filter(pk=draft.pk).exists()
    assert Enrollment.objects.filter(journey=journey, version=live).count() == 3
    assert version_step_stats(live) == stats and StepStat.objects.filter(version_id=draft.pk).count() == 0
    event = AuditEvent.objects.get(action="journey_draft_discarded", object_id=str(journey.pk))
    assert (event.actor, event.summary) == (manager_alice, {"version": 2, "live_version": 1})
    # The next edit is version 3: "version 2" in the audit log and in requests names the discarded one only.
    again = journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribed")
    assert (again.number, again.status) == (3, "draft")
    # Kept on the journey, not read back from the audit log (which retention may empty).
    assert _reload(journey).last_version_number == 3


def test_the_migration_counts_the_numbers_given_before_from_the_versions_and_the_discards(
    make_journey, publish, manager_alice
):
    """Journeys made before the journey kept its last number: the highest of its versions' and of
    the drafts discarded (the audit log's ``journey_draft_discarded``)."""
    import importlib

    from django.apps import apps

    numbers_given = importlib.import_module("journeys.migrations.0007_journey_last_version_number").numbers_given
    discarded = publish(make_journey(name="Discarded"))
    edited = publish(make_journey(name="Edited"))
    make_journey(name="Untouched")
    journey_version_edit(journey_id=edited.pk, by=manager_alice, exit_event="purchase")
    AuditEvent.objects.create(
        actor=manager_alice,
        action="journey_draft_discarded",
        object_type=ContentType.objects.get_for_model(Journey),
        object_id=str(discarded.pk),
        summary={"version": 4, "live_version": 1},
    )
    Journey.objects.update(last_version_number=1)  # as the field's default left them
    numbers_given(apps, None)
    given = dict(Journey.objects.values_list("name", "last_version_number"))
    assert given == {"Discarded": 4, "Edited": 2, "Untouched": 1}
    assert journey_version_edit(journey_id=discarded.pk, by=manager_alice, exit_event="x").number == 5


def test_a_draft_an_approver_sent_back_is_discarded_and_its_closed_request_still_reads(
    make_journey, publish, manager_alice, approver_bob
):
    from journeys.review import journey_review_html

    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_request_changes(journey_id=journey.pk, by=approver_bob, comment="Not now")
    request = ApprovalRequest.objects.get(status="changes_requested")

    journey_draft_discard(journey_id=journey.pk, by=manager_alice)

    request.refresh_from_db()
    assert request.status == "changes_requested" and request.subject == _reload(journey)
    html = journey_review_html(_reload(journey), request=request, user=approver_bob)
    assert "version 1" in html and "replaces" not in html
    # A new draft is submitted and approved as any other.
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribed")
    journey = publish(journey)
    assert (journey.live_version.number, journey.live_version.exit_event) == (3, "unsubscribed")


def test_the_draft_of_a_stopped_journey_can_be_discarded(make_journey, publish, manager_alice):
    """Stopping a journey sends its version in review back to draft, which nothing can submit again."""
    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_stop(journey_id=journey.pk, by=manager_alice)
    journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    journey = _reload(journey)
    assert journey.status == "stopped"
    assert [(v.number, v.status) for v in journey.versions.all()] == [(1, "live")]


def test_a_draft_in_review_is_not_discarded_until_its_request_is_cancelled(make_journey, publish, manager_alice):
    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(TransitionError, match="Version 2 is in review: cancel the request first"):
        journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    assert journey.versions.get(number=2).status == "in_review"
    assert ApprovalRequest.objects.filter(status="pending").count() == 1
    journey_cancel_request(journey_id=journey.pk, by=manager_alice)
    journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    assert list(journey.versions.values_list("number", flat=True)) == [1]


def test_a_journey_that_never_went_live_has_no_live_version_to_go_back_to(make_journey, manager_alice):
    journey = make_journey()
    with pytest.raises(TransitionError, match="It never went live.*Delete the journey instead"):
        journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    assert journey.versions.get().status == "draft"
    assert not AuditEvent.objects.filter(action="journey_draft_discarded").exists()


def test_a_live_journey_without_a_draft_has_nothing_to_discard(make_journey, publish, manager_alice):
    journey = publish(make_journey())
    with pytest.raises(TransitionError, match="It has no draft version to discard"):
        journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    assert list(journey.versions.values_list("status", flat=True)) == ["live"]


def test_a_viewer_or_an_outsider_cannot_discard_a_draft(
    make_journey, publish, manager_alice, viewer_carol, outsider_dave
):
    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    with pytest.raises(PermissionDenied):
        journey_draft_discard(journey_id=journey.pk, by=viewer_carol)
    with pytest.raises(Http404):
        journey_draft_discard(journey_id=journey.pk, by=outsider_dave)
    assert [v.status for v in journey.versions.order_by("number")] == ["live", "draft"]


def test_the_review_shows_the_phones_with_the_context_a_journeys_push_gives(
    make_journey, team, manager_alice, approver_bob, vips
):
    """The approver sees each push as its recipients will: ``context.journey.*`` filled in as the
    engine gives it at send time, not empty."""
    from delivery.payloads import message_render
    from journeys.review import journey_review_html
    from journeys.services.lifecycle import journey_submit
    from tests.factories import PushContentFactory

    content = PushContentFactory(
        app=team,
        title="{{ context.journey.name }} v{{ context.journey.version }}",
        body="Step {{ context.journey.step }} of journey {{ context.journey.id }}",
    )
    journey = make_journey(graph=simple_graph(condition_segment=vips.pk, content=content.pk), name="Spring welcome")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    request = ApprovalRequest.objects.get(status="pending")

    html = journey_review_html(_reload(journey), request=request, user=approver_bob)

    assert "Spring welcome v1" in html
    assert escape(f"Step push of journey {journey.pk}") in html
    # What the engine gives a push of this step, the review's phones read.
    version = _reload(journey).versions.get()
    sent = message_render(content.spec(), profile={}, context=journey.send_context(version=version, step="push"))
    assert sent.title == "Spring welcome v1"


def test_a_segment_edited_during_review_cannot_be_approved(make_journey, manager_alice, approver_bob, vips):
    from audiences.services.segments import segment_members_change

    ProfileFactory(external_id="late-vip")
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["late-vip"])
    with pytest.raises(ValidationError, match="changed since it was submitted"):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    assert _reload(journey).status == "in_review"


def test_the_approver_reviews_each_segment_s_definition(make_journey, manager_alice, approver_bob):
    from accounts.approvals import approval_subject_for
    from accounts.selectors import approvals_waiting_for

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    (request,) = approvals_waiting_for(approver_bob)
    html = approval_subject_for(Journey).review_html(journey, request=request, user=approver_bob)
    assert "<th>Segment definitions</th>" in html
    assert "Everyone: all of: external_id is set" in html  # the entry segment's rule, in words
    assert "VIPs: 0 members (static)" in html  # the condition's kept list


def test_a_segment_edited_after_approval_is_shown_to_the_manager_and_the_approver(
    make_journey, publish, manager_alice, approver_bob, vips, login, client
):
    from accounts.approvals import approval_subject_for
    from accounts.selectors import approvals_waiting_for
    from audiences.services.segments import segment_members_change

    ProfileFactory(external_id="late-vip")
    journey = publish(make_journey())
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["late-vip"])
    said = "'VIPs' is defined otherwise than when version 1 was approved"
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert escape(said) in page and "approve a new version" in page
    client.logout()
    # The manager saves the version again and submits it: the approver sees what changed.
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    (request,) = approvals_waiting_for(approver_bob)
    html = approval_subject_for(Journey).review_html(journey, request=request, user=approver_bob)
    assert "VIPs: 1 members (static)" in html
    assert escape(said) in html
    journey_approve(journey_id=journey.pk, by=approver_bob)
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "defined otherwise" not in page


def test_a_segment_edited_after_approval_is_named_only_to_a_reader_who_may_see_it(
    make_journey, publish, manager_alice, viewer_carol, vips, login
):
    """The journey page says which segment changed since the approval by name to a reader who may
    see it, as "segment #12" to the others (viewer_carol works on the app, not on the segment)."""
    from accounts.services import access_grant
    from audiences.services.segments import segment_members_change

    ProfileFactory(external_id="late-vip")
    journey = publish(make_journey())
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["late-vip"])
    page = login(viewer_carol).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert f"The segment #{vips.pk} is defined otherwise than when version 1 was approved" in page
    assert "VIPs" not in page
    access_grant(obj=vips, to=viewer_carol, by=None)
    page = login(viewer_carol).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert escape("'VIPs' is defined otherwise than when version 1 was approved") in page


@pytest.fixture
def granted_the_journey(make_journey, publish):
    """A live journey with a push batch under way, and a Manager granted the journey alone (an
    object grant on it, not on its app)."""
    from accounts.services import access_grant
    from delivery.models import Dispatch
    from tests.factories import UserFactory

    journey = publish(make_journey())
    batch = Dispatch.objects.create(
        app=journey.app,
        kind="journey",
        source_id=journey.live_version_id,
        context={"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}},
        content_spec={"title": "Hi"},
        status="sending",
    )
    manager = UserFactory(username="manager_grace", role="Manager")
    access_grant(obj=journey, to=manager, by=None)
    return journey, batch, manager


@pytest.mark.presses("journeys.journey:transition/stop")
def test_a_manager_granted_the_journey_alone_stops_it_and_its_sends(login, granted_the_journey, viewer_carol):
    """Whoever may stop the journey stops its own sends with it, without access to the app they
    go to: the stop was refused whole by its batch under way ('You may not stop this dispatch').
    A Viewer of its app, and a Manager without access to it, are still refused the button."""
    from delivery.models import Dispatch
    from tests.factories import UserFactory

    journey, batch, grace = granted_the_journey
    url = f"/admin/journeys/journey/{journey.pk}/transition/stop/"
    stranger = UserFactory(username="manager_henry", role="Manager")
    for user, refusal in ((viewer_carol, 403), (stranger, 404)):
        assert login(user).post(url, {"confirmed": "yes"}).status_code == refusal, user
        assert _reload(journey).status == "live" and Dispatch.objects.get(pk=batch.pk).status == "sending"
    answer = login(grace).post(url, {"confirmed": "yes"})
    assert answer.status_code == 302
    assert _reload(journey).status == "stopped"
    assert Dispatch.objects.get(pk=batch.pk).status == "stopped"


def test_a_journey_s_sends_are_not_stopped_by_whoever_may_not_stop_it(granted_the_journey, viewer_carol):
    """A Viewer of its app, and a Manager without access to it, are refused the stop: the journey
    and its batch go on."""
    from delivery.models import Dispatch
    from tests.factories import UserFactory

    journey, batch, _grace = granted_the_journey
    stranger = UserFactory(username="manager_henry", role="Manager")
    for user, refusal in ((viewer_carol, PermissionDenied), (stranger, Http404)):
        with pytest.raises(refusal):
            journey_stop(journey_id=journey.pk, by=user)
    assert _reload(journey).status == "live"
    assert Dispatch.objects.get(pk=batch.pk).status == "sending"


@pytest.fixture
def named(team):
    """A push content that shows the journey's name (``context.journey.name``)."""
    from tests.factories import PushContentFactory

    return PushContentFactory(app=team, name="Named", title="{{ context.journey.name }}", body="Welcome")


def test_a_rename_while_a_version_showing_the_name_is_in_review_is_refused(
    make_journey, manager_alice, vips, named, welcome
):
    """Its approval gives its pushes the name the journey has then (``approved_name``): renamed while
    it waits, the approver would approve a name the review did not show. A version in review whose
    pushes do not show the name leaves the name free."""
    from journeys.services.lifecycle import journey_rename

    journey = make_journey(graph=simple_graph(condition_segment=vips.pk, content=named.pk))
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(TransitionError, match=r"Version 1 in review shows the journey's name in its pushes"):
        journey_rename(journey_id=journey.pk, by=manager_alice, name="Everything free")
    assert _reload(journey).name == "Onboarding"

    plain = make_journey(name="Plain", graph=simple_graph(condition_segment=vips.pk, content=welcome.pk))
    journey_submit(journey_id=plain.pk, by=manager_alice)
    assert journey_rename(journey_id=plain.pk, by=manager_alice, name="Plainer").name == "Plainer"


def test_a_rename_of_a_live_journey_showing_its_name_opens_a_version_whose_approval_covers_it(
    make_journey, publish, manager_alice, approver_bob, vips, named, welcome
):
    """Its pushes keep the name version 1 was approved with; the rename opens a new version (the live
    one's copy) to submit, whose approval gives its pushes the new name. A journey whose pushes do
    not show the name renames without a version."""
    from journeys.services.lifecycle import journey_rename

    journey = publish(make_journey(graph=simple_graph(condition_segment=vips.pk, content=named.pk)))
    journey_rename(journey_id=journey.pk, by=manager_alice, name="Everything free")
    journey = _reload(journey)
    live, draft = journey.live_version, journey.versions.get(status="draft")
    assert (draft.number, draft.graph) == (2, live.graph)
    assert journey.send_context(version=live, step="push")["journey"]["name"] == "Onboarding"
    journey_submit(journey_id=journey.pk, by=manager_alice)
    approved = journey_approve(journey_id=journey.pk, by=approver_bob)
    assert approved.number == 2 and approved.approved_name == "Everything free"

    plain = publish(make_journey(name="Plain", graph=simple_graph(condition_segment=vips.pk, content=welcome.pk)))
    journey_rename(journey_id=plain.pk, by=manager_alice, name="Plainer")
    assert not plain.versions.filter(status="draft").exists()


def test_a_sent_back_draft_thrown_away_leaves_its_authors_box(
    make_journey, manager_alice, approver_bob, welcome, everyone, vips
):
    """The home page listed a live journey's request sent back for changes after its author threw
    the draft away (``journey_draft_discard``): there was nothing left to submit again."""
    from accounts.services import access_grant
    from config.home import home_for

    def sent_back() -> list[str]:
        (section,) = [s for s in home_for(manager_alice)["sections"] if s.title == "Sent back to me"]
        return [item.label for item in section.items]

    for obj in (welcome.app, everyone, vips):
        access_grant(obj=obj, to=approver_bob, by=None)
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_approve(journey_id=journey.pk, by=approver_bob)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_request_changes(journey_id=journey.pk, by=approver_bob, comment="Keep the old exit.")
    assert sent_back() == ["Onboarding"]
    journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    assert sent_back() == []
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribed")
    assert sent_back() == ["Onboarding"]  # a new draft to submit: what came back reads for it again


def test_journeys_a_reader_may_not_see_are_counted_each_once(
    make_journey, publish, manager_alice, everyone, vips, welcome
):
    """Journeys hidden from the reader were said once per version ("a journey you cannot see, a
    journey you cannot see" for a content two versions send) or all as one (a segment two journeys
    read): they are counted, each journey once, however many of its versions read it."""
    from accounts.services import access_grant
    from journeys.selectors import journeys_conditions_naming, journeys_reading_segments, journeys_sending_contents
    from journeys.services.lifecycle import journey_version_edit
    from tests.factories import UserFactory

    onboarding = publish(make_journey())
    journey_version_edit(journey_id=onboarding.pk, by=manager_alice, reentry="after_wait")  # a draft
    make_journey(name="Winback")
    manager_oscar = UserFactory(username="manager_oscar", role="Manager")
    for obj in (everyone, vips, welcome):
        access_grant(obj=obj, to=manager_oscar, by=None)

    assert journeys_sending_contents({welcome.pk}, manager_oscar) == ["2 journeys you cannot see"]
    assert journeys_conditions_naming({vips.pk}, manager_oscar) == ["2 journeys you cannot see"]
    assert journeys_reading_segments({everyone.pk, vips.pk}, manager_oscar) == ["2 journeys you cannot see"]
    assert journeys_reading_segments({everyone.pk}, manager_alice) == [
        "the entry of journey “Onboarding”, version 1 (live)",
        "the entry of journey “Onboarding”, version 2 (draft)",
        "the entry of journey “Winback”, version 1 (draft)",
    ]
    assert journeys_sending_contents({welcome.pk}, manager_alice) == [
        "journey “Onboarding”, version 1 (live): step 'push'",
        "journey “Onboarding”, version 2 (draft): step 'push'",
        "journey “Winback”, version 1 (draft): step 'push'",
    ]
