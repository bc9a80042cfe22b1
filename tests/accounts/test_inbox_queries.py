"""The approver's inbox costs the same number of queries for 3 requests as for 30."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from accounts.models import ApprovalPolicy, ApprovalRequest, User
from accounts.selectors import approvals_waiting_for, approver_standing
from accounts.services import access_grant, approval_policy_activate, approval_request_open
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit, campaign_update
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from journeys.services.lifecycle import journey_create, journey_submit
from tests.factories import AppFactory, PushContentFactory, SegmentFactory, UserFactory


@pytest.fixture
def world(db, admin_erin, manager_alice, approver_bob):
    """Three apps: Shop (Bob decides), Bank (a policy names Zoe alone), Vault (Bob has no access)."""
    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    apps = {name: AppFactory(name=name) for name in ("Shop", "Bank", "Vault")}
    for app in apps.values():
        access_grant(obj=app, to=manager_alice, by=None)
        access_grant(obj=app, to=approver_zoe, by=None)
    for name in ("Shop", "Bank"):
        access_grant(obj=apps[name], to=approver_bob, by=None)
    policy = ApprovalPolicy.objects.create(name="Bank's", app_ids=[apps["Bank"].pk], applies_to_journeys=True)
    policy.approver_users.set([approver_zoe])
    approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    everyone = SegmentFactory(name="Everyone", rules={"all": [{"field": "external_id", "op": "exists"}]})
    access_grant(obj=everyone, to=manager_alice, by=None)
    return {"apps": apps, "segment": everyone, "alice": manager_alice, "bob": approver_bob, "made": 0}


def _campaign(world, app: str, *, by=None):
    world["made"] += 1
    app = world["apps"][app]
    content = PushContentFactory(app=app, name=f"Content {world['made']}", title="Hello", body="Hi")
    return campaign_create(
        by=by or world["alice"],
        name=f"Campaign {world['made']}",
        app=app,
        segment=world["segment"],
        content=content,
        kind="scheduled",
    )


def _journey(world, app: str):
    world["made"] += 1
    app = world["apps"][app]
    content = PushContentFactory(app=app, name=f"Content {world['made']}", title="Hello", body="Hi")
    graph = {
        "steps": [
            {"id": "push", "type": "push", "content": content.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = journey_create(
        by=world["alice"],
        name=f"Journey {world['made']}",
        app=app,
        graph=graph,
        entry_kind="segment",
        entry_segment=world["segment"],
    )
    return journey, content


def _request_of(subject) -> ApprovalRequest:
    return ApprovalRequest.objects.get(subject_id=str(subject.pk), status="pending", subject_label=subject.name)


def _add(world, rounds: int) -> dict[str, list[ApprovalRequest]]:
    """``rounds`` requests of each kind Bob may or may not decide."""
    alice, bob = world["alice"], world["bob"]
    made: dict[str, list[ApprovalRequest]] = {}
    for _ in range(rounds):
        campaign = _campaign(world, "Shop")
        made.setdefault("campaign", []).append(campaign_submit(campaign_id=campaign.pk, by=alice))
        journey, _content = _journey(world, "Shop")
        made.setdefault("journey", []).append(journey_submit(journey_id=journey.pk, by=alice))

        own = _campaign(world, "Shop")
        with transaction.atomic():
            made.setdefault("own", []).append(
                approval_request_open(
                    subject=own,
                    context={"type": "campaign", "app_id": own.app_id, "kind": "scheduled", "purpose": "marketing"},
                    fingerprint=own.fingerprint(),
                    approve_perm="campaigns.approve_campaign",
                    by=bob,
                )
            )
        changed = _campaign(world, "Shop")
        campaign_update(campaign_id=changed.pk, by=bob, name=f"{changed.name}, reworded")
        made.setdefault("changed campaign", []).append(campaign_submit(campaign_id=changed.pk, by=alice))
        journey, content = _journey(world, "Shop")
        content.body = "Hi again"
        pushcontent_save(content=PushContent.objects.get(pk=content.pk), by=bob)
        made.setdefault("changed content", []).append(journey_submit(journey_id=journey.pk, by=alice))

        bank = _campaign(world, "Bank")
        made.setdefault("not in the policy", []).append(campaign_submit(campaign_id=bank.pk, by=alice))
        vault, _content = _journey(world, "Vault")
        made.setdefault("no access", []).append(journey_submit(journey_id=vault.pk, by=alice))

        for kind, (source, target) in (("moved out", ("Vault", "Shop")), ("moved in", ("Shop", "Vault"))):
            made.setdefault(kind, []).append(_moved(world, source, target))
    return made


def _moved(world, source: str, target: str) -> ApprovalRequest:
    """A live campaign of ``source`` and its revision moving it to ``target``, waiting for approval."""
    alice, zoe = world["alice"], User.objects.get(username="approver_zoe")
    campaign = _campaign(world, source)
    campaign_submit(campaign_id=campaign.pk, by=alice)
    campaign_approve(campaign_id=campaign.pk, by=zoe)
    theirs = PushContentFactory(app=world["apps"][target], name=f"Moved {campaign.pk}", title="Hello", body="Hi")
    campaign_update(campaign_id=campaign.pk, by=alice, app=world["apps"][target], content=theirs)
    return campaign_submit(campaign_id=campaign.pk, by=alice)


REASONS = {
    "campaign": "",
    "journey": "",
    "own": "You cannot approve your own request.",
    "changed campaign": "You changed what this request asks to approve: another approver decides it.",
    "changed content": "You changed what this request asks to approve: another approver decides it.",
    "not in the policy": "You are not an approver of the policy 'Bank's'.",
    "no access": "You have no access to this object.",
    "moved out": "This revision moves the campaign out of the app its approved version sends to, which you have no "
    "access to: an approver with access to both apps decides it.",
    "moved in": "This revision moves the campaign into an app you have no access to: an approver with access to "
    "both apps decides it.",
}


def _inbox_queries(bob: User) -> tuple[list[ApprovalRequest], int]:
    fresh = User.objects.get(pk=bob.pk)  # a new page: nothing cached on the user yet
    with CaptureQueriesContext(connection) as queries:
        inbox = approvals_waiting_for(fresh)
    return inbox, len(queries)


def test_the_inbox_costs_as_many_queries_for_thirty_requests_as_for_three(world):
    bob = world["bob"]
    made = _add(world, rounds=1)
    few, few_queries = _inbox_queries(bob)
    assert len(ApprovalRequest.objects.filter(status="pending")) == 9
    assert few == made["campaign"] + made["journey"]  # oldest first

    for kind, requests in _add(world, rounds=4).items():
        made[kind] += requests
    many, many_queries = _inbox_queries(bob)
    assert ApprovalRequest.objects.filter(status="pending").count() == 45
    assert many_queries == few_queries
    assert many_queries <= 20
    assert many == sorted(made["campaign"] + made["journey"], key=lambda r: r.requested_at)

    # Each request, decided alone, gives the same answer and says why.
    for kind, requests in made.items():
        for request in requests:
            assert approver_standing(User.objects.get(pk=bob.pk), request) == (not REASONS[kind], REASONS[kind])


def test_the_inbox_page_and_the_home_page_cost_as_many_queries_for_thirty_requests_as_for_three(
    world, client, django_assert_max_num_queries
):
    """The admin's inbox (its rows' "stuck" status found for the whole page at once) and the home
    page that lists it, with the user's own requests and whether someone may decide them."""
    from django.urls import reverse

    client.force_login(world["bob"])
    _add(world, rounds=1)
    inbox, home = reverse("admin:accounts_approvalrequest_changelist"), reverse("admin:index")
    counts = {}
    for url in (inbox, home):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        counts[url] = len(queries)
    _add(world, rounds=4)
    for url, count in counts.items():
        with django_assert_max_num_queries(count):
            page = client.get(url)
        assert page.status_code == 200
    rows = client.get(inbox).content.decode()
    assert rows.count("/review/") == 10  # Bob's five campaigns and five journeys to decide
    assert "Stuck: nobody may decide it" not in rows


