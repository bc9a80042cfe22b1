import json

import pytest

from audiences.models import Segment
from tests.factories import EventFactory, ProfileFactory

pytestmark = pytest.mark.browser


def test_manager_builds_a_segment_without_writing_json(login, page, live_server, manager_alice, screenshot):
    ProfileFactory(external_id="ann", attributes={"plan": "pro", "age": 34})
    ProfileFactory(external_id="bob", attributes={"plan": "pro", "age": 17})
    ProfileFactory(external_id="cid", attributes={"plan": "free", "age": 50})
    EventFactory(profile__external_id="dee", name="purchase")
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    page.fill("#id_name", "Adult pro users")
    builder = page.locator(".rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    row = builder.locator(".rb-row").nth(0)
    row.locator("input[list]").fill("plan")
    row.locator("input[type=text]").nth(1).fill("pro")
    builder.locator("button", has_text="+ group").first.click()
    group = builder.locator(".rb-group .rb-group").first
    group.locator("select[aria-label=group]").select_option("none")
    inner = group.locator(".rb-row").first
    inner.locator("input[list]").fill("age")  # a known number attribute: the type follows
    inner.locator("select[aria-label=operator]").select_option("lt")
    inner.locator("input[type=number]").fill("18")
    page.click(".rule-builder-preview-button")
    page.wait_for_selector(".rule-builder-preview-summary:has-text('counted in')")
    assert page.locator(".rule-builder-preview-summary").inner_text().startswith("1 profile · counted in")
    assert "ann" in page.locator(".rule-builder-preview-result").inner_text()
    screenshot("segment-rule-builder")
    page.click("input[name=_save]")
    page.wait_for_url(f"{live_server.url}/admin/audiences/segment/")
    segment = Segment.objects.get(name="Adult pro users")
    assert segment.rules == {
        "all": [
            {"attribute": "plan", "type": "string", "op": "eq", "value": "pro"},
            {"none": [{"attribute": "age", "type": "number", "op": "lt", "value": 18}]},
        ]
    }


def test_the_preview_warns_of_values_the_rules_read_as_nothing(login, page, live_server, manager_alice):
    ProfileFactory(external_id="ann", attributes={"age": 34})
    ProfileFactory(external_id="bob", attributes={"age": "042"})
    ProfileFactory(external_id="cid", attributes={"age": 12})  # most hold a number: the picker types it so
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    builder = page.locator(".rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    row = builder.locator(".rb-row").nth(0)
    row.locator("input[list]").fill("age")
    row.locator("select[aria-label=operator]").select_option("gt")
    row.locator("input[type=number]").fill("30")
    page.click(".rule-builder-preview-button")
    page.wait_for_selector(".rb-unread")
    assert page.locator(".rule-builder-preview-summary").inner_text().startswith("1 profile · counted in")
    assert "1 of the 3 newest profiles hold 'age' as text" in page.locator(".rb-unread").inner_text()


def test_an_event_condition_says_time_and_day_for_one_and_times_and_days_for_more(
    login, page, live_server, manager_alice
):
    """The row said "at least 1 time(s) in the last 30 days" whatever was typed."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    builder = page.locator(".rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    builder.locator(".rb-row select[aria-label='condition kind']").first.select_option("event")
    row = builder.locator(".rb-row").nth(0)
    count, within = row.locator("input[type=number]").nth(0), row.locator("input[type=number]").nth(1)
    assert (row.locator(".rb-times").inner_text(), row.locator(".rb-days").inner_text()) == ("time in the last", "days")
    count.fill("3")
    within.fill("1")
    assert (row.locator(".rb-times").inner_text(), row.locator(".rb-days").inner_text()) == ("times in the last", "day")
    assert "time(s)" not in row.inner_text()


def test_an_event_condition_without_days_reads_as_ever_not_in_the_last_days(login, page, live_server, manager_alice):
    """With the days box emptied (its placeholder "ever"), the row read "at least 1 time in the last
    ever days"; it reads "at least 1 time ever", as the rule is described elsewhere (no "in the
    last"), and the words come back with a number of days."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    builder = page.locator(".rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    builder.locator(".rb-row select[aria-label='condition kind']").first.select_option("event")
    row = builder.locator(".rb-row").nth(0)
    count, within = row.locator("input[type=number]").nth(0), row.locator("input[type=number]").nth(1)
    within.fill("")
    assert (row.locator(".rb-times").inner_text(), row.locator(".rb-days").inner_text()) == ("time", "")
    assert within.get_attribute("placeholder") == "ever"
    assert "in the last" not in row.inner_text()
    count.fill("2")
    assert row.locator(".rb-times").inner_text() == "times"
    within.fill("7")
    assert (row.locator(".rb-times").inner_text(), row.locator(".rb-days").inner_text()) == (
        "times in the last",
        "days",
    )


def test_the_builder_trims_text_compared_whole_as_it_is_typed(login, page, live_server, manager_alice):
    """The server refuses 'plan is "pro "' (white space around text compared whole): the builder
    trims what is typed under is / is not / is one of / is none of, so the segment saves; 'contains'
    keeps its spaces, which may be meant."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    page.fill("#id_name", "Pro")
    builder = page.locator(".rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    builder.locator("button", has_text="+ condition").first.click()
    plan = builder.locator(".rb-row").nth(0)
    plan.locator("input[list]").fill("plan")
    plan.locator("input[type=text]").nth(1).press_sequentially("pro ")
    plan.locator("input[type=text]").nth(1).blur()
    assert plan.locator("input[type=text]").nth(1).input_value() == "pro"
    city = builder.locator(".rb-row").nth(1)
    city.locator("input[list]").fill("city")
    city.locator("select[aria-label=operator]").select_option("contains")
    city.locator("input[type=text]").nth(1).press_sequentially(" par")
    builder.locator("button", has_text="+ condition").first.click()
    tier = builder.locator(".rb-row").nth(2)
    tier.locator("input[list]").fill("tier")
    tier.locator("select[aria-label=operator]").select_option("in")
    tier.locator("input[type=text]").nth(1).press_sequentially(" gold ,silver ")
    tier.locator("input[type=text]").nth(1).blur()
    assert tier.locator("input[type=text]").nth(1).input_value() == "gold, silver"
    page.click("input[name=_save]")
    page.wait_for_url(f"{live_server.url}/admin/audiences/segment/")
    assert Segment.objects.get(name="Pro").rules == {
        "all": [
            {"attribute": "plan", "type": "string", "op": "eq", "value": "pro"},
            {"attribute": "city", "type": "string", "op": "contains", "value": " par"},
            {"attribute": "tier", "type": "string", "op": "in", "value": ["gold", "silver"]},
        ]
    }


def test_server_errors_are_outlined_in_the_builder(login, page, live_server, manager_alice, screenshot):
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    page.fill("#id_name", "Broken")
    tree = {
        "all": [
            {"attribute": "plan", "type": "string", "op": "eq", "value": "pro"},
            {"any": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]},
        ]
    }
    page.evaluate("t => { document.querySelector('#id_rules').value = JSON.stringify(t); }", tree)
    page.evaluate("() => document.querySelector('#segment_form').submit()")
    page.wait_for_selector(".errorlist")
    # The error says where in words; the builder outlines that condition, found by its JSON path.
    errors = page.locator(".errorlist").first.inner_text()
    assert "Group 2, condition 1 (age is more than): expected a number" in errors and "rules.all" not in errors
    assert page.locator(".rb-row.rb-error").count() == 1
    assert page.locator(".rb-row.rb-error").get_attribute("data-path") == "rules.all[1].any[0]"
    screenshot("segment-rule-errors")
    assert json.loads(page.locator("#id_rules").input_value()) == tree


@pytest.mark.parametrize(
    ("tree", "said"),
    [
        (
            {"attribute": "age", "type": "number", "op": "gt", "value": "old"},
            "Condition 1 (age is more than): expected",
        ),
        ({"segment": 987654}, "Condition 1 (member of a segment): there is no segment 987654"),
    ],
    ids=["value", "segment"],
)
def test_server_errors_of_rules_whose_top_level_is_one_condition_are_outlined_in_the_builder(
    login, page, live_server, manager_alice, tree, said
):
    """Rules whose top level is one condition (as the API may save them) read in the builder as a
    group of one; their errors' paths ("rules.value", "rules.segment") outlined the whole group and
    read "The rules". They outline that condition's row, and say it is condition 1."""
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    page.fill("#id_name", "Broken at the top")
    page.evaluate("t => { document.querySelector('#id_rules').value = JSON.stringify(t); }", tree)
    page.evaluate("() => document.querySelector('#segment_form').submit()")
    page.wait_for_selector(".errorlist")
    assert said in page.locator(".errorlist").first.inner_text()
    assert page.locator(".rb-error").count() == 1
    assert page.locator(".rb-row.rb-error").get_attribute("data-path") == "rules.all[0]"


def test_manager_imports_a_csv_and_watches_its_progress(login, page, live_server, manager_alice, screenshot):
    from audiences.models import Import, Profile

    rows = "external_id,plan,age\n" + "".join(f"u-{n},pro,{20 + n % 50}\n" for n in range(300)) + ",broken,1\n"
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/import/add/")
    page.set_input_files("#id_file", files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": rows.encode()}])

    # Only the fields of the target chosen show: none for profiles only, a name for a new segment,
    # a static segment to pick for one added to or replaced.
    def shown() -> set[str]:
        return {name for name in ("segment", "segment_name") if page.is_visible(f".form-row.field-{name}")}

    assert shown() == set()
    for target, fields in (("add_to_segment", {"segment"}), ("replace_segment", {"segment"}), ("profiles", set())):
        page.select_option("#id_target", target)
        assert shown() == fields, target
    page.select_option("#id_target", "new_segment")
    assert shown() == {"segment_name"}
    page.fill("#id_segment_name", "Imported pros")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/audiences/import/*/change/**")
    page.wait_for_selector(".import-progress")
    record = Import.objects.get(segment__name="Imported pros")
    page.wait_for_function("() => document.querySelector('.import-progress progress').value == 100", timeout=30_000)
    screenshot("import-progress")
    record.refresh_from_db()
    assert record.status == Import.Status.DONE
    assert Profile.objects.filter(external_id__startswith="u-").count() == 300
    assert record.rows_failed == 1
    text = page.locator("#content").inner_text()
    assert "300" in text
    # The page's fields say what the bar says.
    page.wait_for_function("() => document.querySelector('.field-status .readonly').textContent.trim() == 'Done'")
    assert page.locator(".field-rows_failed .readonly").inner_text().strip() == "1"
    # Ended, the page loads again and lists the row that failed, with its reason.
    page.wait_for_selector(".field-failed_rows table")
    assert page.locator(".field-failed_rows td").all_inner_texts() == ["302", "—", "external_id is empty"]


def test_a_running_imports_fields_follow_its_progress_with_the_sites_empty_value(
    login, page, live_server, manager_alice
):
    """The page's script writes each field from the progress it polls: an import without an error
    reads the em dash the page was served with (it wrote a hyphen there)."""
    from audiences.models import Import

    running = Import.objects.create(created_by=manager_alice, status="running", rows_done=12, original_name="x.csv")
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/import/{running.pk}/change/")
    assert page.locator(".field-error .readonly").inner_text().strip() == "—"
    Import.objects.filter(pk=running.pk).update(rows_done=13)
    page.wait_for_function("() => document.querySelector('.field-rows_done .readonly').textContent.trim() == '13'")
    assert page.locator(".field-error .readonly").inner_text().strip() == "—"


def test_an_empty_number_is_refused_naming_the_condition(login, page, live_server, manager_alice):
    ProfileFactory(external_id="ann", attributes={"age": 34})
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/add/")
    page.fill("#id_name", "Older than blank")
    builder = page.locator(".rule-builder")
    builder.locator("button", has_text="+ condition").first.click()
    row = builder.locator(".rb-row").nth(0)
    row.locator("input[list]").fill("age")
    row.locator("select[aria-label=operator]").select_option("gt")
    assert row.locator("input[type=number]").input_value() == ""  # never a silent 0
    page.click("input[name=_save]")
    page.wait_for_selector(".errorlist")
    said = "Condition 1 (age is more than): the value is empty: enter a number"
    assert said in page.locator(".errorlist").first.inner_text()
    assert not Segment.objects.filter(name="Older than blank").exists()


def test_manager_maps_the_columns_of_a_file_before_importing(login, page, live_server, manager_alice, screenshot):
    from audiences.models import Import, Profile

    rows = "Customer ID,Plan,Age,notes\n" + "".join(f"c-{n},pro,{30 + n},note {n}\n" for n in range(8))
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/import/add/")
    page.set_input_files("#id_file", files=[{"name": "crm.csv", "mimeType": "text/csv", "buffer": rows.encode()}])
    mapping = page.locator(".import-mapping")
    mapping.wait_for()
    assert mapping.locator("tbody tr").count() == 4
    assert page.locator(".import-preview tbody tr").count() == 5  # the first five rows
    mapping.locator("tr[data-column='Customer ID'] .mapping-target").select_option("external_id")
    mapping.locator("tr[data-column='Age'] .mapping-type").select_option("number")
    mapping.locator("tr[data-column='notes'] .mapping-target").select_option("skip")
    assert page.input_value("#id_columns_text").splitlines() == [
        "Customer ID -> external_id",
        "Age = number",
        "notes = skip",
    ]
    screenshot("import-column-mapping")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/audiences/import/*/change/**")
    page.wait_for_function("() => document.querySelector('.field-status .readonly').textContent.trim() == 'Done'")
    record = Import.objects.get(original_name="crm.csv")
    assert record.rows_imported == 8
    assert Profile.objects.get(external_id="c-3").attributes == {"Plan": "pro", "Age": 33}


def test_manager_maps_the_columns_of_a_semicolon_separated_file(login, page, live_server, manager_alice):
    """Excel's CSV in many European locales: a 'sep=;' line, then columns separated by semicolons.
    The mapping step showed one column named 'sep='; it reads the file's columns, as the import does."""
    from audiences.models import Import, Profile

    rows = "sep=;\r\nexternal_id;Plan;Score\r\n" + "".join(f"s-{n};pro;{n},5\r\n" for n in range(3))
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/import/add/")
    page.set_input_files("#id_file", files=[{"name": "excel.csv", "mimeType": "text/csv", "buffer": rows.encode()}])
    mapping = page.locator(".import-mapping")
    mapping.wait_for()
    assert mapping.locator("tbody tr td:first-child").all_inner_texts() == ["external_id", "Plan", "Score"]
    assert page.locator(".import-preview tbody tr").first.locator("td").all_inner_texts() == ["s-0", "pro", "0,5"]
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/audiences/import/*/change/**")
    page.wait_for_function("() => document.querySelector('.field-status .readonly').textContent.trim() == 'Done'")
    assert "semicolon (;)" in page.locator(".field-separator .readonly").inner_text()
    assert Import.objects.get(original_name="excel.csv").rows_imported == 3
    assert Profile.objects.get(external_id="s-2").attributes == {"Plan": "pro", "Score": "2,5"}


def test_manager_reads_each_segments_reach_in_the_list_and_counts_it_again(
    login, page, live_server, manager_alice, pushsim_app, screenshot
):
    from accounts.services import access_grant
    from audiences.services.segments import segment_create
    from tests.factories import DeviceFactory

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    pros = [ProfileFactory(attributes={"plan": "pro"}) for _ in range(4)]
    DeviceFactory(profile=pros[0], app=pushsim_app, platform="ios")
    DeviceFactory(profile=pros[1], app=pushsim_app, platform="android", push_enabled=False)
    rules = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}
    segment = segment_create(name="Pros", rules=rules, by=manager_alice)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/audiences/segment/")
    row = page.locator("#result_list tbody tr", has_text="Pros")
    assert "Not counted yet" in row.locator(".field-reach").inner_text()
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "count_reach")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist .success:has-text('1 segment counted.')")
    reach = f"{pushsim_app.name}: 4 profiles → 2 reachable (iOS 1 / Android 1) → 1 opted in"
    assert row.locator(".field-reach").inner_text().strip() == reach
    assert row.locator(".field-counted").inner_text().endswith("ago")
    screenshot("segment-list-reach")

    # A fifth pro profile: the list keeps the last count until the segment is counted again.
    DeviceFactory(profile=ProfileFactory(attributes={"plan": "pro"}), app=pushsim_app, platform="ios")
    page.reload()
    assert row.locator(".field-reach").inner_text().strip() == reach
    page.goto(f"{live_server.url}/admin/audiences/segment/{segment.pk}/change/")
    page.click(".rule-builder-preview-button")
    page.wait_for_selector(".rb-reach")
    page.goto(f"{live_server.url}/admin/audiences/segment/")
    assert "5 profiles → 3 reachable (iOS 2 / Android 1) → 2 opted in" in row.locator(".field-reach").inner_text()
