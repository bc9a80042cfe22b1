import pytest
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connection, transaction

from accounts.models import AuditEvent
from accounts.services import audit
from tests.factories import AppFactory, UserFactory
from tests.pages import listed_rows


@pytest.fixture
def event(admin_erin):
    return audit(actor=admin_erin, action="app_created", obj=AppFactory(name="Shop"), summary={"fields": ["name"]})


def test_audit_event_records_actor_object_and_summary(event, admin_erin):
    assert event.actor == admin_erin
    assert event.actor_label == "admin_erin"
    assert event.object_label == "Shop"
    assert event.object_type.model == "app"


def test_saving_an_existing_event_raises(event):
    event.action = "something_else"
    with pytest.raises(PermissionDenied):
        event.save()


def test_deleting_an_event_raises(event):
    with pytest.raises(PermissionDenied):
        event.delete()
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(PermissionDenied):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_database_refuses_updates_and_deletes_of_events(event):
    for sql in (
        "UPDATE accounts_auditevent SET action = 'x' WHERE id = %s",
        "DELETE FROM accounts_auditevent WHERE id = %s",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [event.pk])
    assert AuditEvent.objects.get(pk=event.pk).action == "app_created"


def test_deleting_the_actor_keeps_the_event(event, admin_erin):
    admin_erin.delete()
    kept = AuditEvent.objects.get(pk=event.pk)
    assert kept.actor_label == "admin_erin"


