"""A journey changed since it was submitted (a push's content edited meanwhile, say) cannot be
approved: its review says so before the approver reads it, and offers only to ask for changes."""

import pytest

from journeys.services.lifecycle import journey_submit

pytestmark = pytest.mark.django_db


def test_the_review_of_a_journey_changed_since_it_was_submitted_says_so_and_offers_no_approval(
    login, manager_alice, approver_bob, make_journey, welcome
):
    """Its approver learnt it only on pressing Approve and activate, which was refused."""
    request = journey_submit(journey_id=make_journey().pk, by=manager_alice)
    client = login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    page = client.get(url).content.decode()
    assert 'name="_approve"' in page and "changed since it was submitted" not in page
    welcome.body = "Welcome back aboard"  # its push's content, edited meanwhile
    welcome.save()
    page = client.get(url).content.decode()
    assert "changed since it was submitted" in page
    assert 'name="_approve"' not in page and 'name="_request_changes"' in page
