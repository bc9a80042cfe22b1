"""The journeys admin: the graph with counts, the step editor's server-side errors, state-aware buttons,
enrollment history per profile."""

import json
import re

import pytest

from journeys.models import Journey
from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment
from journeys.services.lifecycle import journey_submit
from tests.factories import ProfileFactory, SegmentMemberFactory
from tests.journeys.conftest import approved_before_segments_were_frozen, simple_graph
from tests.pages import get_reading_approval_requests, listed_rows


def _form(team, everyone, graph, **extra):
    data = {
        "name": "Welcome series",
        "app": team.pk,
        "entry_kind": "segment",
        "entry_segment": everyone.pk,
        "entry_every_hours": 0,
        "entry_event": "",
        "reentry": "never",
        "reentry_wait_seconds_0": 0,
        "reentry_wait_seconds_1": 60,
        "exit_event": "",
        "graph": json.dumps(graph),
    }
    data.update(extra)
    return data


def test_manager_builds_a_journey_with_the_step_editor(login, manager_alice, team, everyone, vips, welcome):
    client = login(manager_alice)
    page = client.get("/admin/journeys/journey/add/")
    assert page.status_code == 200
    assert b"step-editor" in page.content and b"journeys/step_editor.js" in page.content
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    answer = client.post("/admin/journeys/journey/add/", _form(team, everyone, graph))
    assert answer.status_code == 302, answer.content[:2000]
    journey = Journey.objects.get(name="Welcome series")
    assert journey.versions.get().graph == graph


@pytest.mark.parametrize(("amount", "unit", "seconds"), [(2, "86400", 2 * 86400), (90, "60", 5400), (45, "1", 45)])
def test_the_re_entry_wait_is_typed_in_minutes_hours_or_days_and_opens_in_its_unit(
    login, manager_alice, team, everyone, vips, welcome, amount, unit, seconds
):
    client = login(manager_alice)
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    data = _form(
        team, everyone, graph, reentry="after_wait", reentry_wait_seconds_0=amount, reentry_wait_seconds_1=unit
    )
    answer = client.post("/admin/journeys/journey/add/", data)
    assert answer.status_code == 302, answer.content[:2000]
    journey = Journey.objects.get(name="Welcome series")
    assert journey.versions.get().reentry_wait_seconds == seconds
    # 90 minutes open as 90 minutes, not 1.5 hours; 2 days as 2 days.
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert re.search(rf'name="reentry_wait_seconds_0" value="{amount}"', page)
    units = page.split('name="reentry_wait_seconds_1"', 1)[1].split("</select>", 1)[0]
    assert re.findall(r'<option value="(\d+)" selected>', units) == [unit]


@pytest.mark.parametrize(
    ("amount", "message"), [(-1, "The amount is 0 or more."), (10**9, "At most 24,855 days."), ("", "required")]
)
def test_a_re_entry_wait_out_of_range_is_refused_on_the_form(login, manager_alice, team, everyone, amount, message):
    client = login(manager_alice)
    graph = {"steps": [{"id": "end", "type": "exit"}]}
    data = _form(
        team, everyone, graph, reentry="after_wait", reentry_wait_seconds_0=amount, reentry_wait_seconds_1="86400"
    )
    answer = client.post("/admin/journeys/journey/add/", data)
    assert answer.status_code == 200
    assert message in " ".join(answer.context["adminform"].form.errors["reentry_wait_seconds"])
    assert not Journey.objects.exists()


def test_the_form_asks_to_correct_the_errors_when_the_steps_hold_more_than_one(login, manager_alice, team, everyone):
    """Two step errors, both on the steps field, read 'Please correct the error below.': the note now
    counts the errors, as Django's admin does its fields'."""
    client = login(manager_alice)
    wait = {"id": "pause", "type": "wait", "seconds": -10, "next": "end"}
    split = {
        "id": "ab",
        "type": "split",
        "branches": [{"label": "A", "percent": 60, "next": "end"}, {"label": "B", "percent": 60, "next": "end"}],
    }
    end = {"id": "end", "type": "exit"}
    two = client.post("/admin/journeys/journey/add/", _form(team, everyone, {"steps": [wait, split, end]}))
    assert two.status_code == 200
    assert "Please correct the errors below." in two.content.decode()
    assert "Please correct the error below." not in two.content.decode()
    one = client.post("/admin/journeys/journey/add/", _form(team, everyone, {"steps": [wait, end]}))
    assert one.status_code == 200
    assert "Please correct the error below." in one.content.decode()
    assert not Journey.objects.exists()


def test_a_segment_read_again_too_rarely_is_refused_on_the_form(login, manager_alice, team, everyone):
    client = login(manager_alice)
    data = _form(team, everyone, {"steps": [{"id": "end", "type": "exit"}]}, entry_every_hours=10**12)
    answer = client.post("/admin/journeys/journey/add/", data)
    assert answer.status_code == 200
    assert answer.context["adminform"].form.errors["entry_every_hours"]
    assert not Journey.objects.exists()


def test_invalid_steps_are_shown_on_the_form_naming_the_step(login, manager_alice, team, everyone):
    client = login(manager_alice)
    graph = {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": -10, "next": "ab"},
            {
                "id": "ab",
                "type": "split",
                "branches": [
                    {"label": "A", "percent": 60, "next": "end"},
                    {"label": "B", "percent": 60, "next": "end"},
                ],
            },
            {"id": "end", "type": "exit"},
        ]
    }
    answer = client.post("/admin/journeys/journey/add/", _form(team, everyone, graph))
    assert answer.status_code == 200
    text = answer.content.decode()
    assert "Step &#x27;pause&#x27;: the wait is negative" in text
    assert "Step &#x27;ab&#x27;: the percentages sum to 120, not 100." in text
    assert not Journey.objects.exists()


def test_journey_page_draws_the_graph_with_per_step_counts(
    login, viewer_carol, make_journey, publish, vips, django_assert_max_num_queries
):
    vip, other = ProfileFactory.create_batch(2)
    SegmentMemberFactory(segment=vips, profile=vip)
    journey = publish(make_journey())
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    client = login(viewer_carol)
    with django_assert_max_num_queries(60):
        page = client.get(f"/admin/journeys/journey/{journey.pk}/change/")
    text = page.content.decode()
    assert page.status_code == 200
    assert '<svg class="journey-graph"' in text
    assert 'data-step="check"' in text and "VIP: 1" in text and "all others: 1" in text
    assert "entered 1 · sent " in text  # the push step counts what its sends became
    assert 'class="step step-entry"' in text  # the entry is drawn as a step
    assert "Your role may view this journey, not act on it." in text  # a viewer has no buttons


