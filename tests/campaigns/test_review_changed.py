"""A campaign changed since it was submitted (its push content edited meanwhile, say) cannot be
approved: its review says so before the approver reads it, and offers only to ask for changes."""

import pytest

from accounts.models import ApprovalRequest
from campaigns.services.lifecycle import campaign_submit

pytestmark = pytest.mark.django_db


def test_the_review_of_a_campaign_changed_since_it_was_submitted_says_so_and_offers_no_approval(
    client, make_campaign, content, manager_alice, approver_bob
):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    page = client.get(url).content.decode()
    assert 'name="_approve"' in page and "changed since it was submitted" not in page
    content.title = "Hello again"  # the content, shared with other campaigns, edited meanwhile
    content.save()
    page = client.get(url).content.decode()
    assert "changed since it was submitted" in page
    assert 'name="_approve"' not in page and 'name="_request_changes"' in page
    response = client.post(url, {"_request_changes": "1", "comment": "Resubmit as it is now"})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == "draft"
