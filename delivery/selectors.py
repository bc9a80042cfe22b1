"""Permission-filtered reads of the send pipeline: every admin list and API view goes through these."""

from collections.abc import Callable

from django.db.models import (
    BigIntegerField,
    BooleanField,
    Case,
    CharField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KT, KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Coalesce, NullIf

from accounts.models import User
from accounts.selectors import has_every_scope, in_scope, visible_to
from config.labels import numbered
from delivery.models import App, Delivery, Device, Dispatch

_CAMPAIGN_KINDS = (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER)


def dispatch_shown_zone(dispatch_path: str = "") -> Case:
    """The zone a dispatch's times are shown in, as an expression over its row (``dispatch_path``:
    the way to it, e.g. ``"dispatch__"`` from a delivery): its campaign's, the zone its approved
    schedule was entered in (``Campaign.schedule_zone``: a pending revision's zone sends nothing yet),
    as its occurrences and its report; UTC for a journey's (a journey has no zone of its own), a test
    send's, or one whose campaign was deleted. One subquery in the list's query, none per row."""
    from django.apps import apps

    campaign = apps.get_model("campaigns", "Campaign").objects.filter(pk=OuterRef(f"{dispatch_path}source_id"))
    approved = NullIf(KT("approved_version__fields__time_zone"), Value(""))
    shown = campaign.annotate(shown=Coalesce(approved, F("time_zone"), output_field=CharField()))
    return Case(
        When(
            **{f"{dispatch_path}kind__in": _CAMPAIGN_KINDS},
            then=Coalesce(Subquery(shown.values("shown")[:1]), Value("UTC")),
        ),
        default=Value("UTC"),
        output_field=CharField(),
    )


def apps_visible_to(user: User) -> QuerySet[App]:
    """The apps the user may see, those they read through a review they may decide included."""
    return visible_to(user, App.objects.all())


def apps_in_scope(user: User) -> QuerySet[App]:
    """The apps in the user's scope (``in_scope``): those whose devices, rules and contents they may
    write or read, and that they may name in their own work."""
    return in_scope(user, App.objects.all())


def devices_visible_to(user: User) -> QuerySet[Device]:
    """Devices of the apps in the user's scope: an app read through a review shows none of its devices."""
    if not user.has_perm("delivery.view_device"):
        return Device.objects.none()
    return Device.objects.filter(app__in=apps_in_scope(user).values("pk"))


# Per dispatch kind, the sources whose readers read their sends: ``sources(user)`` the ids (a
# values query) of the sources of that kind the user may see; ``granted(user)`` those granted to
# them on the source itself, whose sends' rows they read too.
_SOURCE_READERS: dict[str, Callable[[User], QuerySet]] = {}
_SOURCE_GRANTEES: dict[str, Callable[[User], QuerySet]] = {}


def dispatch_source_readers_register(
    *, kind: str, sources: Callable[[User], QuerySet], granted: Callable[[User], QuerySet]
) -> None:
    """Let whoever may see a source of ``kind`` (a journey version, through its journey; a campaign)
    read the dispatches it sent, as the source's page and API count them, without access to their
    app; and whoever was granted the source itself (``granted``), not through an app, read their
    rows too (``dispatches_with_rows_visible_to``)."""
    _SOURCE_READERS[kind] = sources
    _SOURCE_GRANTEES[kind] = granted


def _scoped_or_sent_by(
    user: User, queryset: QuerySet[Dispatch], readers: dict[str, Callable[[User], QuerySet]]
) -> QuerySet[Dispatch]:
    """The dispatches of ``queryset`` in the user's scope, and those sent by a source of a kind in
    ``readers`` among the ids its callable gives for the user."""
    scoped = visible_to(user, queryset)
    if not readers or not user.has_perm("delivery.view_dispatch") or has_every_scope(user):
        return scoped
    kinds_of: dict[Callable[[User], QuerySet], list[str]] = {}
    for kind, sources in readers.items():
        kinds_of.setdefault(sources, []).append(kind)  # one subquery for the kinds of one source
    sent = Q()
    for sources, kinds in kinds_of.items():
        sent |= Q(kind__in=kinds, source_id__in=sources(user))
    return scoped | queryset.filter(sent)


def dispatches_visible_to(user: User, queryset: QuerySet[Dispatch] | None = None) -> QuerySet[Dispatch]:
    """The dispatches of ``queryset`` (default: all) the user may see: those in their scope (their
    app's), and those sent by a source they may see of a kind registered with
    ``dispatch_source_readers_register``: a journey or a campaign granted without its app shows its
    own sends, nothing else of that app. Their rows are read through
    ``dispatches_with_rows_visible_to``. Only for reading: a write asks ``in_scope``."""
    queryset = Dispatch.objects.all() if queryset is None else queryset
    return _scoped_or_sent_by(user, queryset, _SOURCE_READERS)


def dispatches_with_rows_visible_to(user: User, queryset: QuerySet[Dispatch] | None = None) -> QuerySet[Dispatch]:
    """The dispatches of ``queryset`` (default: all) whose rows (deliveries) the user may read: those
    in their scope (their app's), and those sent by a source granted to them on itself (a campaign
    or a journey granted without its app). Each row names a phone and a profile of the dispatch's
    app: a source seen through another app's scope (a live campaign that a revision waiting for
    approval moves to the reader's app, its approved version sending to the old app's phones
    meanwhile) shows its sends' counts there (``dispatches_visible_to``), not their rows."""
    queryset = Dispatch.objects.all() if queryset is None else queryset
    return _scoped_or_sent_by(user, queryset, _SOURCE_GRANTEES)


def dispatch_rows_visible(user: User, dispatch: Dispatch) -> bool:
    """Whether the user may read the rows of ``dispatch``, one they may see
    (``dispatches_with_rows_visible_to``). One query."""
    return dispatches_with_rows_visible_to(user, Dispatch.objects.filter(pk=dispatch.pk)).exists()


def dispatch_rows_withheld(dispatch: Dispatch) -> str:
    """Why a reader of ``dispatch`` does not read its rows (``dispatch_rows_visible``), naming its app
    by number alone, as a reader without access to it is told of it."""
    return f"Its deliveries are those of {numbered('app', dispatch.app_id)}, which you have no access to."


def with_source_seen(rows: QuerySet, user: User, *, prefix: str = "") -> QuerySet:
    """``rows`` (dispatches, or rows naming one through ``prefix``: ``"dispatch__"``) with
    ``source_seen`` on each, in the same query: whether ``user`` may see what sent the dispatch (the
    campaign, the journey version registered with ``dispatch_source_readers_register``) and the
    campaign its context names (a campaign's test send has its content for source, its context
    names the campaign). A send is read through its app's scope, but what sent it may have moved
    to an app the reader has no access to since: its label, its source and its context name it,
    to its readers only."""
    if has_every_scope(user) or not _SOURCE_READERS:
        return rows.annotate(source_seen=Value(True))
    kind, source = f"{prefix}kind", f"{prefix}source_id"
    # A test send's source is its content, of the send's own app.
    sent = Q(**{f"{source}__isnull": True}) | ~Q(**{f"{kind}__in": list(_SOURCE_READERS)})
    for sent_kind, sources in _SOURCE_READERS.items():
        sent |= Q(**{kind: sent_kind, f"{source}__in": sources(user)})
    named = Q(context_campaign__isnull=True)
    campaigns = _SOURCE_READERS.get(Dispatch.Kind.CAMPAIGN)
    if campaigns is not None:
        named |= Q(context_campaign__in=campaigns(user))
    named_id = KeyTextTransform("id", KeyTransform("campaign", F(f"{prefix}context")))
    return rows.alias(context_campaign=Cast(named_id, BigIntegerField())).annotate(
        source_seen=ExpressionWrapper(sent & named, output_field=BooleanField())
    )


def dispatch_named(dispatch: Dispatch, *, seen: bool) -> str:
    """A send as its reader may be told it: its label (which names what sent it) when they may see
    what sent it (``with_source_seen``), its number alone otherwise, as a send without a label is
    named ("Dispatch #12")."""
    return str(dispatch) if seen else f"Dispatch #{dispatch.pk}"


def deliveries_visible_to(user: User) -> QuerySet[Delivery]:
    """Deliveries of the dispatches whose rows the user may read (``dispatches_with_rows_visible_to``)."""
    if not user.has_perm("delivery.view_delivery"):
        return Delivery.objects.none()
    return Delivery.objects.filter(dispatch__in=dispatches_with_rows_visible_to(user).values("pk"))


def dispatch_for(user: User, dispatch_id: int) -> Dispatch:
    """One dispatch the user may see; raises Dispatch.DoesNotExist otherwise (404, not 403)."""
    return dispatches_visible_to(user).get(pk=dispatch_id)


def dispatch_outcomes(dispatch: Dispatch) -> list[dict]:
    """Counts by (status, reason) of a dispatch's rows, summed from its rollup: the final ones, and
    those not final yet (status ``pending``: queued, held or in flight); then the sends retried on
    the way, by the provider's reason (status ``retried``)."""
    from delivery.reports import rollup_rows

    counts = rollup_rows([dispatch.pk], by=("outcome", "reason"))
    targeted = sum(r["n"] for r in counts if r["outcome"] == "targeted")
    final = [
        {"status": r["outcome"], "reason": r["reason"], "count": r["n"]}
        for r in counts
        if r["outcome"] in Delivery.FINAL_STATUSES and r["n"]
    ]
    pending = targeted - sum(r["count"] for r in final)
    if pending:
        final.append({"status": "pending", "reason": "", "count": pending})
    final.sort(key=lambda r: (r["status"], -r["count"]))
    retried = [
        {"status": "retried", "reason": reason, "count": count}
        for reason, count in sorted((dispatch.retries or {}).items(), key=lambda item: -item[1])
    ]
    return final + retried


def device_deliveries(device: Device, *, limit: int = 50) -> list[Delivery]:
    """A device's most recent deliveries for its profile, newest first, each with ``shown_zone``
    (the zone its times are shown in).

    The deliveries have no index on the device: finished ones are read through the profile's
    index (those the device got while it belonged to an earlier profile, a token registered
    again by someone else, are that profile's history, not shown here), those on their way
    through the app's running dispatches (a bulk run's row by its (dispatch, device) index)."""
    rows = (
        Delivery.objects.filter(device=device, profile_id=device.profile_id)
        .select_related("dispatch")
        .annotate(shown_zone=dispatch_shown_zone("dispatch__"))
    )
    running = list(Dispatch.objects.running().filter(app_id=device.app_id).values_list("pk", "standing"))
    bulk = [pk for pk, standing in running if not standing]
    streams = [pk for pk, standing in running if standing]
    finished = list(rows.filter(finished_at__isnull=False).order_by("-id")[:limit])
    on_their_way = list(
        rows.filter(finished_at__isnull=True)
        .filter(Q(dispatch_id__in=bulk, queued_at__isnull=True) | Q(dispatch_id__in=streams, queued_at__isnull=False))
        .order_by("-id")[:limit]
    )
    return sorted(finished + on_their_way, key=lambda d: -d.pk)[:limit]
