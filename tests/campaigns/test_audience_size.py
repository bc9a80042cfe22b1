"""The campaign page's audience size: shown as last counted with its age (no count per view), "not
counted yet" when it never was in the campaign's app (a view writes nothing, whoever reads it), and
counted and kept by *Count now*, which only those who may edit the campaign can press."""

import datetime as dt

import pytest
from django.utils import timezone

from audiences.models import Segment
from tests.factories import AppFactory, DeviceFactory, ProfileFactory


def _page(client, campaign):
    return client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()


def _kept(segment, app):
    return next(f for f in Segment.objects.get(pk=segment.pk).last_reach if f["app"] == app.pk)


def _count(client, campaign, by):
    """*Count now*, pressed by ``by`` (the page it goes back to shows its message)."""
    client.force_login(by)
    answer = client.post(f"/admin/campaigns/campaign/{campaign.pk}/count-audience/", follow=True)
    assert "Audience counted: " in answer.content.decode()


def test_a_view_writes_nothing_and_says_the_size_is_not_counted_yet_with_how_to_count_it(
    client, make_campaign, segment, team, manager_alice, approver_bob, viewer_carol
):
    from campaigns.services.lifecycle import campaign_submit

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    campaign = make_campaign()
    stored = Segment.objects.filter(pk=segment.pk).values("last_reach", "last_count", "last_counted_at").get()

    client.force_login(viewer_carol)
    page = _page(client, campaign)
    assert Segment.objects.filter(pk=segment.pk).values("last_reach", "last_count", "last_counted_at").get() == stored
    # viewer_carol works on the app, not on the segment: it is said by number, and nothing of its size
    assert f"size not shown: segment #{segment.pk} is outside your access" in page
    assert "size not counted yet" not in page
    assert 'id="count-audience"' not in page
    client.force_login(manager_alice)
    page = _page(client, campaign)
    assert "Everyone: size not counted yet (Count now counts it)." in page
    assert 'id="count-audience"' in page
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)  # reading it in review
    assert "size not counted yet" in _page(client, campaign)
    assert Segment.objects.filter(pk=segment.pk).values("last_reach", "last_count", "last_counted_at").get() == stored


def test_count_now_keeps_the_figure_the_page_then_shows_with_its_age(
    client, make_campaign, segment, team, manager_alice, viewer_carol
):
    profile = ProfileFactory(locale="fr")
    DeviceFactory(profile=profile, app=team, platform="ios")
    campaign = make_campaign()
    _count(client, campaign, manager_alice)
    assert _kept(segment, team)["reachable"] == 1
    assert "1 reachable (iOS 1 / Android 0) → 1 opted in (counted under a minute ago)" in _page(client, campaign)

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="android")
    Segment.objects.filter(pk=segment.pk).update(
        last_reach=[{**_kept(segment, team), "counted_at": (timezone.now() - dt.timedelta(hours=3)).isoformat()}]
    )
    page = _page(client, campaign)
    assert "1 reachable (iOS 1 / Android 0) → 1 opted in (counted 3\xa0hours ago)" in page
    client.force_login(viewer_carol)  # who may not see the segment: told nothing of its size
    page = _page(client, campaign)
    assert f"size not shown: segment #{segment.pk} is outside your access" in page
    assert 'id="count-audience"' not in page
    assert _kept(segment, team)["reachable"] == 1  # the viewer's view counted nothing


@pytest.mark.presses("campaigns.campaign:count_audience")
def test_count_now_counts_and_keeps_for_a_manager_and_is_refused_to_a_viewer(
    client, make_campaign, segment, team, manager_alice, viewer_carol, outsider_dave
):
    campaign = make_campaign()
    url = f"/admin/campaigns/campaign/{campaign.pk}/count-audience/"
    _count(client, campaign, manager_alice)  # nobody yet
    assert _kept(segment, team)["reachable"] == 0
    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="android")

    client.force_login(viewer_carol)
    assert 'id="count-audience"' not in _page(client, campaign)
    assert client.post(url).status_code == 403
    assert _kept(segment, team)["reachable"] == 0
    client.force_login(outsider_dave)
    assert client.post(url).status_code == 404

    client.force_login(manager_alice)
    assert client.get(url).status_code == 405
    response = client.post(url, follow=True)
    assert "Audience counted: Everyone: 1 profile → 1 reachable (iOS 0 / Android 1)" in response.content.decode()
    assert _kept(segment, team)["reachable"] == 1
    assert "(counted under a minute ago)" in _page(client, campaign)