@pytest.mark.embedded  # the step named in a batch's JSON context, on SQLite too
def test_a_click_on_a_push_step_opens_the_batches_it_sent(
    login, manager_alice, make_journey, publish, everyone, welcome, django_assert_max_num_queries
):
    """A push step's box opened the enrollments at that step, which is nearly always empty: a
    profile passes a push at once. It opens the step's sends (its batches, each with its rows),
    those of that version and step only."""
    import html

    from delivery.models import Dispatch

    for name in ("ann", "ben"):
        SegmentMemberFactory(segment=everyone, profile=ProfileFactory(external_id=name))
    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    other = publish(make_journey(name="Other", graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    for each in (journey, other):
        journey_enter_segment(journey_id=each.pk)
    journeys_run_due()
    sent = Dispatch.objects.get(source_id=journey.live_version_id)
    elsewhere = Dispatch.objects.create(  # another step's batch of the same version
        app=journey.app,
        kind="journey",
        source_id=journey.live_version_id,
        label="Onboarding v1 · later",
        context={"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "later"}},
        content_spec={"title": "Hi"},
    )
    client = login(manager_alice)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    box = re.search(r'data-step="push".*?</g>', page, re.S).group(0)
    link = html.unescape(re.search(r'<a href="([^"]+)" class="step-link">', box).group(1))
    assert link.startswith("/admin/delivery/dispatch/?")
    done = re.search(r'data-step="done".*?</g>', page, re.S).group(0)
    assert "/admin/journeys/enrollment/?" in done  # other steps open their enrollments there, as before

    with django_assert_max_num_queries(30):
        listing = client.get(link)
    assert listing.status_code == 200
    shown = [row.pk for row in listing.context["cl"].result_list]
    assert shown == [sent.pk] and elsewhere.pk not in shown
    assert "Onboarding v1 · push" in listing.content.decode()


def test_buttons_follow_the_state(login, manager_alice, make_journey):
    journey = make_journey()
    client = login(manager_alice)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert 'value="submit"' in page and 'value="stop"' not in page
    answer = client.post(f"/admin/journeys/journey/{journey.pk}/transition/submit/")
    assert answer.status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == "in_review"
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert 'value="cancel_request"' in page and 'value="submit"' not in page


def test_editing_a_live_journey_in_the_admin_makes_a_draft_version(
    login, manager_alice, make_journey, publish, team, everyone, vips, welcome
):
    journey = publish(make_journey())
    client = login(manager_alice)
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
    data = _form(team, everyone, graph, name="Onboarding")
    answer = client.post(f"/admin/journeys/journey/{journey.pk}/change/", data)
    assert answer.status_code == 302
    assert [(v.number, v.status) for v in journey.versions.order_by("number")] == [(1, "live"), (2, "draft")]


def test_outsider_cannot_open_a_journey(login, outsider_dave, make_journey):
    journey = make_journey()
    client = login(outsider_dave)
    assert client.get(f"/admin/journeys/journey/{journey.pk}/change/").status_code in (403, 404)


def test_forged_transition_by_a_viewer_is_refused(login, viewer_carol, make_journey, manager_alice):
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    client = login(viewer_carol)
    answer = client.post(f"/admin/journeys/journey/{journey.pk}/transition/cancel_request/")
    assert answer.status_code == 403
    assert Journey.objects.get(pk=journey.pk).status == "in_review"


def test_enrollment_history_per_profile(login, viewer_carol, make_journey, publish, django_assert_max_num_queries):
    profile = ProfileFactory(external_id="shopper-42")
    ProfileFactory.create_batch(3)
    journey = publish(make_journey())
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    client = login(viewer_carol)
    with django_assert_max_num_queries(20):
        page = client.get("/admin/journeys/enrollment/?q=shopper-42")
    assert page.status_code == 200
    text = page.content.decode()
    assert "shopper-42" in text and text.count('class="field-step"') == 1
    enrollment = journey.enrollments.get(profile=profile)
    detail = client.get(f"/admin/journeys/enrollment/{enrollment.pk}/change/").content.decode()
    assert "<td>took “all others”</td>" in detail and "<td>done</td>" in detail and "<td>exited</td>" in detail
    assert "branch:else" not in detail  # the engine's code, in words


def test_an_enrollments_history_links_the_push_it_was_sent(login, viewer_carol, make_journey, publish):
    from django.utils import timezone

    from journeys.models import Enrollment

    profile = ProfileFactory(external_id="shopper-9")
    journey = publish(make_journey())
    Enrollment.objects.create(
        journey=journey,
        version=journey.live_version,
        profile=profile,
        step="done",
        entered_at=timezone.now(),
        history=[
            ["welcome", "2027-01-05T14:30:09+00:00", "pushed:77"],
            ["vip", "2027-01-05T14:31:00+00:00", "branch:VIP"],
        ],
    )
    enrollment = Enrollment.objects.get(profile=profile)
    detail = login(viewer_carol).get(f"/admin/journeys/enrollment/{enrollment.pk}/change/").content.decode()
    assert '<a href="/admin/delivery/dispatch/77/change/">push sent (send #77)</a>' in detail
    assert "<td>took “VIP”</td>" in detail


def test_a_split_branch_labelled_else_reads_as_its_label_in_the_history(login, viewer_carol, make_journey):
    """Only a condition's "else" is its "all others": a split may label a branch "else" itself."""
    from django.utils import timezone

    from journeys.models import Enrollment

    graph = {
        "steps": [
            {"id": "entry", "type": "wait", "seconds": 60, "next": "ab"},
            {
                "id": "ab",
                "type": "split",
                "branches": [{"label": "else", "percent": 50, "next": "done"}, {"percent": 50, "next": "done"}],
            },
            {"id": "done", "type": "exit"},
        ]
    }
    profile = ProfileFactory(external_id="shopper-7")
    journey = make_journey(graph=graph)
    Enrollment.objects.create(
        journey=journey,
        version=journey.versions.get(),
        profile=profile,
        step="done",
        entered_at=timezone.now(),
        history=[["ab", "2027-01-05T14:31:00+00:00", "branch:else"]],
    )
    enrollment = Enrollment.objects.get(profile=profile)
    detail = login(viewer_carol).get(f"/admin/journeys/enrollment/{enrollment.pk}/change/").content.decode()
    assert "<td>took “else”</td>" in detail and "all others" not in detail


def test_journey_pages_show_their_times_in_utc_named(login, viewer_carol, make_journey, publish):
    """A journey has no time zone of its own: its list, its page's approval and its enrollments say UTC."""
    import datetime as dt

    from accounts.models import ApprovalRequest
    from journeys.models import Enrollment

    profile = ProfileFactory(external_id="shopper-7")
    journey = publish(make_journey())
    at = dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC)
    Journey.objects.filter(pk=journey.pk).update(updated_at=at)
    ApprovalRequest.objects.filter(subject_id=str(journey.pk)).update(decided_at=at)
    enrollment = Enrollment.objects.create(
        journey=journey,
        version=journey.live_version,
        profile=profile,
        step="start",
        due_at=at,
        entered_at=at,
        history=[["start", "2027-01-05T14:30:09+00:00", "waiting"]],
    )
    client = login(viewer_carol)
    listing = client.get("/admin/journeys/journey/").content.decode()
    assert '<td class="field-updated">2027-01-05 14:30 (UTC)</td>' in listing
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "by approver_bob on 2027-01-05 14:30 (UTC)" in page
    enrollments = client.get("/admin/journeys/enrollment/?q=shopper-7").content.decode()
    assert '<td class="field-due">2027-01-05 14:30 (UTC)</td>' in enrollments
    assert '<td class="field-entered">2027-01-05 14:30 (UTC)</td>' in enrollments
    detail = client.get(f"/admin/journeys/enrollment/{enrollment.pk}/change/").content.decode()
    field = detail[detail.index("<label>Due at:</label>") :]
    assert "2027-01-05 14:30 (UTC)" in field[: field.index("</div>")]
    assert "<tr><td>start</td><td>2027-01-05 14:30 (UTC)</td><td>waiting</td></tr>" in detail  # its history too


def test_the_version_history_says_when_each_version_was_live_in_utc_named(login, viewer_carol, make_journey, publish):
    """The versions table named each version's status and not when: a marketer reading "Retired"
    could not tell which version sent last week's pushes. Each says when it went live and, once
    replaced, until when, in UTC (a journey's zone), named; a version never live says so."""
    import datetime as dt

    from journeys.models import JourneyVersion

    journey = publish(make_journey())
    first = journey.live_version
    second = JourneyVersion.objects.create(
        journey=journey, number=2, graph=first.graph, entry_kind=first.entry_kind, entry_segment=first.entry_segment
    )
    live, replaced = dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC), dt.datetime(2027, 2, 1, 9, 5, tzinfo=dt.UTC)
    JourneyVersion.objects.filter(pk=first.pk).update(status="retired", live_at=live, retired_at=replaced)
    JourneyVersion.objects.filter(pk=second.pk).update(status="live", live_at=replaced)
    page = login(viewer_carol).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    table = page[page.index('<table class="journey-versions">') :]
    table = table[: table.index("</table>")]
    assert "<th>live</th>" in table
    assert "<td>from 2027-02-01 09:05 (UTC)</td>" in table
    assert "<td>2027-01-05 14:30 (UTC) to 2027-02-01 09:05 (UTC)</td>" in table

    # A version still to be decided is not live yet, not "never" live; one retired unapproved never was.
    draft = make_journey(name="Winback")
    page = login(viewer_carol).get(f"/admin/journeys/journey/{draft.pk}/change/").content.decode()
    table = page[page.index('<table class="journey-versions">') :]
    assert "<td>not yet</td>" in table[: table.index("</table>")] and "<td>never</td>" not in table
    JourneyVersion.objects.filter(journey=draft).update(status="retired")
    page = login(viewer_carol).get(f"/admin/journeys/journey/{draft.pk}/change/").content.decode()
    table = page[page.index('<table class="journey-versions">') :]
    assert "<td>never</td>" in table[: table.index("</table>")]


def test_a_journey_reading_its_segment_again_says_when_next_in_utc_named(login, viewer_carol, make_journey, publish):
    """A journey reading its segment every 24 hours said so, and not when it reads it next, the one
    time a marketer waits for (its next entrants); it says it on its page, in UTC (a journey's
    zone), named (and that a paused journey skips it), and nothing once no read is due."""
    import datetime as dt

    journey = publish(make_journey(entry_every_hours=24))
    at = dt.datetime(2027, 1, 6, 14, 30, tzinfo=dt.UTC)
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=at)
    client = login(viewer_carol)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    row = page[page.index('field-next_entry"') :]
    assert "Next segment read:" in row[:300] and "2027-01-06 14:30 (UTC)" in row[: row.index("</div>")]

    Journey.objects.filter(pk=journey.pk).update(status="paused", paused_at=at - dt.timedelta(hours=2))
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    row = page[page.index('field-next_entry"') :]
    assert "2027-01-06 14:30 (UTC), unless it is still paused then" in row[: row.index("</div>")]

    Journey.objects.filter(pk=journey.pk).update(status="live", paused_at=None, next_entry_at=None)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "field-next_entry" not in page


# Each transition button: the state it is pressed in, and the state it leads to.
JOURNEY_BUTTONS = {
    "submit": ("draft", "in_review"),
    "cancel_request": ("in_review", "draft"),
    "stop": ("live", "stopped"),
    "archive": ("stopped", "archived"),
}


@pytest.mark.presses(*(f"journeys.journey:transition/{button}" for button in JOURNEY_BUTTONS))
@pytest.mark.parametrize("button", list(JOURNEY_BUTTONS))
def test_each_transition_button_works_for_a_manager_and_is_refused_to_others(
    login, manager_alice, viewer_carol, outsider_dave, make_journey, publish, button
):
    start, end = JOURNEY_BUTTONS[button]
    journey = make_journey()
    if start == "in_review":
        journey_submit(journey_id=journey.pk, by=manager_alice)
    elif start in ("live", "stopped"):
        publish(journey)
        Journey.objects.filter(pk=journey.pk).update(status=start)
    url = f"/admin/journeys/journey/{journey.pk}/transition/{button}/"
    for user, refusal in ((viewer_carol, 403), (outsider_dave, 404)):
        for asked in ({}, {"confirmed": "yes"}):  # refused, never asked again
            assert login(user).post(url, asked).status_code == refusal, user
        assert Journey.objects.get(pk=journey.pk).status == start
    answer = login(manager_alice).post(url, {"confirmed": "yes"})  # Stop's page asks again first
    assert answer.status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == end


@pytest.mark.parametrize("waiting", ["in review", "a new version"])
def test_the_change_page_reads_the_journeys_approval_request_once(login, manager_alice, make_journey, publish, waiting):
    """Its Approval line, the warning of a request no one may decide and the buttons (Cancel request,
    to the requester) all read the request waiting: the page reads it once."""
    from journeys.services.lifecycle import journey_version_edit

    journey = make_journey()
    if waiting == "a new version":
        journey = publish(journey)
        journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    client = login(manager_alice)
    page, reads = get_reading_approval_requests(client, f"/admin/journeys/journey/{journey.pk}/change/")
    assert page.status_code == 200 and 'value="cancel_request"' in page.content.decode()
    assert len(reads) == 1, reads


@pytest.mark.presses("journeys.journey:transition/cancel_request")
def test_cancel_request_is_offered_to_the_requester_and_an_administrator_only(
    login, manager_alice, manager_mallory, approver_bob, admin_erin, make_journey
):
    """An Approver (or another Manager of the app) who did not ask was offered Cancel request, which
    the service refuses them: an approver sends it back with Request changes instead."""
    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    url = f"/admin/journeys/journey/{journey.pk}/"
    for user in (approver_bob, manager_mallory):
        client = login(user)
        assert 'value="cancel_request"' not in client.get(f"{url}change/").content.decode(), user
        assert client.post(f"{url}transition/cancel_request/").status_code == 403
        assert Journey.objects.get(pk=journey.pk).status == "in_review"
    for user in (manager_alice, admin_erin):
        assert 'value="cancel_request"' in login(user).get(f"{url}change/").content.decode(), user
    assert login(admin_erin).post(f"{url}transition/cancel_request/").status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == "draft"


@pytest.mark.parametrize(
    "raw_graph",
    ['{"steps": ' + "[" * 20000 + "]" * 20000 + "}", '{"steps": [{"id": "a\\u0000", "type": "exit"}]}', '{"x": 1e400}'],
    ids=["depth-20000", "nul", "1e400"],
)
def test_a_graph_that_cannot_be_stored_is_refused_on_the_form(login, manager_alice, team, everyone, raw_graph):
    client = login(manager_alice)
    answer = client.post("/admin/journeys/journey/add/", {**_form(team, everyone, {}), "graph": raw_graph})
    assert answer.status_code == 200
    assert answer.context["adminform"].form.errors["graph"]
    assert not Journey.objects.filter(name="Welcome series").exists()


def _colleague(manager, *segments):
    from accounts.services import access_grant

    for segment in segments:
        access_grant(obj=segment, to=manager, by=None)


def test_a_form_left_open_while_a_colleague_submitted_is_refused_with_the_reason(
    login, manager_alice, manager_mallory, viewer_carol, make_journey, team, everyone, vips, welcome
):
    journey = make_journey()
    _colleague(manager_mallory, everyone, vips)
    client = login(manager_alice)
    assert client.get(f"/admin/journeys/journey/{journey.pk}/change/").status_code == 200
    journey_submit(journey_id=journey.pk, by=manager_mallory)  # while alice's form is open
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
    answer = client.post(f"/admin/journeys/journey/{journey.pk}/change/", _form(team, everyone, graph, name="Renamed"))
    assert answer.status_code == 302 and answer["Location"] == f"/admin/journeys/journey/{journey.pk}/change/"
    page = client.get(answer["Location"]).content.decode()
    assert "is in review: it cannot be changed. Your changes were not saved." in page
    journey.refresh_from_db()
    assert journey.name == "Onboarding" and journey.versions.get().graph["steps"][0]["seconds"] == 0
    # A role that never could change it is still refused outright.
    viewer = login(viewer_carol)
    answer = viewer.post(f"/admin/journeys/journey/{journey.pk}/change/", _form(team, everyone, graph, name="Renamed"))
    assert answer.status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_save_refused_half_way_undoes_what_it_wrote(
    login, manager_alice, manager_mallory, make_journey, team, everyone, vips, welcome
):
    """The journey is submitted while the admin's save waits for its lock: the rename the save
    wrote first is undone with the refused edit, and the manager reads why."""
    import threading

    from django.db import transaction

    from tests.locks import concurrently, wait_for_a_blocked_writer

    journey = make_journey()
    _colleague(manager_mallory, everyone, vips)
    client = login(manager_alice)
    submitted = threading.Event()

    def submit_while_the_save_waits():
        with transaction.atomic():
            Journey.objects.select_for_update().get(pk=journey.pk)
            journey_submit(journey_id=journey.pk, by=manager_mallory)
            submitted.set()  # not committed: the save reads a draft, then waits for this lock
            assert wait_for_a_blocked_writer()

    answers = []

    def save():
        assert submitted.wait(10)
        graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
        answers.append(
            client.post(f"/admin/journeys/journey/{journey.pk}/change/", _form(team, everyone, graph, name="Renamed"))
        )

    assert concurrently(submit_while_the_save_waits, save) == []
    assert answers[0].status_code == 302
    journey.refresh_from_db()
    assert journey.status == "in_review" and journey.name == "Onboarding"
    assert journey.versions.get().graph["steps"][0]["seconds"] == 0
    page = client.get(answers[0]["Location"]).content.decode()
    assert "is in review: it cannot be edited" in page and "Your changes were not saved." in page


