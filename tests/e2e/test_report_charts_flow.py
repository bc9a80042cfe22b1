"""Report charts on the campaign, dispatch and journey pages: what is drawn is the figures of the
send, read from the page's JSON script tag, with axes, legends, the time zone, and each chart's
figures as a table; the light text of the admin's dark mode; nothing for those outside access."""

import pytest

from accounts.services import access_grant
from campaigns.services.lifecycle import campaign_create
from journeys.services.lifecycle import journey_create
from tests.delivery.reporting import sent_dispatch
from tests.e2e.conftest import ARTIFACTS
from tests.factories import AppFactory, PushContentFactory, SegmentFactory

pytestmark = pytest.mark.browser

DRAWN = """() => Object.fromEntries([...document.querySelectorAll('.pd-report canvas')].map(c => [c.id, {
    labels: c.chart.data.labels,
    series: Object.fromEntries(c.chart.data.datasets.map(d => [d.label, d.data])),
    x: c.chart.options.scales.x.title.text,
    y: c.chart.options.scales.y.title.text,
    legend: c.chart.options.plugins.legend.labels.color,
}]))"""


# The y axis labels of a chart left out for want of room, or that begin left of its canvas (drawn
# right-aligned at their x, each line of a label as wide as the chart's own font measures it).
LABELS_INSIDE = """(id) => {
    const chart = document.getElementById(id).chart, ctx = chart.ctx, items = chart.scales.y.getLabelItems();
    const drawn = items.map((item) => item.label), cut = chart.data.labels.filter((l) => !drawn.includes(l));
    for (const item of items) {
        ctx.save();
        ctx.font = item.font.string;
        const widest = Math.max(...[].concat(item.label).map((line) => ctx.measureText(line).width));
        ctx.restore();
        if (item.options.translation[0] - widest < 0) cut.push(item.label);
    }
    return cut;
}"""


