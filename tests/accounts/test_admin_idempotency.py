"""The API's Idempotency-Key records in the admin: read by Administrators and Viewers, never
written there (retention deletes them), and never showing the answers they store."""

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.services import access_grant, api_key_create
from audiences.models import EventBulkRequest
from campaigns.models import TriggerRequest
from campaigns.services.lifecycle import campaign_create
from tests.factories import AppFactory, PushContentFactory, SegmentFactory, UserFactory

pytestmark = pytest.mark.django_db

# What a stored answer holds of a person: an events call's answer names its profiles.
PERSONAL = "jane.doe@example.com"
LISTS = ["admin:campaigns_triggerrequest_changelist", "admin:audiences_eventbulkrequest_changelist"]


@pytest.fixture
def shop():
    return AppFactory(name="Shop")


@pytest.fixture
def records(shop, manager_alice, admin_erin):
    campaign = campaign_create(
        by=admin_erin,
        name="Order shipped",
        app=shop,
        kind="api_triggered",
        segment=SegmentFactory(name="Everyone"),
        content=PushContentFactory(app=shop, name="Shipped"),
    )
    key, _ = api_key_create(user=manager_alice, name="backend", scopes=["trigger", "ingest"], by=admin_erin)
    answer = {"results": [{"external_id": PERSONAL, "status": "accepted"}]}
    common = {"api_key": key, "user": key.user, "body_hash": "0" * 64}
    trigger = TriggerRequest.objects.create(
        **common, idempotency_key="order-1", campaign=campaign, finished=True, response_status=202, response_body=answer
    )
    events = EventBulkRequest.objects.create(
        **common, idempotency_key="batch-7", finished=True, response_status=200, response_body=answer
    )
    old = EventBulkRequest.objects.create(
        **common, idempotency_key="batch-old", created_at=timezone.now() - timezone.timedelta(days=10)
    )
    return {"trigger": trigger, "events": events, "old": old}


def _pages(client, records) -> list[str]:
    pages = []
    for name in LISTS:
        page = client.get(reverse(name))
        assert page.status_code == 200, name
        pages.append(page.content.decode())
    for record in records.values():
        url = reverse(f"admin:{record._meta.app_label}_{record._meta.model_name}_change", args=[record.pk])
        page = client.get(url)
        assert page.status_code == 200, url
        pages.append(page.content.decode())
    return pages


def test_an_administrator_reads_each_record_s_key_status_and_answer_code_not_its_answer(client, admin_erin, records):
    client.force_login(admin_erin)
    triggers, events, *changes = _pages(client, records)
    assert "order-1" in triggers and "answered" in triggers and "202" in triggers and "Order shipped" in triggers
    assert "batch-7" in events and "200" in events
    assert "batch-old" in events and "abandoned" in events
    for page in (triggers, events, *changes):
        assert PERSONAL not in page and "accepted" not in page


def test_a_viewer_reads_them_the_triggers_of_the_campaigns_in_their_access_alone(client, viewer_carol, shop, records):
    client.force_login(viewer_carol)
    triggers = client.get(reverse(LISTS[0])).content.decode()
    assert "order-1" not in triggers  # the campaign's app is not in Carol's access
    access_grant(obj=shop, to=viewer_carol, by=None)
    triggers = client.get(reverse(LISTS[0])).content.decode()
    assert "order-1" in triggers and "Order shipped" in triggers
    url = reverse("admin:campaigns_triggerrequest_change", args=[records["trigger"].pk])
    page = client.get(url).content.decode()
    assert "order-1" in page and PERSONAL not in page


@pytest.fixture
def other_shop_records(records, admin_erin):
    """A trigger record of a campaign in another app, sent with another key of Alice's."""
    other = AppFactory(name="Garden")
    campaign = campaign_create(
        by=admin_erin,
        name="Seeds sprouted",
        app=other,
        kind="api_triggered",
        segment=SegmentFactory(name="Gardeners"),
        content=PushContentFactory(app=other, name="Sprouted"),
    )
    key = records["trigger"].api_key
    return TriggerRequest.objects.create(
        api_key=key,
        user=key.user,
        body_hash="0" * 64,
        idempotency_key="seeds-9",
        campaign=campaign,
        finished=True,
        response_status=202,
    )


