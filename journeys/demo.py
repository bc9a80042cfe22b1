"""Demo journey: beta testers enter; recent buyers get an A/B test, the others a nudge the next
morning unless they bought meanwhile. Submitted by the demo manager, approved by the demo approver.
Safe to run again."""

from accounts.models import User
from accounts.services import access_grant
from journeys.models import Journey

DEMO_JOURNEY = "Welcome back (demo)"


def _graph(*, recent: int, welcome: int, sale: int) -> dict:
    return {
        "steps": [
            {"id": "start", "type": "wait", "seconds": 0, "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "Recent buyers", "segment": recent, "next": "ab"}],
                "else": "morning",
            },
            {
                "id": "ab",
                "type": "split",
                "branches": [
                    {"label": "A", "percent": 50, "next": "welcome"},
                    {"label": "B", "percent": 50, "next": "sale"},
                ],
            },
            {"id": "welcome", "type": "push", "content": welcome, "next": "done"},
            {"id": "sale", "type": "push", "content": sale, "next": "done"},
            {"id": "morning", "type": "wait", "until": "10:00", "next": "bought"},
            {
                "id": "bought",
                "type": "condition",
                "branches": [{"label": "Bought since entry", "event": "purchase", "next": "done"}],
                "else": "nudge",
            },
            {"id": "nudge", "type": "push", "content": welcome, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


def populate(*, stdout) -> None:
    from audiences.demo import demo_segment_as_written
    from audiences.models import Segment
    from delivery.demo import DEMO_APP, demo_content_as_written
    from delivery.models import App, PushContent
    from delivery.services.apps import SECRET_FIELDS
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit

    if Journey.objects.filter(name=DEMO_JOURNEY).exists():
        stdout.write(f"Demo journey {DEMO_JOURNEY!r} already exists.")
        return
    manager = User.objects.filter(username="manager").first()
    approver = User.objects.filter(username="approver").first()
    app = App.objects.defer(*SECRET_FIELDS).filter(name=DEMO_APP).first()  # no credential is needed here
    beta = Segment.objects.filter(name="Beta testers").first()
    recent = Segment.objects.filter(name="Recent buyers (2+ purchases in 30 days)").first()
    contents = {c.name: c for c in PushContent.objects.filter(app=app, name__in=("Welcome back", "Flash sale"))}
    if None in (manager, approver, app, beta, recent) or len(contents) < 2:
        stdout.write("Demo journey skipped: the demo users, app, segments and contents are needed first.")
        return
    for user in (manager, approver, User.objects.filter(username="viewer").first()):
        if user is not None:
            access_grant(obj=app, to=user, by=None)
    journey = journey_create(
        by=manager,
        name=DEMO_JOURNEY,
        app=app,
        entry_kind="segment",
        entry_segment=beta,
        exit_event="purchase",
        graph=_graph(recent=recent.pk, welcome=contents["Welcome back"].pk, sale=contents["Flash sale"].pk),
    )
    journey_submit(journey_id=journey.pk, by=manager, message="Demo: welcome back our beta testers.")
    changed = [c.name for c in contents.values() if not demo_content_as_written(c)]
    changed += [s.name for s in (beta, recent) if not demo_segment_as_written(s)]
    if changed:
        # Someone changed what the demo wrote since: an approver reads the journey first.
        stdout.write(
            f"Demo journey {DEMO_JOURNEY!r}: waiting for approval ({', '.join(changed)} changed since the demo "
            "wrote them)."
        )
        return
    journey_approve(journey_id=journey.pk, by=approver, comment="Demo approval.")
    stdout.write(f"Demo journey {DEMO_JOURNEY!r}: live; beta testers enter as the workers run it.")