def test_a_push_step_counts_sent_as_handed_to_a_provider_and_accounts_for_every_row(login, manager_alice, make_journey):
    """Seven rows targeted: three accepted and one failed were sent; three were skipped, and none
    counts as sent (the step once showed the rows targeted as sent)."""
    from delivery.models import Delivery
    from delivery.services.rollups import rollup_rebuild
    from journeys.selectors import version_push_outcomes
    from tests.delivery.reporting import sent_dispatch

    journey = make_journey()
    version = journey.versions.get()
    context = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}}
    dispatch = sent_dispatch(journey.app, kind="journey", source_id=version.pk, context=context)
    assert version_push_outcomes(version)["push"] == {
        "targeted": 7,
        "sent": 4,
        "accepted": 3,
        "failed": 1,
        "unknown": 0,
        "skipped": {"frequency_cap": 1, "not_opted_in": 1, "no_device": 1},
    }
    client = login(manager_alice)
    text = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "sent 4 · accepted 3" in text and "failed 1 · skipped 3" in text and "to send" not in text

    # A row still queued is neither sent nor skipped: the step says it is still to send.
    Delivery.objects.filter(dispatch=dispatch, status="accepted").update(status="queued", finished_at=None)
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    text = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "sent 1 · accepted 0" in text and "to send 3" in text


def test_a_push_step_does_not_count_as_sent_the_rows_failed_before_a_provider_had_them(
    login, manager_alice, make_journey
):
    """To the seven rows of the send (four sent: three accepted, one refused by the provider) two
    failed before any request went: one whose message could not be personalised, one whose phone
    was deleted. They are failed, not sent, and not still to send."""
    from delivery.models import Delivery
    from delivery.services.rollups import rollup_rebuild
    from journeys.selectors import version_push_outcomes
    from tests.delivery.reporting import sent_dispatch
    from tests.factories import DeviceFactory

    journey = make_journey()
    version = journey.versions.get()
    context = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}}
    dispatch = sent_dispatch(journey.app, kind="journey", source_id=version.pk, context=context)
    for reason in ("render_error: unknown variable 'first_name'", "device_deleted"):
        device = DeviceFactory(app=journey.app, platform="ios")
        Delivery.objects.create(
            dispatch=dispatch, device=device, profile=device.profile, status="failed", reason=reason
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    outcomes = version_push_outcomes(version)["push"]
    assert (outcomes["targeted"], outcomes["sent"], outcomes["accepted"], outcomes["failed"]) == (9, 4, 3, 3)
    text = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "sent 4 · accepted 3" in text and "failed 3 · skipped 3" in text and "to send" not in text


def test_a_push_step_whose_send_was_refused_says_how_many_profiles_it_failed(
    login, manager_alice, make_journey, publish, welcome
):
    """The gate refused the send (what runs is not what was approved): the profiles end there,
    failed, and the step's box says so (it read "entered 3 · sent 0 · accepted 0" and nothing else)."""
    from journeys.models import JourneyVersion

    ProfileFactory.create_batch(3)
    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    JourneyVersion.objects.filter(pk=journey.live_version_id).update(exit_event="forged")
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    text = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "entered 3 · sent 0 · accepted 0" in text and "refused 3 (see its enrollments)" in text
    box = re.search(r'data-step="push".*?</g>', text, re.S).group(0)
    assert "/admin/journeys/enrollment/?" in box and "step=push" in box  # where they ended, failed, and why


def test_a_push_step_says_how_many_profiles_left_it_when_the_journey_stopped(
    login, manager_alice, make_journey, publish, welcome
):
    """A journey that begins with its push, stopped before the engine ran its entries: the push
    step's box read "entered 3 · sent 0 · accepted 0" and nothing of the three who left there."""
    from journeys.services.lifecycle import journey_stop

    ProfileFactory.create_batch(3)
    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    journey_enter_segment(journey_id=journey.pk)
    journey_stop(journey_id=journey.pk, by=manager_alice)
    text = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    box = re.search(r'data-step="push".*?</g>', text, re.S).group(0)
    assert "entered 3 · sent 0 · accepted 0" in box and "journey stopped 3" in box


@pytest.mark.embedded  # the length of a batch's profile list is SQLite's own function there
def test_a_push_step_whose_batch_was_stopped_before_its_rows_were_made_says_why(
    login, manager_alice, make_journey, publish, welcome
):
    """The engine ran the push (the three profiles passed on) and the journey was stopped before
    its batch made any row: the box read "entered 3 · sent 0 · accepted 0" and said nothing of why."""
    from delivery.models import Delivery, Dispatch
    from delivery.services.dispatches import dispatch_stop
    from journeys.services.lifecycle import journey_archive, journey_stop

    ProfileFactory.create_batch(3)
    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()  # its batch is left preparing: its rows are made once this commits
    journey_stop(journey_id=journey.pk, by=manager_alice)
    batch = Dispatch.objects.get(source_id=journey.live_version_id)
    assert batch.status == "stopped" and not Delivery.objects.filter(dispatch=batch).exists()
    text = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    box = re.search(r'data-step="push".*?</g>', text, re.S).group(0)
    assert "entered 3 · sent 0 · accepted 0" in box and "not sent 3 (journey stopped before its batch sent)" in box
    # Archived later, it still says why: the box said its batch was stopped by hand, from the
    # archive's time on (the journey's last change of status, read as its stop's).
    journey_archive(journey_id=journey.pk, by=manager_alice)
    text = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    box = re.search(r'data-step="push".*?</g>', text, re.S).group(0)
    assert "not sent 3 (journey stopped before its batch sent)" in box

    # A batch stopped by hand from its own page, the journey still live, says so.
    other = publish(make_journey(name="Second", graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    journey_enter_segment(journey_id=other.pk)
    journeys_run_due()
    dispatch_stop(dispatch_id=Dispatch.objects.get(source_id=other.live_version_id).pk, by=manager_alice)
    text = login(manager_alice).get(f"/admin/journeys/journey/{other.pk}/change/").content.decode()
    box = re.search(r'data-step="push".*?</g>', text, re.S).group(0)
    assert "not sent 3 (batch stopped before it sent)" in box


def test_a_profile_deleted_from_its_page_while_waiting_is_counted_where_it_left(
    login, manager_alice, make_journey, publish
):
    """The wait's box read "entered 2 · waiting 1" with nothing for the other once it was deleted."""
    ann, ben = ProfileFactory.create_batch(2)
    graph = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journey = publish(make_journey(graph=graph))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    client = login(manager_alice)
    assert client.post(f"/admin/audiences/profile/{ben.pk}/delete/", {"post": "yes"}).status_code == 302
    text = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    box = re.search(r'data-step="pause".*?</g>', text, re.S).group(0)
    assert "entered 2 · waiting 1" in box and "profile deleted 1" in box


def test_a_stopped_journeys_versions_say_no_one_finishes_on_them(
    login, manager_alice, make_journey, publish, vips, welcome
):
    from journeys.services.lifecycle import journey_stop, journey_version_edit

    journey = publish(make_journey())
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    journey = publish(journey)
    client = login(manager_alice)
    table = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "<td>v1</td><td>Retired (profiles inside finish on it)</td>" in table
    journey_stop(journey_id=journey.pk, by=manager_alice)
    table = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "<td>v2</td><td>Stopped (was live)</td>" in table
    assert "<td>v1</td><td>Retired</td>" in table  # everyone inside exited when it stopped


def test_a_colleague_changes_a_journey_in_the_admin_keeping_segments_they_were_not_granted(
    login, manager_mallory, make_journey, team, everyone, vips, welcome
):
    journey = make_journey()
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=60)
    answer = login(manager_mallory).post(
        f"/admin/journeys/journey/{journey.pk}/change/",
        _form(team, everyone, graph, name="Onboarding", exit_event="buy"),
    )
    assert answer.status_code == 302
    version = journey.versions.get()
    assert (version.exit_event, version.graph) == ("buy", graph)


def test_the_list_says_a_stopped_journeys_last_version_was_live(login, manager_alice, make_journey, publish):
    from journeys.services.lifecycle import journey_stop

    journey = publish(make_journey())
    client = login(manager_alice)
    assert '<td class="field-version_label">v1 live</td>' in client.get("/admin/journeys/journey/").content.decode()
    journey_stop(journey_id=journey.pk, by=manager_alice)
    text = client.get("/admin/journeys/journey/?status=stopped").content.decode()
    assert '<td class="field-version_label">v1 (was live)</td>' in text


def test_the_journeys_list_costs_the_same_queries_for_one_journey_or_twenty(login, manager_alice, make_journey):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = login(manager_alice)
    make_journey(name="First")
    client.get("/admin/journeys/journey/")
    with CaptureQueriesContext(connection) as one:
        client.get("/admin/journeys/journey/")
    for number in range(19):
        make_journey(name=f"Journey {number}")
    with CaptureQueriesContext(connection) as twenty:
        page = client.get("/admin/journeys/journey/")
    assert page.content.decode().count("v1 draft") == 20
    assert len(twenty) == len(one)  # each row's version once read its draft on its own


def test_a_segment_left_chosen_for_an_event_entry_is_neither_saved_nor_a_change(
    login, manager_alice, make_journey, publish, team, everyone
):
    graph = {"steps": [{"id": "end", "type": "exit"}]}
    journey = publish(make_journey(graph=graph, entry_kind="event", entry_event="signed_up", entry_segment=None))
    data = _form(team, everyone, graph, name="Onboarding", entry_kind="event", entry_event="signed_up")
    assert data["entry_segment"] == everyone.pk
    assert login(manager_alice).post(f"/admin/journeys/journey/{journey.pk}/change/", data).status_code == 302
    assert [(v.number, v.status, v.entry_segment) for v in journey.versions.all()] == [(1, "live", None)]


def test_the_review_of_a_journey_says_when_it_was_asked_in_utc_named(login, manager_alice, approver_bob, make_journey):
    """A journey has no time zone of its own: its review's times are in UTC, said so."""
    import datetime as dt

    from accounts.models import ApprovalRequest

    request = journey_submit(journey_id=make_journey().pk, by=manager_alice)
    ApprovalRequest.objects.filter(pk=request.pk).update(requested_at=dt.datetime(2027, 1, 5, 14, 30, tzinfo=dt.UTC))
    page = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "Asked by <strong>manager_alice</strong> on 2027-01-05 14:30 (UTC) " in page


def test_the_review_of_a_journey_says_who_enters_as_its_page_does(
    login, manager_alice, approver_bob, make_journey, team
):
    """The approver reads the entry segment's size, counted now, in the words of the journey page."""
    from tests.factories import DeviceFactory

    for n in range(5):
        profile = ProfileFactory(external_id=f"who-{n}")
        if n < 4:
            DeviceFactory(profile=profile, app=team, platform="ios" if n % 2 else "android", push_enabled=n != 3)
    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    client = login(approver_bob)
    said = "Everyone: 5 profiles → 4 reachable (iOS 2 / Android 2) → 3 opted in"
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert f'<span id="entry-audience">{said}</span>' in page
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert f"<tr><th>Who enters</th><td>{said}</td></tr>" in review


def test_the_review_of_an_event_entry_says_profiles_enter_when_it_arrives(
    login, manager_alice, approver_bob, make_journey
):
    journey = make_journey(entry_kind="event", entry_event="signed_up", entry_segment=None)
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "<tr><th>Who enters</th><td>Profiles enter when the event arrives.</td></tr>" in review


def test_an_approval_applies_only_to_the_version_the_approver_read(
    login, manager_alice, approver_bob, make_journey, vips, welcome, monkeypatch
):
    """The requester cancels, adds a wait and submits again between the approver's read and their
    approval: the approval of the request read changes nothing, and the changed version waits."""
    from accounts.admin import approvals
    from accounts.models import ApprovalRequest
    from journeys.services.lifecycle import journey_cancel_request, journey_version_edit

    journey = make_journey()
    read = journey_submit(journey_id=journey.pk, by=manager_alice)
    client = login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{read.pk}/review/"
    assert "Approve and activate" in client.get(url).content.decode()

    standing = approvals.approver_standing

    def resubmitted_meanwhile(user, approval):
        answer = standing(user, approval)
        journey_cancel_request(journey_id=journey.pk, by=manager_alice)
        graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=86400)
        journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph)
        journey_submit(journey_id=journey.pk, by=manager_alice)
        return answer

    monkeypatch.setattr(approvals, "approver_standing", resubmitted_meanwhile)
    answer = client.post(url, {"_approve": "1", "comment": ""}, follow=True)

    assert "The request you read was closed since you read it (cancelled)" in answer.content.decode()
    journey.refresh_from_db()
    assert (journey.status, journey.live_version) == ("in_review", None)
    assert journey.versions.get().status == "in_review"
    waiting = ApprovalRequest.objects.exclude(pk=read.pk).get()
    assert (waiting.status, waiting.decided_by) == (ApprovalRequest.Status.PENDING, None)


