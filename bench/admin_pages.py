"""Benchmark: the profiles and events admin lists and a profile page at 1M profiles / 5M events.

    .venv/bin/python bench/admin_pages.py

Uses bench/segments.py's database and data set (generated there first if missing), adds the
three benchmark segments as saved rules segments (so the profile page evaluates its
memberships), and times, warm, the median of 7 requests through Django's test client, signed
in as an administrator: the profiles list, the events list, the events list filtered by name,
a profile search by exact external id, and one profile's page (attributes, recent events,
segment memberships). Prints one JSON line in milliseconds.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("DEBUG", "0")

from bench.segments import ATTRIBUTES, EVENT_WINDOW, ensure_dataset, setup_django  # noqa: E402


def main() -> None:
    setup_django()
    from django.db import connection
    from django.test import Client

    from accounts.models import User
    from audiences.models import Profile, Segment

    ensure_dataset(profiles=1_000_000, events=5_000_000, log=lambda m: print(m, file=sys.stderr))
    static = Segment.objects.get(name="bench static")
    specs = {
        "bench attributes": ATTRIBUTES,
        "bench event window": EVENT_WINDOW,
        "bench nested": {
            "any": [
                {
                    "all": [
                        {"attribute": "plan", "type": "string", "op": "eq", "value": "team"},
                        {"attribute": "vip", "type": "boolean", "op": "eq", "value": True},
                    ]
                },
                {"all": [{"segment": static.pk}, {"event": "app_open", "within_days": 7}]},
            ]
        },
    }
    for name, rules in specs.items():
        Segment.objects.get_or_create(name=name, defaults={"kind": Segment.Kind.RULES, "rules": rules})
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_superuser": True, "is_staff": True})
    if not user.is_superuser:
        user.is_superuser = user.is_staff = True
        user.save()
    client = Client()
    client.force_login(user)
    member = Profile.objects.filter(memberships__segment=static).order_by("-id").values_list("pk", flat=True)[:1][0]
    profile = Profile.objects.get(pk=member)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audiences_event WHERE profile_id = %s", [profile.pk])
        events_of_profile = cursor.fetchone()[0]

    def timed(url: str) -> float:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        times = []
        for _ in range(7):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        return round(statistics.median(times), 1)

    pages = {
        "profiles_list": "/admin/audiences/profile/",
        "events_list": "/admin/audiences/event/",
        "events_list_filtered": "/admin/audiences/event/?name=purchase",
        "profile_search": f"/admin/audiences/profile/?q={profile.external_id}",
        "profile_page": f"/admin/audiences/profile/{profile.pk}/change/",
    }
    result = {"benchmark": "admin_pages", "profiles": Profile.objects.count()}
    for name, url in pages.items():
        result[f"{name}_ms"] = timed(url)
    result["profile_page_events"] = events_of_profile
    result["profile_page_segments"] = Segment.objects.count()
    result["goal"] = "each < 300 ms"
    result["met"] = all(v < 300 for k, v in result.items() if k.endswith("_ms"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
