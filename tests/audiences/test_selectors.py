"""The audiences' reads that the editors use as hints."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audiences.selectors import audience_attribute_names
from tests.factories import AppFactory, DeviceFactory, ProfileFactory


@pytest.mark.embedded  # its query is written for SQLite too
def test_an_apps_audience_attribute_names_are_its_active_devices_profiles_and_read_once(db):
    shop = AppFactory(name="Shop")
    DeviceFactory(app=shop, profile=ProfileFactory(attributes={"first_name": "Zoe"}))
    DeviceFactory(app=shop, profile=ProfileFactory(attributes={"plan": "gold"}), active=False)
    DeviceFactory(profile=ProfileFactory(attributes={"tier": "gold"}))  # another app's
    ProfileFactory(attributes={"city": "Lyon"})  # no device
    for reads in (1, 0):  # then from the cache
        with CaptureQueriesContext(connection) as queries:
            assert audience_attribute_names(app_id=shop.pk) == ["first_name"]
        assert len([q for q in queries if "audiences_profile" in q["sql"]]) == reads