@pytest.mark.presses("journeys.journey:transition/discard_draft")
def test_discard_draft_is_offered_to_whoever_may_change_the_journey_and_refused_to_others(
    login, manager_alice, viewer_carol, outsider_dave, make_journey, publish
):
    from journeys.services.lifecycle import journey_version_edit

    journey = publish(make_journey())
    page_url = f"/admin/journeys/journey/{journey.pk}/change/"
    assert 'value="discard_draft"' not in login(manager_alice).get(page_url).content.decode()  # no draft yet
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    assert 'value="discard_draft"' in login(manager_alice).get(page_url).content.decode()
    assert 'value="discard_draft"' not in login(viewer_carol).get(page_url).content.decode()
    url = f"/admin/journeys/journey/{journey.pk}/transition/discard_draft/"
    for user, refusal in ((viewer_carol, 403), (outsider_dave, 404)):
        assert login(user).post(url).status_code == refusal, user
        assert [(v.number, v.status) for v in journey.versions.order_by("number")] == [(1, "live"), (2, "draft")]
    answer = login(manager_alice).post(url, follow=True)
    assert "Draft discarded: &#x27;Onboarding&#x27; is back to version 1" in answer.content.decode()
    journey = Journey.objects.get(pk=journey.pk)
    assert journey.status == "live" and [v.number for v in journey.versions.all()] == [1]
    assert 'value="discard_draft"' not in answer.content.decode()
    # Pressed again (a page left open): nothing to discard, said on the page.
    again = login(manager_alice).post(url, follow=True).content.decode()
    assert "It has no draft version to discard." in again


def test_discard_draft_is_not_offered_on_a_journey_that_never_went_live(login, manager_alice, make_journey):
    journey = make_journey()
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert 'value="submit"' in page and 'value="discard_draft"' not in page


@pytest.mark.presses("accounts.approvalrequest:review")
@pytest.mark.parametrize("decision", ["_approve", "_request_changes"])
def test_a_journeys_request_is_decided_on_its_review_page_by_an_approver_and_by_nobody_else(
    login, manager_alice, manager_mallory, approver_bob, viewer_carol, outsider_dave, make_journey, decision
):
    from accounts.models import ApprovalRequest
    from tests.pages import review_post_confirmed

    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    form = {decision: "1", "comment": "Wait a day first"}
    # The requester sees her request and may not decide it; the team's Viewer and another Manager,
    # not asked to decide it, and an outsider do not know it.
    for user, refusal in ((manager_alice, 403), (viewer_carol, 404), (manager_mallory, 404), (outsider_dave, 404)):
        assert login(user).post(url, form).status_code == refusal, user
        journey.refresh_from_db()
        assert (journey.status, journey.live_version) == ("in_review", None), user
        assert ApprovalRequest.objects.get(pk=request.pk).status == ApprovalRequest.Status.PENDING, user

    # Its segment enters on approval: approved through the confirmation's Yes.
    answer = review_post_confirmed(login(approver_bob), url, form)

    assert answer.status_code == 302
    journey.refresh_from_db()
    decided = ApprovalRequest.objects.get(pk=request.pk)
    assert (decided.decided_by, decided.comment) == (approver_bob, "Wait a day first")
    if decision == "_approve":
        assert decided.status == ApprovalRequest.Status.APPROVED
        assert journey.status == "live" and journey.live_version.status == "live"
    else:
        assert decided.status == ApprovalRequest.Status.CHANGES_REQUESTED
        assert journey.status == "draft" and journey.live_version is None
        assert journey.versions.get().status == "draft"


def test_a_journeys_page_and_review_say_which_delivery_rules_may_hold_its_pushes_back(
    login, manager_alice, approver_bob, make_journey, team
):
    """A journey's pushes are marketing pushes: the app's frequency cap and quiet hours apply to them,
    named with their values in the words of a campaign's page, on the journey's page and its review."""
    import datetime as dt

    from delivery.models import DeliveryRules

    DeliveryRules.objects.create(
        app=team, frequency_cap=1, frequency_window_hours=24, quiet_start=dt.time(22), quiet_end=dt.time(8)
    )
    rules = (
        "the app&#x27;s frequency cap (at most 1 push per profile in 24 h) and quiet hours (22:00–08:00 in each "
        "profile&#x27;s time zone, UTC without one; pushes held until they end) may hold some back"
    )
    client = login(approver_bob)
    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    said = f"Everyone: 0 profiles → 0 reachable (iOS 0 / Android 0) → 0 opted in; {rules}"
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert f'<span id="entry-audience">{said}</span>' in page
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert f"<tr><th>Who enters</th><td>{said}</td></tr>" in review

    event = make_journey(name="Signed up", entry_kind="event", entry_event="signed_up", entry_segment=None)
    request = journey_submit(journey_id=event.pk, by=manager_alice)
    said = f"Profiles enter when the event arrives; {rules}."
    page = client.get(f"/admin/journeys/journey/{event.pk}/change/").content.decode()
    assert f'<div class="readonly">{said}</div>' in page
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert f"<tr><th>Who enters</th><td>{said}</td></tr>" in review


def test_an_event_name_longer_than_any_event_can_have_is_refused_on_the_form(
    login, manager_alice, team, everyone, vips, welcome, make_journey
):
    """Events' names are at most 100 characters: a longer entry or exit event was a 500 (the column
    refused it), and a condition on one never held."""
    client = login(manager_alice)
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    name = "e" * 101
    for field in ("entry_event", "exit_event"):
        data = _form(team, everyone, graph, entry_kind="event", **{field: name})
        if field == "exit_event":
            data["entry_event"] = "signed_up"
        answer = client.post("/admin/journeys/journey/add/", data)
        assert answer.status_code == 200, field
        assert "Ensure this value has at most 100 characters (it has 101)." in answer.content.decode(), field
        assert not Journey.objects.exists()
    journey = make_journey()
    answer = client.post(f"/admin/journeys/journey/{journey.pk}/change/", _form(team, everyone, graph, exit_event=name))
    assert "Ensure this value has at most 100 characters (it has 101)." in answer.content.decode()
    assert journey.versions.get().exit_event == ""

    graph["steps"][1]["branches"] = [{"label": "Bought", "event": name, "next": "push"}]
    answer = client.post("/admin/journeys/journey/add/", _form(team, everyone, graph))
    assert answer.status_code == 200
    assert (
        "Step &#x27;check&#x27;: branch &#x27;Bought&#x27;: an event&#x27;s name is at most 100 characters "
        "(this one has 101): no event could match it."
    ) in answer.content.decode()
    assert Journey.objects.count() == 1


@pytest.mark.parametrize("field", ["entry_event", "exit_event"])
def test_the_services_refuse_an_event_name_longer_than_any_event_can_have(manager_alice, make_journey, field):
    from django.core.exceptions import ValidationError

    from audiences.models import Event
    from journeys.graph import EVENT_NAME_MAX
    from journeys.services.lifecycle import journey_version_edit

    assert Event._meta.get_field("name").max_length == EVENT_NAME_MAX
    journey = make_journey()
    changes = {field: "e" * 101, **({"entry_kind": "event"} if field == "entry_event" else {})}
    with pytest.raises(ValidationError) as refused:
        journey_version_edit(journey_id=journey.pk, by=manager_alice, **changes)
    assert refused.value.message_dict == {field: ["An event's name is at most 100 characters (this one has 101)."]}
    assert getattr(journey.versions.get(), field) == ""


def test_a_draft_journey_is_deleted_from_its_page_by_whoever_may_change_it_and_by_nobody_else(
    login, manager_alice, viewer_carol, outsider_dave, make_journey, publish
):
    from accounts.models import AuditEvent

    draft = make_journey()
    live = publish(make_journey(name="Live one"))
    assert "deletelink" not in login(viewer_carol).get(f"/admin/journeys/journey/{draft.pk}/change/").content.decode()
    for user, refusal in ((viewer_carol, 403), (outsider_dave, 404), (manager_alice, 403)):
        client = login(user)
        if user != manager_alice:
            assert client.post(f"/admin/journeys/journey/{draft.pk}/delete/", {"post": "yes"}).status_code == refusal
        # A journey that went live is stopped and archived, never deleted: not even by its owner.
        assert client.post(f"/admin/journeys/journey/{live.pk}/delete/", {"post": "yes"}).status_code == refusal
        assert set(Journey.objects.values_list("name", flat=True)) == {"Onboarding", "Live one"}, user
    client = login(manager_alice)
    assert "deletelink" in client.get(f"/admin/journeys/journey/{draft.pk}/change/").content.decode()
    assert "deletelink" not in client.get(f"/admin/journeys/journey/{live.pk}/change/").content.decode()
    answer = client.post(f"/admin/journeys/journey/{draft.pk}/delete/", {"post": "yes"})
    assert answer.status_code == 302
    assert list(Journey.objects.values_list("name", flat=True)) == ["Live one"]
    assert AuditEvent.objects.filter(action="journey_deleted", actor=manager_alice).count() == 1


def _builder_meta(page: str) -> dict:
    import html

    return json.loads(html.unescape(re.search(r'class="step-editor"[^>]*data-meta="([^"]*)"', page).group(1)))


def test_the_builder_names_no_app_of_a_content_its_reader_was_granted_without_the_app(
    login, make_journey, welcome, shop
):
    """Granted the journey and its push step's content, not their app (Shop): the builder listed the
    content as "Welcome (Shop)", naming the app the journey's page says by number; it says it by
    number there too ("Welcome (app #3)")."""
    from accounts.services import access_grant
    from tests.factories import UserFactory

    journey = make_journey()
    trent = UserFactory(username="manager_trent", role="Manager")
    access_grant(obj=journey, to=trent, by=None)
    access_grant(obj=welcome, to=trent, by=None)
    page = login(trent).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert _builder_meta(page)["contents"] == [{"id": welcome.pk, "name": f"Welcome (app #{shop.pk})"}]
    assert "Shop" not in page


