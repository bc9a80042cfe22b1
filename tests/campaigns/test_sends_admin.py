"""A campaign's sends: its page lists the latest 10 dispatches, newest first, with the count of all
and a link to their list, which pages them and holds only those of a campaign the reader may see.
A campaign recurring every minute makes 100,000 dispatches in ten weeks: its page sorted them all
to show 10, and said neither how many there were nor where the others were."""

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns.admin import LATEST_SENDS
from delivery.admin.dispatches import campaign_sends_url
from delivery.models import Dispatch
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2027, 3, 1, 9, 0, tzinfo=dt.UTC)


def _page(campaign) -> str:
    return f"/admin/campaigns/campaign/{campaign.pk}/change/"


def _text(html: str) -> str:
    spaced = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    return re.sub(r" ([.,])", r"\1", spaced).strip()


def _box(page: str) -> str:
    start = page.index(">", page.index('id="campaign-sends"')) + 1
    return page[start:].split("</div>")[0]


def _box_sends(page: str) -> list[int]:
    """The dispatches the Sends box links to, in its order."""
    return [int(pk) for pk in re.findall(r'href="/admin/delivery/dispatch/(\d+)/change/"', _box(page))]


def _list_sends(page: str) -> list[int]:
    """The dispatches of the list's page, in its order."""
    table = page[page.index('id="result_list"') : page.index("</table>", page.index('id="result_list"'))]
    return [int(pk) for pk in re.findall(r'href="/admin/delivery/dispatch/(\d+)/change/', table)]


def _sends(campaign, n: int, *, first: int = 0, kind: str = "", source_id: int | None = None) -> list[Dispatch]:
    """``n`` finished dispatches of the campaign, a minute apart from ``T0`` plus ``first`` minutes,
    every third one a stream of its API triggers (a campaign's kind may change while it is a draft)."""
    kinds = (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER)
    return Dispatch.objects.bulk_create(
        Dispatch(
            app=campaign.app,
            kind=kind or kinds[i % 3],
            source_id=campaign.pk if source_id is None else source_id,
            label=f"Run {first + i}",
            content_spec=campaign.content.spec(),
            status=Dispatch.Status.DONE,
            total=3,
            accepted=2,
            created_at=T0 + dt.timedelta(minutes=first + i),
        )
        for i in range(n)
    )


def _newest(campaign) -> list[int]:
    return list(
        Dispatch.objects.filter(source_id=campaign.pk, kind__in=("campaign", "api_trigger"))
        .order_by("-created_at", "-id")
        .values_list("pk", flat=True)
    )


@pytest.fixture
def campaign(make_campaign):
    """A campaign of the Shop app, beside what shares its number: a journey version's batches, a
    content's test sends, and another campaign's sends."""
    campaign = make_campaign()
    other = make_campaign(name="Autumn sale")
    _sends(campaign, 2, first=10_000, kind=Dispatch.Kind.JOURNEY)
    _sends(campaign, 2, first=10_000, kind=Dispatch.Kind.TEST)
    _sends(other, 3, first=10_000, source_id=other.pk)
    return campaign


def test_the_campaign_page_lists_the_latest_sends_with_the_count_of_all_in_as_many_queries_however_many(
    client, campaign, manager_alice
):
    client.force_login(manager_alice)
    _sends(campaign, 3)
    client.get(_page(campaign))
    with CaptureQueriesContext(connection) as few:
        page = client.get(_page(campaign)).content.decode()
    assert _box_sends(page) == _newest(campaign)
    assert _text(_box(page)).startswith("Dispatches, newest first: all 3 — their list, with filters.")

    _sends(campaign, 1_200, first=3)
    with CaptureQueriesContext(connection) as many:
        page = client.get(_page(campaign)).content.decode()
    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]
    assert _box_sends(page) == _newest(campaign)[:LATEST_SENDS]
    assert Dispatch.objects.get(pk=_box_sends(page)[0]).label == "Run 1202"
    box = _box(page)
    # Worded as its occurrences are: the latest of how many, and a link to all of them.
    assert _text(box).startswith("Dispatches, newest first: the latest 10 of 1,203 — all of them, with filters.")
    assert "Occurrences (listed below): none yet." in _text(box)
    assert f'href="/admin/delivery/dispatch/?campaign={campaign.pk}" class="dispatches-list"' in box