def test_requests_nobody_may_decide_are_found_for_a_whole_page_at_once(world, admin_erin, client):
    from django.contrib.auth.models import Group
    from django.urls import reverse

    from accounts.selectors import approval_request_stuck, approval_requests_stuck_among

    alice, zoe = world["alice"], User.objects.get(username="approver_zoe")
    reviewers = Group.objects.create(name="Vault reviewers")
    zoe.groups.add(reviewers)
    vaults = ApprovalPolicy.objects.create(
        name="Vault's", app_ids=[world["apps"]["Vault"].pk], applies_to_campaigns=False, applies_to_journeys=True
    )
    vaults.approver_groups.set([reviewers])
    approval_policy_activate(policy_id=vaults.pk, by=admin_erin)
    shop = campaign_submit(campaign_id=_campaign(world, "Shop").pk, by=alice)
    bank = campaign_submit(campaign_id=_campaign(world, "Bank").pk, by=alice)
    vault = journey_submit(journey_id=_journey(world, "Vault")[0].pk, by=alice)
    assert (shop.policy, bank.policy.name, vault.policy) == (None, "Bank's", vaults)
    requests = [shop, bank, vault]
    assert approval_requests_stuck_among(requests) == set()

    zoe.groups.remove(Group.objects.get(name="Approver"))  # the one approver of both policies
    assert approval_requests_stuck_among(requests) == {bank.pk, vault.pk}
    assert [approval_request_stuck(request) for request in requests] == [False, True, True]
    client.force_login(admin_erin)
    page = client.get(reverse("admin:accounts_approvalrequest_changelist") + "?show=all").content.decode()
    assert page.count("Stuck: nobody may decide it") == 2


def test_the_request_list_shows_a_campaigns_times_in_its_zone_and_a_journeys_in_utc(world, client):
    """The list showed every time in UTC, while the review and the campaign's pages show a campaign's
    in its zone: a time is shown in the zone it was entered in, named, a journey's (it has no zone) in UTC."""
    from django.urls import reverse

    from config.zones import zoned

    alice, bob = world["alice"], world["bob"]
    campaign = _campaign(world, "Shop")
    campaign_update(campaign_id=campaign.pk, by=alice, time_zone="Asia/Tokyo")
    decided = campaign_submit(campaign_id=campaign.pk, by=alice)
    campaign_approve(campaign_id=campaign.pk, by=bob)
    decided.refresh_from_db()
    journey = journey_submit(journey_id=_journey(world, "Shop")[0].pk, by=alice)
    client.force_login(bob)
    page = client.get(reverse("admin:accounts_approvalrequest_changelist") + "?show=all").content.decode()
    tokyo = (zoned(decided.requested_at, "Asia/Tokyo"), zoned(decided.decided_at, "Asia/Tokyo"))
    assert tokyo[0].endswith("(Asia/Tokyo)") and all(f'">{when}</td>' in page for when in tokyo), tokyo
    assert f'">{zoned(journey.requested_at, "UTC")}</td>' in page
