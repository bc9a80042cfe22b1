"""Audience sizes as the send meets them: profiles → reachable in the app (iOS / Android) → opted in."""

import pytest

from audiences import selectors
from audiences.selectors import Reach, audience_reach
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, SegmentFactory

PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}


@pytest.mark.parametrize("plan", ["probes", "scan"])
def test_reach_counts_profiles_devices_of_the_app_and_opt_ins_in_one_query(
    db, django_assert_max_num_queries, monkeypatch, plan
):
    # Both plans give the same figures: a tiny audience is sent to the scan by lowering its threshold.
    monkeypatch.setattr(selectors, "REACH_SCAN_FROM_PROFILES", 0 if plan == "scan" else 10**9)
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
    with django_assert_max_num_queries(5):  # the estimate, the count, JIT off, and the savepoint around them
        reach = audience_reach(segment=segment, app_id=shop.pk)
    assert reach == Reach(profiles=6, reachable=3, ios=2, android=2, opted_in=2)
    assert reach.text() == "6 profiles → 3 reachable (iOS 2 / Android 2) → 2 opted in"


def test_a_segment_without_rules_reaches_nobody(db):
    assert audience_reach(segment=SegmentFactory(rules={}), app_id=AppFactory().pk) == Reach(0, 0, 0, 0, 0)
