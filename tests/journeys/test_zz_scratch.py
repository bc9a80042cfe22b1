import cProfile
import io
import pstats
import time

import pytest
from django.db import connection

from audiences.models import Profile, SegmentMember
from delivery.models import Device
from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment

pytestmark = pytest.mark.django_db


def test_profile(make_journey, publish, vips, team, monkeypatch):
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    Profile.objects.bulk_create([Profile(external_id=f"p{i}") for i in range(2000)])
    ps = list(Profile.objects.all())
    Device.objects.bulk_create([Device(profile=p, app=team, platform="android", token=f"tok{p.pk:010d}") for p in ps])
    SegmentMember.objects.bulk_create([SegmentMember(segment=vips, profile=p) for p in ps[::2]])
    journey = publish(make_journey())
    print("entered", journey_enter_segment(journey_id=journey.pk))
    with connection.cursor() as c:
        c.execute("analyze")
    pr = cProfile.Profile(time.process_time)
    t = time.process_time()
    pr.enable()
    r = journeys_run_due(batch=1000)
    pr.disable()
    print("report", r.as_dict(), "CPU ms", (time.process_time() - t) * 1000)
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("cumulative").print_stats(45)
    st.sort_stats("tottime").print_stats(25)
    print(s.getvalue())