def test_a_campaign_that_sent_nothing_says_so(client, campaign, manager_alice):
    client.force_login(manager_alice)
    box = _box(client.get(_page(campaign)).content.decode())
    assert _text(box) == "Dispatches: none yet. Occurrences (listed below): none yet."


def test_the_sends_box_reads_the_latest_from_the_campaigns_index_without_sorting_them(
    client, campaign, manager_alice, admin_erin
):
    """Its latest 10 and its count read ``dispatch_campaign_sends_idx``: the newest first without
    sorting the campaign's dispatches, and the count from the index alone, for a user who sees
    through the app's scope as for one who sees every app."""
    _sends(campaign, 1_200)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE delivery_dispatch")
    for user in (manager_alice, admin_erin):
        client.force_login(user)
        with CaptureQueriesContext(connection) as page:
            assert client.get(_page(campaign)).status_code == 200
        reads = [
            q["sql"]
            for q in page.captured_queries
            if 'FROM "delivery_dispatch"' in q["sql"]
            and f'"delivery_dispatch"."source_id" = {campaign.pk}' in q["sql"]
            and ("LIMIT 10" in q["sql"] or "COUNT(*)" in q["sql"])
        ]
        assert len(reads) == 2, reads
        latest, count = sorted(reads, key=lambda sql: "COUNT(*)" in sql)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")  # a plan that could use an index does
            cursor.execute(f"EXPLAIN {latest}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Index Scan Backward using dispatch_campaign_sends_idx" in plan, plan
            assert "Sort" not in plan, plan
            cursor.execute(f"EXPLAIN {count}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            # Counted through an index of the campaign's (index-only once the table is vacuumed).
            assert re.search(rf"Index Cond: .*source_id = {campaign.pk}\)", plan), plan


def test_the_sends_list_holds_one_campaigns_dispatches_newest_first_for_whoever_may_see_it(
    client, campaign, viewer_carol
):
    _sends(campaign, 120)
    newest = _newest(campaign)
    client.force_login(viewer_carol)
    answer = client.get(campaign_sends_url(campaign.pk))
    assert answer.status_code == 200
    page = answer.content.decode()
    assert "<h1>Sends of “Spring sale”</h1>" in page
    assert "120 dispatches" in _text(page)  # counted, as the campaign page counts them
    assert _list_sends(page) == newest[:100]
    second = client.get(campaign_sends_url(campaign.pk) + "&p=2").content.decode()
    assert _list_sends(second) == newest[100:]
    streams = client.get(campaign_sends_url(campaign.pk) + "&kind__exact=api_trigger").content.decode()
    assert _list_sends(streams) == [pk for pk in newest if Dispatch.objects.get(pk=pk).kind == "api_trigger"]

    # Without the filter, the list holds every dispatch of the app: the journey's, the test sends, the other campaign's.
    everything = _list_sends(client.get("/admin/delivery/dispatch/").content.decode())
    everything += _list_sends(client.get("/admin/delivery/dispatch/?p=2").content.decode())
    assert sorted(everything) == sorted(Dispatch.objects.values_list("pk", flat=True)) and len(everything) == 127


def test_whoever_may_not_see_the_campaign_gets_404_from_its_sends_list(client, campaign, outsider_dave):
    stranger = UserFactory(username="manager_stranger", role="Manager")  # the role, not the app
    _sends(campaign, 5)
    client.force_login(stranger)
    assert client.get(_page(campaign)).status_code == 404
    assert client.get(campaign_sends_url(campaign.pk)).status_code == 404
    assert client.get(campaign_sends_url(campaign.pk) + "&status__exact=done").status_code == 404
    listed = client.get("/admin/delivery/dispatch/")
    assert listed.status_code == 200 and list(listed.context["cl"].result_list) == []

    client.force_login(outsider_dave)  # no role at all
    assert not Group.objects.filter(user=outsider_dave).exists()
    assert client.get(campaign_sends_url(campaign.pk)).status_code == 403


def test_a_sends_list_of_what_is_no_campaign_answers_404(client, campaign, viewer_carol):
    client.force_login(viewer_carol)
    for value in ("abc", "0", "-1", "9" * 30, str(campaign.pk + 1000), ""):
        assert client.get(f"/admin/delivery/dispatch/?campaign={value}").status_code == 404, value


@pytest.mark.embedded  # the sources' sends read on SQLite too
@pytest.mark.presses("delivery.dispatch:stop")
def test_a_reader_granted_the_campaign_but_not_its_app_reads_its_sends_as_its_page_counts_them(client, campaign):
    """The report counted the campaign's sends, and the box said "ask for access", its list was
    empty and each send answered 404: dispatches were seen through their app only. A campaign
    granted alone shows its own sends (its runs, its API triggers' streams) and their rows; not its
    content's test sends, another campaign's or a journey's of the app. Stopping one, a write,
    still needs the app."""
    from accounts.services import access_grant
    from tests.delivery.reporting import sent_dispatch

    runs = _sends(campaign, 3)
    sent = sent_dispatch(campaign.app, kind="campaign", source_id=campaign.pk)
    running = _sends(campaign, 1, first=20)[0]
    Dispatch.objects.filter(pk=running.pk).update(status=Dispatch.Status.SENDING)
    test_send = _sends(campaign, 1, kind=Dispatch.Kind.TEST, source_id=campaign.content_id)[0]
    others = Dispatch.objects.exclude(pk__in=[d.pk for d in (*runs, sent, running)])
    assert others.count() == 8
    ours = _newest(campaign)
    assert len(ours) == 5

    for role in ("Viewer", "Manager"):
        reader = UserFactory(username=f"{role.lower()}_granted_the_campaign", role=role)
        access_grant(obj=campaign, to=reader, by=None)
        client.force_login(reader)
        page = client.get(_page(campaign)).content.decode()
        assert _text(_box(page)).startswith("Dispatches, newest first: all 5 — their list, with filters."), role
        assert _box_sends(page) == ours
        assert "<tr><th>Targeted</th><td>7</td></tr>" in page  # the report the box's sends add up to
        assert _list_sends(client.get(campaign_sends_url(campaign.pk)).content.decode()) == ours
        assert sorted(_list_sends(client.get("/admin/delivery/dispatch/").content.decode())) == sorted(ours)
        for pk in ours:
            assert client.get(f"/admin/delivery/dispatch/{pk}/change/").status_code == 200, pk
        for other in others:
            assert client.get(f"/admin/delivery/dispatch/{other.pk}/change/").status_code == 404, other.kind
        assert client.get(f"/admin/delivery/dispatch/{test_send.pk}/change/").status_code == 404
        rows = client.get(f"/admin/delivery/delivery/?dispatch__id__exact={sent.pk}").context["cl"].result_list
        assert len(rows) == 7
        assert client.get(f"/admin/delivery/delivery/{rows[0].pk}/change/").status_code == 200

        answer = client.post(
            "/admin/delivery/dispatch/", {"action": "stop", "_selected_action": [running.pk], "post": "yes"}
        )
        assert answer.status_code in (200, 302)
        assert Dispatch.objects.get(pk=running.pk).status == Dispatch.Status.SENDING, role

    stranger = UserFactory(username="viewer_stranger", role="Viewer")  # the role, neither app nor campaign
    client.force_login(stranger)
    assert client.get(_page(campaign)).status_code == 404
    assert list(client.get("/admin/delivery/dispatch/").context["cl"].result_list) == []
    assert client.get(f"/admin/delivery/dispatch/{sent.pk}/change/").status_code == 404


def test_an_open_stream_in_the_sends_box_says_what_it_has_done_as_its_rows_are_now(client, campaign, manager_alice):
    """An open stream's counters on its row are kept once a minute (calls append without touching
    it): the campaign page's Sends box sums its rollup, as the stream's own page and the home page
    do, not the row's last copy (which said 1 targeted, 1 accepted of 4 made and 3 accepted)."""
    from tests.test_home import make_sends

    stream = make_sends(
        campaign.app,
        [("accepted", "", "ios")] * 3 + [("failed", "BadDeviceToken", "ios")],
        finished_at=T0,
        label="API triggers",
        status="sending",
        kind=Dispatch.Kind.API_TRIGGER,
    )
    Dispatch.objects.filter(pk=stream.pk).update(
        standing=True, source_id=campaign.pk, created_at=T0 + dt.timedelta(days=30), total=1, accepted=1
    )
    client.force_login(manager_alice)
    box = _text(_box(client.get(_page(campaign)).content.decode()))
    assert "API triggers — Sending, 4 targeted, 3 accepted" in box
