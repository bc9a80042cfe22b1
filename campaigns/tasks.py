"""django-q2 entry points: thin, idempotent wrappers over the campaigns services."""

from campaigns.services.scheduling import campaign_fire_due, campaigns_tick


def campaigns_tick_task() -> dict:
    """Scheduled every minute (see the campaigns migration that creates the schedule)."""
    return campaigns_tick()


def campaign_fire_due_task(campaign_id: int) -> int:
    return len(campaign_fire_due(campaign_id=campaign_id))


def winner_pick_task(campaign_id: int) -> bool:
    """Pick a winner-mode campaign's winner if its wait is over (the tick does it for every due one)."""
    from campaigns.services.winner import winner_pick

    return winner_pick(campaign_id=campaign_id) is not None
