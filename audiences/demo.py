"""Demo audiences: 300 profiles with attributes and events, and a few segments. Safe to run again."""

import datetime as dt
import random

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from audiences.models import Event, Profile, Segment
from audiences.services.segments import segment_create, segment_members_change

PROFILES = 300
PLANS = ("free", "free", "free", "pro", "team")
PLACES = (
    ("FR", "Paris", "fr-FR", "Europe/Paris"),
    ("FR", "Lyon", "fr-FR", "Europe/Paris"),
    ("DE", "Berlin", "de-DE", "Europe/Berlin"),
    ("GB", "London", "en-GB", "Europe/London"),
    ("US", "New York", "en-US", "America/New_York"),
    ("BR", "São Paulo", "pt-BR", "America/Sao_Paulo"),
)


def populate(*, stdout) -> None:
    owner = User.objects.filter(username="manager").first() or User.objects.filter(is_superuser=True).first()
    created_profiles = _profiles()
    if created_profiles:
        stdout.write(f"Demo audiences: {created_profiles} profiles with attributes and events.")
    if owner is None:
        stdout.write("Demo segments skipped: no 'manager' user to own them.")
        return
    made = _segments(owner)
    if made:
        stdout.write(f"Demo segments: {', '.join(made)}.")
    elif not created_profiles:
        stdout.write("Demo audiences already exist.")


def _profiles() -> int:
    if Profile.objects.filter(external_id__startswith="demo-").exists():
        return 0
    rng = random.Random(42)  # the same demo every time
    now = timezone.now()
    profiles = []
    for n in range(PROFILES):
        country, city, locale, tz = rng.choice(PLACES)
        signup = (now - dt.timedelta(days=rng.randint(0, 400))).date()
        profiles.append(
            Profile(
                external_id=f"demo-{n + 1:04d}",
                attributes={
                    "first_name": rng.choice(("Ann", "Bob", "Chloé", "Dmitri", "Eva", "Farid", "Grace", "Hugo")),
                    "plan": rng.choice(PLANS),
                    "age": rng.randint(16, 75),
                    "country": country,
                    "city": city,
                    "vip": rng.random() < 0.1,
                    "signup_date": signup.isoformat(),
                    "lifetime_value": round(rng.random() * 500, 2),
                },
                locale=locale,
                timezone=tz,
                created_at=now - dt.timedelta(days=rng.randint(0, 400)),
                updated_at=now,
            )
        )
    with transaction.atomic():
        Profile.objects.bulk_create(profiles)
        saved = list(Profile.objects.filter(external_id__startswith="demo-").order_by("id"))
        events = []
        for profile in saved:
            for _ in range(rng.randint(0, 12)):
                when = now - dt.timedelta(minutes=rng.randint(0, 60 * 24 * 90))
                name = rng.choice(("app_open", "app_open", "app_open", "add_to_cart", "purchase"))
                properties = {}
                if name == "purchase":
                    properties = {"amount": round(rng.random() * 200, 2), "currency": "EUR"}
                elif name == "add_to_cart":
                    properties = {"sku": f"SKU-{rng.randint(1, 40):03d}"}
                events.append(Event(profile=profile, name=name, properties=properties, occurred_at=when))
        Event.objects.bulk_create(events, batch_size=2000)
        for profile in saved:
            seen = [e.occurred_at for e in events if e.profile_id == profile.pk]
            if seen:
                profile.last_seen_at = max(seen)
        Profile.objects.bulk_update(saved, ["last_seen_at"], batch_size=500)
    return len(saved)


DEMO_RULES = [
    (
        "Pro and team users in France",
        {
            "all": [
                {"attribute": "plan", "type": "string", "op": "in", "value": ["pro", "team"]},
                {"attribute": "country", "type": "string", "op": "eq", "value": "FR"},
            ]
        },
    ),
    (
        "Recent buyers (2+ purchases in 30 days)",
        {"all": [{"event": "purchase", "min_count": 2, "within_days": 30}]},
    ),
    (
        "Lapsed users",
        {
            "all": [
                {"event": "app_open", "did": False, "within_days": 14},
                {"field": "created_at", "op": "lt", "value": {"ago": 30, "unit": "days"}},
            ]
        },
    ),
]
# The demo's hand-kept list, and who the demo puts in it.
DEMO_LIST = "Beta testers"
DEMO_LIST_MEMBERS = [f"demo-{n:04d}" for n in range(1, 21)]


def demo_segment_as_written(segment: Segment) -> bool:
    """Is ``segment`` one of the demo's, defined as the demo wrote it (its rules; for its list, none
    but the members the demo put in it)? The demo approves its journey by itself, as its approver:
    only over an audience nobody has changed since (``make run`` sets the demo up again on every
    start, when others may have edited it)."""
    if segment.name == DEMO_LIST:
        if segment.kind != Segment.Kind.STATIC:
            return False
        members = Profile.objects.filter(pk__in=segment.members.values("profile_id"))
        return not members.exclude(external_id__in=DEMO_LIST_MEMBERS).exists()
    written = dict(DEMO_RULES)
    return segment.kind == Segment.Kind.RULES and segment.name in written and segment.rules == written[segment.name]


def _segments(owner: User) -> list[str]:
    made = []
    for name, rules in DEMO_RULES:
        if not Segment.objects.filter(name=name).exists():
            segment_create(name=name, rules=rules, by=owner)
            made.append(name)
    if not Segment.objects.filter(name=DEMO_LIST).exists():
        beta = segment_create(name=DEMO_LIST, kind=Segment.Kind.STATIC, by=owner)
        segment_members_change(segment_id=beta.pk, add=DEMO_LIST_MEMBERS, by=owner)
        made.append("Beta testers")
    recent = Segment.objects.filter(name="Recent buyers (2+ purchases in 30 days)").first()
    beta = Segment.objects.filter(name="Beta testers").first()
    nested = "VIPs or engaged beta testers"
    if recent and beta and not Segment.objects.filter(name=nested).exists():
        segment_create(
            name=nested,
            rules={
                "any": [
                    {"attribute": "vip", "type": "boolean", "op": "eq", "value": True},
                    {"all": [{"segment": beta.pk}, {"segment": recent.pk}]},
                ]
            },
            by=owner,
        )
        made.append(nested)
    return made
