"""The journey canvas: laid out by dagre with the entry as a step and labels on the branch edges,
nothing overlapping or clipped, zoomed and panned; a click on a step opens its editor in a draft
and its enrollments once live; the approver's review draws the same canvas beside the phones."""

import pytest

from accounts.services import access_grant
from audiences.models import Segment
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from journeys.services.lifecycle import journey_create, journey_submit
from tests.e2e.conftest import ARTIFACTS

pytestmark = pytest.mark.browser

NODES = """() => [...document.querySelectorAll('svg.journey-graph g.step')].map(g => {
    const box = g.getBBox(), m = g.getCTM(), svg = g.ownerSVGElement.getCTM();
    return {id: g.dataset.step, text: g.textContent, x: m.e - svg.e, y: m.f - svg.f, w: box.width, h: box.height};
})"""
EDGES = """() => [...document.querySelectorAll('svg.journey-graph g.edge')].map(g => {
    const path = g.querySelector('path'), end = path.getPointAtLength(path.getTotalLength());
    const label = g.querySelector('.edge-label');
    return {from: g.dataset.from, to: g.dataset.to, label: label ? label.textContent : '', end: [end.x, end.y]};
})"""


def _graph(vips: int, content_a: int, content_b: int) -> dict:
    """entry → a condition (VIPs / all others) → an A/B split of two pushes → exit."""
    return {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "VIP", "segment": vips, "next": "ab"}],
                "else": "done",
            },
            {
                "id": "ab",
                "type": "split",
                "branches": [
                    {"label": "A", "percent": 50, "next": "push_a"},
                    {"label": "B", "percent": 50, "next": "push_b"},
                ],
            },
            {"id": "push_a", "type": "push", "content": content_a, "next": "done"},
            {"id": "push_b", "type": "push", "content": content_b, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


def _overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def test_the_canvas_draws_splits_opens_steps_and_the_review_shows_the_phones(
    login, page, live_server, manager_alice, approver_bob, outsider_dave, pushsim_app
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    everyone = Segment.objects.create(name="Everyone", kind="static")
    vips = Segment.objects.create(name="VIPs", kind="static")
    for segment in (everyone, vips):
        access_grant(obj=segment, to=manager_alice, by=None)
    content_a = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Offer A", title="Ten off", body="A"), by=manager_alice
    )
    content_b = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Offer B", title="Free ship", body="B"), by=manager_alice
    )
    journey = journey_create(
        by=manager_alice,
        name="VIP offers",
        app=pushsim_app,
        graph=_graph(vips.pk, content_a.pk, content_b.pk),
        entry_kind="segment",
        entry_segment=everyone,
    )

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    page.wait_for_selector("svg.journey-graph[data-laid-out=dagre]")
    nodes = {node["id"]: node for node in page.evaluate(NODES)}
    assert set(nodes) == {"(entry)", "check", "ab", "push_a", "push_b", "done"}  # the entry is a step
    assert "Everyone in 'Everyone'" in nodes["(entry)"]["text"]
    assert "Offer A" in nodes["push_a"]["text"] and "50% / 50%" in nodes["ab"]["text"]
    assert "VIP / all others" in nodes["check"]["text"]  # the condition names its branches
    boxes = list(nodes.values())
    assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    width, height = page.evaluate(
        "() => [...document.querySelector('svg.journey-graph').getAttribute('viewBox').split(' ')].slice(2).map(Number)"
    )
    assert all(0 <= n["x"] and n["x"] + n["w"] <= width and 0 <= n["y"] and n["y"] + n["h"] <= height for n in boxes)

    # Labels on the branch edges; "all others" leads into the exit, not into a push.
    edges = {(e["from"], e["to"]): e for e in page.evaluate(EDGES)}
    assert edges[("check", "ab")]["label"].startswith("VIP")
    assert edges[("check", "done")]["label"].startswith("all others")
    assert edges[("ab", "push_a")]["label"].startswith("A") and edges[("ab", "push_b")]["label"].startswith("B")
    done = nodes["done"]
    x, y = edges[("check", "done")]["end"]
    assert done["x"] - 2 <= x <= done["x"] + done["w"] + 2 and done["y"] - 2 <= y <= done["y"] + done["h"] + 2

    # Zoom in, then fit the view's width.
    natural = float(page.get_attribute("svg.journey-graph", "width"))
    page.click(".journey-canvas [data-zoom=in]")
    assert float(page.get_attribute("svg.journey-graph", "width")) == pytest.approx(natural * 1.25, abs=1)
    assert page.locator(".journey-canvas-scale").inner_text() == "125%"
    page.click(".journey-canvas [data-zoom=fit]")
    view = page.evaluate("() => document.querySelector('.journey-canvas-view').clientWidth")
    assert float(page.get_attribute("svg.journey-graph", "width")) <= view
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".journey-canvas").screenshot(path=str(ARTIFACTS / "journey-canvas.png"))

    # In a draft, a click on a step opens its row in the step editor.
    page.click("svg.journey-graph g.step[data-step=push_b] a")
    page.wait_for_url("**#step-push_b")
    assert page.evaluate("() => document.querySelector(':target').dataset.step") == "push_b"

    # The approver's review draws the same canvas, with each push's phones beside it.
    journey_submit(journey_id=journey.pk, by=manager_alice)
    login(approver_bob)
    page.set_viewport_size({"width": 1400, "height": 900})  # wide enough for the phones beside the canvas
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('VIP offers')")
    page.wait_for_url("**/review/")
    page.wait_for_selector(".journey-review svg.journey-graph[data-laid-out=dagre]")
    assert page.locator(".journey-review svg.journey-graph g.step").count() == 6
    assert "Ten off" in page.locator(".journey-review-push[data-step=push_a]").inner_text()
    assert "Free ship" in page.locator(".journey-review-push[data-step=push_b]").inner_text()
    # The canvas keeps to its column, scrolling inside it: it ran under the phones beside it.
    canvas = page.locator(".journey-review .journey-canvas").bounding_box()
    for phones in page.locator(".journey-review-push").all():
        box = phones.bounding_box()
        assert not _overlap(
            {"x": canvas["x"], "y": canvas["y"], "w": canvas["width"], "h": canvas["height"]},
            {"x": box["x"], "y": box["y"], "w": box["width"], "h": box["height"]},
        )
    page.click("input[name=_approve]")
    page.click("input[name=_send_confirmed]")  # its segment enters on approval: asked first
    page.wait_for_selector(".messagelist .success")

    # Live, a click on a step opens its enrollments at that step.
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    page.wait_for_selector("svg.journey-graph[data-laid-out=dagre]")
    page.click("svg.journey-graph g.step[data-step=check] a")
    page.wait_for_url("**/admin/journeys/enrollment/?*step=check*")
    assert page.locator("#changelist").count() == 1

    # Someone without access finds no journey, hence no canvas.
    login(outsider_dave)
    response = page.goto(f"{live_server.url}/admin/journeys/journey/{journey.pk}/change/")
    assert response.status in (403, 404) and page.locator("svg.journey-graph").count() == 0
