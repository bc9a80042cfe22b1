"""Audience sizes as the send meets them: profiles → reachable in the app (iOS / Android) → opted in."""

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.services import access_grant
from audiences.models import Profile
from audiences.rules.compiler import segment_profiles
from audiences.selectors import Reach, audience_reach
from audiences.services.events import events_ingest
from audiences.services.profiles import profiles_upsert
from delivery.models import App, Device
from delivery.services.devices import device_opt_in_set, device_register, device_unregister, devices_invalidate
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, SegmentFactory, UserFactory
from tests.locks import concurrently, wait_for_a_blocked_writer

PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}
EVERYONE = {"all": [{"field": "locale", "op": "exists"}]}


def reach_from_devices(segment, app_id) -> Reach:
    """The straightforward definition, as a dispatch meets the audience: each profile's active devices of the app."""
    members = set(segment_profiles(segment).values_list("id", flat=True))
    devices = Device.objects.filter(profile_id__in=members, app_id=app_id, active=True)
    reachable = {d.profile_id for d in devices}
    return Reach(
        profiles=len(members),
        reachable=len(reachable),
        ios=len({d.profile_id for d in devices if d.platform == "ios"}),
        android=len({d.profile_id for d in devices if d.platform == "android"}),
        opted_in=len({d.profile_id for d in devices if d.push_enabled}),
    )


@pytest.mark.embedded
@pytest.mark.django_db
def test_reach_counts_profiles_devices_of_the_app_and_opt_ins_in_one_query(db, django_assert_max_num_queries):
    shop, other = AppFactory(name="Shop"), AppFactory(name="Other")
    segment = SegmentFactory(rules=PRO)
    both = ProfileFactory(attributes={"plan": "pro"})
    DeviceFactory(profile=both, app=shop, platform="ios")
    DeviceFactory(profile=both, app=shop, platform="android")
    DeviceFactory(profile=ProfileFactory(attributes={"plan": "pro"}), app=shop, platform="android", push_enabled=False)
    DeviceFactory(profile=ProfileFactory(attributes={"plan": "pro"}), app=shop, platform="ios", active=False)
    DeviceFactory(profile=ProfileFactory(attributes={"plan": "pro"}), app=other, platform="ios")
    ProfileFactory(attributes={"plan": "pro"})  # no device at all
    DeviceFactory(profile=ProfileFactory(attributes={"plan": "free"}), app=shop)  # not in the segment
    two_iphones = ProfileFactory(attributes={"plan": "pro"})  # counted once, opted in through one of them
    DeviceFactory(profile=two_iphones, app=shop, platform="ios", push_enabled=False)
    DeviceFactory(profile=two_iphones, app=shop, platform="ios")
    with django_assert_max_num_queries(4):  # the count, JIT off, and the savepoint around them
        reach = audience_reach(segment=segment, app_id=shop.pk)
    assert reach == Reach(profiles=6, reachable=3, ios=2, android=2, opted_in=2)
    assert reach.text() == "6 profiles → 3 reachable (iOS 2 / Android 2) → 2 opted in"
    assert audience_reach(segment=segment, app_id=other.pk) == Reach(6, 1, 1, 0, 1)


def test_a_segment_without_rules_reaches_nobody(db):
    assert audience_reach(segment=SegmentFactory(rules={}), app_id=AppFactory().pk) == Reach(0, 0, 0, 0, 0)