def test_a_colleague_reads_in_the_builder_the_segments_and_contents_the_journey_names_that_they_were_not_granted(
    login, manager_mallory, make_journey, vips, welcome
):
    """Mallory was not granted the VIPs segment that Alice's condition names: the builder listed only
    her own segments, so the branch's list showed another segment's name (the first) as chosen. It
    lists it as the rule builder does, by number, not by name: she may not see it."""
    journey = make_journey()
    page = login(manager_mallory).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    segments = _builder_meta(page)["segments"]
    assert {"id": vips.pk, "name": f"a segment you have no access to (#{vips.pk})"} in segments
    # Granted the journey alone, not its app: its push step's content is listed by number too.
    from accounts.services import access_grant
    from tests.factories import UserFactory

    trent = UserFactory(username="manager_trent", role="Manager")
    access_grant(obj=journey, to=trent, by=None)
    meta = _builder_meta(login(trent).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode())
    assert meta["contents"] == [{"id": welcome.pk, "name": f"a push content you have no access to (#{welcome.pk})"}]
    assert {s["id"]: s["name"] for s in meta["segments"]} == {
        pk: f"a segment you have no access to (#{pk})" for pk in (journey.versions.get().entry_segment_id, vips.pk)
    }
    # A rule's membership of it, drawn by the rule builder, the same.
    from journeys.services.lifecycle import journey_version_edit

    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    graph["steps"][1]["branches"] = [{"label": "VIP", "rules": {"all": [{"segment": vips.pk}]}, "next": "push"}]
    journey_version_edit(journey_id=journey.pk, by=journey.owner, graph=graph)
    page = login(manager_mallory).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    hidden = {"id": vips.pk, "name": f"a segment you have no access to (#{vips.pk})", "kind": ""}
    assert hidden in _builder_meta(page)["rules"]["segments"]  # the rule builder names no segment out of her access
    # The entry's list offers it not: a segment chosen there anew must be one's own.
    entry = page.split('name="entry_segment"', 1)[1].split("</select>", 1)[0]
    assert f'value="{vips.pk}"' not in entry


def test_the_report_says_whose_sends_it_counts_and_what_earlier_versions_sent(
    login, viewer_carol, manager_alice, sim_journey, sim_team, vips, publish, django_capture_on_commit_callbacks
):
    """Once a new version went live, the report counted only its sends and said nothing of it: a
    journey that had sent to everyone read "Nothing accepted yet"."""
    from journeys.services.lifecycle import journey_version_edit
    from tests.factories import DeviceFactory

    for profile in ProfileFactory.create_batch(3):
        DeviceFactory(profile=profile, app=sim_team, platform="android")
        SegmentMemberFactory(segment=vips, profile=profile)
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(sim_journey())
    client = login(viewer_carol)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert '<p id="report-version">The figures below are version 1 (live).</p>' in page

    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(journey)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert (
        '<p id="report-version">The figures below are version 2 (live). Not counted in them, the sends of '
        "version 1: 3 targeted, 3 accepted.</p>"
    ) in page
    assert "Nothing accepted yet." in page  # version 2 sent nothing: its figures say so
    assert page.count("<p>Nothing targeted yet.</p>") == 2  # its funnel and platforms, not drawn empty
    assert 'id="pd-chart-funnel"' not in page and 'id="pd-chart-platforms"' not in page


def test_the_review_of_a_new_version_says_what_changed_since_the_live_one(
    login, manager_alice, approver_bob, make_journey, publish, vips, welcome
):
    """The approver of version 2 read it whole, with nothing to tell what it changes in what is
    sent now: a longer wait, an exit event, a push's new title."""
    from delivery.services.contents import pushcontent_save
    from journeys.services.lifecycle import journey_version_edit

    journey = publish(make_journey())
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph, exit_event="purchase")
    welcome.title = "Hi"
    pushcontent_save(content=welcome, by=manager_alice)  # the live version sends what was approved
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    table = review[review.index('<table id="approval-diff"') :]
    table = table[: table.index("</table>")]
    assert "What changed since the approved version — 3 changes" in table
    assert "<th>Version 1 (live, sending now)</th><th>This revision</th>" in table
    rows = re.findall(r'<tr class="(\w+)"><th scope="row">(.*?)</th><td>(.*?)</td><td>(.*?)</td></tr>', table)
    assert rows[:3] == [
        ("changed", "Exit criteria", "none", "the event &#x27;purchase&#x27;"),
        ("changed", "Step &#x27;start&#x27;", "wait 0 s → check", "wait 1 hour → check"),
        ("changed", "Push &#x27;push&#x27; (en)", "Hello · Welcome aboard", "Hi · Welcome aboard"),
    ]
    assert (
        "unchanged",
        "Step &#x27;check&#x27;",
        "VIP: in segment “VIPs” → push; all others → done",
        "(unchanged)",
    ) in rows
    assert ("unchanged", "Step &#x27;push&#x27;", "push &#x27;Welcome&#x27; → done", "(unchanged)") in rows


def test_a_first_version_sent_back_and_submitted_again_is_reviewed_as_what_changed_since(
    login, manager_alice, approver_bob, make_journey, vips, welcome
):
    """The approver who asked for changes on a first version read the next submission whole ("First
    review"), with nothing to tell what was changed since: the review names their request, with its
    comment, and compares with what that request was submitted as, the changed rows first."""
    from journeys.services.lifecycle import journey_request_changes, journey_version_edit

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_request_changes(journey_id=journey.pk, by=approver_bob, comment="Wait an hour first")
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph)
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    table = review[review.index('<table id="approval-diff"') :]
    table = table[: table.index("</table>")]
    caption = re.search(r"<caption>(.*?)</caption>", table).group(1)
    assert caption.startswith("Resubmitted after your request for changes (“Wait an hour first”, by approver_bob, ")
    assert caption.endswith(" — 1 change") and "First review" not in review
    assert "<th>As sent back for changes</th><th>This submission</th>" in table
    rows = re.findall(r'<tr class="(\w+)"><th scope="row">(.*?)</th><td>(.*?)</td><td>(.*?)</td></tr>', table)
    assert rows[0] == ("changed", "Step &#x27;start&#x27;", "wait 0 s → check", "wait 1 hour → check")
    assert all(row[0] == "unchanged" for row in rows[1:])


def test_a_new_version_sent_back_and_submitted_again_marks_what_changed_since_the_request_for_changes(
    login, manager_alice, approver_bob, make_journey, publish, vips, welcome
):
    """A new version of a live journey is still compared with the live one; the rows changed since
    the approver sent it back are marked among them."""
    from journeys.services.lifecycle import journey_request_changes, journey_version_edit

    journey = publish(make_journey())
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph, exit_event="purchase")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_request_changes(journey_id=journey.pk, by=approver_bob, comment="Half an hour is enough")
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=1800)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph)
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    table = review[review.index('<table id="approval-diff"') :]
    table = table[: table.index("</table>")]
    assert "What changed since the approved version — 2 changes. Resubmitted after your request for changes" in table
    assert "“Half an hour is enough”, by approver_bob, " in table
    rows = re.findall(r'<tr class="([\w -]+)"><th scope="row">(.*?)</th>', table)
    assert rows[:2] == [
        ("changed", "Exit criteria"),
        (
            "changed since-sent-back",
            'Step &#x27;start&#x27;<br><small class="since-sent-back">changed since the request for changes</small>',
        ),
    ]


def test_the_review_of_a_first_version_says_each_step_it_covers_in_words(
    login, manager_alice, approver_bob, make_journey
):
    """The approver of a first version read its conditions as "1 branch(es) + all others" and their
    labels: which segment, rule or event each branch tests, which the approval covers, was shown
    only once a second version was compared with it."""
    request = journey_submit(journey_id=make_journey().pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "Onboarding — version 1</td>" in review
    table = review[review.index('<table id="approval-diff" class="first-review">') :]
    table = table[: table.index("</table>")]
    assert "First review: everything this approval covers" in table and "changed" not in table
    rows = re.findall(r'<tr><th scope="row">(.*?)</th><td>(.*?)</td></tr>', table)
    assert rows[:6] == [
        ("Entry", "Everyone in &#x27;Everyone&#x27;, read once; a profile enters once"),
        ("Exit criteria", "none"),
        ("Step &#x27;start&#x27;", "wait 0 s → check"),
        ("Step &#x27;check&#x27;", "VIP: in segment “VIPs” → push; all others → done"),
        ("Step &#x27;push&#x27;", "push &#x27;Welcome&#x27; → done"),
        ("Step &#x27;done&#x27;", "exit"),
    ]
    assert ("Push &#x27;push&#x27; (en)", "Hello · Welcome aboard") in rows


def test_the_review_of_a_first_version_reads_each_kind_of_branch_in_words(
    login, manager_alice, approver_bob, make_journey, vips, everyone, welcome
):
    """A condition's branches in the review: its segment by name, its rules with the segments and apps
    they use (by name where the approver may see them, by number where not, as the journey's
    conditions read), its event."""
    from accounts.services import access_grant
    from tests.factories import AppFactory

    secret = AppFactory(name="Secret app")
    access_grant(obj=secret, to=manager_alice, by=None)
    graph = _graph_with_every_kind_of_branch(vips=vips.pk, everyone=everyone.pk, app=secret.pk, content=welcome.pk)
    request = journey_submit(journey_id=make_journey(graph=graph).pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    table = review[review.index('<table id="approval-diff" class="first-review">') :]
    rows = dict(re.findall(r'<tr><th scope="row">(.*?)</th><td>(.*?)</td></tr>', table[: table.index("</table>")]))
    check = rows["Step &#x27;check&#x27;"]
    assert check == (
        "VIP: in segment “VIPs” → push; Pro on iOS: matches all of: plan is “pro”; member of “Everyone”; "
        f"has an opted-in device on app #{secret.pk} (iOS) → push; Buyer: did “purchase” since entering → done; "
        "all others → done"
    )
    assert "Secret app" not in review  # approver_bob was not granted it


@pytest.mark.presses("journeys.journey:transition/submit")
def test_a_journeys_submit_carries_the_requesters_note(client, make_journey, manager_alice):
    from accounts.models import ApprovalRequest

    journey = make_journey()
    client.force_login(manager_alice)
    assert 'name="message"' in client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    client.post(f"/admin/journeys/journey/{journey.pk}/transition/submit/", {"message": "New welcome path."})
    assert ApprovalRequest.objects.get().message == "New welcome path."


def test_a_journey_waiting_for_approval_says_who_asked_and_when(client, make_journey, manager_alice, viewer_carol):
    import datetime as dt

    from accounts.models import ApprovalRequest
    from journeys.services.lifecycle import journey_submit

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    ApprovalRequest.objects.update(requested_at=dt.datetime(2027, 3, 1, 8, 30, tzinfo=dt.UTC))
    client.force_login(viewer_carol)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "Waiting for approval: asked by manager_alice on 2027-03-01 08:30 (UTC)" in page


def test_content_a_journey_sends_is_not_deleted_and_the_refusal_names_the_journey(
    client, make_journey, publish, welcome, team, admin_erin
):
    """A journey's steps name their content in its graph, which no foreign key protects: the content
    page's Delete and the list's delete action refuse while a version may still send it."""
    from delivery.models import PushContent
    from journeys.models import Enrollment, JourneyVersion
    from tests.factories import PushContentFactory

    journey = make_journey()
    spare = PushContentFactory(app=team, name="Spare")
    client.force_login(admin_erin)
    delete = f"/admin/delivery/pushcontent/{welcome.pk}/delete/"
    for label in ("draft", "live"):
        page = client.get(delete).content.decode()
        assert "Onboarding" in page and f"({label})" in page, label
        client.post(delete, {"post": "yes"})
        assert PushContent.objects.filter(pk=welcome.pk).exists(), label
        if label == "draft":
            journey = publish(journey)
    changelist = "/admin/delivery/pushcontent/"
    answer = client.post(
        changelist, {"action": "delete_selected", "_selected_action": [welcome.pk, spare.pk], "post": "yes"}
    )
    assert answer.status_code == 200 and "Onboarding" in answer.content.decode()
    assert set(PushContent.objects.values_list("name", flat=True)) == {"Welcome", "Spare"}

    # Retired, with no one left inside: nothing sends it any more.
    JourneyVersion.objects.filter(journey=journey).update(status=JourneyVersion.Status.RETIRED)
    Enrollment.objects.filter(journey=journey).update(status=Enrollment.Status.EXITED)
    client.post(delete, {"post": "yes"})
    assert not PushContent.objects.filter(pk=welcome.pk).exists()


def test_the_rule_builder_draws_the_app_a_condition_reads_to_a_colleague_not_granted_it_without_its_name(
    login, manager_mallory, manager_alice, make_journey, vips, welcome
):
    """A condition's rule "has an opted-in device in app Kiosk", Kiosk granted to Alice alone: the
    builder offered Mallory only her own apps, so the rule showed her first app (Shop) as chosen."""
    from accounts.services import access_grant
    from journeys.services.lifecycle import journey_version_edit
    from tests.factories import AppFactory

    kiosk = AppFactory(name="Kiosk")
    access_grant(obj=kiosk, to=manager_alice, by=None)
    journey = make_journey()
    graph = simple_graph(condition_segment=vips.pk, content=welcome.pk)
    rules = {"all": [{"segment": vips.pk}, {"reachable": {"app": kiosk.pk, "platform": "ios"}}]}
    graph["steps"][1]["branches"] = [{"label": "Kiosk", "rules": rules, "next": "push"}]
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph)
    page = login(manager_mallory).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    meta = _builder_meta(page)["rules"]
    # Drawn as itself, not named: Kiosk is outside her access.
    assert {"id": kiosk.pk, "name": f"an app you have no access to (#{kiosk.pk})"} in meta["apps"]
    assert {"id": vips.pk, "name": f"a segment you have no access to (#{vips.pk})", "kind": ""} in meta["segments"]
    # A new journey's builder offers it not: a rule chosen anew names one's own apps.
    page = login(manager_mallory).get("/admin/journeys/journey/add/").content.decode()
    assert kiosk.pk not in {a["id"] for a in _builder_meta(page)["rules"]["apps"]}


def test_content_held_by_a_journey_the_reader_may_not_see_is_kept_without_naming_it(client, make_journey, welcome):
    from accounts.services import access_grant
    from delivery.models import PushContent
    from tests.factories import UserFactory

    make_journey()
    writer = UserFactory(username="manager_wes", role="Manager")
    access_grant(obj=welcome, to=writer, by=None)  # the content, not its app: no journey of it is hers to see
    client.force_login(writer)
    delete = f"/admin/delivery/pushcontent/{welcome.pk}/delete/"
    page = client.get(delete).content.decode()
    assert "a journey you cannot see" in page and "Onboarding" not in page
    client.post(delete, {"post": "yes"})
    assert PushContent.objects.filter(pk=welcome.pk).exists()


def test_the_journey_page_reads_as_much_for_thirty_batches_as_for_three(
    login, manager_alice, make_journey, django_assert_max_num_queries
):
    """A live journey's push step sends a batch at each run of the engine (thousands a month): the
    page sums their rollup joined to the version's dispatches, per step, so it runs the same queries
    whatever their number and names no batch in them."""
    import datetime as dt
    import re

    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from delivery.models import DeliveryRollup, Dispatch

    journey = make_journey()
    version = journey.versions.get()
    context = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}}
    start = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)

    def batches(count: int) -> list[int]:
        sent = Dispatch.objects.bulk_create(
            Dispatch(
                app=journey.app,
                kind="journey",
                source_id=version.pk,
                context=context,
                content_spec={"title": "Hi"},
                status="done",
                total=3,
                accepted=2,
                skipped=1,
                created_at=start,
                finished_at=start,
            )
            for _ in range(count)
        )
        DeliveryRollup.objects.bulk_create(
            DeliveryRollup(dispatch=batch, period=start, platform="ios", outcome=outcome, reason=reason, rows=n)
            for batch in sent
            for outcome, reason, n in (("targeted", "", 3), ("accepted", "", 2), ("skipped", "no_device", 1))
        )
        return [batch.pk for batch in sent]

    client = login(manager_alice)
    url = f"/admin/journeys/journey/{journey.pk}/change/"

    def viewed() -> tuple[str, list[str]]:
        cache.clear()
        with CaptureQueriesContext(connection) as captured:
            page = client.get(url).content.decode()
        return page, [q["sql"] for q in captured.captured_queries]

    batches(3)
    viewed()  # what a first page of the process reads once
    page, few = viewed()
    assert "sent 6 · accepted 6" in page
    older = batches(27)
    with django_assert_max_num_queries(len(few)):
        page, many = viewed()
    assert len(many) == len(few)
    assert "sent 60 · accepted 60" in page and '"skipped": [0, 0, 30, 0]' in page
    named = [
        {int(pk) for pk in listed.split(",") if pk}
        for sql in many
        for listed in re.findall(r"'\{([0-9,]*)\}'::bigint\[\]", sql)
    ]
    assert not [ids for ids in named if ids & set(older)], "a query named the batches one by one"


