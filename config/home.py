"""What the admin's home page shows each user: permission-filtered reads, cheap by construction.

Every count sums the deliveries' rollup (``DeliveryRollup``) over a bounded time range through
its ``period`` index (the last 24 hours, the last hour), or reads a short list with a limit;
nothing counts the deliveries.
"""

import datetime as dt
from dataclasses import dataclass, field

from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.text import Truncator
from redis.exceptions import RedisError

from accounts.approvals import approval_requests_sent_back, approvals_asked_at
from accounts.models import ApprovalRequest, User
from accounts.selectors import (
    approval_requests_stuck_among,
    approval_requests_visible_to,
    approval_subjects,
    approval_subjects_named,
    approvals_waiting_for,
    has_every_scope,
    visible_to,
)
from audiences.models import Import
from audiences.selectors import imports_visible_to
from campaigns.models import Campaign
from campaigns.review import next_send_text
from campaigns.selectors import campaigns_visible_to
from config.labels import numbered
from delivery.models import Delivery, DeliveryRollup, Dispatch
from delivery.reasons import handed_over, reason_label
from delivery.selectors import dispatches_visible_to
from delivery.services.dispatches import dispatches_counted_now
from journeys.models import Journey
from journeys.selectors import journeys_visible_to

LIST_LIMIT = 10
COMMENT_SHOWN = 200  # characters of an approver's comment a line shows
STUCK_AFTER = dt.timedelta(days=3)
SEND_WINDOW_HOURS = 24
HEALTH_WINDOW = dt.timedelta(hours=1)


@dataclass
class Item:
    """One line of the home page: a label, where it leads, and what to say beside it."""

    label: str
    url: str
    detail: str = ""
    stuck: str = ""  # why a request is stuck, empty when it is not
    comment: str = ""  # what an approver said, shortened (``COMMENT_SHOWN``): the whole on ``record_url``
    record_url: str = ""  # a request's own page, beside a line that leads to its subject


@dataclass
class Section:
    title: str
    items: list[Item] = field(default_factory=list)
    more_url: str = ""
    empty: str = "Nothing."


def _change_url(obj) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


def _changelist_url(model, query: str = "") -> str:
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    return f"{url}?{query}" if query else url


def live_and_next(user: User, *, now: dt.datetime) -> tuple[Section, Section]:
    """Live campaigns and journeys; scheduled campaigns, the soonest first."""
    campaigns = campaigns_visible_to(user)
    live = Section("Live now", empty="Nothing is live.")
    for campaign in campaigns.filter(status=Campaign.Status.LIVE).order_by("-status_changed_at")[:LIST_LIMIT]:
        live.items.append(Item(f"Campaign: {campaign}", _change_url(campaign), "live"))
    # A paused journey is on the air still (its resume needs no approval): listed, saying so.
    for journey in journeys_visible_to(user).filter(status__in=Journey.ON_AIR).order_by("-pk")[:LIST_LIMIT]:
        live.items.append(Item(f"Journey: {journey}", _change_url(journey), journey.get_status_display().lower()))
    live.more_url = _changelist_url(Campaign, "status__exact=live")
    scheduled = Section("Scheduled next", empty="Nothing is scheduled.")
    upcoming = campaigns.filter(status=Campaign.Status.SCHEDULED, next_occurrence_at__isnull=False)
    for campaign in upcoming.order_by("next_occurrence_at")[:LIST_LIMIT]:
        scheduled.items.append(
            Item(f"Campaign: {campaign}", _change_url(campaign), f"next send {next_send_text(campaign)}")
        )
    scheduled.more_url = _changelist_url(Campaign, "status__exact=scheduled")
    return live, scheduled


def _stuck(request: ApprovalRequest, *, now: dt.datetime, undecidable: set[int]) -> str:
    if now - request.requested_at > STUCK_AFTER:
        return f"stuck: waiting for {(now - request.requested_at).days} days"
    if request.pk in undecidable:
        return "stuck: no one may approve it"
    return ""