@pytest.mark.embedded
@pytest.mark.django_db
def test_reach_equals_the_devices_through_every_kind_of_device_write(manager_alice):
    """The reach each profile carries follows every write to the devices: the app's registrations,
    opt-ins and unregistrations, providers' dead tokens, writes one at a time and in bulk, tokens
    moving to another profile or app, deletions of devices, profiles and apps. After each step the
    figures equal those counted from the devices."""
    alice = manager_alice
    shop, other, gone = AppFactory(name="Shop"), AppFactory(name="Other"), AppFactory(name="Gone")
    access_grant(obj=shop, to=manager_alice, by=None)
    pro, everyone = SegmentFactory(rules=PRO), SegmentFactory(rules=EVERYONE)
    people = [
        ProfileFactory(attributes={"plan": "pro" if n % 3 else "free"}, locale="fr-FR" if n % 4 else "en-GB")
        for n in range(30)
    ]
    steps = []

    def check(step):
        for segment in (pro, everyone):
            for app in App.objects.all():
                expected = reach_from_devices(segment, app.pk)
                assert audience_reach(segment=segment, app_id=app.pk) == expected, (step, segment.rules, app.name)
        steps.append(step)

    check("no devices")
    for n, person in enumerate(people[:20]):
        DeviceFactory(profile=person, app=shop, platform="ios" if n % 2 else "android", push_enabled=n % 5 != 0)
    DeviceFactory(profile=people[1], app=shop, platform="android", push_enabled=False)
    DeviceFactory(profile=people[2], app=other, platform="ios")
    check("added one at a time")
    Device.objects.bulk_create(
        Device(profile=person, app=app, platform=platform, token=f"bulk-{person.pk}-{app.pk}-{platform}")
        for person in people[10:30]
        for app in (other, gone)
        for platform in ("ios", "android")
    )
    check("added in bulk")
    Device.objects.filter(profile__in=people[:6], app=shop).update(push_enabled=False)
    Device.objects.filter(profile=people[7], app=shop).update(push_enabled=True)
    check("opted out and in")
    Device.objects.filter(profile__in=people[8:12]).update(active=False, invalidated_reason="Unregistered")
    check("deactivated")
    Device.objects.filter(profile=people[9]).update(active=True, invalidated_reason="")
    check("registered again")
    moved = Device.objects.filter(profile=people[3], app=shop).first()
    moved.profile = people[25]
    moved.save()
    Device.objects.filter(profile=people[13], app=other, platform="ios").update(app=shop)
    Device.objects.filter(profile=people[14], platform="ios").update(platform="android")
    check("moved to another profile, app or platform")
    Device.objects.filter(profile=people[15]).update(last_registered_at=moved.last_registered_at)
    check("an unrelated column changed")
    Device.objects.filter(profile__in=people[16:19], app=other).delete()
    people[1].devices.first().delete()
    check("devices deleted")
    people[20].delete()
    Profile.objects.filter(pk__in=[p.pk for p in people[21:23]]).delete()
    check("profiles deleted")
    gone.delete()
    check("an app deleted")
    ios_token, fcm_token = "ab" * 32, "fcm-token-00000000000000000001:APA91b"
    device_register(app_id=shop.pk, external_id=people[26].external_id, platform="ios", token=ios_token, by=alice)
    device_register(app_id=shop.pk, external_id="new-person", platform="android", token=fcm_token, by=alice)
    check("registered through the service")
    device_opt_in_set(app_id=shop.pk, token=ios_token, push_enabled=False, by=alice)
    device_register(app_id=shop.pk, external_id=people[27].external_id, platform="ios", token=ios_token, by=alice)
    check("opted out, then the token moved to another profile")
    device_unregister(app_id=shop.pk, token=fcm_token, by=alice)
    devices_invalidate(reasons={d.pk: "BadDeviceToken" for d in Device.objects.filter(profile=people[28])})
    check("unregistered and dead tokens")
    assert len(steps) == 14


def test_the_reach_kept_on_profiles_follows_a_truncate_and_survives_a_profile_save(db):
    shop = AppFactory()
    person = ProfileFactory(attributes={"plan": "pro"})
    device = DeviceFactory(profile=person, app=shop, platform="android")
    stale = Profile.objects.get(pk=person.pk)  # read before the opt-out
    device.push_enabled = False
    device.save()
    stale.attributes = {"plan": "pro", "vip": True}
    stale.save()  # a profile save does not write the reach back
    segment = SegmentFactory(rules=PRO)
    assert audience_reach(segment=segment, app_id=shop.pk) == Reach(1, 1, 0, 1, 0)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the foreign keys' checks, deferred, run first
        cursor.execute("TRUNCATE delivery_device CASCADE")
    assert audience_reach(segment=segment, app_id=shop.pk) == Reach(1, 0, 0, 0, 0)