@pytest.mark.presses("journeys.journey:transition/stop")
def test_stop_asks_again_counting_the_profiles_inside_and_stops_only_on_the_answer(
    login, manager_alice, viewer_carol, make_journey, publish, everyone, welcome
):
    """Stop was done at the first press: everyone inside left at once, and a stopped journey cannot
    be started again."""
    from journeys.models import Enrollment

    for name in ("ann", "ben", "cy"):
        SegmentMemberFactory(segment=everyone, profile=ProfileFactory(external_id=name))
    journey = publish(make_journey(graph=simple_graph(condition_segment=everyone.pk, content=welcome.pk, wait=3600)))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    inside = Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).count()
    assert inside >= 3
    url = f"/admin/journeys/journey/{journey.pk}/transition/stop/"

    assert login(viewer_carol).post(url).status_code == 403  # refused as before, not asked
    client = login(manager_alice)
    asked = client.post(url)
    html = asked.content.decode()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert asked.status_code == 200
    assert "Stop journey “Onboarding”? This cannot be undone." in text
    assert f"{inside:,} profiles inside leave it now" in text
    assert "A stopped journey cannot be started again." in text
    assert Journey.objects.get(pk=journey.pk).status == "live"
    assert Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).count() == inside
    assert client.post(url, {"confirmed": "yes"}).status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == "stopped"
    assert not Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).exists()


def test_the_report_shows_its_times_in_utc_named_whatever_the_servers_zone(
    login, manager_alice, make_journey, settings
):
    """A journey has no zone of its own: its page says UTC everywhere, but its report's charts were
    drawn in the server's current zone, whatever that was, so on a server set to Paris an hour read
    an hour off the enrollments' times beside it."""
    import datetime as dt

    from delivery.models import DeliveryRollup, Dispatch

    settings.TIME_ZONE = "Europe/Paris"
    journey = make_journey()
    version = journey.versions.get()
    at = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
    batch = Dispatch.objects.create(
        app=journey.app,
        kind="journey",
        source_id=version.pk,
        context={"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}},
        content_spec={"title": "Hi"},
        status="done",
        total=2,
        accepted=2,
        created_at=at,
        finished_at=at,
        rows_deleted_at=at,
    )
    DeliveryRollup.objects.bulk_create(
        DeliveryRollup(dispatch=batch, period=at, platform="ios", outcome=outcome, rows=2)
        for outcome in ("targeted", "accepted")
    )
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    report = page[page.index('id="pd-report"') :]
    assert "<th>hour (UTC)</th>" in report and "<td>2026-03-02 10:00</td>" in report
    assert "Europe/Paris" not in page and "2026-03-02 11:00" not in page
    assert "the latest finished 2026-03-02 10:00 (UTC)" in page


def _step_link(page: str, step: str) -> str:
    """The link of a step's box in the journey page's graph."""
    import html

    box = re.search(rf'data-step="{step}".*?</g>', page, re.S).group(0)
    return html.unescape(re.search(r'<a href="([^"]+)" class="step-link">', box).group(1))


def _journey_with_sends(make_journey, publish, welcome):
    """A live journey (push → exit) whose push step sent one batch of seven rows (three accepted)."""
    from tests.delivery.reporting import sent_dispatch

    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    context = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}}
    batch = sent_dispatch(journey.app, kind="journey", source_id=journey.live_version_id, context=context)
    return journey, batch


def test_a_push_steps_sends_list_says_which_journey_version_and_step_it_shows(
    login, manager_alice, make_journey, publish, welcome
):
    """The list opened from a push step's box was titled "Select dispatch to view": nothing said
    that it held one step's batches, nor which journey's."""
    from tests.factories import UserFactory

    journey, batch = _journey_with_sends(make_journey, publish, welcome)
    client = login(manager_alice)
    link = _step_link(client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode(), "push")
    listing = client.get(link)
    assert listing.status_code == 200
    assert listing.context["title"] == "Sends of journey “Onboarding”, version 1, step 'push'"
    assert "<h1>Sends of journey “Onboarding”, version 1, step &#x27;push&#x27;</h1>" in listing.content.decode()
    assert [row.pk for row in listing.context["cl"].result_list] == [batch.pk]

    # A journey the reader may not see is not named, nor are its sends listed: 404, as for no journey.
    stranger = UserFactory(username="viewer_vera", role="Viewer")
    assert login(stranger).get(link).status_code == 404
    client = login(manager_alice)
    version = journey.live_version_id
    for value in ("abc", f"{version}", f"{version}:nope", f"{version + 1000}:push", ":push", ""):
        assert client.get(f"/admin/delivery/dispatch/?journey_step={value}").status_code == 404, value


@pytest.mark.embedded  # the sources' sends read on SQLite too
def test_a_reader_granted_the_journey_but_not_its_app_reads_its_sends_as_its_page_counts_them(
    client, make_journey, publish, welcome
):
    """The page counted the push step's sends, and the list its box opens was empty: dispatches were
    seen through their app only. A journey granted alone shows its own sends; nothing else of the app."""
    from accounts.services import access_grant
    from delivery.models import Dispatch
    from tests.factories import UserFactory

    journey, batch = _journey_with_sends(make_journey, publish, welcome)
    other = Dispatch.objects.create(app=journey.app, kind="campaign", source_id=1, content_spec={"title": "Hi"})
    viewer = UserFactory(username="viewer_vic", role="Viewer")
    access_grant(obj=journey, to=viewer, by=None)
    client.force_login(viewer)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "sent 4 · accepted 3" in page
    listing = client.get(_step_link(page, "push"))
    assert [row.pk for row in listing.context["cl"].result_list] == [batch.pk]
    assert [row.pk for row in client.get("/admin/delivery/dispatch/").context["cl"].result_list] == [batch.pk]
    assert client.get(f"/admin/delivery/dispatch/{batch.pk}/change/").status_code == 200
    rows = client.get(f"/admin/delivery/delivery/?dispatch__id__exact={batch.pk}").context["cl"].result_list
    assert len(rows) == 7
    assert client.get(f"/admin/delivery/dispatch/{other.pk}/change/").status_code == 404
    assert client.get(f"/admin/delivery/delivery/{rows[0].pk}/change/").status_code == 200


def test_a_steps_enrollments_list_says_which_journey_version_and_step_it_shows(
    login, manager_alice, make_journey, publish, vips, welcome
):
    """A wait or condition step's box, and the version's "enrollments" link, opened a list titled
    "Select enrollment to view": nothing said whose enrollments, nor at which step."""
    from tests.factories import UserFactory

    ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph=simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    client = login(manager_alice)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    listing = client.get(_step_link(page, "start"))
    assert listing.context["title"] == "Enrollments of journey “Onboarding”, version 1, at step 'start'"
    assert len(listing.context["cl"].result_list) == 2
    version = journey.live_version_id
    listing = client.get(f"/admin/journeys/enrollment/?version__id__exact={version}")
    assert listing.context["title"] == "Enrollments of journey “Onboarding”, version 1"

    # A journey the reader may not see is not named (its enrollments are not listed either).
    listing = login(UserFactory(username="viewer_vera", role="Viewer")).get(
        f"/admin/journeys/enrollment/?version__id__exact={version}&step=start"
    )
    assert "Onboarding" not in listing.content.decode() and not listing.context["cl"].result_list