def approvals(user: User, *, now: dt.datetime) -> tuple[Section, Section]:
    """Requests waiting for the user's decision (each named: who may decide one has access to its
    subject), and the user's own requests waiting for others, each named when the user may see its
    subject now (``approval_subjects_named``)."""
    changelist = reverse("admin:accounts_approvalrequest_changelist")
    waiting = Section("Waiting for my approval", empty="Nothing waits for you.")
    waiting.more_url = f"{changelist}?show=mine_to_decide"
    for request in approvals_waiting_for(user)[:LIST_LIMIT]:
        age = (now - request.requested_at).days
        stuck = f"stuck: waiting for {age} days" if now - request.requested_at > STUCK_AFTER else ""
        url = reverse("admin:accounts_approvalrequest_review", args=[request.pk])
        waiting.items.append(Item(request.subject_label, url, f"from {request.requested_by}", stuck))
    mine = Section("My requests awaiting others", empty="None of your requests is waiting.")
    mine.more_url = f"{changelist}?show=my_requests"
    pending = approval_requests_visible_to(user).filter(requested_by=user, status=ApprovalRequest.Status.PENDING)
    pending = list(pending.order_by("requested_at")[:LIST_LIMIT])
    sent = approvals_asked_at(pending)
    undecidable = approval_requests_stuck_among([r for r in pending if now - r.requested_at <= STUCK_AFTER])
    named = approval_subjects_named(user, pending)  # a subject they lost access to since: by its number
    for request in pending:
        url = reverse("admin:accounts_approvalrequest_change", args=[request.pk])
        stuck = _stuck(request, now=now, undecidable=undecidable)
        mine.items.append(Item(named[request.pk], url, f"sent for approval on {sent[request.pk]}", stuck))
    return waiting, mine


def sent_back(user: User) -> Section:
    """The user's own requests an approver sent back for changes, not submitted again since
    (``approval_requests_sent_back``), the latest first: each subject named and linked when the
    user may still see it ("campaign #12" otherwise, as ``linked_if_visible`` names it), who sent it
    back and when (as the subject shows its dates), and the comment, shortened.

    A fixed number of queries whatever the rows: the requests, then per kind of subject the
    subjects and which of them the user may see.
    """
    changelist = reverse("admin:accounts_approvalrequest_changelist")
    section = Section(
        "Sent back to me", empty="Nothing of yours was sent back.", more_url=f"{changelist}?show=sent_back"
    )
    mine = approval_requests_visible_to(user).filter(requested_by=user)
    requests = list(approval_requests_sent_back(mine).order_by("-decided_at", "-pk")[:LIST_LIMIT])
    subjects = approval_subjects(requests)
    seen: set[tuple[type, object]] = set()
    for model, ids in _ids_by_model(subjects.values()).items():
        seen |= {
            (model, pk)
            for pk in visible_to(user, model._default_manager.filter(pk__in=ids)).values_list("pk", flat=True)
        }
    decided = approvals_asked_at(requests, field="decided_at", subjects=subjects)
    for request in requests:
        subject = subjects.get(request.pk)
        if subject is None:  # deleted since the requests were read
            continue
        if (type(subject), subject.pk) in seen:
            label, url = str(subject), _change_url(subject)
            comment = Truncator(request.comment).chars(COMMENT_SHOWN)
        else:  # the approver's words may name or quote it: withheld, as on the request's page
            label, url = numbered(subject._meta.verbose_name, subject.pk), ""
            comment = f"withheld: you no longer have access to {label}" if request.comment else ""
        detail = f"sent back by {request.decided_by} on {decided[request.pk]}"
        record = reverse("admin:accounts_approvalrequest_change", args=[request.pk])
        section.items.append(Item(label, url, detail, comment=comment, record_url=record))
    return section


def _ids_by_model(objects) -> dict[type, list]:
    grouped: dict[type, list] = {}
    for obj in objects:
        grouped.setdefault(type(obj), []).append(obj.pk)
    return grouped


def _rollup_visible_to(user: User):
    """The rollup of the dispatches whose deliveries the user may see."""
    if not user.has_perm("delivery.view_delivery"):
        return DeliveryRollup.objects.none()
    return DeliveryRollup.objects.filter(dispatch__in=dispatches_visible_to(user).values("pk"))


