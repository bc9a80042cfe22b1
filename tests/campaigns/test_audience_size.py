"""The campaign page's audience size: shown as last counted with its age (no count per view),
counted when it never was in the campaign's app, and counted again by *Count now*, which only
those who may edit the campaign can press."""

import datetime as dt

import pytest
from django.utils import timezone

from audiences.models import Segment
from tests.factories import DeviceFactory, ProfileFactory


def _page(client, campaign):
    return client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()


def _kept(segment, app):
    return next(f for f in Segment.objects.get(pk=segment.pk).last_reach if f["app"] == app.pk)


def test_the_page_counts_once_then_shows_the_kept_figure_with_its_age(
    client, make_campaign, segment, team, manager_alice, django_assert_max_num_queries
):
    profile = ProfileFactory(locale="fr")
    DeviceFactory(profile=profile, app=team, platform="ios")
    campaign = make_campaign()
    client.force_login(manager_alice)
    page = _page(client, campaign)
    assert "1 reachable (iOS 1 / Android 0) → 1 opted in (counted just now)" in page
    assert _kept(segment, team)["reachable"] == 1

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="android")
    Segment.objects.filter(pk=segment.pk).update(
        last_reach=[{**_kept(segment, team), "counted_at": (timezone.now() - dt.timedelta(hours=3)).isoformat()}]
    )
    page = _page(client, campaign)
    assert "1 reachable (iOS 1 / Android 0) → 1 opted in (counted 3\xa0hours ago)" in page
    assert 'id="count-audience"' in page


@pytest.mark.presses("campaigns.campaign:count_audience")
def test_count_now_counts_and_keeps_for_a_manager_and_is_refused_to_a_viewer(
    client, make_campaign, segment, team, manager_alice, viewer_carol, outsider_dave
):
    campaign = make_campaign()
    url = f"/admin/campaigns/campaign/{campaign.pk}/count-audience/"
    client.force_login(manager_alice)
    _page(client, campaign)  # counted once: nobody yet
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
    assert "Audience counted: Everyone: 1 profiles → 1 reachable (iOS 0 / Android 1)" in response.content.decode()
    assert _kept(segment, team)["reachable"] == 1
    assert "(counted under a minute ago)" in _page(client, campaign)


def test_an_api_triggered_campaign_has_no_audience_to_count(client, make_campaign, manager_alice):
    campaign = make_campaign(kind="api_triggered", segment=None)
    client.force_login(manager_alice)
    page = _page(client, campaign)
    assert "Recipients named by each API call." in page
    assert 'id="count-audience"' not in page