def test_the_journey_graph_and_report_say_in_words_what_happened(login, manager_alice, make_journey):
    """A marketer reads the step boxes, the branches and the report's bars in words: the skips' reasons
    by their labels (``delivery.reasons``), "all others", the steps' kinds; not the codes the API keeps."""
    import html as html_lib

    from tests.delivery.reporting import sent_dispatch

    journey = make_journey()
    version = journey.versions.get()
    context = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}}
    sent_dispatch(journey.app, kind="journey", source_id=version.pk, context=context)
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    start = page.index('<svg class="journey-graph"')
    graph = html_lib.unescape(re.sub(r"<[^>]+>", "\n", page[start : page.index("</svg>", start)]))  # its text
    assert "the profile had its share of pushes (frequency cap) 1" in graph
    assert "notifications are turned off on the phone 1" in graph
    for code in ("frequency_cap", "not_opted_in", "no_device", "(entry)", "PUSH", "CONDITION"):
        assert code not in graph, code
    assert "Push · push" in graph and "Condition · check" in graph
    assert "\nall others: 0\n" in graph and "else" not in graph  # the condition's last branch
    data = html_lib.unescape(page[page.index('id="pd-report-data"') :].split("</script>", 1)[0])
    assert '"bar": "skipped: the profile had its share of pushes (frequency cap)"' in data
    assert '"bar": "failed: the app was uninstalled or the token is no longer valid (APNs)"' in data