def sends_last_24h(user: User, *, now: dt.datetime) -> dict:
    """Hourly series of the last 24 hours (the 24 full hours before this one, and this one up to now):
    targeted, accepted, failed, unknown (sent, its outcome lost: perhaps delivered), skipped, opened;
    skips by reason. The outcomes add up to what was targeted.

    Summed from the rollup's quarter hours in the window (its ``period`` index): outcomes by when a
    row finished, opens by when it was opened, targeted by when a row was made (a bulk send's at
    its dispatch's creation, a stream's at each call). Test sends are left out of every figure:
    they go to the app's test devices, not to an audience, and counting their outcomes but not
    their rows showed more accepted than targeted.
    """
    tz = timezone.get_current_timezone()
    # Bars of whole hours hold every send of the last 24 hours only if the window begins at the top of
    # the hour 24 hours back: the 24 full hours before this one, and this one up to now (the heading
    # names where it begins, so between 24 and 25 hours read as such).
    this_hour = timezone.localtime(now, tz).replace(minute=0, second=0, microsecond=0)
    start = this_hour - dt.timedelta(hours=SEND_WINDOW_HOURS)
    end = this_hour + dt.timedelta(hours=1)
    hours = [start + dt.timedelta(hours=i) for i in range(SEND_WINDOW_HOURS + 1)]
    index = {hour: i for i, hour in enumerate(hours)}
    series = {name: [0] * len(hours) for name in ("targeted", "accepted", "failed", "unknown", "skipped", "opened")}
    rows = (
        _rollup_visible_to(user)
        .filter(period__gte=start, period__lt=end, outcome__in=list(series))
        .exclude(dispatch__kind=Dispatch.Kind.TEST)
        .values("period", "outcome", "reason")
        .annotate(n=Sum("rows"))
        .order_by()
    )
    skipped: dict[str, int] = {}
    for row in rows:
        hour = timezone.localtime(row["period"], tz).replace(minute=0, second=0, microsecond=0)
        if (i := index.get(hour)) is not None:
            series[row["outcome"]][i] += row["n"]
        if row["outcome"] == DeliveryRollup.Outcome.SKIPPED and row["n"]:
            reason = row["reason"] or "unspecified"
            skipped[reason] = skipped.get(reason, 0) + row["n"]
    by_reason = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        # The hours in the server's zone (UTC), for a page read without its script; the chart labels
        # each hour, given as an instant, in the browser's zone and names it (accounts' home.js).
        "labels": [hour.strftime("%H:%M") for hour in hours],
        "hours": [hour.astimezone(dt.UTC).isoformat() for hour in hours],
        "now": now.astimezone(dt.UTC).isoformat(),
        "zone": str(tz),
        "start": start.strftime("%Y-%m-%d %H:%M"),
        # The last hour's bar is the hour under way: the window reads up to now, not its full hour to come.
        "end": "now, " + timezone.localtime(now, tz).strftime("%H:%M"),
        "series": series,
        "totals": {name: sum(values) for name, values in series.items()},
        # As the page reads them: each reason's label, its code beside (the code alone without one).
        "skipped_shown": [(reason, reason_label(reason), count) for reason, count in by_reason],
        "deliveries_url": _changelist_url(Dispatch),
    }


def imports_running(user: User) -> Section:
    section = Section("Imports running", empty="No import is running.", more_url=_changelist_url(Import))
    running = imports_visible_to(user).filter(status__in=[Import.Status.QUEUED, Import.Status.RUNNING])
    for item in running.order_by("created_at")[:LIST_LIMIT]:
        detail = f"{item.get_status_display()}, {item.rows_done} rows read, {item.rows_failed} failed"
        section.items.append(Item(str(item), _change_url(item), detail))
    return section


def dispatches_running(user: User, *, now: dt.datetime) -> Section:
    section = Section("Dispatches running", empty="No dispatch is running.", more_url=_changelist_url(Dispatch))
    running = dispatches_visible_to(user).running()
    # An open stream's counters on its row are kept once a minute: summed now, as its page does.
    for dispatch in dispatches_counted_now(list(running.order_by("created_at")[:LIST_LIMIT])):
        detail = f"{dispatch.get_status_display()}, {dispatch.done_count} of {dispatch.total} done"
        if dispatch.started_at and dispatch.done_count:
            seconds = max((now - dispatch.started_at).total_seconds(), 1.0)
            detail += f", {dispatch.done_count / seconds:.1f}/s"
        section.items.append(Item(str(dispatch), _change_url(dispatch), detail))
    return section


