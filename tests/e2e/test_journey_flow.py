"""A small journey in a real browser: built with the step editor, approved from the inbox, watched."""

import json

import pytest

from accounts.services import access_grant
from audiences.models import Segment
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from journeys.models import Journey
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.browser


def test_manager_builds_approver_approves_and_the_graph_counts_the_push(
    login, page, live_server, manager_alice, approver_bob, pushsim, pushsim_app, screenshot
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    zoe = ProfileFactory(external_id="zoe", attributes={"first_name": "Zoé"})
    phone = DeviceFactory(profile=zoe, app=pushsim_app, platform="android")
    segment = Segment.objects.create(name="Zoé and friends", kind="static")
    segment.members.create(profile=zoe)
    segment.members.create(profile=ProfileFactory(external_id="no-phone"))
    access_grant(obj=segment, to=manager_alice, by=None)
    content = pushcontent_save(
        content=PushContent(
            app=pushsim_app, name="Hello", title="Hi {{ profile.attributes.first_name }}", body="Welcome"
        ),
        by=manager_alice,
    )

    # The manager builds entry → wait → push → exit with the step editor (no JSON typed).
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "Welcome Zoé")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    page.click(".step-editor button.add-push")
    push = page.locator(".step-editor .step-row[data-step=push2]")
    push.locator("select.push-content").select_option(str(content.pk))
    push.locator("select.next-select").select_option("end")
    page.click(".step-editor button.add-wait")
    wait = page.locator(".step-editor .step-row[data-step=wait3]")
    wait.locator("select.next-select").select_option("push2")
    screenshot("journey-step-editor")
    page.click("input[name=_continue]")
    journey = Journey.objects.get(name="Welcome Zoé")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/**")
    assert [s["type"] for s in journey.versions.get().graph["steps"]] == ["push", "wait", "exit"]
    assert page.locator("svg.journey-graph g.step").count() == 4  # the entry is drawn as a step too
    assert "Everyone in 'Zoé and friends'" in page.locator("svg.journey-graph g.step-entry").text_content()

    page.click("button[value=submit]")
    page.wait_for_selector(".messagelist .success")
    assert Journey.objects.get(pk=journey.pk).status == "in_review"

    # The approver approves from the inbox, with the graph in the review pane.
    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('Welcome Zoé')")
    page.wait_for_url("**/review/")
    assert page.locator(".journey-review svg.journey-graph").count() == 1
    screenshot("journey-review")
    page.click("input[name=_approve]")
    # Its segment enters on approval: asked first, naming it; nothing entered before the Yes.
    assert "enters everyone in 'Zoé and friends' now" in page.inner_text("#send-starts")
    assert Journey.objects.get(pk=journey.pk).status == "in_review"
    page.click("input[name=_send_confirmed]")
    page.wait_for_selector(".messagelist .success")
    assert Journey.objects.get(pk=journey.pk).status == "live"
    assert pushsim.state.count(phone.token) == 1

    # The manager watches: the graph counts the push, the enrollment shows its history.
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    graph = page.locator("svg.journey-graph")
    entry = page.locator("#entry-audience").inner_text()
    assert "2 profiles → 1 reachable (iOS 0 / Android 1) → 1 opted in" in entry
    push_box = graph.locator("g.step-push")
    # Sent: handed to a provider; the profile without a device was skipped, not sent.
    assert "entered 2 · sent 1 · accepted 1" in push_box.locator("text.counts").text_content()
    assert "skipped 1 (no phone registered for the app 1)" in push_box.locator("text.notes").text_content()
    screenshot("journey-live-graph")
    page.goto(f"{live_server.url}/admin/journeys/enrollment/?q=zoe")
    page.click("#result_list tbody th a")
    assert "push sent (send #" in page.locator(".enrollment-history").inner_text()

    # Stop asks again, saying what it does; No goes back, Yes stops; its last version no longer reads "Live".
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    page.click("button[name=journey_action][value=stop]")
    assert "cannot be undone" in page.locator("#lifecycle-question").inner_text()
    assert "No profile enters it again." in page.locator("#lifecycle-consequences").inner_text()
    page.click("#lifecycle-cancel")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/")
    assert Journey.objects.get(pk=journey.pk).status == "live"
    page.click("button[name=journey_action][value=stop]")
    page.click("#lifecycle-confirm")
    page.wait_for_selector(".messagelist .success")
    assert Journey.objects.get(pk=journey.pk).status == "stopped"
    assert "Stopped (was live)" in page.locator("table.journey-versions").inner_text()
    assert ">Live<" not in page.locator("table.journey-versions").inner_html()


