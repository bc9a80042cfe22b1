"""The audiences admin: rule builder form, preview, profile pages, cheap big-table lists, imports."""

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.models import AuditEvent
from audiences.models import Event, Import, Profile, Segment, SegmentMember
from audiences.services.segments import segment_create, segment_members_change
from delivery.models import Device
from tests.factories import DeviceFactory, EventFactory, ProfileFactory

pytestmark = pytest.mark.django_db

PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}


def test_segment_list_holds_only_accessible_segments(login, manager_alice, manager_mallory):
    segment_create(name="Alice's", rules=PRO, by=manager_alice)
    theirs = segment_create(name="Mallory's", rules=PRO, by=manager_mallory)
    client = login(manager_alice)
    page = client.get("/admin/audiences/segment/")
    assert page.status_code == 200
    assert b"Alice&#x27;s" in page.content and b"Mallory" not in page.content
    assert client.get(f"/admin/audiences/segment/{theirs.pk}/change/").status_code == 404


def test_add_page_renders_the_rule_builder_with_pickers_from_the_data(login, manager_alice):
    ProfileFactory(attributes={"plan": "pro", "age": 3, "signup": "2026-01-01"})
    EventFactory(name="purchase", properties={"amount": 3})
    page = login(manager_alice).get("/admin/audiences/segment/add/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "audiences/rule_builder.js" in html and 'class="rule-builder"' in html
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    assert {"name": "age", "type": "number"} in meta["attributes"]
    assert {"name": "signup", "type": "date"} in meta["attributes"]
    assert meta["events"] == ["purchase"]
    assert {"name": "amount", "type": "number"} in meta["properties"]


def test_the_rule_builder_draws_a_rules_segments_and_apps_outside_the_readers_access_without_their_names(
    login, manager_alice, manager_mallory, viewer_carol, approver_bob, under_review
):
    """The builder offered only the reader's own segments and apps, so a rule on another's showed
    the first of the reader's in its place: a Viewer or an approver read the wrong segment or app.
    It then named them, whoever read the rule: a Viewer granted one segment (or one app) read the
    names of segments and apps outside their access. Each is drawn as itself, named only to a
    reader who may see it."""
    from accounts.services import access_grant
    from tests.factories import AppFactory

    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    vips = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    rules = {"all": [{"segment": vips.pk}, {"reachable": {"app": shop.pk}}]}
    top = segment_create(name="Top", rules=rules, by=manager_alice)
    access_grant(obj=top, to=viewer_carol, by=None)
    under_review(top)
    page = login(viewer_carol).get(f"/admin/audiences/segment/{top.pk}/change/")
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    hidden = {"id": vips.pk, "name": f"a segment you have no access to (#{vips.pk})", "kind": ""}
    assert hidden in meta["segments"]
    assert {"id": shop.pk, "name": f"an app you have no access to (#{shop.pk})"} in meta["apps"]
    assert b"VIPs" not in page.content and b"Shop" not in page.content
    # The approver deciding the campaign reads what its audience is made of: the segments and apps
    # its segment's rules name, at any depth, read-only.
    page = login(approver_bob).get(f"/admin/audiences/segment/{top.pk}/change/")
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    assert {"id": vips.pk, "name": "VIPs", "kind": "static"} in meta["segments"]
    assert {"id": shop.pk, "name": "Shop"} in meta["apps"]
    assert login(approver_bob).get(f"/admin/audiences/segment/{vips.pk}/change/").status_code == 200
    # Granted them, a reader reads their names.
    access_grant(obj=vips, to=viewer_carol, by=None)
    access_grant(obj=shop, to=viewer_carol, by=None)
    page = login(viewer_carol).get(f"/admin/audiences/segment/{top.pk}/change/")
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    assert {"id": vips.pk, "name": "VIPs", "kind": "static"} in meta["segments"]
    assert {"id": shop.pk, "name": "Shop"} in meta["apps"]
    # A new rule names one's own alone: the add page offers neither to who was not granted them.
    page = login(manager_mallory).get("/admin/audiences/segment/add/")
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    assert vips.pk not in {s["id"] for s in meta["segments"]} and shop.pk not in {a["id"] for a in meta["apps"]}


def test_a_user_with_one_app_reads_in_the_rule_builder_only_the_segments_and_apps_of_their_access(login, manager_alice):
    """Granted one app, a Manager's builder lists that app and the segments granted to them, and
    draws a rule of theirs naming another's segment (shared with them through their segment) without its name."""
    from accounts.services import access_grant
    from tests.factories import AppFactory, UserFactory

    dana = UserFactory(username="manager_dana", role="Manager")
    mine, theirs = AppFactory(name="Kiosk"), AppFactory(name="Shop")
    access_grant(obj=mine, to=dana, by=None)
    access_grant(obj=theirs, to=manager_alice, by=None)
    hidden = segment_create(name="Churn risk", kind=Segment.Kind.STATIC, by=manager_alice)
    own = segment_create(name="Dana's", rules=PRO, by=dana)
    shared = segment_create(
        name="Shared", rules={"any": [{"segment": hidden.pk}, {"reachable": {"app": theirs.pk}}]}, by=manager_alice
    )
    access_grant(obj=shared, to=dana, by=None)
    client = login(dana)
    page = client.get("/admin/audiences/segment/add/")
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    assert [a["name"] for a in meta["apps"]] == ["Kiosk"]
    assert {s["name"] for s in meta["segments"]} == {"Dana's", "Shared"}
    page = client.get(f"/admin/audiences/segment/{own.pk}/change/")
    assert b"Churn risk" not in page.content and b"Shop" not in page.content
    page = client.get(f"/admin/audiences/segment/{shared.pk}/change/")
    meta = page.context["adminform"].form.fields["rules"].widget.meta
    assert {s["id"] for s in meta["segments"]} == {own.pk, hidden.pk}  # itself left out, as always
    assert {a["id"] for a in meta["apps"]} == {mine.pk, theirs.pk}
    assert b"Churn risk" not in page.content and b"Shop" not in page.content


def test_manager_creates_a_rules_segment_from_the_admin(login, manager_alice):
    response = login(manager_alice).post(
        "/admin/audiences/segment/add/",
        {"name": "Pro users", "description": "", "kind": "rules", "rules": json.dumps(PRO)},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    segment = Segment.objects.get(name="Pro users")
    assert segment.rules == PRO and segment.created_by == manager_alice


def test_invalid_rules_are_shown_on_the_form_in_words_the_builder_outlines_by_path(login, manager_alice):
    bad = {
        "all": [
            {"attribute": "age", "type": "number", "op": "gt", "value": "old"},
            {"any": [{"attribute": "plan", "type": "string", "op": "in", "value": []}]},
            {"any": []},
        ]
    }
    response = login(manager_alice).post(
        "/admin/audiences/segment/add/", {"name": "Bad", "kind": "rules", "rules": json.dumps(bad)}
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "Condition 1 (age is more than): expected a number" in html
    assert "Group 2, condition 1 (plan is one of): &#x27;is one of&#x27; needs a non-empty list" in html
    assert "Group 3: the group" in html
    assert "rules.all[" not in html.split('data-errors="')[0]  # no JSON path in the words shown
    # The builder outlines each condition by its path, which the page gives it apart from the words.
    paths = html.split('data-errors="')[1].split('"')[0]
    assert json.loads(paths.replace("&quot;", '"')) == [
        "rules.all[0].value",
        "rules.all[1].any[0].value",
        "rules.all[2].any",
    ]
    assert not Segment.objects.exists()


def test_preview_of_the_tree_being_edited(login, manager_alice):
    for _ in range(25):
        ProfileFactory(attributes={"plan": "pro"})
    ProfileFactory(attributes={"plan": "free"})
    client = login(manager_alice)
    response = client.post(
        "/admin/audiences/segment/preview/", json.dumps({"rules": PRO}), content_type="application/json"
    )
    body = response.json()
    assert response.status_code == 200
    assert body["count"] == 25 and len(body["sample"]) == 20
    assert body["sample"][0]["url"].startswith("/admin/audiences/profile/")
    bad = client.post(
        "/admin/audiences/segment/preview/", json.dumps({"rules": {"all": []}}), content_type="application/json"
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "rules.all"
    grouped = {"all": [{"event": "buy"}, {"any": [{"attribute": "age", "type": "number", "op": "gt"}]}]}
    bad = client.post(
        "/admin/audiences/segment/preview/", json.dumps({"rules": grouped}), content_type="application/json"
    )
    (error,) = bad.json()["errors"]
    assert error["path"] == "rules.all[1].any[0].value" and error["code"] == "required"
    assert error["place"] == "Group 2, condition 1 (age is more than)"


def test_the_rule_builders_preview_warns_of_values_its_rules_do_not_read(login, manager_alice):
    ProfileFactory(attributes={"age": "042"})
    ProfileFactory(attributes={"age": 50})
    rules = {"all": [{"attribute": "age", "type": "number", "op": "gt", "value": 30}]}
    response = login(manager_alice).post(
        "/admin/audiences/segment/preview/", json.dumps({"rules": rules}), content_type="application/json"
    )
    body = response.json()
    assert body["count"] == 1
    assert body["unread"] == [
        "1 of the 2 newest profiles hold 'age' as text a number rule does not read, such as '042': "
        "a number is read from text written plainly (42, -7, 4.5)"
    ]


def test_preview_of_a_segment_outside_access_is_404(login, manager_alice, manager_mallory):
    theirs = segment_create(name="Theirs", rules=PRO, by=manager_mallory)
    assert login(manager_alice).get(f"/admin/audiences/segment/{theirs.pk}/preview/").status_code == 404


def test_rules_previewed_for_a_segment_outside_access_are_404_not_checked_against_its_uses(
    login, manager_alice, manager_mallory
):
    """Rules posted for a segment one may not see answer 404 before any check: their cycle check
    read that segment's uses, and its error listed the segments between (theirs too)."""
    from accounts.services import access_grant

    secret = segment_create(name="Secret", rules=PRO, by=manager_mallory)
    between = segment_create(name="Between", rules={"all": [{"segment": secret.pk}]}, by=manager_mallory)
    shared = segment_create(name="Shared", rules={"all": [{"segment": between.pk}]}, by=manager_mallory)
    access_grant(obj=shared, to=manager_alice, by=None)
    client = login(manager_alice)
    for posted in (
        {"segment": secret.pk, "rules": {"all": [{"segment": shared.pk}]}},
        {"segment": secret.pk, "rules": {"all": []}},
    ):
        response = client.post(
            f"/admin/audiences/segment/{secret.pk}/preview/", json.dumps(posted), content_type="application/json"
        )
        assert response.status_code == 404
        assert "between segments" not in response.content.decode()


def test_a_segment_using_one_whose_saved_rules_no_longer_hold_names_it_by_number_alone(
    login, manager_alice, manager_mallory
):
    """A segment alice may see, using one she may not whose saved rules no longer hold: its preview
    and its Count now said that segment by its name ("segment 12 (Secret VIPs) uses a rule saved
    before it was checked"), on every page and send that compiles it; by its number alone now, as a
    cycle is said."""
    from accounts.services import access_grant

    secret = segment_create(name="Secret VIPs", rules=PRO, by=manager_mallory)
    broken = {"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    Segment.objects.filter(pk=secret.pk).update(rules=broken)
    shared = segment_create(name="Shared", rules={"all": [{"segment": secret.pk}]}, by=manager_mallory)
    access_grant(obj=shared, to=manager_alice, by=None)
    client = login(manager_alice)
    preview = client.get(f"/admin/audiences/segment/{shared.pk}/preview/")
    assert preview.status_code == 400
    said = f"segment {secret.pk} uses a rule saved before it was checked: rules.all[0].value: expected a number"
    assert said in preview.json()["errors"][0]["message"]
    assert "Secret VIPs" not in preview.content.decode()
    counted = client.post(f"/admin/audiences/segment/{shared.pk}/count/", follow=True)
    assert said in counted.content.decode()
    assert "Secret VIPs" not in counted.content.decode()


def test_static_segment_members_are_edited_by_external_id(login, manager_alice):
    ProfileFactory(external_id="a")
    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    response = login(manager_alice).post(
        f"/admin/audiences/segment/{static.pk}/change/",
        {"name": "Kept", "description": "", "add_members": "a\nnobody", "remove_members": ""},
        follow=True,
    )
    assert response.status_code == 200
    assert static.members.count() == 1
    assert "1 member added, 0 removed." in response.content.decode()
    assert "Unknown external ids: nobody" in response.content.decode()
    page = login(manager_alice).get(f"/admin/audiences/segment/{static.pk}/change/").content.decode()
    assert "1 profile<" in page and "profile(s)" not in page


def test_a_static_segments_kept_count_is_forgotten_when_its_page_changes_its_members(login, manager_alice):
    """The page read "1 profiles" counted hours ago after members were added, as its reach."""
    from audiences.services.segments import segment_count_keep, segment_members_change

    for external_id in ("a", "b"):
        ProfileFactory(external_id=external_id)
    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=static.pk, by=manager_alice, add=["a"])
    segment_count_keep(segment_id=static.pk, by=manager_alice)
    client = login(manager_alice)
    page = f"/admin/audiences/segment/{static.pk}/change/"
    assert '<span id="segment-reach">1 profile</span>' in client.get(page).content.decode()
    client.post(page, {"name": "Kept", "description": "", "add_members": "b", "remove_members": ""})
    assert static.members.count() == 2
    static.refresh_from_db()
    assert (static.last_count, static.last_counted_at, static.last_reach) == (None, None, None)
    html = client.get(page).content.decode()
    assert "Not counted yet" in html and '<span id="segment-reach">1 profile' not in html


def test_static_segment_members_are_removed_by_external_id(login, manager_alice):
    for external_id in ("a", "b"):
        ProfileFactory(external_id=external_id)
    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=static.pk, add=["a", "b"], by=manager_alice)
    response = login(manager_alice).post(
        f"/admin/audiences/segment/{static.pk}/change/",
        {"name": "Kept", "description": "", "add_members": "", "remove_members": "a\nnobody"},
        follow=True,
    )
    assert "0 members added, 1 removed." in response.content.decode()
    assert "Unknown external ids: nobody" in response.content.decode()
    assert list(static.members.values_list("profile__external_id", flat=True)) == ["b"]
    event = AuditEvent.objects.filter(action="segment_members_changed").latest("pk")
    assert event.actor == manager_alice and event.object_id == str(static.pk)
    assert event.summary == {"added": 0, "removed": 1}


def test_static_segment_members_listed_to_add_and_to_remove_are_refused_on_the_form(login, manager_alice):
    for external_id in ("a", "b"):
        ProfileFactory(external_id=external_id)
    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=static.pk, add=["a"], by=manager_alice)
    response = login(manager_alice).post(
        f"/admin/audiences/segment/{static.pk}/change/",
        {"name": "Renamed", "description": "", "add_members": "b\na", "remove_members": "a"},
    )
    assert response.status_code == 200  # the form again, saying why
    assert "Listed both to add and to remove: a. Keep each external id in one list." in response.content.decode()
    static.refresh_from_db()
    assert static.name == "Kept"
    assert list(static.members.values_list("profile__external_id", flat=True)) == ["a"]


@pytest.mark.parametrize("field", ["add_members", "remove_members"])
def test_static_segment_members_stay_when_who_may_not_change_the_segment_posts_them(
    field, login, manager_alice, manager_mallory, approver_bob, viewer_carol, under_review
):
    from accounts.services import access_grant

    for external_id in ("a", "b"):
        ProfileFactory(external_id=external_id)
    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=static.pk, add=["a"], by=manager_alice)
    under_review(static)
    access_grant(obj=static, to=viewer_carol, by=None)
    audited = AuditEvent.objects.count()
    press = {"name": "Kept", "description": "", "add_members": "", "remove_members": "", field: "a\nb"}
    for user, refused in ((viewer_carol, 403), (approver_bob, 403), (manager_mallory, 404)):
        assert login(user).post(f"/admin/audiences/segment/{static.pk}/change/", press).status_code == refused
    assert list(static.members.values_list("profile__external_id", flat=True)) == ["a"]
    assert AuditEvent.objects.count() == audited


def test_profile_page_shows_attributes_events_and_memberships(
    login, viewer_carol, manager_alice, admin_erin, django_assert_max_num_queries
):
    from accounts.services import access_grant

    profile = ProfileFactory(external_id="ann", attributes={"plan": "pro", "city": "Paris"})
    for n in range(25):
        EventFactory(profile=profile, name=f"event_{n}", occurred_at=timezone.now() - timezone.timedelta(minutes=n))
    pro = segment_create(name="Pro", rules=PRO, by=manager_alice)
    kept = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=kept.pk, add=["ann"], by=manager_alice)
    access_grant(obj=pro, to=viewer_carol, by=admin_erin)
    client = login(viewer_carol)
    with django_assert_max_num_queries(20):
        page = client.get(f"/admin/audiences/profile/{profile.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Paris" in html and "event_0" in html and "event_19" in html and "event_24" not in html
    assert ">Pro</a>" in html and "Kept" not in html  # only segments the viewer may see


def test_profile_page_shows_each_attribute_as_json_with_the_type_a_rule_reads_it_as(login, viewer_carol):
    """A rule on "age is more than 30" misses an age sent as the text "34": the page showed 34 for
    both, True for true, and Python's repr of lists and objects, so no one could tell why."""
    profile = ProfileFactory(
        external_id="ann",
        attributes={
            "age": "34",
            "score": 34,
            "vip": True,
            "signup": "2026-03-01T10:00:00Z",
            "tags": ["a", "b"],
            "note": "<b>x</b>",
        },
    )
    EventFactory(profile=profile, name="purchase", properties={"sku": "A1", "gift": False})
    page = login(viewer_carol).get(f"/admin/audiences/profile/{profile.pk}/change/")
    rows = {name: (value, kind) for name, value, kind in page.context["profile_attributes"]}
    assert rows == {
        "age": ('"34"', "string"),
        "note": ('"<b>x</b>"', "string"),
        "score": ("34", "number"),
        "signup": ('"2026-03-01T10:00:00Z"', "date"),
        "tags": ('["a", "b"]', "list"),
        "vip": ("true", "boolean"),
    }
    html = page.content.decode()
    assert "<td>&quot;34&quot;</td><td>string</td>" in html and "&lt;b&gt;" in html
    assert '{"sku": "A1", "gift": false}' in html.replace("&quot;", '"')


def test_a_day_written_in_other_digits_reads_as_text_on_the_profile_page_and_in_the_builder(login, manager_alice):
    """A date rule reads no day written with digits of another script, so neither does the page
    that says what a rule reads a value as, nor the builder's pickers: both called it a date."""
    arabic, wide = "\u0662\u0660\u0662\u0666-\u0660\u0663-\u0660\u0661", "\uff12\uff10\uff12\uff16-03-01"
    profile = ProfileFactory(attributes={"signup": "2026-03-01", "arabic": arabic, "wide": wide})
    EventFactory(profile=profile, name="purchase", properties={"on": arabic})
    client = login(manager_alice)
    page = client.get(f"/admin/audiences/profile/{profile.pk}/change/")
    kinds = {name: kind for name, _, kind in page.context["profile_attributes"]}
    assert kinds == {"signup": "date", "arabic": "string", "wide": "string"}
    meta = client.get("/admin/audiences/segment/add/").context["adminform"].form.fields["rules"].widget.meta
    assert sorted(meta["attributes"], key=lambda a: a["name"]) == [
        {"name": "arabic", "type": "string"},
        {"name": "signup", "type": "date"},
        {"name": "wide", "type": "string"},
    ]
    assert {"name": "on", "type": "string"} in meta["properties"]


def test_profile_page_finds_memberships_past_the_first_hundred_segments(
    login, manager_alice, admin_erin, django_assert_max_num_queries
):
    """It checked the first 100 segments by name and said "In none of the segments you may see" of
    a profile in the 101st."""
    profile = ProfileFactory(external_id="ann", attributes={"plan": "pro"})
    Segment.objects.bulk_create(
        [
            Segment(name=f"A {n:03d}", rules={"all": [{"field": "locale", "op": "eq", "value": "xx"}]})
            for n in range(150)
        ]
    )
    zebra = segment_create(name="Zebra", rules=PRO, by=manager_alice)
    client = login(admin_erin)  # sees every segment
    with django_assert_max_num_queries(22):
        page = client.get(f"/admin/audiences/profile/{profile.pk}/change/")
    assert [s for s, _ in page.context["memberships"]] == [zebra]
    assert ">Zebra</a>" in page.content.decode() and "Checked the first" not in page.content.decode()


def test_profile_page_says_how_many_segments_it_checked_when_not_all(login, admin_erin, monkeypatch):
    from audiences.admin import profiles

    profile = ProfileFactory(external_id="ann", attributes={"plan": "pro"})
    Segment.objects.bulk_create(
        [Segment(name=f"A {n:03d}", rules=PRO) for n in range(3)] + [Segment(name="Zebra", rules=PRO)]
    )
    monkeypatch.setattr(profiles, "MEMBERSHIPS_CHECKED", 2)
    page = login(admin_erin).get(f"/admin/audiences/profile/{profile.pk}/change/")
    assert [s.name for s, _ in page.context["memberships"]] == ["A 000", "A 001"]
    assert "Checked the first 2 segments by name of the 4 you may see." in page.content.decode()


def test_big_table_lists_take_a_bounded_number_of_queries(login, viewer_carol, django_assert_max_num_queries):
    for n in range(60):
        EventFactory(name="purchase" if n % 2 else "app_open")
    client = login(viewer_carol)
    with django_assert_max_num_queries(12):
        assert client.get("/admin/audiences/profile/").status_code == 200
    with django_assert_max_num_queries(12):
        page = client.get("/admin/audiences/event/")
    assert page.status_code == 200
    with django_assert_max_num_queries(12):
        assert client.get("/admin/audiences/event/?name=purchase").status_code == 200


def test_outsider_sees_no_audiences_pages(login, outsider_dave):
    client = login(outsider_dave)
    assert client.get("/admin/audiences/profile/").status_code == 403
    assert client.get("/admin/audiences/segment/").status_code == 403


def test_profiles_are_read_only_in_the_admin(login, manager_alice):
    profile = ProfileFactory()
    client = login(manager_alice)
    assert client.get("/admin/audiences/profile/add/").status_code == 403
    response = client.post(f"/admin/audiences/profile/{profile.pk}/change/", {"external_id": "changed"})
    assert response.status_code == 403


def test_deleting_a_profile_from_its_page_removes_its_memberships(login, manager_alice, admin_erin, viewer_carol):
    ann = ProfileFactory(external_id="ann")
    kept = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    segment_members_change(segment_id=kept.pk, add=["ann"], by=manager_alice)
    assert login(viewer_carol).post(f"/admin/audiences/profile/{ann.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Profile.objects.filter(pk=ann.pk).exists()
    response = login(admin_erin).post(f"/admin/audiences/profile/{ann.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Profile.objects.exists() and not SegmentMember.objects.exists()
    deleted = AuditEvent.objects.filter(action="profile_deleted").values_list("object_id", "actor_id")
    assert list(deleted) == [(str(ann.pk), admin_erin.pk)]


def _profile_with_its_rows(external_id, manager):
    """A profile with three events, a device (of an app in ``manager``'s access) and a static
    segment's membership."""
    from accounts.services import access_grant

    profile = ProfileFactory(external_id=external_id)
    for name in ("app_open", "purchase", "purchase"):
        EventFactory(profile=profile, name=name)
    access_grant(obj=DeviceFactory(profile=profile).app, to=manager, by=None)
    kept = segment_create(name=f"Kept {external_id}", kind=Segment.Kind.STATIC, by=manager)
    segment_members_change(segment_id=kept.pk, add=[external_id], by=manager)
    return profile


def _rows_of(profile):
    return (
        Profile.objects.filter(pk=profile.pk).count(),
        Event.objects.filter(profile_id=profile.pk).count(),
        Device.objects.filter(profile_id=profile.pk).count(),
        SegmentMember.objects.filter(profile_id=profile.pk).count(),
    )


@pytest.mark.parametrize("role", ["manager_alice", "admin_erin"])
def test_deleting_a_profile_with_events_says_what_goes_and_removes_it_all(
    request, login, manager_alice, role, django_assert_max_num_queries
):
    ann = _profile_with_its_rows("ann", manager_alice)
    bob = _profile_with_its_rows("bob", manager_alice)
    client = login(request.getfixturevalue(role))
    with django_assert_max_num_queries(20):
        confirmation = client.get(f"/admin/audiences/profile/{ann.pk}/delete/")
    assert confirmation.status_code == 200
    html = confirmation.content.decode()
    for line in ("Profiles: 1", "Events: 3", "Devices: 1", "Segment members: 1"):
        assert f"<li>{line}</li>" in html, line
    assert "purchase @" not in html  # counted, not listed one by one

    response = client.post(f"/admin/audiences/profile/{ann.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert _rows_of(ann) == (0, 0, 0, 0)
    assert _rows_of(bob) == (1, 3, 1, 1)  # the other profile keeps everything


@pytest.mark.parametrize("role", ["viewer_carol", "approver_bob"])
def test_a_role_that_may_not_delete_profiles_is_refused_and_nothing_changes(request, login, manager_alice, role):
    ann = _profile_with_its_rows("ann", manager_alice)
    client = login(request.getfixturevalue(role))
    assert client.get(f"/admin/audiences/profile/{ann.pk}/delete/").status_code == 403
    assert client.post(f"/admin/audiences/profile/{ann.pk}/delete/", {"post": "yes"}).status_code == 403
    press = {"action": "delete_selected", "_selected_action": [ann.pk], "post": "yes"}
    client.post("/admin/audiences/profile/", press)
    assert _rows_of(ann) == (1, 3, 1, 1)
    assert not AuditEvent.objects.filter(action="profile_deleted").exists()


@pytest.mark.presses("audiences.profile:delete_selected")
def test_delete_selected_profiles_with_events_confirms_with_counts_and_removes_them_all(
    login, manager_alice, admin_erin
):
    ann = _profile_with_its_rows("ann", manager_alice)
    bob = _profile_with_its_rows("bob", manager_alice)
    carl = _profile_with_its_rows("carl", manager_alice)
    client = login(admin_erin)
    press = {"action": "delete_selected", "_selected_action": [ann.pk, bob.pk]}
    confirmation = client.post("/admin/audiences/profile/", press)
    assert confirmation.status_code == 200
    html = confirmation.content.decode()
    for line in ("Profiles: 2", "Events: 6", "Devices: 2", "Segment members: 2"):
        assert f"<li>{line}</li>" in html, line

    response = client.post("/admin/audiences/profile/", {**press, "post": "yes"})
    assert response.status_code == 302
    assert _rows_of(ann) == _rows_of(bob) == (0, 0, 0, 0)
    assert _rows_of(carl) == (1, 3, 1, 1)
    deleted = AuditEvent.objects.filter(action="profile_deleted").values_list("object_id", "actor_id")
    assert sorted(deleted) == sorted([(str(ann.pk), admin_erin.pk), (str(bob.pk), admin_erin.pk)])


@pytest.mark.presses("audiences.import:status", "audiences.import:errors")
def test_import_from_the_admin_shows_progress_and_the_error_file(
    login, manager_alice, media, django_capture_on_commit_callbacks
):
    client = login(manager_alice)
    upload = SimpleUploadedFile("people.csv", b"external_id,age\nu1,3\nu2,x\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/audiences/import/add/",
            {
                "file": upload,
                "encoding": "utf-8",
                "target": "new_segment",
                "segment_name": "Fair",
                "columns_text": "age = number",
            },
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    record = Import.objects.get()
    page = client.get(response["Location"])
    assert b"import-progress" in page.content and b"import_progress.js" in page.content
    status = client.get(f"/admin/audiences/import/{record.pk}/status/").json()
    assert status["status"] == "done" and status["rows_failed"] == 1 and status["percent"] == 100.0
    errors = client.get(status["error_file_url"])
    assert b"'x' is not a number" in b"".join(errors.streaming_content)


def test_admin_import_refusal_is_shown_on_the_form(login, manager_alice, media):
    upload = SimpleUploadedFile("people.csv", b"email\na@x\n", content_type="text/csv")
    response = login(manager_alice).post(
        "/admin/audiences/import/add/", {"file": upload, "encoding": "utf-8", "target": "profiles"}
    )
    assert response.status_code == 200
    assert "no external_id column" in response.content.decode()
    assert not Import.objects.exists()


def _upload_body(filename: bytes, content: bytes) -> bytes:
    """A multipart body with the import's fields and one file part named ``filename``, as sent."""
    from django.test.client import BOUNDARY

    fields = b"".join(
        b'--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (BOUNDARY.encode(), name, value)
        for name, value in ((b"encoding", b"utf-8"), (b"target", b"profiles"))
    )
    upload = (
        b'--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\nContent-Type: text/csv\r\n\r\n%s\r\n'
        % (BOUNDARY.encode(), filename, content)
    )
    return fields + upload + b"--%s--\r\n" % BOUNDARY.encode()


def test_an_upload_whose_file_name_is_not_utf8_is_refused_saying_so(login, manager_alice, media):
    """Django drops a part whose header it cannot read: the form said "No file was submitted"."""
    from django.test.client import BOUNDARY

    client = login(manager_alice)
    content = b"external_id,plan\nann,pro\n"
    answer = client.post(
        "/admin/audiences/import/add/",
        _upload_body(b"caf\xe9.csv", content),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    )
    assert answer.status_code == 200
    said = answer.context["adminform"].form.errors["file"]
    assert "No file was submitted" not in " ".join(said)
    assert any("not UTF-8" in message and "rename" in message for message in said), said
    assert not Import.objects.exists()
    # The same file, named in UTF-8, is taken.
    answer = client.post(
        "/admin/audiences/import/add/",
        _upload_body("café.csv".encode(), content),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    )
    assert answer.status_code == 302 and Import.objects.count() == 1


def test_profile_and_event_search_is_by_exact_external_id(login, viewer_carol):
    ann = ProfileFactory(external_id="Ann-1")
    ProfileFactory(external_id="ann-1")
    EventFactory(profile=ann, name="purchase")
    client = login(viewer_carol)
    found = client.get("/admin/audiences/profile/", {"q": "Ann-1"}).context["cl"].result_list
    assert [p.external_id for p in found] == ["Ann-1"]
    events = client.get("/admin/audiences/event/", {"q": "Ann-1"}).context["cl"].result_list
    assert [e.profile_id for e in events] == [ann.pk]


def test_a_profiles_events_link_lists_its_own_events_whatever_spaces_its_id_holds(login, viewer_carol):
    """External ids keep their spaces (the API does not trim them): "ann " and "ann" are two people.
    The profile page's link searched the events by its id, trimmed: it listed the other one's."""
    spaced = ProfileFactory(external_id="ann ")
    other = ProfileFactory(external_id="ann")
    EventFactory(profile=spaced, name="purchase")
    EventFactory(profile=other, name="app_open")
    client = login(viewer_carol)
    page = client.get(f"/admin/audiences/profile/{spaced.pk}/change/")
    listed = client.get(page.context["events_url"]).context["cl"].result_list
    assert [(e.profile_id, e.name) for e in listed] == [(spaced.pk, "purchase")]
    found = client.get("/admin/audiences/profile/", {"q": "ann "}).context["cl"].result_list
    assert sorted(p.external_id for p in found) == ["ann", "ann "]  # as typed, and without its spaces
    events = client.get("/admin/audiences/event/", {"q": "ann "}).context["cl"].result_list
    assert sorted(e.profile_id for e in events) == sorted([spaced.pk, other.pk])


def test_viewer_reads_a_granted_segment_but_cannot_save_it(login, viewer_carol, manager_alice, admin_erin):
    from accounts.services import access_grant

    segment = segment_create(name="Pro", rules=PRO, by=manager_alice)
    access_grant(obj=segment, to=viewer_carol, by=admin_erin)
    client = login(viewer_carol)
    page = client.get(f"/admin/audiences/segment/{segment.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    response = client.post(f"/admin/audiences/segment/{segment.pk}/change/", {"name": "Mine", "rules": json.dumps(PRO)})
    assert response.status_code == 403
    segment.refresh_from_db()
    assert segment.name == "Pro"


@pytest.mark.django_db(transaction=True)
def test_two_segments_saved_at_once_to_use_each_other_save_the_first_and_say_the_cycle_on_the_second(
    manager_alice,
):
    """Both forms found their rules valid (neither segment used the other yet); the second save's
    service then refused the cycle the first had committed meanwhile, and the page answered 403
    with it (before, the two saves deadlocked: a 500). The second page now says the cycle on its
    form, as a cycle saved alone is said."""
    import threading

    from django.test import Client

    from audiences.models import SegmentReference
    from tests.factories import TEST_PASSWORD
    from tests.locks import concurrently, wait_for_blocked_writers

    first = segment_create(name="Pro", rules=PRO, by=manager_alice)
    second = segment_create(name="Also pro", rules=PRO, by=manager_alice)
    holding, released, blocked, pages = threading.Event(), threading.Event(), [], []

    def forget():  # both segments held as a forgetting holds them
        from django.db import transaction

        with transaction.atomic():
            list(Segment.objects.select_for_update(no_key=True).filter(pk__in=[first.pk, second.pk]).order_by("pk"))
            holding.set()
            released.wait(20)

    def save(segment, used):
        client = Client()
        assert client.login(username=manager_alice.username, password=TEST_PASSWORD)
        holding.wait(10)
        rules = {"all": [PRO["all"][0], {"segment": used.pk}]}
        pages.append(
            client.post(
                f"/admin/audiences/segment/{segment.pk}/change/", {"name": segment.name, "rules": json.dumps(rules)}
            )
        )

    def release():
        holding.wait(10)
        blocked.append(wait_for_blocked_writers(2))
        released.set()

    assert concurrently(forget, lambda: save(first, second), lambda: save(second, first), release) == []
    assert blocked == [True]
    assert sorted(page.status_code for page in pages) == [200, 302]
    page = next(page for page in pages if page.status_code == 200)
    assert "cycle between segments" in " ".join(page.context["adminform"].form.errors["rules"])
    assert SegmentReference.objects.filter(source__in=[first, second], target__in=[first, second]).count() == 1


@pytest.mark.parametrize("role", ["viewer_carol", "approver_bob"])
def test_a_reader_who_may_not_change_a_segment_reads_its_rules_in_words(
    request, role, login, manager_alice, under_review
):
    """The builder draws no read-only rules: a Viewer or an approver read the rules as raw JSON."""
    from django.utils.html import escape

    from accounts.services import access_grant
    from tests.factories import AppFactory

    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    vips = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    rules = {
        "all": [
            {"attribute": "plan", "type": "string", "op": "eq", "value": "pro"},
            {"any": [{"segment": vips.pk}, {"event": "purchase", "min_count": 2, "within_days": 30}]},
            {"reachable": {"app": shop.pk, "platform": "ios"}},
        ]
    }
    top = segment_create(name="Top", rules=rules, by=manager_alice)
    reader = request.getfixturevalue(role)
    if role == "viewer_carol":
        access_grant(obj=top, to=reader, by=None)
        access_grant(obj=vips, to=reader, by=None)
        access_grant(obj=shop, to=reader, by=None)
    else:
        under_review(top)  # the approver reads what the campaign they decide is sent to
    page = login(reader).get(f"/admin/audiences/segment/{top.pk}/change/").content.decode()
    said = (
        "all of: plan is “pro”; any of (member of “VIPs”; did “purchase” at least 2 times in the last 30 days); "
        "has an opted-in device on Shop (iOS)"
    )
    assert f'<span id="segment-rules-in-words">{escape(said)}</span>' in page
    # The manager who may change it edits it in the builder, which reads it already.
    page = login(manager_alice).get(f"/admin/audiences/segment/{top.pk}/change/").content.decode()
    assert "segment-rules-in-words" not in page and 'class="rule-builder"' in page


def test_a_segment_and_an_app_outside_the_readers_access_are_not_named_in_the_rules_in_words(
    login, manager_alice, viewer_carol
):
    from accounts.services import access_grant
    from tests.factories import AppFactory

    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    vips = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    top = segment_create(
        name="Top", rules={"all": [{"segment": vips.pk}, {"reachable": {"app": shop.pk}}]}, by=manager_alice
    )
    access_grant(obj=top, to=viewer_carol, by=None)
    page = login(viewer_carol).get(f"/admin/audiences/segment/{top.pk}/change/").content.decode()
    said = f"all of: member of segment #{vips.pk}; has an opted-in device on app #{shop.pk}"
    assert f'<span id="segment-rules-in-words">{said}</span>' in page
    assert "VIPs" not in page and "Shop" not in page


def test_approvers_may_not_import_in_the_admin(login, approver_bob, media):
    client = login(approver_bob)
    assert client.get("/admin/audiences/import/add/").status_code == 403
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n", content_type="text/csv")
    response = client.post("/admin/audiences/import/add/", {"file": upload, "encoding": "utf-8", "target": "profiles"})
    assert response.status_code == 403
    assert not Import.objects.exists()


@pytest.mark.presses("audiences.segment:delete_segments")
def test_delete_segments_deletes_for_its_manager_and_nothing_for_a_viewer_or_outside_access(
    login, manager_alice, manager_mallory, viewer_carol
):
    from accounts.services import access_grant

    segment = segment_create(name="Pros", rules=PRO, by=manager_alice)
    access_grant(obj=segment, to=viewer_carol, by=None)
    press = {"action": "delete_segments", "_selected_action": [segment.pk]}
    answered = {**press, "post": "yes"}
    assert login(viewer_carol).post("/admin/audiences/segment/", answered).status_code in (200, 302, 403)
    login(manager_mallory).post("/admin/audiences/segment/", answered)  # not in her list: nothing happens
    assert Segment.objects.filter(pk=segment.pk).exists()
    client = login(manager_alice)
    asked = client.post("/admin/audiences/segment/", press)  # asked again first: a deletion cannot be undone
    assert asked.status_code == 200 and "Delete 1 segment? This cannot be undone." in asked.content.decode()
    assert "Pros" in asked.content.decode()
    assert Segment.objects.filter(pk=segment.pk).exists()
    deleted = client.post("/admin/audiences/segment/", answered)
    assert deleted.status_code == 302
    assert "1 segment deleted." in [m.message for m in deleted.wsgi_request._messages]
    assert not Segment.objects.filter(pk=segment.pk).exists()


def test_a_static_segments_delete_page_counts_its_members_instead_of_listing_each(
    login, manager_alice, viewer_carol, django_assert_max_num_queries
):
    """Django's confirmation loaded and listed every member: a million made a page that never came back."""
    from accounts.services import access_grant

    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    SegmentMember.objects.bulk_create([SegmentMember(segment=static, profile=ProfileFactory()) for _ in range(300)])
    access_grant(obj=static, to=viewer_carol, by=None)
    assert login(viewer_carol).get(f"/admin/audiences/segment/{static.pk}/delete/").status_code == 403
    client = login(manager_alice)
    with django_assert_max_num_queries(25):
        page = client.get(f"/admin/audiences/segment/{static.pk}/delete/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Segment members: 300" in html and html.count(f" in {static.pk}") == 0
    assert client.post(f"/admin/audiences/segment/{static.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Segment.objects.filter(pk=static.pk).exists() and not SegmentMember.objects.exists()


def test_a_segments_delete_page_names_what_erasures_recorded_plainly_and_no_one_erased(
    login, manager_alice, admin_erin
):
    """A kept list records what each erasure removed from it (``SegmentErasure``): its delete page
    counts those rows as erasure records, which name no profile; no admin page edits them."""
    from django.contrib import admin

    from audiences.models import SegmentErasure
    from audiences.services.profiles import profiles_delete

    static = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    erased = ProfileFactory(external_id="ann-secret", attributes={"email": "ann@example.com"})
    SegmentMember.objects.create(segment=static, profile=erased)
    SegmentMember.objects.create(segment=static, profile=ProfileFactory(external_id="bea"))
    profiles_delete(profile_ids=[erased.pk], by=admin_erin)
    client = login(admin_erin)

    page = client.get(f"/admin/audiences/segment/{static.pk}/delete/")

    html = page.content.decode()
    assert page.status_code == 200
    assert "Erasure records: 1" in html and "Segment members: 1" in html
    assert "erasure" not in html.lower().replace("erasure records: 1", "")
    assert "ann-secret" not in html and "ann@example.com" not in html
    assert SegmentErasure not in admin.site._registry
    for path in (
        "",
        "add/",
        f"{SegmentErasure.objects.get().pk}/change/",
        f"{SegmentErasure.objects.get().pk}/delete/",
    ):
        assert client.get(f"/admin/audiences/segmenterasure/{path}").status_code == 404
    assert client.post(f"/admin/audiences/segment/{static.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not SegmentErasure.objects.exists()


def test_the_delete_page_of_a_segment_another_uses_says_so(login, manager_alice):
    used = segment_create(name="Used", rules=PRO, by=manager_alice)
    segment_create(name="User", rules={"all": [{"segment": used.pk}]}, by=manager_alice)
    client = login(manager_alice)
    page = client.get(f"/admin/audiences/segment/{used.pk}/delete/")
    assert page.status_code == 200 and "protected" in page.content.decode()
    client.post(f"/admin/audiences/segment/{used.pk}/delete/", {"post": "yes"})
    assert Segment.objects.filter(pk=used.pk).exists()


def test_the_delete_page_names_no_campaign_its_reader_may_not_see(login, manager_alice, manager_mallory):
    """Django's confirmation named and linked each campaign keeping the segment, one of a colleague
    the reader was never granted too; the deletion's own refusal already left its name out."""
    from accounts.services import access_grant
    from campaigns.services.lifecycle import campaign_create
    from tests.factories import AppFactory, PushContentFactory

    segment = segment_create(name="Shared", rules=PRO, by=manager_alice)
    app = AppFactory(name="Theirs")
    access_grant(obj=app, to=manager_mallory, by=None)
    access_grant(obj=segment, to=manager_mallory, by=None)
    content = PushContentFactory(app=app)
    campaign = campaign_create(by=manager_mallory, name="Secret launch", app=app, segment=segment, content=content)
    page = login(manager_alice).get(f"/admin/audiences/segment/{segment.pk}/delete/")
    html = page.content.decode()
    assert page.status_code == 200
    assert "Secret launch" not in html and f"/admin/campaigns/campaign/{campaign.pk}/" not in html
    assert "the audience of a campaign you cannot see" in html
    mallorys = login(manager_mallory).get(f"/admin/audiences/segment/{segment.pk}/delete/").content.decode()
    assert "the audience of campaign &#x27;Secret launch&#x27;" in mallorys


@pytest.mark.presses("audiences.segment:preview", "audiences.segment:preview_rules")
def test_previews_count_for_those_who_see_the_segment_and_are_refused_to_others(
    login, manager_alice, manager_mallory, outsider_dave
):
    for _ in range(3):
        ProfileFactory(attributes={"plan": "pro"})
    segment = segment_create(name="Pros", rules=PRO, by=manager_alice)
    saved = login(manager_alice).get(f"/admin/audiences/segment/{segment.pk}/preview/")
    assert saved.status_code == 200 and saved.json()["count"] == 3
    assert login(manager_mallory).get(f"/admin/audiences/segment/{segment.pk}/preview/").status_code == 404
    tree = json.dumps({"rules": PRO})
    assert (
        login(outsider_dave)
        .post("/admin/audiences/segment/preview/", tree, content_type="application/json")
        .status_code
        == 403
    )
    edited = login(manager_mallory).post("/admin/audiences/segment/preview/", tree, content_type="application/json")
    assert edited.status_code == 200 and edited.json()["count"] == 3


@pytest.mark.presses("audiences.import:restart_imports")
def test_a_stalled_import_is_restarted_by_a_manager_and_not_by_a_viewer(
    login, manager_alice, viewer_carol, media, django_capture_on_commit_callbacks
):
    from django.core.files.base import ContentFile

    record = Import(created_by=manager_alice, status=Import.Status.RUNNING)
    record.heartbeat_at = timezone.now() - timezone.timedelta(hours=1)  # its worker stopped long ago
    record.file.save("people.csv", ContentFile(b"external_id\nu1\n"), save=False)
    record.save()
    press = {"action": "restart_imports", "_selected_action": [record.pk]}
    assert login(viewer_carol).post("/admin/audiences/import/", press).status_code in (200, 302, 403)
    record.refresh_from_db()
    assert record.status == Import.Status.RUNNING
    with django_capture_on_commit_callbacks(execute=False):
        assert login(manager_alice).post("/admin/audiences/import/", press).status_code == 302
    record.refresh_from_db()
    assert record.status == Import.Status.QUEUED


def _reachable_world(manager_alice):
    """Three pro profiles: two with a Shop phone (one with notifications off), one with none."""
    from accounts.services import access_grant
    from tests.factories import AppFactory, DeviceFactory

    shop, bank = AppFactory(name="Shop"), AppFactory(name="Bank")
    access_grant(obj=shop, to=manager_alice, by=None)
    with_phone, muted, _ = (ProfileFactory(attributes={"plan": "pro"}) for _ in range(3))
    DeviceFactory(profile=with_phone, app=shop, platform="ios")
    DeviceFactory(profile=muted, app=shop, platform="android", push_enabled=False)
    DeviceFactory(profile=with_phone, app=bank, platform="ios")
    return shop, bank


def test_segment_list_shows_the_reach_kept_at_the_last_count_without_counting(
    login, manager_alice, viewer_carol, django_assert_max_num_queries
):
    from accounts.services import access_grant

    shop, _ = _reachable_world(manager_alice)
    segments = [segment_create(name=f"Pros {n}", rules=PRO, by=manager_alice) for n in range(12)]
    access_grant(obj=segments[0], to=viewer_carol, by=None)
    client = login(manager_alice)
    preview = f"/admin/audiences/segment/{segments[0].pk}/preview/"
    assert client.get(preview).json()["reach"] == [
        {"app": "Shop", "text": "3 profiles → 2 reachable (iOS 1 / Android 1) → 1 opted in"}
    ]
    assert Segment.objects.get(pk=segments[0].pk).last_count is None  # a GET writes nothing
    client.post(preview, "{}", content_type="application/json")  # the segment page's preview keeps it
    kept = Segment.objects.get(pk=segments[0].pk)
    assert kept.last_count == 3 and [f["app"] for f in kept.last_reach] == [shop.pk]  # only the apps she sees

    with django_assert_max_num_queries(12):  # no count per row: the figures are kept on the segment
        html = client.get("/admin/audiences/segment/").content.decode()
    assert "<strong>Shop</strong>: 3 profiles → 2 reachable (iOS 1 / Android 1) → 1 opted in" in html
    assert "Not counted yet" in html and "0\xa0minutes ago" in html

    # A colleague who does not see the Shop app reads the profile count alone.
    html = login(viewer_carol).get("/admin/audiences/segment/").content.decode()
    assert "3 profiles" in html and "Shop" not in html


def _kept(segment) -> tuple:
    segment = Segment.objects.get(pk=segment.pk)
    return segment.last_count, segment.last_counted_at, segment.last_reach


@pytest.mark.presses("audiences.segment:count_reach")
def test_count_reach_now_keeps_each_selected_segments_reach_and_is_refused_without_change_access(
    login, manager_alice, approver_bob, viewer_carol, outsider_dave, under_review
):
    from accounts.services import access_grant

    shop, _ = _reachable_world(manager_alice)
    segment = segment_create(name="Pros", rules=PRO, by=manager_alice)
    press = {"action": "count_reach", "_selected_action": [segment.pk]}
    assert login(outsider_dave).post("/admin/audiences/segment/", press).status_code == 403
    response = login(manager_alice).post("/admin/audiences/segment/", press, follow=True)
    assert "1 segment counted." in response.content.decode()
    segment.refresh_from_db()
    assert segment.last_count == 3 and segment.last_counted_at is not None
    assert segment.last_reach == [
        {"app": shop.pk, "name": "Shop", "profiles": 3, "reachable": 2, "ios": 1, "android": 1, "opted_in": 1}
    ]

    ProfileFactory(attributes={"plan": "pro"})  # a count now says 4
    before = _kept(segment)
    under_review(segment)
    access_grant(obj=segment, to=viewer_carol, by=None)
    # The approver reads the segment through the request they decide, and may not change it.
    response = login(approver_bob).post("/admin/audiences/segment/", press, follow=True)
    assert "Not counted, as you may not change them: Pros." in response.content.decode()
    assert "counted." not in response.content.decode()
    # A Viewer changes nothing, kept figures included: the action is not theirs, and their preview is a read.
    client = login(viewer_carol)
    client.post("/admin/audiences/segment/", press)
    assert client.get(f"/admin/audiences/segment/{segment.pk}/preview/").json()["count"] == 4
    assert client.post(f"/admin/audiences/segment/{segment.pk}/preview/", "{}", content_type="application/json")
    assert _kept(segment) == before

    login(manager_alice).post("/admin/audiences/segment/", press)
    assert _kept(segment)[0] == 4


def test_the_list_dates_an_apps_reach_counted_before_the_profile_count(login, manager_alice, manager_mallory):
    """A colleague who sees other apps counts the segment: the reach in the apps one sees stays, with its age."""
    from accounts.services import access_grant
    from audiences.services.segments import segment_count_keep

    _, bank = _reachable_world(manager_alice)
    access_grant(obj=bank, to=manager_mallory, by=None)
    segment = segment_create(name="Pros", rules=PRO, by=manager_alice)
    access_grant(obj=segment, to=manager_mallory, by=None)
    segment_count_keep(segment_id=segment.pk, by=manager_alice)
    Segment.objects.filter(pk=segment.pk).update(last_counted_at=timezone.now() - timezone.timedelta(hours=3))
    segment_count_keep(segment_id=segment.pk, by=manager_mallory)

    html = login(manager_alice).get("/admin/audiences/segment/").content.decode()
    assert "<strong>Shop</strong>: 3 profiles → 2 reachable (iOS 1 / Android 1) → 1 opted in (counted 3" in html
    assert "Bank" not in html
    html = login(manager_mallory).get("/admin/audiences/segment/").content.decode()
    assert "<strong>Bank</strong>: 3 profiles → 1 reachable (iOS 1 / Android 0) → 1 opted in</div>" in html
    assert "Shop" not in html


def test_events_list_pages_newest_first_across_names(login, viewer_carol):
    """No index orders every event by time: the unfiltered list reads the newest of each name
    through the (name, occurred_at) index and keeps the newest of those. Its pages hold the rows
    a sort of the whole table gives, in its order (backfilled events, ties broken by id)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    profile = ProfileFactory()
    now = timezone.now().replace(microsecond=0)
    names = ("app_open", "purchase", "search", "zz_backfilled")
    events = [
        Event(
            profile=profile,
            name=names[n % 4],
            # times spread over ten days, some sharing a second; the backfilled name's are older
            occurred_at=now - timezone.timedelta(seconds=(n * 7919) % 864_000 + (500_000 if n % 4 == 3 else 0)),
        )
        for n in range(2000)
    ]
    Event.objects.bulk_create(events)
    expected = list(Event.objects.order_by("-occurred_at", "-id").values_list("id", flat=True))
    client = login(viewer_carol)
    with CaptureQueriesContext(connection) as queries:
        first = client.get("/admin/audiences/event/").context["cl"].result_list
    assert [e.id for e in first] == expected[:50]
    assert any("LATERAL" in q["sql"] for q in queries.captured_queries)
    for page in (2, 7):
        rows = client.get("/admin/audiences/event/", {"p": str(page)}).context["cl"].result_list
        assert [e.id for e in rows] == expected[(page - 1) * 50 : page * 50]
    searches = {e.id for e in events if e.name == "search"}
    filtered = client.get("/admin/audiences/event/", {"name": "search"}).context["cl"].result_list
    assert [e.id for e in filtered] == [i for i in expected if i in searches][:50]


@pytest.mark.presses("audiences.eventreplay:replay_now")
def test_an_administrator_replays_waiting_events_now_and_a_manager_cannot(login, admin_erin, manager_alice):
    """Audiences → Event replays: an Administrator sees the batches whose listener failed and
    replays the selected ones at once, due or not (audited); a Manager sees no such page and
    pressing the action changes nothing."""
    from accounts.models import AuditEvent
    from audiences.models import EventReplay
    from audiences.services import events as service

    heard = []

    def listener(**kwargs):
        heard.append(kwargs["event_ids"])

    event = EventFactory(name="purchase")
    name = f"{listener.__module__}.{listener.__qualname__}"
    later = timezone.now() + timezone.timedelta(hours=1)
    replay = EventReplay.objects.create(
        listener=name, event_ids=[event.pk], error="RuntimeError: broken", next_attempt_at=later
    )
    form = {"action": "replay_now", "_selected_action": [replay.pk]}
    manager = login(manager_alice)
    assert manager.get("/admin/audiences/eventreplay/").status_code == 403
    assert manager.post("/admin/audiences/eventreplay/", form).status_code == 403
    service.event_listeners_register(listener)
    try:
        assert not heard and EventReplay.objects.exists()
        client = login(admin_erin)
        page = client.get("/admin/audiences/eventreplay/")
        assert page.status_code == 200 and "RuntimeError: broken" in page.content.decode()
        assert client.get(f"/admin/audiences/eventreplay/{replay.pk}/change/").status_code == 200
        response = client.post("/admin/audiences/eventreplay/", form, follow=True)
    finally:
        service._EVENT_LISTENERS.remove(listener)
    assert response.status_code == 200
    assert "Replayed: 1 batch (1 event); failed again: none; dropped: none." in response.content.decode()
    assert heard == [[event.pk]] and not EventReplay.objects.exists()
    audited = AuditEvent.objects.get(action="events_replayed")
    assert (audited.actor, audited.object_id, audited.summary) == (
        admin_erin,
        str(replay.pk),
        {"listener": name, "events": 1, "attempts": 1},
    )


def test_replaying_events_now_counts_batches_and_the_events_they_hold(login, admin_erin):
    """The selected rows are batches of events: the message says how many batches, and how many
    events they held, replayed, failed again and dropped."""
    from audiences.models import EventReplay
    from audiences.services import events as service

    def listener(**kwargs):
        if len(kwargs["event_ids"]) == 2:
            raise RuntimeError("broken again")

    events = [EventFactory(name="purchase") for _ in range(8)]
    name = f"{listener.__module__}.{listener.__qualname__}"
    later = timezone.now() + timezone.timedelta(hours=1)
    batches = [
        EventReplay.objects.create(listener=listener_name, event_ids=ids, next_attempt_at=later)
        for listener_name, ids in (
            (name, [e.pk for e in events[:3]]),
            (name, [e.pk for e in events[3:6]]),
            (name, [e.pk for e in events[6:8]]),
            ("gone.listener", [events[0].pk]),
        )
    ]
    form = {"action": "replay_now", "_selected_action": [b.pk for b in batches]}
    service.event_listeners_register(listener)
    try:
        response = login(admin_erin).post("/admin/audiences/eventreplay/", form, follow=True)
    finally:
        service._EVENT_LISTENERS.remove(listener)
    assert response.status_code == 200
    said = "Replayed: 2 batches (6 events); failed again: 1 batch (2 events); dropped: 1 batch (1 event)."
    assert said in response.content.decode()
    assert list(EventReplay.objects.values_list("pk", flat=True)) == [batches[2].pk]


def test_replaying_events_is_refused_to_a_manager_in_the_service(manager_alice):
    from django.core.exceptions import PermissionDenied

    from audiences.models import EventReplay
    from audiences.services.events import events_replay_now

    replay = EventReplay.objects.create(listener="gone.listener", event_ids=[1], next_attempt_at=timezone.now())
    with pytest.raises(PermissionDenied):
        events_replay_now(ids=[replay.pk], by=manager_alice)
    assert EventReplay.objects.filter(pk=replay.pk).exists()


def test_an_events_title_names_its_time_in_utc(login, viewer_carol):
    import datetime as dt
    from zoneinfo import ZoneInfo

    occurred = dt.datetime(2027, 1, 5, 15, 30, tzinfo=ZoneInfo("Europe/Paris"))
    event = EventFactory(name="purchase", occurred_at=occurred)
    assert str(event) == "purchase @ 2027-01-05 14:30 UTC"  # whatever zone it came in
    page = login(viewer_carol).get(f"/admin/audiences/event/{event.pk}/change/").content.decode()
    assert "<h2>purchase @ 2027-01-05 14:30 UTC</h2>" in page


def test_a_segment_not_counted_yet_says_where_it_gets_counted(login, manager_alice, viewer_carol):
    """A kept list's page said "preview it, or “Count reach now”": it has no Preview, and Count reach
    now was an action of the segment list only. The page has its own *Count now* for whoever may
    change the segment; the list says where its action is."""
    from accounts.services import access_grant

    kept = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    ruled = segment_create(
        name="Pro",
        rules={"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]},
        by=manager_alice,
    )
    client = login(manager_alice)
    for segment in (kept, ruled):
        page = client.get(f"/admin/audiences/segment/{segment.pk}/change/").content.decode()
        assert "preview it" not in page
        assert '<span id="segment-reach">Not counted yet (Count now counts it).</span>' in page
        assert f'formaction="/admin/audiences/segment/{segment.pk}/count/"' in page
    assert "Count reach now" in client.get("/admin/audiences/segment/").content.decode()  # the action is there
    access_grant(obj=kept, to=viewer_carol, by=None)
    page = login(viewer_carol).get(f"/admin/audiences/segment/{kept.pk}/change/").content.decode()
    assert "Not counted yet (whoever may change it can count it)." in page
    assert 'id="count-reach"' not in page


def test_the_segment_list_points_to_its_count_action_only_for_a_reader_who_has_it(login, manager_alice, viewer_carol):
    """The list told every reader of a segment not counted yet to select it and run “Count reach
    now”, a Viewer too, who has no such action: they read who can count it, as on its page."""
    from accounts.services import access_grant

    kept = segment_create(name="Kept", kind=Segment.Kind.STATIC, by=manager_alice)
    ruled = segment_create(name="Pro", rules=PRO, by=manager_alice)
    html = login(manager_alice).get("/admin/audiences/segment/").content.decode()
    assert "Not counted yet: select it in the segment list and run its “Count reach now” action." in html
    assert "Not counted yet: press Preview under its rules, or select it in the segment list" in html
    for segment in (kept, ruled):
        access_grant(obj=segment, to=viewer_carol, by=None)
    html = login(viewer_carol).get("/admin/audiences/segment/").content.decode()
    assert "Count reach now" not in html and "press Preview" not in html
    assert html.count("Not counted yet (whoever may change it can count it).") == 2


def test_the_segment_list_points_to_its_count_action_only_for_the_segments_its_reader_may_change(
    login, manager_alice, approver_bob, under_review
):
    """The pointer was judged per reader: an approver, who has the action, read "select it and run
    Count reach now" under a segment they read through the request they decide, which the action then
    refused ("you may not change them"). Each row is judged, the page's in one query."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.services import access_grant

    nested = [segment_create(name=f"Nested {n}", kind=Segment.Kind.STATIC, by=manager_alice) for n in range(5)]
    reviewed = segment_create(name="Reviewed", rules={"any": [{"segment": s.pk} for s in nested]}, by=manager_alice)
    under_review(reviewed)  # the approver reads it and the segments its rules use, none of them theirs to change
    own = segment_create(name="Own", kind=Segment.Kind.STATIC, by=manager_alice)
    access_grant(obj=own, to=approver_bob, by=None)
    client = login(approver_bob)
    client.get("/admin/audiences/segment/")  # the caches a first page fills
    with CaptureQueriesContext(connection) as many:
        html = client.get("/admin/audiences/segment/").content.decode()
    assert "Count reach now" in html  # the action is theirs
    assert html.count("Not counted yet: select it in the segment list and run its “Count reach now” action.") == 1
    assert html.count("Not counted yet (whoever may change it can count it).") == 6
    assert "press Preview" not in html  # the rules segment is one they may not change
    Segment.objects.filter(pk__in=[s.pk for s in nested]).update(last_count=0)
    with CaptureQueriesContext(connection) as few:
        html = client.get("/admin/audiences/segment/").content.decode()
    assert html.count("Not counted yet (whoever may change it can count it).") == 1
    assert len(many) == len(few)


@pytest.mark.presses("audiences.segment:count")
def test_count_now_on_a_segments_page_keeps_its_reach_and_is_refused_without_change_access(
    login, manager_alice, viewer_carol, outsider_dave
):
    from accounts.services import access_grant

    shop, _ = _reachable_world(manager_alice)
    segment = segment_create(name="Pros", rules=PRO, by=manager_alice)
    url = f"/admin/audiences/segment/{segment.pk}/count/"
    assert login(outsider_dave).post(url).status_code == 404
    access_grant(obj=segment, to=viewer_carol, by=None)
    assert login(viewer_carol).post(url).status_code == 403
    assert _kept(segment) == (None, None, None)  # a refused press keeps nothing
    client = login(manager_alice)
    assert client.get(url).status_code == 405
    response = client.post(url, follow=True)
    assert "Segment counted: its reach below is as it is now." in response.content.decode()
    segment.refresh_from_db()
    assert segment.last_count == 3
    assert segment.last_reach == [
        {"app": shop.pk, "name": "Shop", "profiles": 3, "reachable": 2, "ios": 1, "android": 1, "opted_in": 1}
    ]
    assert "3 profiles → 2 reachable (iOS 1 / Android 1) → 1 opted in" in response.content.decode()


def test_a_segments_page_names_what_sends_to_it_and_that_an_edit_needs_their_approval_again(
    login, manager_alice, manager_mallory
):
    """Editing a segment's rules or members makes every campaign and journey sending to it wait
    for a new approval before it sends to it again, and its page did not say which: it names those
    still to send (through a segment using it too), counts those the reader may not see, and says
    what an edit does; a finished campaign is not named."""
    from accounts.services import access_grant
    from campaigns.models import Campaign
    from journeys.models import Journey, JourneyVersion
    from tests.factories import AppFactory, PushContentFactory

    app = AppFactory(name="Shop")
    access_grant(obj=app, to=manager_alice, by=None)
    content = PushContentFactory(app=app)
    buyers = segment_create(name="Buyers", rules=PRO, by=manager_alice)
    french = segment_create(
        name="French buyers",
        rules={"all": [{"segment": buyers.pk}, {"attribute": "country", "type": "string", "op": "eq", "value": "FR"}]},
        by=manager_alice,
    )

    def campaign(name, segment, status="live", owner=manager_alice):
        made = Campaign.objects.create(name=name, app=app, segment=segment, content=content, owner=owner, status=status)
        return made

    campaign("Spring sale", buyers)
    campaign("Paris promo", french, status="scheduled")
    campaign("Last year", buyers, status="completed")
    theirs = AppFactory(name="Theirs")
    Campaign.objects.create(
        name="Their sale",
        app=theirs,
        segment=buyers,
        content=PushContentFactory(app=theirs),
        owner=manager_mallory,
        status="draft",
    )
    journey = Journey.objects.create(name="Welcome", app=app, owner=manager_alice, status="live")
    JourneyVersion.objects.create(journey=journey, number=1, status="live", entry_kind="segment", entry_segment=buyers)

    page = login(manager_alice).get(f"/admin/audiences/segment/{buyers.pk}/change/").content.decode()
    used = re.search(r'<div id="segment-used-by">(.*?)</div>', page, re.S).group(1)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", used))
    assert "campaign “Spring sale” (live)" in text
    assert "campaign “Paris promo” (scheduled)" in text  # through French buyers, which uses it
    assert "Also through the segments using it: “French buyers”." in text
    assert "the entry of journey “Welcome”, version 1 (live)" in text
    assert "a campaign you cannot see" in text
    assert "Last year" not in text and "Their sale" not in text
    assert "An edit of its rules or members needs a new approval of each before it sends to this segment again" in text
    alone = segment_create(name="Alone", rules=PRO, by=manager_alice)
    page = login(manager_alice).get(f"/admin/audiences/segment/{alone.pk}/change/").content.decode()
    assert "Nothing still to send sends to it." in page


def test_a_manager_granted_a_segment_alone_saves_it_keeping_a_segment_its_rules_use_they_cannot_see(
    login, manager_alice, manager_mallory
):
    """Its rules use a segment Mallory was not granted: saving it unchanged, or renamed, was refused
    "there is no segment N you may use", as if she had added it. A reference kept may stay, as a
    campaign's or a journey's does; the page still names it by number alone."""
    from accounts.services import access_grant

    vips = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    rules = {"all": [PRO["all"][0], {"segment": vips.pk}]}
    top = segment_create(name="Top", rules=rules, by=manager_alice)
    access_grant(obj=top, to=manager_mallory, by=None)
    client = login(manager_mallory)
    url = f"/admin/audiences/segment/{top.pk}/change/"
    page = client.get(url)
    assert "VIPs" not in page.content.decode()
    assert f"a segment you have no access to (#{vips.pk})" in page.content.decode()
    for name, description in (("Top", ""), ("Top buyers", "Pros among the VIPs")):
        answer = client.post(
            url, {"name": name, "description": description, "kind": "rules", "rules": json.dumps(rules)}
        )
        assert answer.status_code == 302, answer.context["adminform"].form.errors
        top.refresh_from_db()
        assert (top.name, top.description, top.rules) == (name, description, rules)
    # A condition changed beside it keeps it too.
    changed = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "gold"}, {"segment": vips.pk}]}
    answer = client.post(url, {"name": "Top", "kind": "rules", "rules": json.dumps(changed)})
    assert answer.status_code == 302
    top.refresh_from_db()
    assert top.rules == changed


def test_a_manager_may_not_add_to_a_segment_s_rules_a_segment_they_cannot_see(login, manager_alice, manager_mallory):
    from accounts.services import access_grant

    vips = segment_create(name="VIPs", kind=Segment.Kind.STATIC, by=manager_alice)
    top = segment_create(name="Top", rules=PRO, by=manager_alice)
    access_grant(obj=top, to=manager_mallory, by=None)
    added = {"all": [PRO["all"][0], {"segment": vips.pk}]}
    answer = login(manager_mallory).post(
        f"/admin/audiences/segment/{top.pk}/change/", {"name": "Top", "kind": "rules", "rules": json.dumps(added)}
    )
    assert answer.status_code == 200
    errors = " ".join(answer.context["adminform"].form.errors["rules"])
    assert f"there is no segment {vips.pk} you may use" in errors
    assert "VIPs" not in answer.content.decode()
    top.refresh_from_db()
    assert top.rules == PRO


def test_a_segment_whose_saved_rules_no_longer_hold_is_counted_nowhere_and_says_why(login, manager_alice):
    """Rules saved before a check existed ("value": "old" in a number condition): the page, its
    preview, its Count now and the list's action say which condition is wrong, never a 500."""
    segment = segment_create(name="Old ages", rules=PRO, by=manager_alice)
    broken = {"all": [PRO, {"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    Segment.objects.filter(pk=segment.pk).update(rules=broken)
    client = login(manager_alice)
    assert client.get(f"/admin/audiences/segment/{segment.pk}/change/").status_code == 200
    assert client.get("/admin/audiences/segment/").status_code == 200
    preview = client.get(f"/admin/audiences/segment/{segment.pk}/preview/")
    assert preview.status_code == 400
    [error] = preview.json()["errors"]
    assert error["path"] == "rules.all[1].value" and error["message"] == "expected a number, got a string"
    assert error["place"] == "Condition 2 (age is more than)"

    response = client.post(f"/admin/audiences/segment/{segment.pk}/count/", follow=True)
    assert response.status_code == 200
    said = "Not counted: Condition 2 (age is more than): expected a number, got a string."
    assert said in response.content.decode()
    press = {"action": "count_reach", "_selected_action": [segment.pk]}
    response = client.post("/admin/audiences/segment/", press, follow=True)
    assert response.status_code == 200
    assert f"Old ages not counted: {said.removeprefix('Not counted: ')}" in response.content.decode()
    assert _kept(segment) == (None, None, None)


def test_saving_a_segment_a_request_waits_on_warns_it_must_be_submitted_again(
    login, manager_alice, manager_mallory, under_review
):
    """A campaign waiting for approval sends to its segment as it was submitted (its rules, and
    those of the segments they use): a save of either outdates its request, and the save said only
    that it was saved. It warns, naming the campaign to whoever may see it and counting it for the
    others; a renaming changes nothing an approval covers, and warns of nothing."""
    from django.contrib.messages import get_messages

    from accounts.services import access_grant
    from campaigns.services.lifecycle import campaign_cancel_request, campaign_submit

    inner = segment_create(name="Pro", rules=PRO, by=manager_alice)
    audience = segment_create(name="Pro buyers", rules={"all": [{"segment": inner.pk}]}, by=manager_alice)
    campaign = under_review(audience)
    said = (
        "waits for approval with this segment as it was before this change: its approval would be refused. It "
        "must be submitted again (its request cancelled or sent back for changes, then submitted) to be approved "
        "with it."
    )

    def warnings(client, segment, **data):
        url = f"/admin/audiences/segment/{segment.pk}/change/"
        response = client.post(url, {"name": segment.name, "description": "", **data})
        assert response.status_code == 302
        found = [m.message for m in get_messages(response.wsgi_request) if m.level_tag == "warning"]
        client.get(url)  # read
        return found

    client = login(manager_alice)
    assert warnings(client, audience, name="Pro buyers (renamed)", rules=json.dumps(audience.rules)) == []
    for segment in (audience, inner):  # the segments, not the campaign
        access_grant(obj=segment, to=manager_mallory, by=None)
    anyone = json.dumps({"any": [{"segment": inner.pk}]})
    assert warnings(login(manager_mallory), audience, rules=anyone) == [f"A campaign you cannot see {said}"]

    campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)  # submitted again, as it now is
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client = login(manager_alice)
    assert warnings(client, inner, rules=json.dumps({"all": [*PRO["all"], {"field": "locale", "op": "exists"}]})) == [
        f"Campaign “Promo” {said}"
    ]