def health_since(now: dt.datetime) -> dt.datetime:
    """Where provider health's "last hour" begins: the rollup's quarter hour an hour ago began in,
    so it reads 60 to 75 minutes, which the page says by naming this time."""
    since = now - HEALTH_WINDOW
    return since.replace(minute=since.minute // 15 * 15, second=0, microsecond=0)


def provider_health(user: User, *, now: dt.datetime) -> list[dict]:
    """Per app and platform over the last hour: accepted, errors (failed) by reason, the error rate
    (errors over the providers' answers, accepted and failed), and apart, unknown by reason and the
    rows that failed before a provider had them (not sent) by reason.

    Unknown rows are no error: a worker lost mid-send, or a connection dropped after the message
    went out, so the provider may have delivered them. Nor is a row the pipeline failed before any
    request (``delivery.reasons.handed_over``: a message that could not be personalised, a deleted
    phone): no provider answered it. Summed from the rollup's quarter hours since
    the one an hour ago began (so 60 to 75 minutes). Credentials refused are called out: the send
    engine records them as ``credentials: …``.
    """
    since = health_since(now)
    rows = (
        _rollup_visible_to(user)
        .filter(period__gte=since)
        .exclude(platform="none")
        .filter(outcome__in=[Delivery.Status.ACCEPTED, Delivery.Status.FAILED, Delivery.Status.UNKNOWN])
        .values("dispatch__app_id", "dispatch__app__name", "platform", "outcome", "reason")
        .annotate(n=Sum("rows"))
        .order_by()
    )
    health: dict[tuple, dict] = {}
    for row in rows:
        if not row["n"]:
            continue
        key = (row["dispatch__app__name"], row["platform"])
        entry = health.setdefault(
            key,
            {
                "app": row["dispatch__app__name"],
                "platform": row["platform"],
                "url": reverse("admin:delivery_app_change", args=[row["dispatch__app_id"]]),
                "accepted": 0,
                "errors": 0,
                "unknown": 0,
                "reasons": {},
                "unknown_reasons": {},
                "unsent_reasons": {},
                "credentials": "",
            },
        )
        if row["outcome"] == Delivery.Status.ACCEPTED:
            entry["accepted"] += row["n"]
            continue
        reason = row["reason"] or row["outcome"]
        if row["outcome"] == Delivery.Status.UNKNOWN:
            entry["unknown"] += row["n"]
            entry["unknown_reasons"][reason] = entry["unknown_reasons"].get(reason, 0) + row["n"]
            continue
        if reason.startswith("credentials"):
            entry["credentials"] = reason
        if not handed_over(reason):
            entry["unsent_reasons"][reason] = entry["unsent_reasons"].get(reason, 0) + row["n"]
            continue
        entry["errors"] += row["n"]
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + row["n"]
    result = []
    for key in sorted(health):
        entry = health[key]
        answered = entry["accepted"] + entry["errors"]
        entry["error_rate"] = round(100.0 * entry["errors"] / answered, 1) if answered else 0.0
        for name in ("reasons", "unknown_reasons", "unsent_reasons"):
            entry[name] = sorted(entry[name].items(), key=lambda kv: (-kv[1], kv[0]))
        result.append(entry)
    return result


def credentials_unreadable() -> list[Item]:
    """Each app whose stored credentials PUSHDESK_ENCRYPTION_KEY cannot decrypt (``manage.py status``'
    secrets line), with what cannot be, said: nothing of it is sent until the key is right."""
    from delivery.services.apps import app_secret_problems

    return [
        Item("; ".join(problems), reverse("admin:delivery_app_change", args=[app_id]))
        for app_id, problems in app_secret_problems().items()
    ]


def queue_state(broker=None, *, now: dt.datetime) -> dict:
    """The task queue's depth and the age of its oldest waiting task (django-q2's broker), or why
    they cannot be read (Redis down or restarting: the rest of the page still shows)."""
    try:
        return _queue_state(broker, now=now)
    except RedisError as exc:
        return {"depth": None, "oldest_seconds": None, "problem": f"Redis does not answer ({exc.__class__.__name__})"}


def _queue_state(broker, *, now: dt.datetime) -> dict:
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage

    broker = broker or get_broker()
    depth = broker.queue_size()
    oldest = None
    if depth:
        payload = None
        if hasattr(broker, "list_key") and hasattr(broker.connection, "lindex"):  # Redis: rpush, so index 0
            payload = broker.connection.lindex(broker.list_key, 0)
        else:  # the ORM broker
            first = broker.get_connection().filter(key=broker.list_key).order_by("id").first()
            payload = first.payload if first else None
        if payload is not None:
            try:
                started = SignedPackage.loads(payload).get("started")
            except Exception:  # noqa: BLE001 (a package we cannot read has no age to show)
                started = None
            if started is not None:
                oldest = max((now - started).total_seconds(), 0.0)
    return {"depth": depth, "oldest_seconds": oldest, "problem": None}


def quick_links(user: User) -> list[Item]:
    """The lists one opens most, those the user may view."""
    from audiences.models import Segment

    models = [(Campaign, "Campaigns"), (Journey, "Journeys"), (Segment, "Segments"), (Dispatch, "Dispatches")]
    links = []
    for model, label in models:
        opts = model._meta
        if user.has_perm(f"{opts.app_label}.view_{opts.model_name}"):
            links.append(Item(label, _changelist_url(model)))
    if user.has_perm("accounts.view_approvalrequest"):
        links.append(Item("Approval requests", _changelist_url(ApprovalRequest)))
    return links


def home_for(user: User, *, now: dt.datetime | None = None) -> dict:
    """Everything the home page shows ``user``; the operations part only for Administrators."""
    now = now or timezone.now()
    live, scheduled = live_and_next(user, now=now)
    waiting, mine = approvals(user, now=now)
    context = {
        "sections": [live, scheduled, waiting, mine, sent_back(user), imports_running(user)],
        "sends": sends_last_24h(user, now=now),
        "is_operator": has_every_scope(user),
        "links": quick_links(user),
    }
    if context["is_operator"]:
        context["credentials"] = credentials_unreadable()
        context["health"] = provider_health(user, now=now)
        context["health_since"] = timezone.localtime(health_since(now)).strftime("%H:%M %Z")
        context["queue"] = queue_state(now=now)
        context["dispatches"] = dispatches_running(user, now=now)
    return context