def _graph_with_every_kind_of_branch(*, vips: int, everyone: int, app: int, content: int) -> dict:
    return {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [
                    {"label": "VIP", "segment": vips, "next": "push"},
                    {
                        "label": "Pro on iOS",
                        "rules": {
                            "all": [
                                {"attribute": "plan", "type": "string", "op": "eq", "value": "pro"},
                                {"segment": everyone},
                                {"reachable": {"app": app, "platform": "ios"}},
                            ]
                        },
                        "next": "push",
                    },
                    {"label": "Buyer", "event": "purchase", "next": "done"},
                ],
                "else": "done",
            },
            {"id": "push", "type": "push", "content": content, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


def _conditions(page: str) -> list[str]:
    box = page[page.index('<dl class="journey-conditions">') :]
    box = box[: box.index("</dl>")]
    return [re.sub(r"\s+", " ", line) for line in re.findall(r"<li>(.*?)</li>", box, re.S)]


def test_a_journeys_page_reads_its_conditions_in_words_naming_only_what_the_reader_may_see(
    login, manager_alice, viewer_carol, make_journey, vips, everyone, welcome
):
    """A condition's rules read in words on the journey's page, as on a segment's: a manager reads
    the names of what she was granted; a viewer reads by number the segments he was not granted,
    and an app he may not see, as the segment page names them."""
    from accounts.services import access_grant
    from tests.factories import AppFactory

    secret = AppFactory(name="Secret app")
    access_grant(obj=secret, to=manager_alice, by=None)
    graph = _graph_with_every_kind_of_branch(vips=vips.pk, everyone=everyone.pk, app=secret.pk, content=welcome.pk)
    journey = make_journey(graph=graph)

    manager_page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert _conditions(manager_page) == [
        "VIP: in segment “VIPs” → push",
        "Pro on iOS: matches all of: plan is “pro”; member of “Everyone”; has an opted-in device on Secret app "
        "(iOS) → push",
        "Buyer: did “purchase” since entering → done",
        "all others → done",
    ]
    assert "step-editor" in manager_page  # the draft is edited with the builder, below

    viewer_page = login(viewer_carol).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert _conditions(viewer_page) == [
        f"VIP: in segment #{vips.pk} → push",
        f"Pro on iOS: matches all of: plan is “pro”; member of segment #{everyone.pk}; has an opted-in device on "
        f"app #{secret.pk} (iOS) → push",
        "Buyer: did “purchase” since entering → done",
        "all others → done",
    ]
    assert "step-editor" not in viewer_page and "VIPs" not in viewer_page and "Secret app" not in viewer_page


def _condition_box(page: str, step: str = "check") -> str:
    """The text of a step's box in the journey's graph, as read (tags dropped, entities read)."""
    import html as html_lib

    start = page.index(f'data-step="{step}"')
    box = page[start : page.index("</g>", start)]
    return html_lib.unescape(re.sub(r"<[^>]+>", "\n", box))


def test_the_graphs_condition_box_names_its_branches_for_the_manager_and_the_viewer_alike(
    login, manager_alice, viewer_carol, team, make_journey, vips, everyone, welcome
):
    """The box read "3 branch(es) + all others": it names the branches as the marketer labelled
    them, then "all others". The labels are the journey's own text, so a viewer not granted the
    segments they read sees the same names."""
    graph = _graph_with_every_kind_of_branch(vips=vips.pk, everyone=everyone.pk, app=team.pk, content=welcome.pk)
    journey = make_journey(graph=graph)
    for user in (manager_alice, viewer_carol):
        box = _condition_box(login(user).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode())
        assert "\nVIP / Pro on iOS / Buyer / all others\n" in box, user
        assert "branch(es)" not in box


def test_the_graphs_condition_box_escapes_and_shortens_long_branch_names(login, manager_alice, make_journey, welcome):
    """A label is the marketer's text: escaped, and cut with an ellipsis to fit the box, "all
    others" always shown; the whole names are in the box's tooltip."""
    long_label = "<b>Customers who bought twice this year</b>"
    graph = {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [
                    {"label": long_label, "event": "purchase", "next": "push"},
                    {"label": "Lapsed", "event": "lapse", "next": "done"},
                ],
                "else": "done",
            },
            {"id": "push", "type": "push", "content": welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = make_journey(graph=graph)
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "<b>Customers" not in page
    box = _condition_box(page)
    shown = next(line for line in box.split("\n") if line.endswith(" / all others"))
    assert shown == "<b>Customer… / Lapsed / all others"
    assert f"\n{long_label} / Lapsed / all others\n" in box  # the tooltip


UNFROZEN = (
    "Version 1 was approved before its segments were part of approvals: the segments it reads are used as "
    "they are now; approve a new version to freeze them."
)


def test_a_version_approved_before_segments_were_frozen_says_so_to_everyone_who_reads_the_journey(
    login, manager_alice, approver_bob, viewer_carol, make_journey, publish
):
    """Its segments are read live, an edit of one reaching the running journey unapproved: the
    page said nothing of it. The manager, the approver and the viewer read it in the approval."""
    from django.utils.html import escape

    journey = publish(make_journey())
    approved_before_segments_were_frozen(journey)
    for user in (manager_alice, approver_bob, viewer_carol):
        page = login(user).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
        assert 'id="segments-unfrozen"' in page and escape(UNFROZEN) in page, user


def test_a_version_whose_approval_froze_its_segments_says_nothing_of_it(
    login, manager_alice, viewer_carol, make_journey, publish
):
    journey = publish(make_journey())
    for user in (manager_alice, viewer_carol):
        page = login(user).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
        assert "segments-unfrozen" not in page and "were part of approvals" not in page


def test_a_version_approved_before_segments_were_frozen_that_reads_none_says_nothing_of_it(
    login, manager_alice, make_journey, publish
):
    """An event entry and no condition on a segment: nothing was left unfrozen."""
    journey = publish(
        make_journey(graph={"steps": [{"id": "done", "type": "exit"}]}, entry_kind="event", entry_event="signup")
    )
    approved_before_segments_were_frozen(journey)
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "segments-unfrozen" not in page


def test_a_new_version_approved_freezes_the_segments_and_the_notice_goes(login, manager_alice, make_journey, publish):
    from journeys.services.lifecycle import journey_version_edit

    journey = publish(make_journey())
    approved_before_segments_were_frozen(journey)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribe")
    journey = publish(journey)
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "segments-unfrozen" not in page


def test_a_wait_until_a_time_of_day_says_in_which_zone_a_profile_without_one_waits(
    login, manager_alice, make_journey, team
):
    """A profile without a time zone waits until the time of day in the app's default zone (its
    delivery rules', UTC without them): the step says which, on the journey's page (the graph's box,
    whole in its tooltip, and the step editor's wait) and in the steps the review compares."""
    from delivery.models import DeliveryRules
    from journeys.review import version_rows

    graph = {
        "steps": [
            {"id": "morning", "type": "wait", "until": "09:00", "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = make_journey(graph=graph)
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert (
        "until 09:00, profile&#x27;s zone or UTC<title>until 09:00 in each profile&#x27;s time zone "
        "(UTC for a profile without one)</title>"
    ) in page
    assert "&quot;wait_zone&quot;: &quot;UTC&quot;" in page
    rows = dict(version_rows(journey.versions.get(), specs={}, names={}, segment_names={}, app_names={}))
    assert (
        rows["Step 'morning'"] == "wait until 09:00 in each profile's time zone (UTC for a profile without one) → done"
    )

    DeliveryRules.objects.create(app=team, default_timezone="Europe/Paris")
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    # "…, profile's zone or Europe/Paris" is longer than a box: the box names no zone, its tooltip does.
    assert (
        "until 09:00, each profile&#x27;s zone<title>until 09:00 in each profile&#x27;s time zone "
        "(Europe/Paris for a profile without one)</title>"
    ) in page
    assert "&quot;wait_zone&quot;: &quot;Europe/Paris&quot;" in page
    rows = dict(version_rows(journey.versions.get(), specs={}, names={}, segment_names={}, app_names={}))
    assert rows["Step 'morning'"] == (
        "wait until 09:00 in each profile's time zone (Europe/Paris for a profile without one) → done"
    )


def test_the_journey_page_names_its_entry_segment_and_contents_only_to_a_reader_who_may_see_them(
    login, viewer_carol, make_journey, everyone, welcome
):
    """The graph's entry box, the versions' table and who enters name the entry segment, and the push
    steps their content, to a reader who may see them; to the others "segment #12", "content #12",
    as the conditions read. viewer_carol works on the app (its contents), not on the segment;
    viewer_vera was granted the journey alone."""
    from accounts.services import access_grant
    from tests.factories import UserFactory

    journey = make_journey()
    vera = UserFactory(username="viewer_vera", role="Viewer")
    access_grant(obj=journey, to=vera, by=None)
    url = f"/admin/journeys/journey/{journey.pk}/change/"

    text = login(viewer_carol).get(url).content.decode()
    assert "&#x27;Everyone&#x27;" not in text and "Everyone:" not in text
    assert f"Everyone in segment #{everyone.pk}, read once" in text  # the graph and the versions' table
    assert f"segment #{everyone.pk}: " in text  # who enters
    assert f"content #{welcome.pk}" not in text and ">Welcome<" in text

    text = login(vera).get(url).content.decode()
    assert f"content #{welcome.pk}" in text and ">Welcome<" not in text
    assert f"Everyone in segment #{everyone.pk}, read once" in text

    access_grant(obj=everyone, to=viewer_carol, by=None)
    text = login(viewer_carol).get(url).content.decode()
    assert text.count("Everyone in &#x27;Everyone&#x27;, read once") >= 2 and "Everyone: " in text


def test_a_colleague_s_editor_offers_the_segments_they_may_not_see_by_number(
    login, manager_alice, manager_mallory, make_journey, everyone, vips
):
    """manager_mallory works on the app, not on alice's segments: the journey's entry select and
    the steps' editor keep them (a save does not blank them) as "a segment you have no access to
    (#12)", never by name; alice reads their names."""
    journey = make_journey()
    url = f"/admin/journeys/journey/{journey.pk}/change/"
    page = login(manager_mallory).get(url)
    text = page.content.decode()
    meta = page.context["adminform"].form.fields["graph"].widget.meta
    choices = dict(page.context["adminform"].form.fields["entry_segment"].choices)
    assert "VIPs" not in text and ">Everyone<" not in text and '"Everyone"' not in text
    assert {s["id"]: s["name"] for s in meta["segments"]}[vips.pk] == f"a segment you have no access to (#{vips.pk})"
    assert choices[everyone.pk] == f"a segment you have no access to (#{everyone.pk})"

    page = login(manager_alice).get(url)
    meta = page.context["adminform"].form.fields["graph"].widget.meta
    assert {s["id"]: s["name"] for s in meta["segments"]}[vips.pk] == "VIPs"
    assert dict(page.context["adminform"].form.fields["entry_segment"].choices)[everyone.pk] == "Everyone"


def _said(client, answer) -> list[str]:
    """The messages the page the answer redirects to shows."""
    page = client.get(answer["Location"])
    return [str(message) for message in page.context["messages"]]


def test_each_transition_says_in_words_what_it_did(login, manager_alice, make_journey, publish):
    """The journey's buttons answered with their codes ("Done: submit.", "Done: cancel request.",
    "Done: stop."): the marketer read back a button's internal name, not what had happened."""
    client = login(manager_alice)
    journey = make_journey()
    base = f"/admin/journeys/journey/{journey.pk}/transition"
    said = _said(client, client.post(f"{base}/submit/"))
    assert said == ["Submitted for review: version 1 of 'Onboarding' waits for an approver's decision."]
    said = _said(client, client.post(f"{base}/cancel_request/"))
    assert said == ["Request cancelled: version 1 of 'Onboarding' is a draft again, editable."]
    journey = publish(journey)
    said = _said(client, client.post(f"{base}/stop/", {"confirmed": "yes"}))
    assert said == ["Stopped: 'Onboarding' has let everyone inside out; no one enters it again."]
    said = _said(client, client.post(f"{base}/archive/"))
    assert said == ["Archived: 'Onboarding' is left out of the journeys' default list."]
    assert not any(text.startswith("Done:") for text in said)


def test_an_enrollment_page_names_the_profile_and_the_journey_not_their_ids(login, viewer_carol, make_journey, publish):
    """An enrollment's page was titled "290 in 2 #1": the profile's and the version's database ids,
    which no page shows, in its heading and its breadcrumbs."""
    profile = ProfileFactory(external_id="shopper-42")
    journey = publish(make_journey())
    journey_enter_segment(journey_id=journey.pk)
    enrollment = journey.enrollments.get(profile=profile)
    page = login(viewer_carol).get(f"/admin/journeys/enrollment/{enrollment.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "shopper-42 in “Onboarding” v1, entry #1" in text
    assert f"{profile.pk} in {enrollment.version_id} #1" not in text


def test_a_stopped_journeys_graph_and_report_name_its_version_without_nested_brackets(
    login, viewer_carol, make_journey, publish, manager_alice
):
    """A stopped journey's graph read "Version 1 (stopped (was live)): …" and its report "The figures
    below are version 1 (stopped (was live))."."""
    from journeys.services.lifecycle import journey_stop

    journey = publish(make_journey())
    journey_stop(journey_id=journey.pk, by=manager_alice)
    page = login(viewer_carol).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "<p>Version 1 (stopped, was live): " in page
    assert '<p id="report-version">The figures below are version 1 (stopped, was live).</p>' in page
    assert "(was live))" not in page


def test_the_access_link_offers_to_manage_only_to_whom_may(
    login, viewer_carol, manager_alice, admin_erin, make_journey
):
    """Every reader of a journey was offered to "manage access", and reached a list they could not
    change: only an Administrator grants and revokes; the others are offered to see who has access."""
    journey = make_journey()
    url = f"/admin/journeys/journey/{journey.pk}/change/"
    link = f'<a href="/admin/journeys/journey/{journey.pk}/access/">'
    for user in (viewer_carol, manager_alice):
        page = login(user).get(url).content.decode()
        assert f"{link}see who has access</a>" in page and "manage access" not in page
    page = login(admin_erin).get(url).content.decode()
    assert f"{link}manage access</a>" in page


@pytest.mark.presses("journeys.journey:transition/submit")
def test_a_journeys_submit_warns_at_once_when_no_one_may_approve_it(
    client, make_journey, admin_erin, approver_bob, manager_alice, viewer_carol
):
    """The policy's only approver lost the role: the submitter learns it on submit, not days later."""
    from django.contrib.auth.models import Group
    from django.contrib.messages import get_messages

    from accounts.models import ApprovalPolicy, ApprovalRequest
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name="Journeys", applies_to_campaigns=False, applies_to_journeys=True)
    policy.approver_users.set([approver_bob])
    approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    journey = make_journey()
    submit, page = (
        f"/admin/journeys/journey/{journey.pk}/transition/submit/",
        f"/admin/journeys/journey/{journey.pk}/change/",
    )

    def said(answer):
        return [(m.level_tag, str(m)) for m in get_messages(answer.wsgi_request)]

    client.force_login(viewer_carol)  # a refused role: refused as before, nothing asked
    assert client.post(submit).status_code == 403
    assert not ApprovalRequest.objects.exists()

    approver_bob.groups.remove(Group.objects.get(name="Approver"))
    client.force_login(manager_alice)
    warning = (
        "No one may approve this yet: of the approvers the policy 'Journeys' names, none holds a role that may "
        "approve journeys. Ask an Administrator to give an approver the role that approves journeys."
    )
    answer = client.post(submit, follow=True)
    assert said(answer) == [
        ("success", "Submitted for review: version 1 of 'Onboarding' waits for an approver's decision."),
        ("warning", warning),
    ]
    assert Journey.objects.get(pk=journey.pk).status == "in_review"
    assert said(client.get(page)) == [("warning", warning)]

    approver_bob.groups.add(Group.objects.get(name="Approver"))  # someone may decide it again: no warning
    assert said(client.get(page)) == []


def test_the_pages_of_a_journeys_content_and_segments_name_the_journey_as_sending_them(
    client, make_journey, publish, manager_alice, everyone, vips, welcome
):
    """A live journey's push step sends its content, its entry reads its segment and a condition
    another: each one's page names the journey (Sent by, Sent to by), as a campaign sending them."""
    journey = publish(make_journey())
    client.force_login(manager_alice)
    said = f"journey “{journey.name}”, version 1 (live)"
    page = client.get(f"/admin/delivery/pushcontent/{welcome.pk}/change/").content.decode()
    sent_by = re.search(r'<div id="content-sent-by">(.*?)</div>', page, re.S).group(1)
    assert said in sent_by and "step &#x27;push&#x27;" in sent_by
    page = client.get(f"/admin/audiences/segment/{everyone.pk}/change/").content.decode()
    assert f"the entry of {said}" in re.search(r'<div id="segment-used-by">(.*?)</div>', page, re.S).group(1)
    page = client.get(f"/admin/audiences/segment/{vips.pk}/change/").content.decode()
    assert f"a condition of {said}: step &#x27;check&#x27;" in page


def test_a_renamed_live_journey_says_its_pushes_keep_the_approved_name_and_the_review_shows_the_new_one(
    login, manager_alice, approver_bob, make_journey, publish, team, vips
):
    """Its pushes show the journey's name: the page says which name they keep saying until a new
    version is approved, and the review of that version shows the name it approves beside the one
    sent now."""
    import re

    from journeys.services.lifecycle import journey_rename
    from tests.factories import PushContentFactory

    named = PushContentFactory(app=team, title="{{ context.journey.name }}", body="Welcome")
    journey = publish(make_journey(graph=simple_graph(condition_segment=vips.pk, content=named.pk)))
    journey_rename(journey_id=journey.pk, by=manager_alice, name="Everything free")
    page = login(manager_alice).get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert (
        "Its pushes show the journey&#x27;s name: version 1 sends them as &#x27;Onboarding&#x27;, the name it was "
        "approved with, until a new version is approved. Version 2 gives them &#x27;Everything free&#x27; once "
        "approved."
    ) in page
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    review = login(approver_bob).get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    changed = re.findall(r'<tr class="changed"><th scope="row">(.*?)</th><td>(.*?)</td><td>(.*?)</td></tr>', review)
    assert changed == [("Name (its pushes show it)", "Onboarding", "Everything free")]


def test_saving_the_content_of_a_journey_in_review_warns_it_must_be_submitted_again(
    client, make_journey, manager_alice, welcome
):
    """A journey's version in review sends its push step's content as it was submitted: saving the
    content outdates its request, and the save says so, naming the journey."""
    from django.contrib.messages import get_messages

    journey = make_journey()
    journey_submit(journey_id=journey.pk, by=manager_alice)
    client.force_login(manager_alice)
    data = {
        "app": welcome.app_id,
        "name": welcome.name,
        "title": "Hello again",
        "subtitle": "",
        "body": welcome.body,
        "tap_action": "open_app",
        "data": "{}",
        "ios_sound": "default",
        "ios_interruption_level": "active",
        "android_priority": "high",
        "ttl_seconds": 86400,
        "default_locale": "en",
        "variants": "{}",
        "preview_locale": "",
    }
    response = client.post(f"/admin/delivery/pushcontent/{welcome.pk}/change/", data)
    assert response.status_code == 302
    assert [m.message for m in get_messages(response.wsgi_request) if m.level_tag == "warning"] == [
        "Journey “Onboarding” waits for approval with this content as it was before this change: its approval "
        "would be refused. It must be submitted again (its request cancelled or sent back for changes, then "
        "submitted) to be approved with it."
    ]


def test_a_contents_page_says_a_live_journey_keeps_sending_it_as_approved_when_it_is_edited(
    client, make_journey, publish, manager_alice, welcome
):
    """The content's *Sent by* said an edit refuses the journey's sends of it until it is approved
    again; its live version sends the content as frozen at its approval until a new version is."""
    from delivery.services.contents import pushcontent_save

    journey = publish(make_journey())
    welcome.title = "Hello again"
    pushcontent_save(content=welcome, by=manager_alice)
    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/pushcontent/{welcome.pk}/change/").content.decode()
    text = " ".join(
        re.sub(r"<[^>]+>", " ", re.search(r'<div id="content-sent-by">(.*?)</div>', page, re.S).group(1)).split()
    )
    assert f"journey “{journey.name}”, version 1 (live)" in text and "refused" not in text
    assert "and a live journey, keeps sending it as it was approved (a copy frozen at its approval)" in text

    journey = Journey.objects.get(pk=journey.pk)
    assert journey.status == "live"
    live = journey.versions.get(number=1)
    assert live.frozen_specs["push"]["spec"]["title"] == "Hello"  # what its push step sends


def test_the_list_sorted_by_app_does_not_place_a_journey_by_an_app_its_reader_may_not_see(
    login, make_journey, manager_alice, viewer_carol, admin_erin
):
    """Sorted by its App column (?o=), the list placed a journey granted without its app among the
    reader's others by the name of the app it says by number: between "Alpha" and "Zulu", apps
    named letter by letter narrowed it down. That column is not sortable to whoever does not see
    every object; an Administrator still sorts by it."""
    from accounts.services import access_grant
    from tests.factories import AppFactory

    graph = {
        "steps": [{"id": "start", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journeys = {}
    for name in ("Merger", "Alpha", "Zulu"):
        app = AppFactory(name=name)
        access_grant(obj=app, to=manager_alice, by=None)
        journeys[name] = make_journey(app=app, graph=graph, name=f"Welcome in {name}")
        access_grant(obj=app if name != "Merger" else journeys[name], to=viewer_carol, by=None)

    def order(user, sort: bool) -> list[int]:
        client = login(user)
        return [
            row.pk
            for row in listed_rows(
                client, "/admin/journeys/journey/", sorted_by="app_shown" if sort else None, query={"status": "all"}
            )
        ]

    unsorted = order(viewer_carol, sort=False)
    assert sorted(unsorted) == sorted(j.pk for j in journeys.values())
    assert order(viewer_carol, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [journeys[name].pk for name in ("Alpha", "Merger", "Zulu")]