@pytest.mark.django_db(transaction=True)
def test_count_now_keeps_no_figure_counted_from_rules_changed_before_it_was_kept(
    make_campaign, segment, team, manager_alice
):
    """*Count now* read the segment's rules and counted them; a change of the rules committed
    meanwhile (forgetting the segment's figures), and the count then kept its figure beside them:
    the page said the size of rules the segment no longer had."""
    from audiences.services.segments import segment_update
    from campaigns.review import audience_kept_text
    from tests.locks import ProfilesHeld, concurrently, wait_for_blocked_writers

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    campaign = make_campaign()
    profiles, said = ProfilesHeld(), []

    def count():
        profiles.holding.wait(10)
        said.append(audience_kept_text(campaign, reader=manager_alice, count=True))

    def change():
        profiles.holding.wait(10)
        assert wait_for_blocked_writers(1)  # the count waits, the rules read
        segment_update(segment_id=segment.pk, rules={"none": [{"field": "locale", "op": "exists"}]}, by=manager_alice)
        profiles.released.set()

    assert concurrently(profiles.holder, count, change) == []
    assert "1 reachable" in said[0]  # of the rules it read
    assert not any(f["app"] == team.pk for f in Segment.objects.get(pk=segment.pk).last_reach or [])
    assert "size not counted yet" in audience_kept_text(campaign, reader=manager_alice)


@pytest.mark.django_db(transaction=True)
def test_count_now_keeps_no_figure_counted_from_a_used_segments_rules_changed_before_it_was_kept(
    make_campaign, segment, team, manager_alice
):
    """The segment was made to use one that uses a segment whose rules were changing: saved after
    the change had read who uses it, it kept its figures through the change. *Count now* then read
    the changing segment's old rules and counted them; the change committed meanwhile, and the count
    kept its figure: it checked only that its own segment's definition had not moved. It reads the
    versions of the segments the rules use before counting, and keeps only while they hold."""
    import threading

    from django.db import transaction

    from audiences.services.segments import segment_create, segment_update
    from campaigns.review import audience_kept_text
    from tests.locks import ProfilesHeld, concurrently, wait_for_blocked_writers

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    inner = segment_create(name="With a locale", rules={"all": [{"field": "locale", "op": "exists"}]}, by=manager_alice)
    middle = segment_create(name="Uses it", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    campaign = make_campaign()
    profiles, said = ProfilesHeld(), []
    changing, commit, committed = threading.Event(), threading.Event(), threading.Event()

    def change():
        profiles.holding.wait(10)
        with transaction.atomic():
            segment_update(segment_id=inner.pk, rules={"none": [{"field": "locale", "op": "exists"}]}, by=manager_alice)
            changing.set()
            commit.wait(20)
        committed.set()

    def count():
        changing.wait(10)
        segment_update(segment_id=segment.pk, rules={"all": [{"segment": middle.pk}]}, by=manager_alice)
        said.append(audience_kept_text(campaign, reader=manager_alice, count=True))

    def release():
        changing.wait(10)
        assert wait_for_blocked_writers(1)  # the count waits, the old rules read
        commit.set()
        committed.wait(10)
        profiles.released.set()

    assert concurrently(profiles.holder, change, count, release) == []
    assert "1 reachable" in said[0]  # of the rules it read
    assert not any(f["app"] == team.pk for f in Segment.objects.get(pk=segment.pk).last_reach or [])
    assert "size not counted yet" in audience_kept_text(campaign, reader=manager_alice)


def test_an_api_triggered_campaign_has_no_audience_to_count(client, make_campaign, manager_alice):
    campaign = make_campaign(kind="api_triggered", segment=None)
    client.force_login(manager_alice)
    page = _page(client, campaign)
    assert "Recipients named by each API call." in page
    assert 'id="count-audience"' not in page


def _review(client, request):
    return client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()


def _audience_said(page: str, *, before: str) -> str:
    """The audience's figures a page says after the segment's name, up to ``before``."""
    import html
    import re

    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))
    start = text.index("Everyone: ") + len("Everyone: ")
    return text[start : text.index(before, start)].strip()


