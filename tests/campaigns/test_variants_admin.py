"""Variants in the admin, the approval and the API: edited with forms and checked on save, covered by the
fingerprint, reviewed with their previews, reported per variant; a Viewer changes nothing."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.models import ApprovalRequest, AuditEvent
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_submit
from delivery.models import Delivery, Dispatch
from delivery.services.rollups import rollup_rebuild
from tests.campaigns.helpers import change_form, variants_set
from tests.factories import AppFactory, ProfileFactory, PushContentFactory


def _form(campaign, variants, holdout=""):
    return change_form(campaign, variants, holdout)


def test_the_fingerprint_changes_when_any_variant_share_or_the_holdout_changes(make_campaign, manager_alice, abc):
    campaign = make_campaign(content=abc[0])
    alone = campaign.fingerprint()
    seen = {alone}
    for shares, holdout, contents in (
        ([50, 50], 0, abc[:2]),
        ([40, 60], 0, abc[:2]),
        ([40, 50], 10, abc[:2]),
        ([40, 50], 10, [abc[0], abc[2]]),
        ([30, 30, 30], 10, abc),
    ):
        variants_set(campaign, manager_alice, contents, shares, holdout)
        fingerprint = Campaign.objects.get(pk=campaign.pk).fingerprint()
        assert fingerprint not in seen, (shares, holdout)
        seen.add(fingerprint)
    abc[1].body = "Edited after the submission"
    abc[1].save()
    assert Campaign.objects.get(pk=campaign.pk).fingerprint() not in seen
    variants_set(campaign, manager_alice, [], [])
    assert Campaign.objects.get(pk=campaign.pk).fingerprint() == alone  # one content again: as approved before


def test_an_edited_variant_content_voids_the_submission(make_campaign, manager_alice, approver_bob, abc):
    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc[:2], [50, 50])
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    abc[1].title = "Changed while in review"
    abc[1].save()
    with pytest.raises(ValidationError, match="changed since it was submitted"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)


def test_changing_a_share_of_a_live_campaign_is_a_revision_and_the_approved_shares_keep_sending(
    make_campaign, manager_alice, approver_bob, abc
):
    campaign = variants_set(
        make_campaign(content=abc[0], kind="api_triggered", segment=None), manager_alice, abc[:2], [50, 50]
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign = variants_set(Campaign.objects.get(pk=campaign.pk), manager_alice, abc[:2], [70, 30])
    assert campaign.status == "live" and campaign.has_pending_revision
    assert [v["share"] for v in campaign.approved().variants] == [50, 50]
    assert AuditEvent.objects.filter(action="campaign_revision_edited").exists()


@pytest.mark.parametrize(
    ("shares", "holdout", "message"),
    [
        ([100], 0, "2 to 10 variants"),
        ([9] * 11, 1, "2 to 10 variants"),
        ([50, 40], 0, "add up to 90%"),
        ([50, 0], 50, "at least 1%"),
        ([], 10, "A holdout needs variants"),
        ([50, 50], 100, "from 0 to 99"),
    ],
)
def test_variants_are_checked_on_save(make_campaign, manager_alice, team, shares, holdout, message):
    contents = [PushContentFactory(app=team) for _ in shares]
    campaign = make_campaign()
    with pytest.raises(ValidationError, match=message):
        variants_set(campaign, manager_alice, contents, shares, holdout)
    assert not Campaign.objects.get(pk=campaign.pk).variants.exists()


def test_variant_contents_are_of_the_campaigns_app_and_each_their_own(make_campaign, manager_alice, abc):
    campaign = make_campaign(content=abc[0])
    elsewhere = PushContentFactory(app=AppFactory(name="Elsewhere"))
    with pytest.raises(ValidationError, match="belongs to another app"):
        variants_set(campaign, manager_alice, [abc[0], elsewhere], [50, 50])
    with pytest.raises(ValidationError, match="listed twice"):
        variants_set(campaign, manager_alice, [abc[0], abc[0]], [50, 50])


def test_a_viewer_cannot_set_variants(make_campaign, viewer_carol, abc):
    campaign = make_campaign(content=abc[0])
    with pytest.raises(PermissionDenied):
        variants_set(campaign, viewer_carol, abc[:2], [50, 50])


def test_manager_sets_variants_and_holdout_in_the_campaign_form(client, make_campaign, manager_alice, abc):
    campaign = make_campaign(content=abc[2])
    client.force_login(manager_alice)
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/", _form(campaign, [(abc[0], 45), (abc[1], 45)], holdout=10)
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert [(v.label, v.content_id, v.share) for v in campaign.variant_list()] == [
        ("A", abc[0].pk, 45),
        ("B", abc[1].pk, 45),
    ]
    assert campaign.holdout_share == 10 and campaign.content_id == abc[0].pk  # variant A is the content
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'data-variant="A"' in page and 'data-variant="B"' in page and "Holdout: 10%" in page
    assert "Title B" in page


def test_shares_that_do_not_add_up_are_answered_on_the_form(client, make_campaign, manager_alice, abc):
    campaign = make_campaign(content=abc[0])
    client.force_login(manager_alice)
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/", _form(campaign, [(abc[0], 50), (abc[1], 30)], holdout=10)
    )
    assert response.status_code == 200
    assert "add up to 90%: they must add up to 100%" in response.content.decode()
    assert not Campaign.objects.get(pk=campaign.pk).variants.exists()


def test_a_viewer_cannot_post_variants_in_the_admin(client, make_campaign, viewer_carol, abc):
    campaign = make_campaign(content=abc[0])
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="variants-TOTAL_FORMS"' not in page or 'name="variants-0-share"' not in page
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/", _form(campaign, [(abc[0], 50), (abc[1], 50)])
    )
    assert response.status_code == 403
    assert not Campaign.objects.get(pk=campaign.pk).variants.exists()


def test_the_approver_reviews_every_variant_with_its_previews(client, make_campaign, manager_alice, approver_bob, abc):
    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc, [30, 30, 30], holdout=10)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    for label in "ABC":
        assert f'data-variant="{label}"' in page and f"Title {label}" in page
    assert "Variant C: title (en)" in page
    assert "Holdout" in page and "10% get nothing" in page


def test_report_shows_each_variant_and_the_holdout_on_the_page_and_in_the_api(
    client, make_campaign, manager_alice, manager_mallory, viewer_carol, abc, api_key_for
):
    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc[:2], [45, 45], holdout=10)
    dispatch = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=abc[0].spec(),
        variants=[
            {"number": n, "label": label, "content": f"Sale {label}", "share": 45} for n, label in ((1, "A"), (2, "B"))
        ],
        holdout_share=10,
    )
    outcomes = [(1, "accepted", True), (1, "accepted", False), (1, "failed", False), (2, "accepted", True)]
    outcomes += [(0, "skipped", False)] * 3
    from django.utils import timezone

    for variant, status, opened in outcomes:
        Delivery.objects.create(
            dispatch=dispatch,
            profile=ProfileFactory(),
            variant=variant,
            status=status,
            reason="holdout" if variant == 0 else "",
            opened_at=timezone.now() if opened else None,
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])  # as the send pipeline would have counted them
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'id="variant-report"' in page
    assert (
        '<tr data-variant="A"><th>A</th><td>Sale A</td><td>45%</td><td>3</td><td>3</td><td>2</td><td>1</td><td>50.0%</td>'
        in page
    )
    assert '<tr data-variant="holdout"><th>holdout</th><td colspan="2">gets nothing</td><td>3</td>' in page
    api = api_key_for(manager_mallory, scopes=["read"])
    report = api.get(f"/api/v1/campaigns/{campaign.pk}/report/").json()
    assert report["variants"][1] == {
        "variant": "B",
        "content": "Sale B",
        "share": 45,
        "profiles": 1,
        "sent": 1,
        "accepted": 1,
        "opened": 1,
        "open_rate": 1.0,
    }
    assert report["holdout"] == {"profiles": 3}
    detail = api.get(f"/api/v1/campaigns/{campaign.pk}/").json()
    assert detail["variants"] == [
        {"variant": "A", "content": abc[0].pk, "share": 45},
        {"variant": "B", "content": abc[1].pk, "share": 45},
    ]
    assert detail["holdout_share"] == 10
    csv_text = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    assert "variant,content,share,profiles,sent,accepted,opened,open_rate" in csv_text
    assert "holdout,,,3,0,0,0," in csv_text


def test_a_manager_of_another_team_does_not_see_a_campaigns_variants_in_the_api(
    make_campaign, manager_alice, abc, api_key_for
):
    from tests.factories import UserFactory

    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc[:2], [50, 50])
    api = api_key_for(UserFactory(username="manager_stranger", role="Manager"), scopes=["read"])
    assert api.get(f"/api/v1/campaigns/{campaign.pk}/").status_code == 404
    assert api.get(f"/api/v1/campaigns/{campaign.pk}/report/").status_code == 404
    assert api.get("/api/v1/campaigns/").json()["results"] == []


def test_duplicating_a_campaign_keeps_its_variants_and_holdout(make_campaign, manager_alice, abc):
    from campaigns.services.lifecycle import campaign_duplicate

    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc, [30, 30, 30], holdout=10)
    copy = campaign_duplicate(campaign_id=campaign.pk, by=manager_alice)
    variants = copy.variant_list()
    assert [v.share for v in variants] == [30, 30, 30] and copy.holdout_share == 10
    assert variants[0].content_id == copy.content_id != abc[0].pk  # A is the copy's own content
    assert [v.content_id for v in variants[1:]] == [abc[1].pk, abc[2].pk]


def test_the_report_names_each_variant_s_content_only_to_a_reader_who_may_see_it(
    client, make_campaign, manager_alice, abc, api_key_for
):
    """A Viewer granted the campaign alone, not its app, reads its report's variants by their
    contents' numbers on the page and in the CSV, a Manager so granted in the API; a reader of the
    app, by their names."""
    from accounts.services import access_grant
    from tests.factories import UserFactory

    campaign = variants_set(make_campaign(content=abc[0]), manager_alice, abc[:2], [45, 45], holdout=10)
    dispatch = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=abc[0].spec(),
        variants=[
            {"number": n, "label": label, "content_id": content.pk, "content": content.name, "share": 45}
            for n, label, content in ((1, "A", abc[0]), (2, "B", abc[1]))
        ],
        holdout_share=10,
    )
    for variant in (1, 2):
        Delivery.objects.create(dispatch=dispatch, profile=ProfileFactory(), variant=variant, status="accepted")
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    vera = UserFactory(username="viewer_vera", role="Viewer")
    access_grant(obj=campaign, to=vera, by=None)

    client.force_login(vera)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert f'<tr data-variant="B"><th>B</th><td>content #{abc[1].pk}</td>' in page
    exported = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    assert f"B,content #{abc[1].pk},45," in exported and "Sale" not in exported
    trent = UserFactory(username="manager_trent", role="Manager")
    access_grant(obj=campaign, to=trent, by=None)
    report = api_key_for(trent, scopes=["read"]).get(f"/api/v1/campaigns/{campaign.pk}/report/").json()
    assert [v["content"] for v in report["variants"]] == [f"content #{abc[0].pk}", f"content #{abc[1].pk}"]
    assert "content_id" not in report["variants"][0]

    report = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/campaigns/{campaign.pk}/report/").json()
    assert [v["content"] for v in report["variants"]] == ["Sale A", "Sale B"]