def test_a_condition_branch_on_a_rule_uses_the_rule_builder(login, page, live_server, manager_alice, pushsim_app):
    from tests.factories import ProfileFactory as Profiles

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    Profiles(attributes={"plan": "pro"})
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "Pro path")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    page.click(".step-editor button.add-condition")
    condition = page.locator(".step-editor .step-row.step-type-condition")
    condition.locator("select.branch-kind").select_option("rules")
    builder = condition.locator(".branch-rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    builder.locator(".rb-row input[list]").first.fill("plan")
    builder.locator(".rb-row input[type=text]").nth(1).fill("pro")
    condition.locator("select.next-select[data-key=next]").select_option("end")
    condition.locator("select.next-select[data-key=else]").select_option("end")
    page.click("input[name=_continue]")
    journey = Journey.objects.get(name="Pro path")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/**")
    steps = {s["type"]: s for s in journey.versions.get().graph["steps"]}
    rule = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}
    assert steps["condition"]["branches"][0]["rules"] == rule


def test_a_condition_branchs_default_label_follows_its_kind_and_a_typed_one_stays(
    login, page, live_server, manager_alice, pushsim_app
):
    """A new branch is labelled "In segment"; switched to a rule or an event it kept that label, so
    the canvas and the approver's review read "In segment: matches all of: plan is “pro”". The
    label the editor gave follows the kind; one the marketer typed is kept."""
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.click(".step-editor button.add-condition")
    condition = page.locator(".step-editor .step-row.step-type-condition")
    label = condition.locator("input.branch-label").first
    assert label.input_value() == "In segment"
    condition.locator("select.branch-kind").select_option("rules")
    assert label.input_value() == "Matches rule"
    condition.locator("select.branch-kind").select_option("event")
    assert label.input_value() == "Did event"
    condition.locator("select.branch-kind").select_option("segment")
    assert label.input_value() == "In segment"
    label.fill("Loyal")
    label.blur()
    condition.locator("select.branch-kind").select_option("rules")
    assert label.input_value() == "Loyal"
    graph = json.loads(page.input_value("#id_graph"))
    assert graph["steps"][0]["branches"][0]["label"] == "Loyal"


def test_manager_discards_the_draft_of_a_live_journey_and_the_live_version_stays(
    login, page, live_server, manager_alice, approver_bob, viewer_carol, pushsim_app
):
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit, journey_version_edit

    for user in (manager_alice, approver_bob, viewer_carol):
        access_grant(obj=pushsim_app, to=user, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    journey = journey_create(
        by=manager_alice,
        name="Welcome back",
        app=pushsim_app,
        graph={"steps": [{"id": "end", "type": "exit"}]},
        entry_kind="segment",
        entry_segment=segment,
        entry_every_hours=24,
    )
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_approve(journey_id=journey.pk, by=approver_bob)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")

    # A viewer is offered no button.
    login(viewer_carol)
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    assert page.locator("button[value=discard_draft]").count() == 0

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    assert page.locator("table.journey-versions tr", has_text="v2").inner_text().startswith("v2\tDraft")
    assert page.input_value("#id_exit_event") == "purchase"  # the form edits the draft
    page.click("button[value=discard_draft]")
    page.wait_for_selector(".messagelist .success")
    assert "back to version 1" in page.locator(".messagelist .success").inner_text()
    journey = Journey.objects.get(pk=journey.pk)
    assert (journey.status, journey.live_version.number, journey.live_version.exit_event) == ("live", 1, "")
    assert list(journey.versions.values_list("number", flat=True)) == [1]
    assert page.locator("table.journey-versions tr", has_text="v2").count() == 0
    assert page.locator("button[value=discard_draft]").count() == 0
    assert page.input_value("#id_exit_event") == ""  # the form shows the live version again


def test_a_push_without_content_reads_choose_in_the_step_editor_until_one_is_chosen(
    login, page, live_server, manager_alice, pushsim_app
):
    """A push step the server refused for its missing content ("choose the push content to send")
    came back showing the first content as chosen: the page contradicted its own error, and picking
    that content changed nothing. It now reads "— choose —" until a content is picked."""
    import json

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    for name in ("Offer A", "Offer B"):
        pushcontent_save(content=PushContent(app=pushsim_app, name=name, title=name, body="Hi"), by=manager_alice)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "No content yet")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    graph = {"steps": [{"id": "hello", "type": "push", "content": None, "next": "end"}, {"id": "end", "type": "exit"}]}
    page.click(".step-editor-raw summary")
    page.fill("#id_graph", json.dumps(graph))
    page.dispatch_event("#id_graph", "change")
    page.click("input[name=_continue]")
    page.wait_for_selector(".errorlist")
    assert "Step 'hello': choose the push content to send." in page.locator(".errorlist").first.inner_text()
    content = page.locator(".step-editor .step-row[data-step=hello] select.push-content")
    assert content.input_value() == ""
    assert content.locator("option:checked").inner_text() == "— choose —"

    content.select_option(label="Offer A (" + pushsim_app.name + ")")
    page.click("input[name=_continue]")
    journey = Journey.objects.get(name="No content yet")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/**")
    offer_a = PushContent.objects.get(name="Offer A")
    assert journey.versions.get().graph["steps"][0]["content"] == offer_a.pk


# Each input and list of the step editor: its step, what it is, and whether it is marked at fault.
EDITOR_FIELDS = """() => [...document.querySelectorAll('.step-editor .step-row input, .step-editor .step-row select')]
  .map((el) => [el.closest('.step-row').dataset.step, el.className, getComputedStyle(el).borderTopColor,
                el.getAttribute('aria-invalid') === 'true'])"""


def test_a_refused_step_marks_only_the_fields_its_errors_name(
    login, page, live_server, manager_alice, pushsim_app, screenshot
):
    """After a refused save every input and list of the step editor had a red border (the admin's
    red for a field with errors, here the whole graph): the error's field could not be told from the
    rest. Only the fields the errors name are marked now (a push without its content, a wait leading
    nowhere), and a mark goes once its field is changed."""
    import json

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    pushcontent_save(content=PushContent(app=pushsim_app, name="Offer", title="Offer", body="Hi"), by=manager_alice)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "Two faults")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    steps = [
        {"id": "pause", "type": "wait", "seconds": 3600, "next": ""},
        {"id": "hello", "type": "push", "content": None, "next": "end"},
        {"id": "end", "type": "exit"},
    ]
    page.click(".step-editor-raw summary")
    page.fill("#id_graph", json.dumps({"steps": steps}))
    page.dispatch_event("#id_graph", "change")
    page.click("input[name=_continue]")
    page.wait_for_selector(".errorlist")
    errors = page.locator(".errorlist").first.inner_text()
    assert "Step 'hello': choose the push content to send." in errors
    assert "Step 'pause': it leads nowhere" in errors
    fields = page.evaluate(EDITOR_FIELDS)
    marked = {(step, name.split()[0]) for step, name, _colour, invalid in fields if invalid}
    assert marked == {("hello", "push-content"), ("pause", "next-select")}
    fault_colours = {colour for step, name, colour, _ in fields if (step, name.split()[0]) in marked}
    other_colours = {colour for step, name, colour, _ in fields if (step, name.split()[0]) not in marked}
    assert len(fault_colours) == 1 and fault_colours.isdisjoint(other_colours), (fault_colours, other_colours)
    screenshot("journey-step-editor-faults")

    page.locator(".step-row[data-step=hello] select.push-content").select_option(label=f"Offer ({pushsim_app.name})")
    fields = page.evaluate(EDITOR_FIELDS)
    assert {(step, name.split()[0]) for step, name, _colour, invalid in fields if invalid} == {("pause", "next-select")}


def test_a_wait_until_a_time_of_day_names_the_zone_a_profile_without_one_waits_in(
    login, page, live_server, manager_alice, pushsim_app
):
    """The step editor's wait "until time of day" said "profile's zone" alone, and a profile without
    one waited in UTC; it waits in the app's default zone now, and the editor names it once the
    journey's app is known (a new journey's: "the app's default zone")."""
    from delivery.models import DeliveryRules

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    DeliveryRules.objects.create(app=pushsim_app, default_timezone="Europe/Paris")
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "Mornings")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    page.click(".step-editor button.add-wait")
    mode = page.locator(".step-editor .step-row[data-step=wait2] select.wait-mode")
    mode.select_option("until")
    mode = page.locator(".step-editor .step-row[data-step=wait2] select.wait-mode")
    assert (
        mode.locator("option:checked").inner_text() == "until time of day (profile's zone, else the app's default zone)"
    )
    page.locator(".step-editor .step-row[data-step=wait2] select.next-select").select_option("end")
    page.click("input[name=_continue]")
    journey = Journey.objects.get(name="Mornings")
    page.wait_for_url(f"**/admin/journeys/journey/{journey.pk}/change/**")
    assert journey.versions.get().graph["steps"][0]["until"] == "09:00"
    mode = page.locator(".step-editor .step-row[data-step=wait2] select.wait-mode")
    assert mode.locator("option:checked").inner_text() == "until time of day (profile's zone, else Europe/Paris)"


def test_a_new_step_goes_before_the_journeys_end_in_the_step_editor(login, page, live_server, manager_alice):
    """A new step was added after the "end" step a new journey starts with, the list reading "#1
    end, #2 wait…", the last step first; each goes before a trailing end, and the list reads in the
    order the journey runs. Steps are linked by their ids: their order is the list's alone."""
    import json

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.click(".step-editor button.add-wait")
    page.click(".step-editor button.add-push")
    rows = page.locator(".step-editor .step-row")
    assert [rows.nth(i).get_attribute("data-step") for i in range(rows.count())] == ["wait2", "push3", "end"]
    assert page.locator(".step-editor .step-row header strong").all_inner_texts() == ["#1", "#2", "#3"]
    graph = json.loads(page.input_value("#id_graph"))
    assert [step["id"] for step in graph["steps"]] == ["wait2", "push3", "end"]

    # Without an end step last, a new step is added last.
    page.locator(".step-editor .step-row[data-step=end] button.remove-step").click()
    page.click(".step-editor button.add-push")
    rows = page.locator(".step-editor .step-row")
    assert [rows.nth(i).get_attribute("data-step") for i in range(rows.count())] == ["wait2", "push3", "push4"]


def test_a_split_whose_percentages_do_not_sum_to_100_marks_its_branches(
    login, page, live_server, manager_alice, pushsim_app
):
    """The fault named a field 'percent', which no input of the editor has: the editor alone knew to
    mark every percentage for it. It names the split's branches now, which the editor marks as a
    whole, until one of them changes."""
    import json

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Everyone", kind="static")
    access_grant(obj=segment, to=manager_alice, by=None)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/add/")
    page.fill("#id_name", "Uneven split")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_entry_segment", str(segment.pk))
    branches = [{"label": "A", "percent": 60, "next": "end"}, {"label": "B", "percent": 60, "next": "end"}]
    steps = [{"id": "ab", "type": "split", "branches": branches}, {"id": "end", "type": "exit"}]
    page.click(".step-editor-raw summary")
    page.fill("#id_graph", json.dumps({"steps": steps}))
    page.dispatch_event("#id_graph", "change")
    page.click("input[name=_continue]")
    page.wait_for_selector(".errorlist")
    assert "Step 'ab': the percentages sum to 120, not 100." in page.locator(".errorlist").first.inner_text()
    marked = page.locator(".step-editor [aria-invalid=true]")
    assert marked.count() == 1
    assert marked.get_attribute("data-field") == "branches"
    assert marked.locator("input.branch-percent").count() == 2
    assert {row for row, *_, invalid in page.evaluate(EDITOR_FIELDS) if invalid} == set()

    page.locator(".step-row[data-step=ab] input.branch-percent").last.fill("40")
    page.locator(".step-row[data-step=ab] input.branch-percent").last.dispatch_event("change")
    assert page.locator(".step-editor [aria-invalid=true]").count() == 0