def test_the_page_and_the_review_say_what_the_holdout_leaves_and_which_rules_may_hold_some_back(
    client, make_campaign, team, abc, manager_alice, approver_bob
):
    import datetime as dt_

    from campaigns.services.lifecycle import campaign_submit
    from delivery.models import DeliveryRules
    from tests.campaigns.helpers import variants_set

    DeliveryRules.objects.create(
        app=team, frequency_cap=1, frequency_window_hours=24, quiet_start=dt_.time(22), quiet_end=dt_.time(8)
    )
    for _ in range(10):
        DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc[:2], [25, 25], 50)
    _count(client, campaign, manager_alice)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    page = _page(client, campaign)
    review = _review(client, request)

    rules = (
        "the app's frequency cap (at most 1 push per profile in 24 h) and quiet hours (22:00–08:00 in each "
        "profile's time zone, UTC without one; pushes held until they end) may hold some back"
    )
    said = "10 profiles → 10 reachable (iOS 10 / Android 0) → 10 opted in"
    assert _audience_said(page, before="Count now") == (
        f"{said} (counted under a minute ago) → ≈ 5 after the 50% holdout; {rules}"
    )
    # The review counts now, and says the same of the same campaign.
    assert _audience_said(review, before="Audience definition") == f"{said} → ≈ 5 after the 50% holdout; {rules}"


def test_a_transactional_campaign_says_the_rules_do_not_apply_and_no_rules_say_nothing(
    client, make_campaign, team, manager_alice, approver_bob
):
    from campaigns.services.lifecycle import campaign_submit
    from delivery.models import DeliveryRules

    for _ in range(3):
        DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="android")
    campaign = make_campaign()
    _count(client, campaign, manager_alice)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    said = "3 profiles → 3 reachable (iOS 0 / Android 3) → 3 opted in"
    assert _audience_said(_page(client, campaign), before="Count now") == f"{said} (counted under a minute ago)"
    assert _audience_said(_review(client, request), before="Audience definition") == said

    DeliveryRules.objects.create(app=team, frequency_cap=3, frequency_window_hours=48)
    transactional = make_campaign(name="Receipts", purpose="transactional")
    request = campaign_submit(campaign_id=transactional.pk, by=manager_alice)
    rules = "transactional: it bypasses the app's frequency cap (at most 3 pushes per profile in 48 h)"
    page = _audience_said(_page(client, transactional), before="Count now")
    assert page == f"{said} (counted under a minute ago); {rules}"
    assert _audience_said(_review(client, request), before="Audience definition") == f"{said}; {rules}"


def test_an_api_triggered_campaign_says_its_holdout_share_and_the_rules(
    client, make_campaign, team, abc, manager_alice
):
    from delivery.models import DeliveryRules
    from tests.campaigns.helpers import variants_set

    DeliveryRules.objects.create(app=team, frequency_cap=2, frequency_window_hours=24)
    campaign = make_campaign(kind="api_triggered", segment=None, content=abc[0])
    variants_set(campaign, manager_alice, abc[:2], [45, 45], 10)
    client.force_login(manager_alice)
    page = _page(client, campaign)
    assert (
        "Recipients named by each API call, 10% of them held out; the app's frequency cap "
        "(at most 2 pushes per profile in 24 h) may hold some back."
    ) in page.replace("&#x27;", "'")


def test_an_audience_no_push_could_reach_says_so_on_the_page_and_in_the_review(
    client, make_campaign, segment, team, manager_alice, approver_bob
):
    """Approved as it is, a campaign whose audience has no phone opted in sends nothing: the page
    and the approver's review say so beside the figures (an approver approved "2 profiles → 0
    reachable → 0 opted in" with nothing to tell it apart from an audience that gets pushes)."""
    from campaigns.review import audience_text

    ProfileFactory(locale="fr")  # no phone in the app
    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios", push_enabled=False)
    campaign = make_campaign()
    _count(client, campaign, manager_alice)
    page = _page(client, campaign)
    assert (
        "2 profiles → 1 reachable (iOS 1 / Android 0) → 0 opted in (counted under a minute ago): no one to send to, none opted in"
        in page
    )
    said = "2 profiles → 1 reachable (iOS 1 / Android 0) → 0 opted in: no one to send to, none opted in"
    assert said in audience_text(segment_id=segment.pk, app_id=team.pk)

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="android")
    assert "no one to send to" not in audience_text(segment_id=segment.pk, app_id=team.pk)
    assert audience_text(segment_id=segment.pk, app_id=AppFactory().pk).startswith(
        "Everyone: 3 profiles → 0 reachable (iOS 0 / Android 0) → 0 opted in: no one to send to, no phone in this app"
    )