def _shoot(page, selector: str, name: str) -> None:
    """Save a screenshot of one part of the page under test-artifacts/screenshots/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(selector).screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _report(page) -> tuple[dict, dict]:
    page.wait_for_function(
        "() => document.querySelector('#pd-chart-funnel') && document.querySelector('#pd-chart-funnel').chart"
    )
    data = page.evaluate("() => JSON.parse(document.getElementById('pd-report-data').textContent)")
    return data, page.evaluate(DRAWN)


def _check_send_charts(page, data, drawn):
    """The seven-row send of tests.delivery.reporting, as drawn and as tabled."""
    assert data["funnel"]["values"] == [7, 5, 3, 2]
    funnel = drawn["pd-chart-funnel"]
    assert funnel["labels"] == ["targeted", "opted in", "accepted", "opened"]
    assert funnel["series"] == {"pushes": [7, 5, 3, 2]}
    timeline = drawn["pd-chart-timeline"]
    assert timeline["labels"] == ["2026-11-28 10:00", "2026-11-28 11:00", "2026-11-28 12:00"]
    assert timeline["series"] == {"accepted": [2, 1, 0], "opened": [0, 1, 1]}
    assert timeline["x"] == "hour (UTC)" and timeline["y"] == "pushes"
    platforms = drawn["pd-chart-platforms"]
    assert platforms["labels"] == ["iOS", "Android", "no phone"]  # words, not codes
    assert platforms["series"]["accepted"] == [2, 1, 0] and platforms["series"]["opened"] == [1, 1, 0]
    assert platforms["series"] == data["platforms"]["series"]
    reasons = drawn["pd-chart-reasons"]
    # Each reason drawn, its words whole (on lines of their own where long): the longest were cut
    # off at the chart's left edge ("ed: notifications are turned off on the phone").
    assert page.evaluate(LABELS_INSIDE, "pd-chart-reasons") == []
    assert [" ".join(label) if isinstance(label, list) else label for label in reasons["labels"]] == [
        "failed: the app was uninstalled or the token is no longer valid (APNs)",
        "skipped: the profile had its share of pushes (frequency cap)",
        "skipped: no phone registered for the app",
        "skipped: notifications are turned off on the phone",
    ]
    assert reasons["series"] == {"pushes": [1, 1, 1, 1]}
    # The same figures as tables, for those who do not see the charts.
    funnel_table = page.locator("#pd-report-funnel table").inner_text(timeout=1000)
    assert [line.split("\t") for line in funnel_table.strip().splitlines()[1:]] == [
        ["targeted", "7"],
        ["opted in", "5"],
        ["accepted", "3"],
        ["opened", "2"],
    ]
    assert page.get_attribute("#pd-chart-timeline", "aria-label").startswith("Accepted and opened per hour, in UTC")


def _shop_and_everyone(manager):
    """The app Shop and the segment Everyone, both granted to ``manager``."""
    app = AppFactory(name="Shop")
    access_grant(obj=app, to=manager, by=None)
    segment = SegmentFactory(name="Everyone")
    access_grant(obj=segment, to=manager, by=None)
    return app, segment


def test_manager_reads_the_charts_of_a_campaign_and_of_its_dispatch(
    login, page, live_server, manager_alice, manager_mallory
):
    app, segment = _shop_and_everyone(manager_alice)
    campaign = campaign_create(
        by=manager_alice, name="Black Friday", app=app, segment=segment, content=PushContentFactory(app=app)
    )
    dispatch = sent_dispatch(app, kind="campaign", source_id=campaign.pk)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    page.locator("#pd-report-timeline details").evaluate("d => d.open = true")
    page.locator("#pd-report-funnel details").evaluate("d => d.open = true")
    data, drawn = _report(page)
    _check_send_charts(page, data, drawn)
    assert page.locator("#campaign-report a", has_text="Export as CSV").count() == 1  # the CSV stays
    _shoot(page, "#campaign-report", "campaign-report-charts")

    page.goto(f"{live_server.url}/admin/delivery/dispatch/{dispatch.pk}/change/")
    page.locator("#pd-report-funnel details").evaluate("d => d.open = true")
    data, drawn = _report(page)
    _check_send_charts(page, data, drawn)

    # Dark mode: axes and legends are drawn in the admin's light text.
    page.emulate_media(color_scheme="dark")
    page.reload()
    _, drawn = _report(page)
    fg = page.evaluate("() => getComputedStyle(document.documentElement).getPropertyValue('--body-fg').trim()")
    assert fg.lower() in ("#eeeeee", "#eee") and drawn["pd-chart-platforms"]["legend"] == fg
    page.emulate_media(color_scheme="light")

    # A Manager without access to the app finds neither page, nor their figures.
    login(manager_mallory)
    for url in (f"/admin/campaigns/campaign/{campaign.pk}/change/", f"/admin/delivery/dispatch/{dispatch.pk}/change/"):
        response = page.goto(f"{live_server.url}{url}")
        assert response.status == 404 and page.locator("#pd-report-data").count() == 0


def test_the_report_of_a_campaign_that_sent_nothing_draws_no_chart_and_its_script_runs_clean(
    login, page, live_server, manager_alice
):
    app, segment = _shop_and_everyone(manager_alice)
    campaign = campaign_create(
        by=manager_alice, name="Black Friday", app=app, segment=segment, content=PushContentFactory(app=app)
    )
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    page.wait_for_load_state("load")
    assert page.locator("#pd-report-data").count() == 1 and page.locator(".pd-report canvas").count() == 0
    assert page.locator("#pd-report-funnel").inner_text().endswith("Nothing targeted yet.")
    assert page.locator("#pd-report-platforms").inner_text().endswith("Nothing targeted yet.")
    assert errors == []


def test_manager_reads_a_journeys_charts_per_step_and_a_viewer_without_access_does_not(
    login, page, live_server, manager_alice, viewer_carol
):
    app, segment = _shop_and_everyone(manager_alice)
    content = PushContentFactory(app=app, name="Welcome")
    graph = {
        "steps": [
            {"id": "hello", "type": "push", "content": content.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = journey_create(
        by=manager_alice, name="Welcome", app=app, graph=graph, entry_kind="segment", entry_segment=segment
    )
    version = journey.versions.get()
    step = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "hello"}}
    sent_dispatch(app, kind="journey", source_id=version.pk, context=step)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    page.locator("#pd-report-funnel details").evaluate("d => d.open = true")
    page.locator("#pd-report-timeline details").evaluate("d => d.open = true")
    data, drawn = _report(page)
    _check_send_charts(page, data, drawn)
    steps = drawn["pd-chart-steps"]
    assert steps["labels"] == ["hello", "done"] and steps["x"] == "step"
    # Sent: handed to a provider (3 accepted, 1 failed); the other 3 of the 7 targeted were skipped.
    assert steps["series"]["sent"] == [4, 0] and steps["series"]["accepted"] == [3, 0]
    assert steps["series"]["skipped"] == [3, 0]
    assert steps["series"] == data["steps"]["series"]
    _shoot(page, "#pd-report", "journey-report-charts")

    login(viewer_carol)  # a Viewer may read journeys, but not this app's
    response = page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    assert response.status == 404 and page.locator("#pd-report-data").count() == 0


@pytest.mark.browser_context_args(timezone_id="America/New_York")
def test_the_timelines_tooltips_name_the_zone_of_its_hours(login, page, live_server, manager_alice):
    """The timeline's axis named the campaign's zone, but a tooltip read a bare '2026-11-28 11:00',
    which a marketer pointing at a bar in New York took for their own hour. Each tooltip names the
    zone its hour is in (the campaign's, as the axis and the table), whatever the browser's zone."""
    app, segment = _shop_and_everyone(manager_alice)
    campaign = campaign_create(
        by=manager_alice,
        name="Black Friday",
        app=app,
        segment=segment,
        content=PushContentFactory(app=app),
        time_zone="Europe/Paris",
    )
    sent_dispatch(app, kind="campaign", source_id=campaign.pk)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    _report(page)
    titles = page.evaluate(
        "() => { const c = document.getElementById('pd-chart-timeline').chart;"
        " return c.data.labels.map((l, i) => { c.tooltip.setActiveElements([{datasetIndex: 0, index: i}], {x: 0, y: 0});"
        " c.update(); return c.tooltip.title.join(' '); }); }"
    )
    assert titles == [
        "2026-11-28 11:00 (Europe/Paris)",
        "2026-11-28 12:00 (Europe/Paris)",
        "2026-11-28 13:00 (Europe/Paris)",
    ]
    assert page.evaluate("() => document.getElementById('pd-chart-timeline').chart.options.scales.x.title.text") == (
        "hour (Europe/Paris)"
    )