def test_two_transactions_adding_devices_to_one_profile_at_once_are_both_counted(transactional_db):
    """The second writer waits for the first's lock on the profile, then recomputes with what the
    first committed: neither device is lost from the profile's reach."""
    shop = AppFactory()
    person = ProfileFactory(attributes={"plan": "pro"})
    first_inserted, second_started = threading.Event(), threading.Event()
    blocked = []

    def first():
        with transaction.atomic():
            DeviceFactory(profile_id=person.pk, app_id=shop.pk, platform="ios")
            first_inserted.set()
            second_started.wait(10)
            blocked.append(wait_for_a_blocked_writer())

    def second():
        first_inserted.wait(10)
        second_started.set()
        with transaction.atomic():
            DeviceFactory(profile_id=person.pk, app_id=shop.pk, platform="android", push_enabled=False)

    assert not concurrently(first, second)
    assert blocked == [True]  # the second writer did wait for the first's lock
    assert Device.objects.filter(profile=person).count() == 2
    assert audience_reach(segment=SegmentFactory(rules=PRO), app_id=shop.pk) == Reach(1, 1, 1, 1, 1)


def test_a_bulk_device_write_and_an_events_call_lock_profiles_in_one_order(transactional_db):
    """The triggers lock profiles in id order, as an events call locks the profiles whose last
    seen time moves: an events call partway through its locks never deadlocks with a bulk write
    of the same profiles' devices (in the order of the external ids it would)."""
    shop = AppFactory()
    zed = ProfileFactory(external_id="zed")  # the lower id, the later external id
    ann = ProfileFactory(external_id="ann")
    writer = UserFactory(username="ingest", role="Manager")
    holding, blocked = threading.Event(), []

    def events_call():
        with transaction.atomic():
            # As far as the call's id-ordered lock has come when the device write starts.
            list(Profile.objects.filter(pk=zed.pk).select_for_update(no_key=True))
            holding.set()
            blocked.append(wait_for_a_blocked_writer())
            now = timezone.now()
            events_ingest(
                items=[{"external_id": x, "name": "open", "occurred_at": now} for x in ("ann", "zed")], by=writer
            )

    def device_write():
        holding.wait(10)
        with transaction.atomic():
            Device.objects.bulk_create(
                Device(profile_id=p.pk, app_id=shop.pk, platform="ios", token=f"{p.pk:064x}") for p in (zed, ann)
            )

    assert not concurrently(events_call, device_write)  # a deadlock would abort one of them
    assert blocked == [True]
    assert (
        audience_reach(
            segment=SegmentFactory(rules={"all": [{"event": "open", "within_days": 1}]}), app_id=shop.pk
        ).reachable
        == 2
    )


def test_a_profile_upsert_and_a_bulk_device_write_lock_profiles_in_one_order(transactional_db):
    """The upsert locks its profiles in id order, as the devices' triggers do: a device write that
    holds the lower id's profile while the upsert waits for it can still lock the higher one."""
    shop = AppFactory()
    zed = ProfileFactory(external_id="zed")  # the lower id, the later external id
    ann = ProfileFactory(external_id="ann")
    writer = UserFactory(username="ingest", role="Manager")
    holding, blocked = threading.Event(), []

    def device_write():
        with transaction.atomic():
            DeviceFactory(profile_id=zed.pk, app_id=shop.pk, platform="ios")  # its trigger locks zed
            holding.set()
            blocked.append(wait_for_a_blocked_writer())
            DeviceFactory(profile_id=ann.pk, app_id=shop.pk, platform="android")

    def upsert():
        holding.wait(10)
        profiles_upsert(items=[{"external_id": x, "attributes": {"plan": "pro"}} for x in ("ann", "zed")], by=writer)

    assert not concurrently(device_write, upsert)  # a deadlock would abort one of them
    assert blocked == [True]  # the upsert did wait for the device write
    assert set(Profile.objects.filter(attributes__plan="pro").values_list("external_id", flat=True)) == {"ann", "zed"}
    assert audience_reach(segment=SegmentFactory(rules=PRO), app_id=shop.pk).reachable == 2


def test_a_reach_of_one_profile_says_profile():
    """A segment of one read "1 profiles → 1 reachable", on its page, its list and a campaign's."""
    assert Reach(1, 1, 0, 1, 1).text() == "1 profile → 1 reachable (iOS 0 / Android 1) → 1 opted in"
    assert Reach(2, 0, 0, 0, 0).text().startswith("2 profiles → ")
    assert Reach(0, 0, 0, 0, 0).text().startswith("0 profiles → ")
