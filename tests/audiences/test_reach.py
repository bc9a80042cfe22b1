"""Audience sizes as the send meets them: profiles → reachable in the app (iOS / Android) → opted in."""

from audiences.selectors import Reach, audience_reach
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, SegmentFactory

PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}


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
    with django_assert_max_num_queries(4):  # the count, JIT off, and the savepoint around them
        reach = audience_reach(segment=segment, app_id=shop.pk)
    assert reach == Reach(profiles=5, reachable=2, ios=1, android=2, opted_in=1)
    assert reach.text() == "5 profiles → 2 reachable (iOS 1 / Android 2) → 1 opted in"


def test_a_segment_without_rules_reaches_nobody(db):
    assert audience_reach(segment=SegmentFactory(rules={}), app_id=AppFactory().pk) == Reach(0, 0, 0, 0, 0)
