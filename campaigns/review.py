"""What an approver sees side by side: the content as phones would show it, the audience, the schedule."""

import dataclasses
import datetime as dt

from django.core.exceptions import PermissionDenied
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.models import ApprovalRequest, User
from campaigns.models import ApprovedVersion, Campaign, specs_show_name
from campaigns.schedule import (
    SCHEDULE_FIELDS,
    lateness_allowed,
    local_occurrence_open,
    local_wall_time,
    next_occurrence,
    send_moment,
    skipped_time_text,
)
from config.labels import numbered
from config.zones import zone as schedule_zone
from config.zones import zoned


def schedule_text(campaign, *, now: dt.datetime | None = None, approving: bool = False) -> str:
    """The schedule in words, in the campaign's time zone; the future tense for what is still to come.

    ``campaign`` is a Campaign or its ApprovedVersion. ``approving``: the version a first review
    decides, never sent; a one-off whose time has passed then says what approving it now does.
    """
    now = now or timezone.now()
    if campaign.kind == Campaign.Kind.API_TRIGGERED:
        return "Sent when the API triggers it."
    local = " at each profile's local time" if campaign.at_local_time else ""
    if campaign.schedule_kind == Campaign.ScheduleKind.NOW:
        return "Sent as soon as it is approved."
    when = zoned(campaign.send_at, campaign.time_zone)
    under_way = local_under_way_text(campaign, now=now)
    if campaign.schedule_kind == Campaign.ScheduleKind.AT:
        if under_way:
            return f"Once, at {when}{local}.{under_way}"
        if campaign.send_at and campaign.send_at <= now:
            # Past, but not necessarily sent: the campaign's occurrences say what became of it.
            approved_now = "" if local or not approving else " " + _approved_late_text(campaign, now=now)
            return f"Once, at {when}{local}: that time has passed.{approved_now}"
        return f"Sends once, at {when}{local}."
    rule = _recurrence_text(campaign)
    until = f" until {zoned(campaign.ends_at, campaign.time_zone)}" if campaign.ends_at else ""
    verb = "Started" if campaign.send_at and campaign.send_at <= now else "Starts"
    first = "" if local or not approving else _first_send_text(campaign, now=now)
    return f"Recurring ({rule}){local}. {verb} {when}{until}.{under_way}{first}"


def _recurrence_text(campaign) -> str:
    """The recurrence in words, with the day it falls on, which its first send (in the campaign's
    zone) sets: "weekly, on Tuesdays", "monthly, on day 8"; a cron as written."""
    if campaign.recurrence == Campaign.Recurrence.CRON:
        return campaign.cron
    if campaign.send_at is None or campaign.recurrence not in (
        Campaign.Recurrence.WEEKLY,
        Campaign.Recurrence.MONTHLY,
    ):
        return campaign.recurrence
    first = campaign.send_at.astimezone(schedule_zone(campaign.time_zone))
    if campaign.recurrence == Campaign.Recurrence.WEEKLY:
        return f"weekly, on {first:%A}s"
    # A day a month may not have falls on its last day (``campaigns.schedule._add_months``).
    shorter = ", the last day of a shorter month" if first.day > 28 else ""
    return f"monthly, on day {first.day}{shorter}"


def _first_send_text(campaign, *, now: dt.datetime) -> str:
    """For a recurring schedule a first review decides: its first send if approved now, when that is
    not the start typed (a cron's first day after it, or a start already past); "" otherwise."""
    if campaign.send_at is None:
        return ""
    first = next_occurrence(campaign, after=max(now, campaign.send_at - dt.timedelta(microseconds=1)))
    if first is None or first == campaign.send_at:
        return ""
    return f" Approved now, its first send is {zoned(first, campaign.time_zone)}."


