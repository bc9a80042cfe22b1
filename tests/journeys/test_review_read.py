"""A journey's approval applies to what its review showed the approver."""

from accounts.models import ApprovalRequest
from delivery.services.contents import pushcontent_save
from journeys.services.lifecycle import journey_submit
from tests.campaigns.test_review_read import page_fields
from tests.pages import review_post_confirmed


def test_a_journey_approval_applies_to_what_its_review_showed(
    client, make_journey, welcome, manager_alice, approver_bob
):
    """As a campaign's: a push reworded after the submission and put back before the approver
    pressed Approve had the submitted words approved, the page having shown others."""
    journey = make_journey()
    submitted = welcome.body
    journey_submit(journey_id=journey.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    welcome.body = "Our new collection is in"
    pushcontent_save(content=welcome, by=manager_alice)
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    page = client.get(url)
    assert "Our new collection is in" in page.content.decode()
    assert 'name="_approve"' not in page.content.decode()  # changed since submitted: only Request changes
    welcome.body = submitted
    pushcontent_save(content=welcome, by=manager_alice)

    answer = client.post(url, {**page_fields(page), "_approve": "1", "comment": "fine"})

    assert answer.status_code == 200
    assert "changed since this page showed it" in answer.content.decode()
    journey.refresh_from_db()
    assert (journey.status, journey.live_version) == ("in_review", None)
    page = client.get(url)
    # Its segment enters on approval: approved through the confirmation's Yes.
    assert (
        review_post_confirmed(client, url, {**page_fields(page), "_approve": "1", "comment": "fine"}).status_code == 302
    )
    journey.refresh_from_db()
    assert journey.status == "live"
