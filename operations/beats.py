"""The beat: the schedules every deployment runs, one a minute each.

Their migrations made them; each migrate makes sure they still exist (a schedule deleted in the
task queue's admin, or a database flushed by a test, gets its beat back). One that exists is left
as the operator set it.
"""

BEATS = {
    "campaigns tick": "campaigns.tasks.campaigns_tick_task",
    "journeys tick": "journeys.tasks.journeys_tick_task",
    "events replay": "audiences.tasks.events_replay_task",
    "delivery watchdog": "delivery.tasks.dispatches_watch_task",
    "imports watchdog": "audiences.tasks.imports_watch_task",
}


def beats_ensure(*, using: str = "default", **_signal) -> None:
    """Create each beat that is missing (a post_migrate receiver)."""
    from django_q.models import Schedule

    for name, func in BEATS.items():
        Schedule.objects.using(using).get_or_create(
            name=name, defaults={"func": func, "schedule_type": Schedule.MINUTES, "minutes": 1, "repeats": -1}
        )