def test_a_viewer_reads_neither_another_user_s_key_nor_the_events_calls_of_keys_not_theirs(
    client, viewer_carol, shop, records, other_shop_records
):
    """The roles table gives the API keys of others to Administrators alone: a Viewer saw every
    record with its key's prefix and name, the events calls' all, unfiltered."""
    access_grant(obj=shop, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    key = records["trigger"].api_key
    triggers = client.get(reverse(LISTS[0])).content.decode()
    assert "order-1" in triggers and "seeds-9" not in triggers and "Seeds sprouted" not in triggers
    assert key.name not in triggers and key.prefix not in triggers
    assert "another user" in triggers
    page = client.get(reverse("admin:campaigns_triggerrequest_change", args=[records["trigger"].pk])).content.decode()
    assert key.name not in page and key.prefix not in page
    hidden = reverse("admin:campaigns_triggerrequest_change", args=[other_shop_records.pk])
    assert client.get(hidden).status_code in (302, 404)
    events = client.get(reverse(LISTS[1])).content.decode()
    assert "batch-7" not in events and "batch-old" not in events and key.name not in events
    assert client.get(reverse("admin:audiences_eventbulkrequest_change", args=[records["events"].pk])).status_code in (
        302,
        404,
    )


def test_a_search_or_filter_reveals_no_record_outside_the_reader_s_access(
    client, viewer_carol, shop, records, other_shop_records
):
    access_grant(obj=shop, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    key = records["trigger"].api_key
    for name, q in ((LISTS[0], "seeds-9"), (LISTS[0], key.name), (LISTS[1], "batch-7"), (LISTS[1], key.name)):
        listed = client.get(reverse(name), {"q": q}).content.decode()
        assert 'class="field-idempotency_key"' not in listed and key.prefix not in listed, (name, q)
    for lookup in ({"api_key": key.pk}, {"api_key__name": key.name}, {"api_key__user": key.user_id}):
        listed = client.get(reverse(LISTS[1]), lookup).content.decode()
        assert 'class="field-idempotency_key"' not in listed, lookup
        listed = client.get(reverse(LISTS[0]), lookup).content.decode()
        assert "seeds-9" not in listed and key.prefix not in listed, lookup


WHOSE_KEY = ["user__id__exact", "user", "api_key__id__exact", "api_key"]


@pytest.mark.parametrize("lookup", WHOSE_KEY)
def test_a_viewer_may_not_ask_a_list_whose_key_sent_a_record_it_shows_unnamed(
    client, viewer_carol, shop, records, lookup
):
    """A Viewer reads a trigger record sent with another user's key unnamed; asked by that user's
    id or that key's (``?user__id__exact=``), the list kept or dropped the record and so told whose
    key sent it, one id after another: 400."""
    access_grant(obj=shop, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    key = records["trigger"].api_key
    value = key.user_id if lookup.startswith("user") else key.pk
    for name in LISTS:
        answer = client.get(reverse(name), {lookup: value})
        assert answer.status_code == 400, name
        assert 'class="field-idempotency_key"' not in answer.content.decode(), name


@pytest.mark.parametrize("lookup", WHOSE_KEY)
def test_an_administrator_asks_a_list_by_the_key_or_its_user(client, admin_erin, records, other_shop_records, lookup):
    client.force_login(admin_erin)
    key = records["trigger"].api_key
    value = key.user_id if lookup.startswith("user") else key.pk
    listed = client.get(reverse(LISTS[0]), {lookup: value})
    assert listed.status_code == 200
    assert "order-1" in listed.content.decode() and "seeds-9" in listed.content.decode()
    other = client.get(reverse(LISTS[0]), {lookup: value + 1000})
    assert other.status_code == 200 and "order-1" not in other.content.decode()


@pytest.mark.parametrize("lookup", ["response_body__icontains", "response_body__results__0__external_id"])
@pytest.mark.parametrize("who", ["viewer_carol", "admin_erin"])
def test_a_list_asked_by_the_stored_answer_is_refused_and_does_not_spell_it_out(
    client, shop, records, who, lookup, request
):
    """The lists take a lookup on any field in their address, as Django's lists do: asked whether a
    stored answer holds a letter, then the next, they spelt out the personal data they never show
    (an events call's answer names its profiles). Nobody asks them by the answer: 400."""
    access_grant(obj=shop, to=request.getfixturevalue("viewer_carol"), by=None)
    client.force_login(request.getfixturevalue(who))
    for name in LISTS:
        answer = client.get(reverse(name), {lookup: PERSONAL[:8]})
        assert answer.status_code == 400, name
        assert 'class="field-idempotency_key"' not in answer.content.decode(), name


def test_a_key_s_owner_reads_its_events_calls_and_its_name(client, records, viewer_carol):
    """A Viewer who owns a key (made under an earlier role) reads that key's records, named."""
    admin = UserFactory(role="Administrator")
    manager = UserFactory(role="Manager")
    key, _ = api_key_create(user=manager, name="importer", scopes=["ingest"], by=admin)
    EventBulkRequest.objects.create(
        api_key=key, user=manager, body_hash="0" * 64, idempotency_key="mine-1", finished=True
    )
    manager.groups.clear()
    manager.groups.add(viewer_carol.groups.get())
    client.force_login(manager)
    events = client.get(reverse(LISTS[1])).content.decode()
    assert "mine-1" in events and "importer" in events and key.prefix in events
    assert "batch-7" not in events


def test_an_administrator_reads_every_record_with_its_key_named(client, admin_erin, records, other_shop_records):
    client.force_login(admin_erin)
    key = records["trigger"].api_key
    triggers = client.get(reverse(LISTS[0])).content.decode()
    assert "order-1" in triggers and "seeds-9" in triggers and key.name in triggers and key.prefix in triggers
    events = client.get(reverse(LISTS[1])).content.decode()
    assert "batch-7" in events and "batch-old" in events and key.name in events


@pytest.mark.parametrize("role", ["Manager", "Approver"])
def test_other_roles_may_not_read_them(client, records, role):
    client.force_login(UserFactory(role=role))
    for name in LISTS:
        assert client.get(reverse(name)).status_code == 403
    url = reverse("admin:audiences_eventbulkrequest_change", args=[records["events"].pk])
    assert client.get(url).status_code in (403, 404)


@pytest.mark.parametrize("who", ["admin_erin", "superuser"])
def test_nobody_adds_changes_or_deletes_a_record_in_the_admin(client, records, admin_erin, who):
    user = admin_erin if who == "admin_erin" else UserFactory(is_superuser=True, is_staff=True)
    client.force_login(user)
    record = records["events"]
    assert client.get(reverse("admin:audiences_eventbulkrequest_add")).status_code == 403
    change = reverse("admin:audiences_eventbulkrequest_change", args=[record.pk])
    assert client.post(change, {"idempotency_key": "other", "response_status": 500}).status_code == 403
    delete = reverse("admin:audiences_eventbulkrequest_delete", args=[record.pk])
    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    listed = client.get(reverse(LISTS[1])).content.decode()
    assert 'class="action-select"' not in listed  # no action: not even "delete selected"
    assert reverse("admin:audiences_eventbulkrequest_add") not in listed
    record.refresh_from_db()
    assert (record.idempotency_key, record.response_status) == ("batch-7", 200)


def test_the_lists_filter_by_key_and_age(client, admin_erin, records):
    client.force_login(admin_erin)
    url = reverse(LISTS[1])
    found = client.get(url, {"q": "batch-7"}).content.decode()
    assert "batch-7" in found and "batch-old" not in found
    assert "batch-7" not in client.get(url, {"q": "batch"}).content.decode()  # the key exactly
    old = client.get(url, {"age": "older"}).content.decode()
    assert "batch-old" in old and "batch-7" not in old
    recent = client.get(url, {"age": "day"}).content.decode()
    assert "batch-7" in recent and "batch-old" not in recent


def test_an_unknown_age_says_the_filter_is_wrong(client, admin_erin, records):
    """As the occurrences' list does for an unknown period: the list showed every record, as if unfiltered."""
    client.force_login(admin_erin)
    answer = client.get(reverse(LISTS[1]), {"age": "fortnight"})
    assert answer.status_code == 302 and answer.url.endswith("?e=1")


def test_a_list_of_many_records_reads_in_a_few_queries(client, admin_erin, records, django_assert_max_num_queries):
    for n in range(30):
        TriggerRequest.objects.create(
            api_key=records["trigger"].api_key,
            user=records["trigger"].user,
            body_hash="0" * 64,
            idempotency_key=f"order-{n + 2}",
            campaign=records["trigger"].campaign,
            finished=True,
            response_status=202,
        )
    client.force_login(admin_erin)
    with django_assert_max_num_queries(12):
        assert client.get(reverse(LISTS[0])).status_code == 200


def test_a_viewer_s_list_of_many_records_reads_in_a_few_queries(
    client, viewer_carol, shop, records, django_assert_max_num_queries
):
    for n in range(30):
        TriggerRequest.objects.create(
            api_key=records["trigger"].api_key,
            user=records["trigger"].user,
            body_hash="0" * 64,
            idempotency_key=f"order-{n + 2}",
            campaign=records["trigger"].campaign,
            finished=True,
            response_status=202,
        )
    access_grant(obj=shop, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    for name in LISTS:
        with django_assert_max_num_queries(14):
            assert client.get(reverse(name)).status_code == 200