def test_superuser_is_offered_no_change_and_no_delete(client, event):
    root = UserFactory(username="root", is_superuser=True)
    client.force_login(root)
    page = client.get(f"/admin/accounts/auditevent/{event.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert b"deletelink" not in page.content
    assert client.post(f"/admin/accounts/auditevent/{event.pk}/change/", {"action": "forged"}).status_code == 403
    assert client.post(f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/accounts/auditevent/add/").status_code == 403
    listing = client.get("/admin/accounts/auditevent/")
    assert b"delete_selected" not in listing.content
    assert AuditEvent.objects.get(pk=event.pk).action == "app_created"


def test_event_list_filters_by_actor_type_action_and_date(client, admin_erin, event):
    audit(actor=None, action="user_created", obj=admin_erin)
    client.force_login(admin_erin)
    response = client.get("/admin/accounts/auditevent/", {"action": "app_created"})
    assert response.status_code == 200
    assert b"Shop" in response.content
    table = response.content.split(b'id="result_list"')[1].split(b"</table>")[0]
    assert b"Shop" in table
    assert b"user_created" not in table
    for params in (
        {"actor__id__exact": admin_erin.pk},
        {"object_type__id__exact": event.object_type_id},
        {"created_at__year": event.created_at.year},
    ):
        assert client.get("/admin/accounts/auditevent/", params).status_code == 200


@pytest.mark.parametrize("part", ["year", "month", "day"])
def test_a_date_part_in_digits_of_another_script_is_refused_as_an_unknown_filter(client, admin_erin, event, part):
    # "²" is a digit to str.isdigit(), not to int(): the list refuses it as any day it cannot read.
    client.force_login(admin_erin)
    params = {"created_at__year": "2026", "created_at__month": "1", f"created_at__{part}": "²"}
    response = client.get("/admin/accounts/auditevent/", params)
    assert response.status_code == 302 and response.url.endswith("?e=1")


def test_non_administrators_read_only_their_own_actions(client, manager_alice, admin_erin, event):
    audit(actor=manager_alice, action="segment_created")
    client.force_login(manager_alice)
    listing = client.get("/admin/accounts/auditevent/").content
    assert b"segment_created" in listing
    assert b"app_created" not in listing


def test_actions_read_in_words_in_the_list_its_filter_its_search_and_the_page(client, admin_erin, event):
    audit(actor=admin_erin, action="api_key_created", obj=admin_erin)
    client.force_login(admin_erin)
    listing = client.get("/admin/accounts/auditevent/").content.decode()
    table = listing.split('id="result_list"')[1].split("</table>")[0]
    assert "App created <code>app_created</code>" in table and "API key created <code>api_key_created</code>" in table
    sidebar = listing.split('id="changelist-filter"')[1]
    assert ">App created</a>" in sidebar and ">app_created</a>" not in sidebar
    found = client.get("/admin/accounts/auditevent/", {"q": "app created"}).content.decode()
    found = found.split('id="result_list"')[1].split("</table>")[0]
    assert "App created <code>app_created</code>" in found and "api_key_created" not in found
    page = client.get(f"/admin/accounts/auditevent/{event.pk}/change/").content.decode()
    assert "admin_erin App created Shop" in page
    assert "App created <code>app_created</code>" in page


def test_the_filters_name_the_system_and_events_about_no_object(client, admin_erin, manager_alice, event):
    audit(actor=None, action="retention_applied")
    client.force_login(admin_erin)
    sidebar = client.get("/admin/accounts/auditevent/").content.decode().split('id="changelist-filter"')[1]
    assert ">the system</a>" in sidebar and ">no object</a>" in sidebar
    assert ">—</a>" not in sidebar and ">-</a>" not in sidebar
    assert ">admin_erin</a>" in sidebar and ">manager_alice</a>" not in sidebar  # only actors of the rows


def test_the_object_type_reads_as_the_kind_of_object(client, admin_erin, event):
    client.force_login(admin_erin)
    listing = client.get("/admin/accounts/auditevent/").content.decode()
    table = listing.split('id="result_list"')[1].split("</table>")[0]
    assert '<td class="field-object_kind">App</td>' in table
    assert "Delivery | app" not in listing
    page = client.get(f"/admin/accounts/auditevent/{event.pk}/change/").content.decode()
    assert "Delivery | app" not in page


@pytest.mark.django_db
def test_the_lists_dates_say_the_zone_their_days_are_in(client, admin_erin, event):
    """The list's dates (2026 › December › 5) are UTC's days, named nowhere: an event of 21:30 in
    New York sat under the next day. The dates say their days are UTC's, as the list's times do."""
    client.force_login(admin_erin)
    for params in ({}, {"created_at__year": event.created_at.year}):
        page = client.get("/admin/accounts/auditevent/", params).content.decode()
        nav = page[page.index('<nav class="toplinks">') :]
        assert '<span class="date-zone">(days in UTC)</span>' in nav[: nav.index("</nav>")]


def test_a_readers_own_events_name_an_object_only_while_they_may_see_it(
    client, manager_alice, approver_bob, admin_erin, django_assert_max_num_queries
):
    """A Manager reads the events of their own actions: those about a campaign whose app they lost
    access to since say it by kind and number, their name, the request's and the summary not shown;
    an Administrator reads them all by name. One query per kind of object for a whole page."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from accounts.services import access_grant, access_revoke
    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from tests.factories import PushContentFactory, SegmentFactory, app_granted

    shop = app_granted(manager_alice, approver_bob)
    segment = SegmentFactory(created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)

    def submitted(name):
        campaign = campaign_create(
            by=manager_alice, name=name, app=shop, segment=segment, content=PushContentFactory(app=shop)
        )
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        return campaign

    campaign = submitted("Secret sale")
    created = AuditEvent.objects.get(action="campaign_created", object_id=str(campaign.pk))
    for obj in (shop, campaign):
        access_revoke(obj=obj, to=manager_alice, by=None)
    client.force_login(manager_alice)
    client.get("/admin/accounts/auditevent/")  # the caches every page fills (content types)
    reset_queries()  # the log keeps the last 9,000: the campaigns made above may have filled it
    with CaptureQueriesContext(connection) as queries:
        listing = client.get("/admin/accounts/auditevent/").content.decode()
    few = len(queries.captured_queries)
    table = listing.split('id="result_list"')[1].split("</table>")[0]
    assert "Secret sale" not in listing and f"campaign #{campaign.pk}" in table
    page = client.get(f"/admin/accounts/auditevent/{created.pk}/change/").content.decode()
    assert "Secret sale" not in page and f"campaign #{campaign.pk}" in page
    assert "not shown: it names a campaign you have no access to" in page

    access_grant(obj=shop, to=manager_alice, by=None)
    hidden = [submitted(f"Secret {i}") for i in range(5)]
    access_revoke(obj=shop, to=manager_alice, by=None)
    for obj in hidden:
        access_revoke(obj=obj, to=manager_alice, by=None)
    with django_assert_max_num_queries(few):
        listing = client.get("/admin/accounts/auditevent/").content.decode()
    assert "Secret" not in listing

    client.force_login(admin_erin)
    listing = client.get("/admin/accounts/auditevent/").content.decode()
    assert "Secret sale" in listing and all(f"Secret {i}" in listing for i in range(5))
    assert "Secret sale" in client.get(f"/admin/accounts/auditevent/{created.pk}/change/").content.decode()


def test_a_readers_search_finds_no_event_by_the_name_of_an_object_they_may_not_see(client, manager_alice, admin_erin):
    """Found by a name its reader may not read, an event would tell it: a search finds the events of
    such an object by the rest (who, what was done), never by its name."""
    from accounts.services import access_grant
    from tests.factories import SegmentFactory

    hidden = SegmentFactory(name="Secret buyers", created_by=manager_alice)
    seen = SegmentFactory(name="Secret fans", created_by=manager_alice)
    access_grant(obj=seen, to=manager_alice, by=None)
    for segment in (hidden, seen):
        audit(actor=manager_alice, action="segment_created", obj=segment)

    def found(user, term):
        client.force_login(user)
        page = client.get("/admin/accounts/auditevent/", {"q": term}).content.decode()
        return page.split('id="result_list"')[1].split("</table>")[0] if 'id="result_list"' in page else ""

    assert "Secret fans" in found(manager_alice, "secret")
    assert f"segment #{hidden.pk}" not in found(manager_alice, "secret")
    assert f"segment #{hidden.pk}" not in found(manager_alice, "buyers")
    assert f"segment #{hidden.pk}" in found(manager_alice, "segment_created")  # by what they did, still
    assert "Secret buyers" in found(admin_erin, "buyers")


@pytest.mark.parametrize("lookup", ["object_label__icontains", "object_label__startswith", "summary__icontains"])
def test_a_readers_list_asked_by_a_withheld_field_finds_no_event_of_an_object_they_may_not_see(
    client, manager_alice, admin_erin, lookup
):
    """The list takes a lookup on any of its fields in its address, as Django's lists do: asked
    whether a name or a summary starts with a letter, then the next, the list spelt out the name it
    withholds. Those lookups are refused to whoever does not see every object; an Administrator
    still asks them."""
    from tests.factories import SegmentFactory

    hidden = SegmentFactory(name="Secret buyers", created_by=manager_alice)
    audit(actor=manager_alice, action="segment_created", obj=hidden, summary={"said": "Secret buyers"})

    client.force_login(manager_alice)
    answer = client.get("/admin/accounts/auditevent/", {lookup: "Secret b"})
    assert answer.status_code == 400
    assert f"segment #{hidden.pk}" not in answer.content.decode()

    client.force_login(admin_erin)
    answer = client.get("/admin/accounts/auditevent/", {lookup: "Secret b"})
    assert answer.status_code == 200
    assert [event.object_id for event in answer.context["cl"].result_list] == [str(hidden.pk)]


def test_a_readers_list_sorted_by_object_does_not_place_an_object_they_may_not_see_by_its_name(
    client, manager_alice, admin_erin
):
    """Sorted by the object's column, the list placed an event whose object it names by number
    among the reader's own by the name it withholds: between "Secret a" and "Secret z", a reader
    could narrow the name down letter by letter with objects of their own. That column is not
    sortable to whoever does not see every object; an Administrator still sorts by it."""
    from accounts.services import access_grant
    from tests.factories import SegmentFactory

    hidden = SegmentFactory(name="Secret m", created_by=manager_alice)
    audit(actor=manager_alice, action="segment_created", obj=hidden)
    for name in ("Secret a", "Secret z"):
        seen = SegmentFactory(name=name, created_by=manager_alice)
        access_grant(obj=seen, to=manager_alice, by=None)
        audit(actor=manager_alice, action="segment_created", obj=seen)

    def order(user, sort: bool) -> list[str]:
        client.force_login(user)
        return [
            event.object_label
            for event in listed_rows(client, "/admin/accounts/auditevent/", sorted_by="object_label" if sort else None)
            if event.action == "segment_created"
        ]

    assert order(manager_alice, sort=False) == ["Secret z", "Secret a", f"segment #{hidden.pk}"]
    assert order(manager_alice, sort=True) == ["Secret z", "Secret a", f"segment #{hidden.pk}"]
    assert order(admin_erin, sort=True) == ["Secret a", "Secret m", "Secret z"]
