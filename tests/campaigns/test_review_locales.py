"""A campaign's review shows its approver every language its audience may get: a phone pair per locale
of its content, not only the default texts."""

import pytest

from accounts.models import ApprovalRequest
from campaigns.services.lifecycle import campaign_submit
from delivery.models import PushContent

pytestmark = pytest.mark.django_db


@pytest.fixture
def bilingual(team):
    return PushContent.objects.create(
        app=team,
        name="Sale",
        title="Hello {{ profile.attributes.first_name | default: 'there' }}",
        body="The sale starts now",
        default_locale="en",
        variants={
            "fr": {"title": "Bonjour {{ profile.attributes.first_name | default: 'toi' }}", "body": "Les soldes"}
        },
    )


def test_the_review_shows_each_locales_texts_on_the_phones(
    client, make_campaign, bilingual, manager_alice, approver_bob
):
    campaign = make_campaign(content=bilingual)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    phones = page[page.index("phone-ios") - 300 : page.index('id="approval-decision"')]
    assert "Hello there" in phones and "The sale starts now" in phones
    assert "Bonjour toi" in phones and "Les soldes" in phones
    assert 'data-locale="fr"' in phones and "French" in phones


def test_a_content_without_locales_shows_one_pair_of_phones(client, make_campaign, manager_alice, approver_bob):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert page.count("phone phone-ios") == 1 and "data-locale" not in page