def _approved_late_text(campaign, *, now: dt.datetime) -> str:
    """What approving a one-off whose time has passed does (``campaign_fire_due``): sent at once
    within its missed-send window, otherwise nothing sent and the campaign completes."""
    late = int((now - campaign.send_at).total_seconds() // 60)
    window = int(lateness_allowed(campaign).total_seconds() // 60)
    if late <= window:
        return (
            f"Approved now, it is sent at once, {late:,} minutes after its time (within its missed-send window "
            f"of {window:,} minutes)."
        )
    return (
        f"Approved now, it is not sent: {late:,} minutes after its time is more than its missed-send window of "
        f"{window:,} minutes, and the campaign completes without a send."
    )


def local_under_way_text(campaign, *, now: dt.datetime) -> str:
    """For a send at each profile's local time whose time of day UTC+14 has passed already while
    zones to the west have not: which zones a send now still reaches, and which it skips. ""
    otherwise. (What ``campaign_fire_due`` and ``local_time_apply`` will do.)"""
    began = local_occurrence_open(campaign, now=now)
    if began is None or began >= now:
        return ""
    limit = lateness_allowed(campaign)
    wall = dt.datetime.fromisoformat(local_wall_time(campaign, began))
    # A zone at UTC+o reaches the time (14 − o) hours after UTC+14 did: past it by more than the
    # window now when o > 14 − (now − began − window).
    east_of = dt.timedelta(hours=14) - (now - began - limit)
    if east_of >= dt.timedelta(hours=14):
        skipped = "no time zone is past it by more than the window yet"
    else:
        minutes = int(east_of.total_seconds() // 60)
        sign, minutes = ("+" if minutes >= 0 else "−"), abs(minutes)
        skipped = (
            f"sent now, the time zones ahead of UTC{sign}{minutes // 60:02d}:{minutes % 60:02d} are past it by more "
            f"than {int(limit.total_seconds() // 60):,} minutes and are skipped (missed_local_time)"
        )
    return (
        f" Its {wall:%Y-%m-%d %H:%M} is under way: UTC+14 reached it {zoned(began, campaign.time_zone)}; "
        f"{skipped}; the zones behind get it at their own {wall:%H:%M}."
    )


def next_send_text(campaign: Campaign) -> str:
    """The campaign's next send (``next_occurrence_at``) in its own zone, the zone named; for a send
    at each profile's local time, the time of day as entered and when the send starts it (UTC+14
    gets there first), as the approved version says. "—" when nothing is due."""
    approved = (campaign.approved_version or {}).get("fields") or {}
    # In the zone the approved schedule was entered in: a pending revision's zone sends nothing yet.
    when = zoned(campaign.next_occurrence_at, campaign.schedule_zone())
    if campaign.next_occurrence_at is None:
        return when
    if not approved.get("at_local_time") or approved["schedule_kind"] == "now":
        # Read from the row (a list shows it too): never the fingerprint of one approved before versions were kept.
        version = ApprovedVersion.from_snapshot(campaign.approved_version) if approved else None
        skipped = skipped_time_text(version, campaign.next_occurrence_at) if version is not None else ""
        return f"{when}: {skipped}" if skipped else when
    wall = dt.datetime.fromisoformat(local_wall_time(campaign, campaign.next_occurrence_at))
    return f"{wall:%Y-%m-%d %H:%M} at each profile's local time, from {when}"


@dataclasses.dataclass(frozen=True)
class ReaderNames:
    """The names of the segments, apps and push contents a reader may see, by id: a page names those,
    and the others by number ("segment #12", "app #3", "content #7"), as a segment's rules read."""

    segments: dict[int, str]
    apps: dict[int, str]
    contents: dict[int, str]
    # The reach counted on this page, by (segment, app): the versions a review compares (the approved
    # one, the one sent back, this one) mostly send to one segment, counted now, once.
    reaches: dict[tuple[int, int], object] = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, reader: User | None, *, segments=(), apps=(), contents=()) -> "ReaderNames":
        """Read for ``reader`` (one query per kind asked; none names nothing)."""
        from accounts.selectors import visible_named
        from audiences.rules.words import names_visible_to
        from delivery.models import PushContent

        segment_names, app_names = names_visible_to(reader, segments=set(segments) - {None}, apps=set(apps) - {None})
        return cls(segments=segment_names, apps=app_names, contents=visible_named(reader, PushContent, contents))

    def segment(self, pk: int) -> str:
        return self.segments.get(pk, numbered("segment", pk))

    def app(self, pk: int) -> str:
        return self.apps.get(pk, numbered("app", pk))

    def content(self, pk: int, label: str = "") -> str:
        return (label or self.contents[pk]) if pk in self.contents else numbered("content", pk)


def snapshot_names(reader: User | None, *snapshots: dict | None) -> ReaderNames:
    """What ``reader`` may be told by name of the snapshots' audiences (the segment, those its rules
    use, the apps they name) and contents (the campaign's, its variants')."""
    from audiences.rules.schema import app_references, segment_references

    segments, apps, contents = set(), set(), set()
    for snapshot in filter(None, snapshots):
        fields = snapshot["fields"]
        segments.add(fields.get("segment_id"))
        contents.add(fields.get("content_id"))
        contents |= {v.get("content_id") for v in snapshot.get("variants") or []}
        for pk, entry in (snapshot.get("audience_definition") or {}).items():
            segments.add(int(pk))
            segments |= segment_references(entry.get("rules"))
            apps |= app_references(entry.get("rules"))
    return ReaderNames.of(reader, segments=segments, apps=apps, contents=contents)


def audience_text(
    *, segment_id: int | None, app_id: int, label: str = "", holdout_share: int = 0, purpose: str = "marketing"
) -> str:
    """The audience and its size now, as profiles → reachable in the app → opted in, then what the
    holdout and the app's delivery rules take from it (``reach_text``).

    The reviewer sees it through the campaign they review, whether or not they were granted the
    segment itself.
    """
    return _audience_counted(
        segment_id=segment_id, app_id=app_id, label=label, holdout_share=holdout_share, purpose=purpose
    )[0]


def _audience_counted(
    *,
    segment_id: int | None,
    app_id: int,
    label: str = "",
    holdout_share: int = 0,
    purpose: str = "marketing",
    names: ReaderNames | None = None,
):
    """``audience_text`` and the reach it counted (None: no segment, or a deleted one). ``names``:
    what the reader may be told by name (the segment by number otherwise); none names it."""
    from audiences.selectors import audience_reach

    if names is not None and segment_id is not None and segment_id not in names.segments:
        label = numbered("segment", segment_id)
    segment, deleted = _audience_segment(segment_id, label=label)
    if deleted:
        return deleted, None
    if segment is None:
        reach = None
    elif names is None:
        reach = audience_reach(segment=segment, app_id=app_id)
    else:
        key = (segment.pk, app_id)
        if key not in names.reaches:
            names.reaches[key] = audience_reach(segment=segment, app_id=app_id)
        reach = names.reaches[key]
    figures = reach_text(reach, app_id=app_id, holdout_share=holdout_share, purpose=purpose)
    if segment is None:
        return figures, reach
    return f"{segment if names is None else names.segment(segment.pk)}: {figures}", reach


def reach_text(reach, *, app_id: int, holdout_share: int, purpose: str, age: str = "") -> str:
    """What a campaign's send will reach, as the campaign page and the approver's review both say
    it: the audience's size (``reach``: profiles → reachable → opted in; None: recipients named by
    each API call) with ``age`` after it, and that it sends to no one when none is opted in, then
    about how many are sent after the holdout (its share
    of the opted in: the holdout takes only profiles a push could reach), and for a marketing
    campaign the app's frequency cap and quiet hours, named with their values, that may hold some
    back. Their effect is not counted: it depends on the time of the send and on the sends before
    it. A transactional campaign bypasses them, and says so.
    """
    from delivery.rules import rules_hold_text

    size = reach.text() if reach is not None else "Recipients named by each API call"
    if age:
        size += f" ({age})"
    if reach is not None and not reach.opted_in:
        # Approved as it is, it sends nothing: said where the figures are read, not left to be noticed.
        why = "none opted in" if reach.reachable else "no phone in this app" if reach.profiles else "no profile in it"
        size += f": no one to send to, {why}"
    if holdout_share and reach is not None:
        size += f" → ≈ {round(reach.opted_in * (100 - holdout_share) / 100):,} after the {holdout_share}% holdout"
    elif holdout_share:
        size += f", {holdout_share}% of them held out"
    rules = rules_hold_text(app_id=app_id, purpose=purpose)
    return "; ".join(part for part in (size, rules) if part) + ("." if reach is None else "")


def _audience_segment(segment_id: int | None, *, label: str = ""):
    """(the audience's segment, None); (None, None) for no segment (recipients named by each API
    call); (None, the text shown instead) for a deleted one."""
    if segment_id is None:
        return None, None
    from audiences.models import Segment

    segment = Segment.objects.filter(pk=segment_id).first()
    return (segment, None) if segment is not None else (None, f"{label or segment_id}: deleted")


def audience_count_offered(campaign, *, reader: User | None, may_edit: bool, names: ReaderNames) -> bool:
    """Whether ``reader`` may press *Count now* on the campaign's page: they may edit the campaign
    (``may_edit``) and see its segment (``names``: what they may see by name, ``ReaderNames``). A
    count says the size of the segment, which is not told to a reader outside its access."""
    return may_edit and reader is not None and campaign.segment_id in names.segments


def audience_kept_text(
    campaign, *, reader: User, count: bool = False, can_count: bool = False, names: ReaderNames | None = None
) -> str:
    """The campaign's audience and its size as last counted, with the age of that count; "not
    counted yet" when it never was in this app, with how it gets counted (``can_count``: the reader
    may press *Count now*, ``audience_count_offered``); counted now and kept on the segment when
    ``count`` asks (a POST).

    The campaign page shows this rather than counting on a view (one scan of the audience, a third
    of a second at 1,000,000 profiles), and a view writes nothing: only *Count now* keeps a count.
    The approver's review counts now without keeping it (``audience_text``). The segment is named
    only to a ``reader`` who may see it, "segment #12" to the others (``names``, when the caller
    read them already), and its size too: the size of a segment tells what it holds, so the others
    read that it is not shown, and why.

    Raises PermissionDenied when ``count`` asks and ``reader`` may not see the segment.
    """
    from django.utils.timesince import timesince

    from audiences.selectors import audience_reach, reach_kept
    from audiences.services.segments import segment_definition_read, segment_reach_keep

    segment, deleted = _audience_segment(campaign.segment_id)
    if deleted:
        return deleted
    if segment is None:
        return reach_text(None, app_id=campaign.app_id, holdout_share=campaign.holdout_share, purpose=campaign.purpose)
    names = names if names is not None else ReaderNames.of(reader, segments={segment.pk})
    said = names.segment(segment.pk)
    if segment.pk not in names.segments:
        if count:
            raise PermissionDenied(f"You may not count {said}: it is a segment you have no access to.")
        return f"size not shown: {said} is outside your access"
    if count:
        read = segment_definition_read(segment)  # before counting: what the count is of
        reach = audience_reach(segment=segment, app_id=campaign.app_id)
        segment_reach_keep(segment_id=segment.pk, app=campaign.app, reach=reach, read=read)
        age = "counted just now"
    else:
        kept = reach_kept(segment, campaign.app_id)
        if kept is None:
            how = (
                "Count now counts it" if can_count else "whoever may edit the campaign and see the segment can count it"
            )
            return f"{said}: size not counted yet ({how})."
        reach, at = kept
        if at is None:
            age = "counted earlier"
        elif timezone.now() - at < dt.timedelta(minutes=1):
            age = "counted under a minute ago"
        else:
            age = f"counted {timesince(at)} ago"
    figures = reach_text(
        reach, app_id=campaign.app_id, holdout_share=campaign.holdout_share, purpose=campaign.purpose, age=age
    )
    return f"{said}: {figures}"


def definition_text(definition: dict, *, names: tuple[dict[int, str], dict[int, str]] | None = None) -> str:
    """Who the approval covers, as it is defined: each segment's rules in words (and the segments they
    use), a kept list's member count (``definition`` from Segment.definition()). The rules name the
    segments by the definition's own names, the apps of reachability by theirs (one query); or, given
    ``names`` (segment names, app names by id: what the reader may see), only those, the others by
    number ("segment #12", "app #3")."""
    from audiences.rules.schema import app_references
    from audiences.rules.words import rules_text
    from delivery.models import App

    if not definition:
        return "—"
    if names is not None:
        segment_names, app_names = names
    else:
        segment_names = {int(pk): entry["name"] for pk, entry in definition.items() if "name" in entry}
        app_ids = set().union(*(app_references(entry.get("rules")) for entry in definition.values()))
        app_names = dict(App.objects.filter(pk__in=app_ids).values_list("pk", "name")) if app_ids else {}
    parts = []
    for pk, entry in definition.items():
        if entry.get("missing"):
            parts.append("a segment that no longer exists")
            continue
        if entry.get("members") is not None:
            # An approval made before the definition said its present count holds the stamp's.
            what = f"{entry.get('count', entry['members'][0]):,} members ({entry['kind']})"
        else:
            what = rules_text(entry.get("rules"), segment_names=segment_names, app_names=app_names)
        parts.append(f"{segment_names.get(int(pk), numbered('segment', pk))}: {what}")
    return " · ".join(parts)  # the rules in words hold "; " between their conditions


def phones_html(
    spec: dict,
    *,
    app_name: str,
    profile: dict | None = None,
    context: dict | None = None,
    as_of: dt.datetime | None = None,
    time_zone: str = "",
) -> str:
    """A content spec as an iPhone and an Android phone would show it, for one profile (or a blank one),
    with the ``context`` its sends give it, its ``now`` as of ``as_of`` (None: the real now) in
    ``time_zone``, the zone its sends read it in ("": UTC). Without a profile, a content with locale
    variants shows a pair of phones per locale, each under its language: what each part of the
    audience gets, not the default texts alone."""
    locales = sorted(spec.get("variants") or {}) if profile is None else []
    if not locales:
        return _phone_pair_html(
            spec, app_name=app_name, profile=profile, context=context, as_of=as_of, time_zone=time_zone
        )
    return locale_previews_html(
        spec,
        lambda locale: _phone_pair_html(
            spec,
            app_name=app_name,
            profile={"external_id": "sample", "locale": locale, "timezone": "", "attributes": {}},
            context=context,
            as_of=as_of,
            time_zone=time_zone,
        ),
    )


def locale_previews_html(spec: dict, phones) -> str:
    """A pair of phones per locale of the content (``phones(locale)``), each under its language
    (``locales_previewed``): a campaign's and a journey's reviews alike."""
    return format_html_join(
        "",
        '<div class="locale-preview" data-locale="{}"><h5>{}</h5>{}</div>',
        [(locale or "default", label, phones(locale)) for locale, label in locales_previewed(spec)],
    )


def locales_previewed(spec: dict) -> list[tuple[str, str]]:
    """The locales a content's previews show, each with its heading: the default texts first, then
    each variant's ("French (fr)")."""
    default = spec.get("default_locale") or ""
    shown = [(default, f"{locale_language(default)}: the default texts" if default else "The default texts")]
    return shown + [(locale, locale_language(locale)) for locale in sorted(spec.get("variants") or {})]


def locale_language(locale: str) -> str:
    """A locale as its reader names it: "French (fr)", "French (fr-CA)"; a code Django does not name, as is."""
    from django.utils.translation import get_language_info

    try:
        return f"{get_language_info(locale.lower())['name']} ({locale})"
    except KeyError:
        return locale


def _phone_pair_html(
    spec: dict,
    *,
    app_name: str,
    profile: dict | None,
    context: dict | None,
    as_of: dt.datetime | None,
    time_zone: str,
) -> str:
    from delivery.payloads import message_render
    from delivery.personalization import rendered_as_of, rendered_in
    from delivery.rules import profile_zone

    sample = profile or {
        "external_id": "sample",
        "locale": spec.get("default_locale", ""),
        "timezone": "",
        "attributes": {},
    }
    try:
        with rendered_as_of(as_of), rendered_in(profile_zone(time_zone, "")):
            message = message_render(spec, profile=sample, context=context or {})
        title, subtitle, body = message.title, message.subtitle, message.body
    except Exception as exc:  # a template that fails is itself what the approver must see
        title, subtitle, body = "(cannot render)", "", str(exc)
    return format_html_join(
        "",
        '<div class="phone phone-{}" style="display:inline-block;vertical-align:top;width:260px;margin:0 12px 12px 0;'
        'padding:12px;border-radius:18px;background:#1d1d1f;color:#fff">'
        '<div style="font-size:11px;opacity:.7">{}</div>'
        '<div style="background:rgba(255,255,255,.15);border-radius:12px;padding:8px;margin-top:8px">'
        "<strong>{}</strong><div>{}</div><div>{}</div></div></div>",
        [
            ("ios", "iOS — " + app_name, title, subtitle, body),
            ("android", "Android — " + app_name, title, "", body),
        ],
    )


def campaign_send_moment(campaign: Campaign, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """When the campaign as it stands next sends (``send_moment``), which its previews render ``now``
    as of: its next occurrence (``next_occurrence_at``); a draft's, or a revision's changing the
    schedule, as its schedule says from ``now`` on; else its ``send_at``. None: the real now."""
    due = campaign.next_occurrence_at
    approved = campaign.approved() if campaign.approved_version else None
    edited = approved is not None and any(getattr(approved, f) != getattr(campaign, f) for f in SCHEDULE_FIELDS)
    if edited or (due is None and campaign.status in (Campaign.Status.DRAFT, Campaign.Status.IN_REVIEW)):
        due = next_occurrence(campaign, after=now or timezone.now())
    return send_moment(campaign, due=due)


def send_moment_html(moment: dt.datetime | None, *, time_zone: str) -> str:
    """Which moment previews render ``now`` as of, in ``time_zone``; nothing for None (the callers
    pass a moment only for a content that reads it: ``spec_reads_now``)."""
    if moment is None:
        return ""
    return format_html(
        '<p class="preview-moment">Shown as of its send at {}: the text reads the moment it is sent '
        "(<code>now</code>).</p>",
        zoned(moment, time_zone),
    )


def campaign_phones_html(
    campaign: Campaign, *, reader: User | None, profile: dict | None = None, app_seen: bool | None = None
) -> str:
    """The campaign's content as phones would show it; with variants, each one under its name (to a
    ``reader`` who may see it) and share, and the holdout's share. The variants are read with whether
    the reader may see each one's content, in one query. The app is named to a reader who may see it
    (``app_seen``, when the caller read it with the campaign), "app #3" to the others. A content that
    reads ``now`` shows it as of the campaign's next send (``campaign_send_moment``), said below it, in
    its time zone, as its sends read it (at each profile's local time, the wall-clock time all read)."""
    from django.db.models import BooleanField, ExpressionWrapper, Q

    from accounts.selectors import visible_to
    from delivery.models import PushContent
    from delivery.payloads import spec_reads_now

    variants = []
    if campaign.pk is not None:
        seen = visible_to(reader, PushContent.objects.all()).values("pk") if reader is not None else []
        sees = ExpressionWrapper(Q(content_id__in=seen), output_field=BooleanField())
        variants = list(campaign.variants.select_related("content").order_by("number").annotate(reader_sees=sees))
    if app_seen is None:
        app_seen = campaign.app_id in ReaderNames.of(reader, apps={campaign.app_id}).apps
    app_name = campaign.app.name if app_seen else numbered("app", campaign.app_id)
    specs = [v.content.spec() for v in variants] or [campaign.content.spec()]
    as_of = campaign_send_moment(campaign) if any(spec_reads_now(spec) for spec in specs) else None
    said = send_moment_html(as_of, time_zone=campaign.time_zone)
    if not variants:
        phones = phones_html(
            specs[0],
            app_name=app_name,
            profile=profile,
            context=campaign.send_context(),
            as_of=as_of,
            time_zone=campaign.time_zone,
        )
        return format_html("{}{}", phones, said)
    phones = variants_phones_html(
        [
            {
                "label": v.label,
                "content": str(v.content) if v.reader_sees else numbered("content", v.content_id),
                "share": v.share,
                "spec": spec,
            }
            for v, spec in zip(variants, specs, strict=True)
        ],
        reader=reader,
        holdout_share=campaign.holdout_share,
        app_name=app_name,
        profile=profile,
        context=campaign.send_context(),
        as_of=as_of,
        time_zone=campaign.time_zone,
    )
    return format_html("{}{}", phones, said)


def approved_phones_html(
    approved: ApprovedVersion,
    *,
    app_name: str,
    reader: User | None,
    context: dict | None = None,
    due: dt.datetime | None = None,
) -> str:
    """An approved version's content (each of its variants, named to a ``reader`` who may see it) as
    phones would show it, with the ``context`` its sends give it; a content that reads ``now``
    shows it as of the version's send due at ``due`` (``send_moment``), said below it, in the
    version's time zone."""
    from delivery.payloads import spec_reads_now

    specs = [v["spec"] for v in approved.variants] or [approved.spec]
    as_of = send_moment(approved, due=due) if any(spec_reads_now(spec) for spec in specs) else None
    said = send_moment_html(as_of, time_zone=approved.time_zone)
    if approved.variants:
        phones = variants_phones_html(
            approved.variants,
            reader=reader,
            holdout_share=approved.holdout_share,
            app_name=app_name,
            context=context,
            as_of=as_of,
            time_zone=approved.time_zone,
        )
    else:
        phones = phones_html(
            approved.spec, app_name=app_name, context=context, as_of=as_of, time_zone=approved.time_zone
        )
    return format_html("{}{}", phones, said)


def variants_phones_html(
    variants: list[dict],
    *,
    reader: User | None,
    holdout_share: int,
    app_name: str,
    profile: dict | None = None,
    context: dict | None = None,
    as_of: dt.datetime | None = None,
    time_zone: str = "",
) -> str:
    """Each variant (``{label, content, content_id, share, spec}``) as phones would show it, its
    content named only to a ``reader`` who may see it ("content #7" to the others), then the holdout.
    Variants without ``content_id`` are said as their ``content`` says. ``now`` as of ``as_of``, in
    ``time_zone``."""
    names = ReaderNames.of(reader, contents={v.get("content_id") for v in variants})
    parts = format_html_join(
        "",
        '<div class="variant-preview" data-variant="{}"><h4>Variant {} — {} ({}%)</h4>{}</div>',
        [
            (
                v["label"],
                v["label"],
                names.content(v["content_id"], v["content"]) if v.get("content_id") is not None else v["content"],
                v["share"],
                phones_html(
                    v["spec"], app_name=app_name, profile=profile, context=context, as_of=as_of, time_zone=time_zone
                ),
            )
            for v in variants
        ],
    )
    holdout = (
        format_html(
            '<p class="holdout">Holdout: {}% of the audience get nothing (the control group).</p>', holdout_share
        )
        if holdout_share
        else ""
    )
    return format_html('<div class="variant-previews">{}{}</div>', parts, holdout)


def locale_texts(spec: dict) -> dict[str, dict]:
    """Title, subtitle and body per locale (the default locale's are the content's own fields)."""
    texts = {spec.get("default_locale") or "default": {k: spec.get(k, "") for k in ("title", "subtitle", "body")}}
    for locale, variant in sorted((spec.get("variants") or {}).items()):
        texts[locale] = {k: (variant or {}).get(k, "") for k in ("title", "subtitle", "body")}
    return texts


def _pairs(mapping: dict) -> str:
    return (
        ", ".join(f"{key}={value}" for key, value in sorted((mapping or {}).items()) if value not in ("", None)) or "—"
    )


def version_rows(
    version: dict, *, app_id: int, now: dt.datetime, names: ReaderNames, first: bool = False
) -> list[tuple[str, str]]:
    """Everything an approver signs off, as (label, text) rows, from a snapshot (see Campaign.snapshot).
    ``first``: the version of a first review (never approved, never sent). The segments, apps and
    contents are named as ``names`` says (``snapshot_names``), the others by number."""
    fields, spec, labels = version["fields"], version["spec"], version.get("labels", {})
    view = ApprovedVersion.from_snapshot(version)
    audience, reach = _audience_counted(
        segment_id=fields["segment_id"],
        app_id=app_id,
        label=labels.get("segment", ""),
        holdout_share=version.get("holdout_share") or 0,
        purpose=fields["purpose"],
        names=names,
    )
    content_id = fields.get("content_id")
    rows = [
        ("Kind and purpose", f"{Campaign.Kind(fields['kind']).label}, {Campaign.Purpose(fields['purpose']).label}"),
        ("Audience", audience),
        (
            "Audience definition",
            definition_text(version.get("audience_definition") or {}, names=(names.segments, names.apps)),
        ),
        ("Schedule", schedule_text(view, now=now, approving=first)),
        ("Throttle", throttle_text(fields["throttle_per_second"], app_id=app_id)),
        ("Content", names.content(content_id, labels.get("content", "")) if content_id else labels.get("content", "")),
    ]
    if view.kind == Campaign.Kind.SCHEDULED:
        rows.insert(4, ("Missed-send window", missed_window_text(view.missed_window_minutes)))
    if specs_show_name([spec, *(variant["spec"] for variant in version.get("variants") or [])]):
        # Its sends show it (``ApprovedVersion.send_context``): the approval covers it, a rename is a revision.
        rows.insert(0, ("Name (its content shows it)", version.get("name") or "—"))
    for locale, texts in locale_texts(spec).items():
        for key in ("title", "subtitle", "body"):
            rows.append((f"{key.capitalize()} ({locale})", texts[key] or "—"))
    rows += _spec_rows(spec)
    for variant in version.get("variants") or []:
        rows += _variant_rows(variant, names=names)
    if version.get("variants") or version.get("holdout_share"):
        rows.append(("Holdout", f"{version.get('holdout_share') or 0}% get nothing"))
    if version.get("winner"):
        from campaigns.winner import winner_settings_text

        rows.append(("Winner mode", winner_settings_text(version["winner"])))
        rows.append(("Winner sample", winner_sample_text(version["winner"], reach, holdout_share=view.holdout_share)))
        rows.append(("Winner picked", winner_pick_text(version["winner"], view, now=now)))
    return rows


def throttle_text(throttle: int | None, *, app_id: int) -> str:
    """The rate a campaign's sends go at, as the approver reviews it: its throttle comes on top of
    its app's limit, which all the app's sends share, so a throttle above that limit is not the rate."""
    from delivery.models import App

    limit = App.objects.filter(pk=app_id).values_list("rate_limit_per_second", flat=True).first()
    if limit is None:
        return f"at most {throttle:,} messages/s" if throttle else "the app's limit"
    if not throttle:
        return f"the app's limit, {limit:,} messages/s (shared with its other sends)"
    if throttle > limit:
        return f"at most {limit:,} messages/s, the app's limit: the campaign's {throttle:,} messages/s is above it"
    return f"at most {throttle:,} messages/s (the app's limit, {limit:,} messages/s, is shared with its other sends)"


def missed_window_text(minutes: int) -> str:
    """How late a missed occurrence may still go (``campaign_fire_due``), as the approver reviews it:
    the approval covers it (a change of it is a revision, approved as any other)."""
    return (
        "an occurrence the scheduler missed (it was down, or this approval comes after its time) is still sent "
        f"up to {minutes:,} minutes late, and skipped after that"
    )


def winner_sample_text(winner: dict, reach, *, holdout_share: int) -> str:
    """The winner test's sample as the audience's figures say it (profiles → reachable → opted in),
    each scaled by the sample share: a profile is drawn into it by a hash, so that share of each is
    what to expect. ``reach`` None: not counted (no segment, or a deleted one)."""
    from audiences.selectors import Reach

    share = winner["sample_share"]
    split = "split across the variants in their shares"
    if holdout_share:
        split += f" (the {holdout_share}% holdout's part gets nothing)"
    if reach is None:
        return f"{share}% of the audience, drawn per profile, {split}"
    part = Reach(*(round(n * share / 100) for n in dataclasses.astuple(reach)))
    size = (
        f"≈ {part.profiles:,} profile{pluralize(part.profiles)} → ≈ {part.reachable:,} reachable (iOS {part.ios:,} / Android "
        f"{part.android:,}) → ≈ {part.opted_in:,} opted in"
    )
    return f"{size}: {share}% of the audience, drawn per profile, {split}"


def winner_pick_text(winner: dict, version, *, now: dt.datetime) -> str:
    """When the winner is picked: the wait after the sample's send, in the zone the schedule was
    entered in (``winner_pick`` also waits for the sample to finish sending). The sample goes at
    the send's time, or at the approval for a send on approval or one whose time has passed."""
    from campaigns.winner import wait_text

    wait = dt.timedelta(minutes=winner["wait_minutes"])
    after = f"{wait_text(winner['wait_minutes'])} after the sample is sent"
    if version.schedule_kind == Campaign.ScheduleKind.AT and version.send_at and version.send_at > now:
        picked = zoned(version.send_at + wait, version.time_zone)
        return f"{picked}: {after} at {zoned(version.send_at, version.time_zone)}, once it has finished sending"
    passed = " (its time has passed)" if version.schedule_kind == Campaign.ScheduleKind.AT else ""
    return f"{after}, at this approval{passed}, once it has finished sending"


def _variant_rows(variant: dict, *, names: ReaderNames) -> list[tuple[str, str]]:
    """A variant's content (named as ``names`` says) and share; for B, C… also every text and option
    (A's are the content's rows)."""
    name = f"Variant {variant['label']}"
    content = variant.get("content", "")
    if variant.get("content_id") is not None:
        content = names.content(variant["content_id"], content)
    rows = [(name, f"{content} — {variant['share']}%")]
    if variant["number"] == 1:
        return rows
    for locale, texts in locale_texts(variant["spec"]).items():
        for key in ("title", "subtitle", "body"):
            rows.append((f"{name}: {key} ({locale})", texts[key] or "—"))
    return rows + [(f"{name}: {_as_continued(label)}", text) for label, text in _spec_rows(variant["spec"])]


# Words a label begins with that are names, spelt as they are wherever they stand in a sentence.
_NAMES = ("iOS", "Android")


def _as_continued(label: str) -> str:
    """``label`` read after "Variant B: ": its first letter small, unless it begins with a name."""
    return label if label.startswith(_NAMES) else label[:1].lower() + label[1:]


def _options_text(options: dict | None, platform: str, *, choices: dict | None = None) -> str:
    """A spec's platform options in words, named as the content form names them ("sound default,
    badge 3, interruption level time sensitive"); a value left empty is left out, and so is mutable
    content, a switch its caller says in words of its own."""
    from delivery.models import PushContent

    options = options or {}
    parts = []
    for key, word in PushContent.platform_options(platform).items():
        value = options.get(key)
        if value in ("", None) or key == "mutable_content":
            continue
        parts.append(f"{word} {(choices or {}).get(key, {}).get(value, value)}")
    return ", ".join(parts)


def tap_action_text(spec: dict) -> str:
    """What a tap on the push does, in words, with the link it opens ("open a deep link: app://home")."""
    from delivery.models import PushContent

    action = spec.get("tap_action") or PushContent.TapAction.OPEN_APP
    said = dict(PushContent.TapAction.choices).get(action, action)
    return f"{said}: {spec['tap_url']}" if spec.get("tap_url") and action != PushContent.TapAction.OPEN_APP else said


def _spec_rows(spec: dict) -> list[tuple[str, str]]:
    from delivery.models import PushContent

    ios = _options_text(
        spec.get("ios"),
        "ios",
        choices={"interruption_level": dict(PushContent.InterruptionLevel.choices)},
    )
    if (spec.get("ios") or {}).get("mutable_content"):
        ios = ", ".join(filter(None, (ios, "mutable content (the app's extension may change it before it shows)")))
    return [
        ("Image", spec.get("image_url") or "—"),
        ("Tap action", tap_action_text(spec)),
        ("Custom data", _pairs(spec.get("data"))),
        ("iOS options", ios or "—"),
        ("Android options", _options_text(spec.get("android"), "android") or "—"),
        (
            "Delivery options",
            f"TTL {spec.get('ttl_seconds')} s, collapse key {spec.get('collapse_key') or '—'}"
            f"{', silent' if spec.get('silent') else ''}",
        ),
    ]


def version_diff(
    before: dict | None, after: dict, *, app_id: int, reader: User | None, now: dt.datetime | None = None
) -> list[tuple]:
    """(label, before, after, changed) for every row of two snapshots; ``before`` None for a first
    review. What they name, as ``reader`` may be told it (``snapshot_names``)."""
    now = now or timezone.now()
    names = snapshot_names(reader, before, after)
    after_rows = version_rows(after, app_id=app_id, now=now, names=names, first=before is None)
    return rows_diff(None if before is None else version_rows(before, app_id=app_id, now=now, names=names), after_rows)


def rows_diff(before_rows: list[tuple[str, str]] | None, after_rows: list[tuple[str, str]]) -> list[tuple]:
    """(label, before, after, changed) for every (label, text) row of two versions, those of ``after``
    first; ``before_rows`` None for a first review."""
    if before_rows is None:
        return [(label, "", text, False) for label, text in after_rows]
    before_map, after_map = dict(before_rows), dict(after_rows)
    labels = [label for label, _ in after_rows] + [label for label in before_map if label not in after_map]
    return [
        (label, before_map.get(label, "—"), after_map.get(label, "—"), before_map.get(label) != after_map.get(label))
        for label in labels
    ]


def version_diff_html(before: dict | None, after: dict, *, app_id: int, reader: User | None, before_title: str) -> str:
    """The diff as a table: changed rows first and marked; a first review shows every row. What it
    names, as ``reader`` may be told it."""
    rows = version_diff(before, after, app_id=app_id, reader=reader)
    return rows_diff_html(rows, first=before is None, before_title=before_title)


def rows_diff_html(
    rows: list[tuple],
    *,
    first: bool,
    before_title: str,
    caption: str = "",
    after_title: str = "This revision",
    since: frozenset[str] = frozenset(),
    note: str = "",
) -> str:
    """``rows_diff``'s rows as the review's table: changed rows first and marked, under ``caption``
    (by default, what changed since the approved version) and the count of changes, then ``note``;
    the columns titled ``before_title`` and ``after_title``; the rows labelled in ``since`` marked
    as changed since a request for changes (the ``note`` says which). A first review (``first``) shows every row as what
    the approval covers, under ``caption`` when given."""
    if first:
        body = format_html_join("", '<tr><th scope="row">{}</th><td>{}</td></tr>', [(r[0], r[2]) for r in rows])
        return format_html(
            '<table id="approval-diff" class="first-review"><caption>{}</caption>{}</table>',
            caption or "First review: everything this approval covers",
            body,
        )
    ordered = [r for r in rows if r[3]] + [r for r in rows if not r[3]]
    body = format_html_join(
        "",
        '<tr class="{}{}"><th scope="row">{}{}</th><td>{}</td><td>{}</td></tr>',
        [
            (
                "changed" if changed else "unchanged",
                " since-sent-back" if label in since else "",
                label,
                format_html('<br><small class="since-sent-back">{}</small>', "changed since the request for changes")
                if label in since
                else "",
                old,
                new if changed else "(unchanged)",
            )
            for label, old, new, changed in ordered
        ],
    )
    changed = sum(1 for r in rows if r[3])
    return format_html(
        "<style>#approval-diff tr.changed td{{background:#fff4d6}} #approval-diff tr.unchanged{{opacity:.6}}"
        " #approval-diff tr.since-sent-back th{{border-left:3px solid #d97706}}</style>"
        '<table id="approval-diff" class="revision"><caption>{} — {} change{}{}</caption>'
        "<thead><tr><th></th><th>{}</th><th>{}</th></tr></thead>{}</table>",
        caption or "What changed since the approved version",
        changed,
        "" if changed == 1 else "s",
        f". {note}" if note else "",
        before_title,
        after_title,
        body,
    )


def sent_back_text(sent_back: ApprovalRequest, *, subject) -> str:
    """The request for changes a submission answers (``approval_sent_back_before``), in words: its
    comment, who sent it back and when, as the subject shows its dates (``approvals_asked_at``)."""
    from accounts.approvals import approvals_asked_at

    when = approvals_asked_at([sent_back], field="decided_at", subjects={sent_back.pk: subject})[sent_back.pk]
    said = [f"“{sent_back.comment}”"] if sent_back.comment else []
    said += [f"by {sent_back.decided_by}", when]
    return f"Resubmitted after your request for changes ({', '.join(said)})"


def resubmission_diff_html(
    before_rows: list[tuple[str, str]] | None,
    after_rows: list[tuple[str, str]],
    *,
    sent_back: ApprovalRequest,
    subject,
    live_rows: list[tuple[str, str]] | None = None,
    live_title: str = "",
) -> str:
    """The review of a submission that answers a request for changes (``sent_back``): what changed
    since what that request was submitted as (``before_rows``: its kept snapshot's rows; None when
    it kept none, and everything is shown, saying so). A revision of something approved
    (``live_rows``, titled ``live_title``) is still compared with the approved version, the rows
    changed since the request for changes marked."""
    said = sent_back_text(sent_back, subject=subject)
    if live_rows is not None:
        if before_rows is None:
            since, said = frozenset(), f"{said}: what that request was submitted as was not kept"
        else:
            since = frozenset(r[0] for r in rows_diff(before_rows, after_rows) if r[3])
            said += f": {len(since)} row{pluralize(len(since))} changed since, marked"
        return rows_diff_html(
            rows_diff(live_rows, after_rows), first=False, before_title=live_title, since=since, note=said
        )
    if before_rows is None:
        caption = (
            f"{said}: what that request was submitted as was not kept, so everything this approval covers is shown"
        )
        return rows_diff_html(rows_diff(None, after_rows), first=True, before_title="", caption=caption)
    return rows_diff_html(
        rows_diff(before_rows, after_rows),
        first=False,
        before_title="As sent back for changes",
        caption=said,
        after_title="This submission",
    )


def campaign_review_html(campaign: Campaign, *, request: ApprovalRequest, user: User) -> str:
    """The review pane: a phone per platform, then a diff against the approved version (a revision of
    a scheduled or live campaign) or everything the approval covers (a first review); for a request
    answering one sent back for changes, what changed since that one was submitted
    (``resubmission_diff_html``)."""
    from accounts.selectors import approval_sent_back_before

    approved = campaign.approved() if campaign.is_active else None
    phones = campaign_phones_html(campaign, reader=user)
    before_title = f"Approved version {approved.number} (sending now)" if approved else ""
    sent_back = approval_sent_back_before(request)
    if sent_back is None:
        diff = version_diff_html(
            approved.snapshot if approved else None,
            campaign.snapshot(),
            app_id=campaign.app_id,
            reader=user,
            before_title=before_title,
        )
    else:
        now, kept, after = timezone.now(), sent_back.snapshot, campaign.snapshot()
        names = snapshot_names(user, approved.snapshot if approved else None, kept, after)

        def rows(version, *, first=False):
            return version_rows(version, app_id=campaign.app_id, now=now, names=names, first=first)

        diff = resubmission_diff_html(
            rows(kept, first=approved is None) if kept else None,
            rows(after, first=approved is None),
            sent_back=sent_back,
            subject=campaign,
            live_rows=rows(approved.snapshot) if approved else None,
            live_title=before_title,
        )
    # The segment and the contents are linked for a reader who may open them, said by number to the others.
    variants = campaign.variant_list()
    content_ids = [v.content_id for v in variants] if variants else [campaign.content_id]
    names = ReaderNames.of(user, segments={campaign.segment_id}, apps={campaign.app_id}, contents=content_ids)
    links = [("campaign", reverse("admin:campaigns_campaign_change", args=[campaign.pk]), campaign.name)]
    if campaign.segment_id:
        links.append(_review_link("segment", "admin:audiences_segment_change", campaign.segment_id, names.segments))
    if variants:
        links += [
            _review_link(f"variant {v.label}", "admin:delivery_pushcontent_change", v.content_id, names.contents)
            for v in variants
        ]
    else:
        links.append(_review_link("content", "admin:delivery_pushcontent_change", campaign.content_id, names.contents))
    return format_html(
        '<div style="display:flex;gap:24px;flex-wrap:wrap"><div>{}</div><div><p>{}</p><p class="review-links">{}</p>'
        "{}</div></div>",
        phones,
        f"{campaign.name} — {names.app(campaign.app_id)}",
        format_html_join(
            " · ",
            "{} {}",
            ((what, format_html('<a href="{}">{}</a>', url, name) if url else name) for what, url, name in links),
        ),
        diff,
    )


def campaign_sends_now_text(campaign: Campaign, *, user: User) -> str:
    """What approving the campaign starts at once (its send: sent when approved, or already due),
    for its approver's confirmation: the phones of about how many profiles it sends to now, as the
    review counts its audience (``_audience_counted``: the profiles opted in, less the holdout; a
    profile's phones each get it), the segment named as ``user`` may be told it."""
    names = ReaderNames.of(user, segments={campaign.segment_id})
    audience, reach = _audience_counted(
        segment_id=campaign.segment_id,
        app_id=campaign.app_id,
        holdout_share=campaign.holdout_share,
        purpose=campaign.purpose,
        names=names,
    )
    if reach is None:
        return f"'{campaign.name}' sends now. Its audience: {audience}"
    profiles = round(reach.opted_in * (100 - campaign.holdout_share) / 100)
    return (
        f"'{campaign.name}' sends now to the phones of about {profiles:,} profile{pluralize(profiles)}. "
        f"Its audience, as the review counts it: {audience}"
    )


def _review_link(what: str, url_name: str, pk: int, named: dict[int, str]) -> tuple[str, str, str]:
    """(what, its page, its name) for an object the reader may see (``named`` holds it); (what, "",
    "#12") for another: no name, no link to a page that answers 404."""
    if pk not in named:
        return what, "", f"#{pk}"
    return what, reverse(url_name, args=[pk]), named[pk]


def campaign_references(campaigns: list[Campaign]) -> dict[str, set[int]]:
    """What the campaigns' reviews show (app, segment, content, of the revision and of the approved
    version): whoever may decide their requests may read them. Their variants in one query."""
    from campaigns.models import CampaignVariant

    apps, segments = set(), set()
    contents = set(CampaignVariant.objects.filter(campaign__in=campaigns).values_list("content_id", flat=True))
    for campaign in campaigns:
        approved = campaign.approved() if campaign.is_active else None
        apps.add(campaign.app_id)
        segments |= {campaign.segment_id, approved.segment_id if approved else None} - {None}
        contents |= {campaign.content_id, approved.content_id if approved else None} - {None}
        contents |= {v["content_id"] for v in (approved.variants if approved else [])}
    return {"delivery.app": apps, "audiences.segment": segments, "delivery.pushcontent": contents}