def test_count_now_of_a_segment_whose_saved_rules_no_longer_hold_says_why(
    client, make_campaign, segment, manager_alice
):
    campaign = make_campaign()
    broken = {"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    Segment.objects.filter(pk=segment.pk).update(kind=Segment.Kind.RULES, rules=broken)
    client.force_login(manager_alice)
    response = client.post(f"/admin/campaigns/campaign/{campaign.pk}/count-audience/", follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Audience not counted: Condition 1 (age is more than): expected a number, got a string." in page
    assert client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").status_code == 200


def test_count_now_of_a_segment_the_reader_may_not_see_whose_rules_no_longer_hold_tells_nothing_of_its_rules(
    client, make_campaign, segment, manager_mallory
):
    """mallory edits the campaign through its app, not its segment (alice's): its page says the
    segment by number, and Count now's refusal did not, spelling out its rules ("Condition 1 (age is
    more than): ..."). Count now is not hers to press on a segment she may not see: refused before
    its rules are read."""
    campaign = make_campaign()
    broken = {"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    Segment.objects.filter(pk=segment.pk).update(kind=Segment.Kind.RULES, rules=broken)
    client.force_login(manager_mallory)
    response = client.post(f"/admin/campaigns/campaign/{campaign.pk}/count-audience/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "age is more than" not in page and "Everyone" not in page


@pytest.mark.presses("campaigns.campaign:count_audience")
def test_count_now_is_neither_offered_nor_served_to_a_reader_who_may_not_see_the_segment(
    client, make_campaign, segment, team, manager_alice, approver_bob
):
    """approver_bob may edit the campaign through its app, not see its segment (alice's): its page
    names it by number, yet offered *Count now*, which counted it, telling him the size of a segment
    outside his access. Neither the button nor its POST serves him; alice, who sees it, counts."""
    from campaigns.services.lifecycle import campaign_request_changes, campaign_submit

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Shorter title")  # decided
    url = f"/admin/campaigns/campaign/{campaign.pk}/count-audience/"

    client.force_login(approver_bob)
    page = _page(client, campaign)
    assert f"size not shown: segment #{segment.pk} is outside your access" in page
    assert 'id="count-audience"' not in page and "Count now counts it" not in page
    response = client.post(url)
    assert response.status_code == 403
    assert not any(f["app"] == team.pk for f in Segment.objects.get(pk=segment.pk).last_reach or [])

    client.force_login(manager_alice)
    assert 'id="count-audience"' in _page(client, campaign)
    assert "Audience counted: Everyone: 1 profile → 1 reachable" in client.post(url, follow=True).content.decode()
    assert _kept(segment, team)["reachable"] == 1


def test_a_kept_size_is_withheld_from_a_reader_outside_the_segments_access(
    client, make_campaign, segment, team, manager_alice, manager_mallory, viewer_carol
):
    """The size of a segment tells what it holds: the campaign page showed the one kept for it
    ("segment #12: 2 profiles → ...") to a reader who may see the campaign but not its segment (a
    Viewer of the app, a Manager working through the app). Those read that it is not shown, and
    why; alice, who sees the segment, reads its size."""
    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    DeviceFactory(profile=ProfileFactory(locale="de"), app=team, platform="android")
    campaign = make_campaign()
    _count(client, campaign, manager_alice)
    said = "2 profiles → 2 reachable (iOS 1 / Android 1) → 2 opted in"
    assert f"Everyone: {said} (counted under a minute ago)" in _page(client, campaign)

    for reader in (viewer_carol, manager_mallory):
        client.force_login(reader)
        page = _page(client, campaign)
        assert f"size not shown: segment #{segment.pk} is outside your access" in page
        assert "2 profiles" not in page and "2 reachable" not in page and "counted under a minute ago" not in page
