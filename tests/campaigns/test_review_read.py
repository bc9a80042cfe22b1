"""An approval applies to what its review showed the approver: the page posts what it was drawn from."""

import re

from accounts.models import ApprovalRequest
from campaigns.services.lifecycle import campaign_submit
from delivery.services.contents import pushcontent_save


def page_fields(page) -> dict:
    """The hidden fields the review's decision form posts, as a browser sends them."""
    html = page.content.decode()
    end = html.index('name="_request_changes"')  # offered on every review, Approve only on one unchanged
    form = html[end - 4000 : end]
    fields = {}
    for tag in re.findall(r"<input[^>]*>", form):
        if 'type="hidden"' in tag:
            name, value = re.search(r'name="([^"]*)"', tag), re.search(r'value="([^"]*)"', tag)
            fields[name.group(1)] = value.group(1) if value else ""
    fields.pop("csrfmiddlewaretoken", None)
    return fields


def test_an_approval_applies_to_what_its_review_showed(client, make_campaign, content, manager_alice, approver_bob):
    """The review draws the campaign as it is when the page is drawn, and the approval checked it
    against what was submitted only when pressed: a Manager who reworded the content once submitted
    (the page then showed the harmless words) and put back the submitted words before the approver
    pressed Approve had the submitted words approved, which the approver never read. A page drawn
    from another campaign than the one the approval would freeze approves nothing, and says so."""
    campaign = make_campaign(kind="api_triggered", segment=None)
    submitted = content.body = "Everything is free today"
    pushcontent_save(content=content, by=manager_alice)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    content.body = "Our new collection is in"
    pushcontent_save(content=content, by=manager_alice)
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    page = client.get(url)
    assert "Our new collection is in" in page.content.decode()
    assert submitted not in page.content.decode()
    assert 'name="_approve"' not in page.content.decode()  # changed since submitted: only Request changes
    content.body = submitted
    pushcontent_save(content=content, by=manager_alice)

    answer = client.post(url, {**page_fields(page), "_approve": "1", "comment": "fine"})

    assert answer.status_code == 200
    assert "changed since this page showed it" in answer.content.decode()
    campaign.refresh_from_db()
    request.refresh_from_db()
    assert (campaign.status, request.status) == ("in_review", ApprovalRequest.Status.PENDING)
    # Read again, as submitted: approved.
    page = client.get(url)
    assert submitted in page.content.decode()
    assert client.post(url, {**page_fields(page), "_approve": "1", "comment": "fine"}).status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == "live"
    assert campaign.approved_version["spec"]["body"] == submitted
