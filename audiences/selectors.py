"""Permission-filtered reads of audiences: segments by object access, profiles and events by role."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.cache import cache
from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.expressions import RawSQL
from django.http import Http404
from django.template.defaultfilters import pluralize

from accounts.models import ApiKey, User
from accounts.selectors import has_every_scope, in_scope, visible_to
from audiences.models import Event, EventBulkRequest, Import, Profile, Segment, SegmentMember
from audiences.rules.compiler import Compiler, segment_profiles
from audiences.rules.schema import DATE_RE, RulesInvalid, device_model
from config.db import count_session

PICKER_CACHE_SECONDS = 300


def segments_visible_to(user: User, *, perm: str | None = None) -> QuerySet[Segment]:
    """The segments the user has object access to (and whose role grants ``perm``, default view)."""
    return visible_to(user, Segment.objects.all(), perm=perm)


def segment_for(user: User, segment_id: int, *, perm: str | None = None) -> Segment:
    """One segment the user may see (or act on with ``perm``); Http404 otherwise, as if it did not exist."""
    segment = segments_visible_to(user, perm=perm).filter(pk=segment_id).first()
    if segment is None:
        raise Http404(f"No segment {segment_id}.")
    return segment


def profiles_visible_to(user: User) -> QuerySet[Profile]:
    """Profiles are org-wide: every role reads them all; a user without a role reads none."""
    if user is None or not user.is_active or not user.has_perm("audiences.view_profile"):
        return Profile.objects.none()
    return Profile.objects.all()


def events_visible_to(user: User) -> QuerySet[Event]:
    if user is None or not user.is_active or not user.has_perm("audiences.view_event"):
        return Event.objects.none()
    return Event.objects.all()


def event_bulk_requests_visible_to(user: User) -> QuerySet[EventBulkRequest]:
    """The events calls' Idempotency-Key records, for a role holding view_eventbulkrequest: every
    one to whoever reads the API keys of others (Administrators), those of their own keys to the
    others. A record belongs to the key that sent it, nothing in it scoped to an app to grant."""
    if user is None or not user.is_active or not user.has_perm("audiences.view_eventbulkrequest"):
        return EventBulkRequest.objects.none()
    if user.has_perm("accounts.manage_others_apikey"):
        return EventBulkRequest.objects.all()
    return EventBulkRequest.objects.filter(api_key__user=user)


def imports_visible_to(user: User) -> QuerySet[Import]:
    """Administrators see every import; others their own and those feeding a segment in their scope
    (``in_scope``): reading a segment through a review shows none of its imports."""
    if user is None or not user.is_active or not user.has_perm("audiences.view_import"):
        return Import.objects.none()
    qs = Import.objects.select_related("segment", "created_by")
    if has_every_scope(user):
        return qs
    return qs.filter(created_by=user) | qs.filter(segment__in=in_scope(user, Segment.objects.all()).values("pk"))


def imports_visible_to_key(key: ApiKey) -> QuerySet[Import]:
    """The imports an API key reads: with the read scope, every one its user sees; without it (the
    key an app ships may be such, and anyone can take it out of the app), only those it uploaded
    among them, since an error file holds whole rows of the file."""
    visible = imports_visible_to(key.user)
    return visible if ApiKey.Scope.READ in key.scopes else visible.filter(created_by_key=key)


MEMBERSHIP_BATCH = 100  # segments tested per query: a query of one column per segment stays small to plan


def profile_memberships(user: User, profile: Profile, *, limit: int = 1000) -> list[Segment]:
    """The segments (among the first ``limit`` by name the user may see) that hold the profile.

    One query per MEMBERSHIP_BATCH segments, each testing its segments on this one profile: the
    page's queries grow with the segments one sees, by one per hundred, never with the profiles
    or events. It tested the first hundred alone, and said of a profile in the next one that it
    was in none."""
    segments = list(segments_visible_to(user).order_by("name", "id")[:limit])
    found: list[Segment] = []
    compiler = Compiler(correlated=True)
    for first in range(0, len(segments), MEMBERSHIP_BATCH):
        batch = segments[first : first + MEMBERSHIP_BATCH]
        annotations = {}
        for segment in batch:
            if segment.kind == Segment.Kind.RULES:
                if not segment.rules:
                    continue
                try:
                    condition = compiler.compile(segment.rules, stack=(segment.pk,))
                except RulesInvalid:
                    continue  # a segment broken by a later change (e.g. a removed app) just does not match
                annotations[f"s{segment.pk}"] = Exists(Profile.objects.filter(condition, pk=OuterRef("pk")))
            else:
                annotations[f"s{segment.pk}"] = Exists(
                    SegmentMember.objects.filter(segment_id=segment.pk, profile=OuterRef("pk"))
                )
        if not annotations:
            continue
        row = Profile.objects.filter(pk=profile.pk).annotate(**annotations).values(*annotations).first() or {}
        found += [s for s in batch if row.get(f"s{s.pk}")]
    return found


def attribute_keys(*, sample: int = 5000) -> list[dict]:
    """The attribute names seen on the most recent profiles, each with its likely type (for the rule builder)."""
    return _keys_sampled("audiences_profile", "attributes", sample=sample, cache_key="audiences:attribute_keys")


def _keys_sampled(table: str, column: str, *, sample: int, cache_key: str) -> list[dict]:
    """The keys of the JSON ``column`` on the last ``sample`` rows of ``table``, each with the type
    most of its values have, kept in the cache for ``PICKER_CACHE_SECONDS``."""
    cached = cache.get(cache_key)
    if cached is not None:
        return cached
    rows = f"(SELECT {column} FROM {table} ORDER BY id DESC LIMIT %s) p"  # noqa: S608 (constants)
    if connection.vendor == "postgresql":
        sql = f"SELECT e.key, jsonb_typeof(e.value), e.value #>> '{{}}' FROM {rows}, jsonb_each(p.{column}) e"  # noqa: S608 (constants)
    else:
        sql = f"SELECT e.key, e.type, e.value FROM {rows}, json_each(p.{column}) e"  # noqa: S608 (constants)
    types: dict[str, dict[str, int]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [sample])
        for key, json_type, value in cursor.fetchall():
            kind = _kind_of(json_type, value)
            if kind:
                types.setdefault(key, {}).setdefault(kind, 0)
                types[key][kind] += 1
    result = [{"name": key, "type": max(seen, key=seen.get)} for key, seen in sorted(types.items())]
    cache.set(cache_key, result, PICKER_CACHE_SECONDS)
    return result


def audience_attribute_names(*, app_id: int, sample: int = 5000) -> list[str]:
    """The attribute names, sorted, held by the ``sample`` newest profiles with an active device of
    the app (those its pushes reach), for the content editor's check of the names its texts read.
    One query, read backwards along the devices' (app, profile) index; none while cached."""
    key = f"audiences:attribute_names:app:{app_id}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    newest = (
        "SELECT attributes FROM audiences_profile WHERE id IN (SELECT profile_id FROM delivery_device "
        "WHERE app_id = %s AND active ORDER BY profile_id DESC LIMIT %s)"
    )
    if connection.vendor == "postgresql":
        sql = f"SELECT DISTINCT e FROM ({newest}) p, jsonb_object_keys(p.attributes) e"  # noqa: S608 (placeholders)
    else:
        sql = f"SELECT DISTINCT e.key FROM ({newest}) p, json_each(p.attributes) e"  # noqa: S608 (placeholders)
    with connection.cursor() as cursor:
        cursor.execute(sql, [app_id, sample])
        names = sorted(row[0] for row in cursor.fetchall())
    cache.set(key, names, PICKER_CACHE_SECONDS)
    return names


UNREAD_SAMPLE = 5000
# The codes of rules_unread_warnings: text a number rule does not read, text with white space around it.
NUMBER_AS_TEXT = "number_as_text"
TEXT_WITH_WHITE_SPACE = "text_with_white_space"
UNREAD_CODES = (NUMBER_AS_TEXT, TEXT_WITH_WHITE_SPACE)
_TEXT_COMPARED_WHOLE = ("eq", "ne", "in", "not_in")
# White space as the rule check reads it (``str.strip()``: Unicode's 29 characters), written out:
# PostgreSQL's \s follows the database's locale (under C.UTF-8 it leaves U+00A0 out, under "C" all
# but ASCII's), where Python's, SQLite's REGEXP, takes them all. The same class in both dialects.
WHITE_SPACE_CLASS = r"[\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_PADDED_PATTERN = rf"\A{WHITE_SPACE_CLASS}|{WHITE_SPACE_CLASS}\Z"


def rules_unread_warnings(tree, *, sample: int = UNREAD_SAMPLE) -> list[dict]:
    """What the attribute conditions of a validated ``tree`` read as nothing among the ``sample``
    newest profiles, one warning per attribute and kind, with an example: text a number rule
    does not read (``NUMBER_TEXT_PATTERN``: "042", "42.0"; code ``number_as_text``), and text with
    white space around it that a rule compares whole ("pro " is not "pro"; code
    ``text_with_white_space``). Each is ``{code, attribute, count, sampled, example, message}``,
    ``sampled`` being how many profiles were read. One query, over the newest profiles alone
    (by id, as the builder's attribute picker reads them), so a preview of a million stays fast.
    """
    from audiences.rules.compiler import NUMBER_TEXT_PATTERN
    from audiences.rules.schema import OPERATOR_LABELS, rule_nodes

    checks: dict[tuple[str, str], str] = {}  # (attribute, code) -> the first operator that reads it
    for node in rule_nodes(tree):
        name, op = node.get("attribute"), node.get("op")
        if not isinstance(name, str) or op in ("exists", "not_exists"):
            continue
        if node.get("type") == "number":
            checks.setdefault((name, NUMBER_AS_TEXT), op)
        elif node.get("type") == "string" and op in _TEXT_COMPARED_WHOLE:
            checks.setdefault((name, TEXT_WITH_WHITE_SPACE), op)
    if not checks:
        return []
    checks = dict(sorted(checks.items())[:20])
    postgres = connection.vendor == "postgresql"
    columns, params = [], []
    for name, code in checks:
        if postgres:
            text, typed = "(p.attributes ->> %s)", "jsonb_typeof(p.attributes -> %s) = 'string'"
            matches = "~"
        else:
            text, typed = "json_extract(p.attributes, %s)", "json_type(p.attributes, %s) = 'text'"
            matches = "REGEXP"
        key = name if postgres else f'$."{name}"'
        if code == NUMBER_AS_TEXT:
            condition, pattern = f"{typed} AND NOT {text} {matches} %s", NUMBER_TEXT_PATTERN
        else:
            condition, pattern = f"{typed} AND {text} {matches} %s", _PADDED_PATTERN
        columns.append(f"count(*) FILTER (WHERE {condition}), min({text}) FILTER (WHERE {condition})")
        params += [key, key, pattern, key, key, key, pattern]
    sql = f"SELECT count(*), {', '.join(columns)} FROM (SELECT attributes FROM audiences_profile ORDER BY id DESC LIMIT %s) p"  # noqa: S608 (placeholders)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, sample])
        row = cursor.fetchone()
    read, found = row[0], row[1:]
    warnings = []
    for index, ((name, code), op) in enumerate(checks.items()):
        held, example = found[2 * index], found[2 * index + 1]
        if not held:
            continue
        among = f"{held:,} of the {read:,} newest profiles hold {name!r}"
        if code == NUMBER_AS_TEXT:
            message = (
                f"{among} as text a number rule does not read, such as {example!r}: "
                "a number is read from text written plainly (42, -7, 4.5)"
            )
        else:
            label = OPERATOR_LABELS.get(op, op)
            message = f"{among} with white space around it, such as {example!r}, which '{label}' compares too"
        warnings.append(
            {"code": code, "attribute": name, "count": held, "sampled": read, "example": example, "message": message}
        )
    return warnings


def _kind_of(json_type: str, value) -> str | None:
    if json_type in ("number", "integer", "real"):
        return "number"
    if json_type in ("boolean", "true", "false"):
        return "boolean"
    if json_type in ("string", "text"):
        return "date" if isinstance(value, str) and DATE_RE.match(value[:10]) else "string"
    return None


# Every distinct event name, in order, as the CTE ``names``: a skip scan of the (name, occurred_at)
# index, one descent per name, where a DISTINCT would read every event.
_EVENT_NAMES_CTE = (
    "WITH RECURSIVE names(name) AS ("
    " SELECT min(name) FROM audiences_event"
    " UNION ALL"
    " SELECT (SELECT min(e.name) FROM audiences_event e WHERE e.name > names.name)"
    " FROM names WHERE names.name IS NOT NULL"
    ")"
)
_EVENT_NAMES = _EVENT_NAMES_CTE + " SELECT name FROM names WHERE name IS NOT NULL LIMIT %s"  # noqa: S608 (constants)


def event_names(*, limit: int = 500) -> list[str]:
    """Every distinct event name, by a skip scan of the (name, occurred_at) index: fast on millions of events."""
    cached = cache.get("audiences:event_names")
    if cached is not None:
        return cached
    with connection.cursor() as cursor:
        cursor.execute(_EVENT_NAMES, [limit])
        names = [row[0] for row in cursor.fetchall()]
    cache.set("audiences:event_names", names, PICKER_CACHE_SECONDS)
    return names


_NEWEST_EVENT_IDS = _EVENT_NAMES_CTE + (  # noqa: S608 (constants; values are bound)
    " SELECT newest.id FROM names CROSS JOIN LATERAL ("
    " SELECT e.id, e.occurred_at FROM audiences_event e WHERE e.name = names.name"
    " ORDER BY e.occurred_at DESC, e.id DESC LIMIT %s"
    ") newest WHERE names.name IS NOT NULL ORDER BY newest.occurred_at DESC, newest.id DESC LIMIT %s"
)


def events_newest_ids(top: int) -> RawSQL | None:
    """The ids of the ``top`` newest events (by ``occurred_at``, then id), as a subquery for
    ``id__in``; None where only a sort of the table can say (SQLite).

    No index orders every event by time (see ``Event``): this reads the ``top`` newest of each
    name from the (name, occurred_at) index, every name found by a skip scan of it, and keeps the
    ``top`` newest of those, which are the newest of all. A few index descents per name for the
    first pages, where a sort would read every event."""
    if connection.vendor != "postgresql":
        return None
    return RawSQL(_NEWEST_EVENT_IDS, [top, top])  # noqa: S611 (a fixed statement, its values bound)


def event_property_keys(*, sample: int = 5000) -> list[dict]:
    """Property names seen on the last ``sample`` events received, with their likely type."""
    return _keys_sampled("audiences_event", "properties", sample=sample, cache_key="audiences:event_property_keys")


@dataclass(frozen=True)
class Reach:
    """An audience's size as the send will meet it: profiles → reachable in the app → opted in."""

    profiles: int
    reachable: int
    ios: int
    android: int
    opted_in: int

    def text(self) -> str:
        return (
            f"{self.profiles:,} profile{pluralize(self.profiles)} → {self.reachable:,} reachable "
            f"(iOS {self.ios:,} / Android {self.android:,}) → {self.opted_in:,} opted in"
        )


# On PostgreSQL each profile carries its reach per app (``audiences_profile.reach[app id]``, kept
# exactly by triggers on the devices: see delivery/migrations/0015_profile_reach.py): 1 reachable,
# plus 2 iOS, 4 Android, 8 opted in; 0 or NULL without an active device of the app. The figures are
# one scan of the audience's profiles, each profile's element read once and grouped (16 groups at
# most), the groups summed.
REACH_SQL = """
SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE bits <> 0), 0),
       coalesce(sum(n) FILTER (WHERE bits & 2 <> 0), 0), coalesce(sum(n) FILTER (WHERE bits & 4 <> 0), 0),
       coalesce(sum(n) FILTER (WHERE bits & 8 <> 0), 0)
FROM (SELECT bits, count(*) AS n FROM ({profiles}) AS audience GROUP BY bits) AS groups
"""
REACH_BITS = 'COALESCE("audiences_profile"."reach"[%s], 0)'
# Elsewhere (SQLite) from the devices: the app's active devices grouped per profile, joined to the audience.
REACH_FROM_DEVICES_SQL = """
SELECT count(*), count(reach.profile_id), coalesce(sum(reach.ios), 0), coalesce(sum(reach.android), 0),
       coalesce(sum(reach.opted_in), 0)
FROM ({profiles}) AS audience
LEFT JOIN (
    SELECT profile_id, max(CASE WHEN platform = 'ios' THEN 1 ELSE 0 END) AS ios,
           max(CASE WHEN platform = 'android' THEN 1 ELSE 0 END) AS android,
           max(CASE WHEN push_enabled THEN 1 ELSE 0 END) AS opted_in
    FROM {devices}
    WHERE app_id = %s AND active
    GROUP BY profile_id
) AS reach ON reach.profile_id = audience.id
"""


def audience_reach(*, segment, app_id: int) -> Reach:
    """How many profiles the segment holds, how many have an active device of the app (and on
    which platform), and how many of those allow notifications.

    Reachable counts a profile once even with several phones; iOS and Android each count the
    profiles with a device of that platform (a profile with both counts in both). One query: on
    PostgreSQL a scan of the audience's profiles reading the reach kept on each (JIT off, like the
    segment counts); elsewhere the devices of each profile of the audience.
    """
    from django.core.exceptions import EmptyResultSet
    from django.db import transaction
    from django.db.models.expressions import RawSQL

    profiles = segment_profiles(segment, union=True).order_by()
    try:
        if connection.vendor == "postgresql":
            bits = RawSQL(REACH_BITS, [int(app_id)])  # noqa: S611 (a constant; the app id is bound)
            profiles = profiles.annotate(bits=bits).values("bits")
            profiles_sql, profiles_params = profiles.query.sql_with_params()
            sql, params = REACH_SQL.format(profiles=profiles_sql), [*profiles_params]
        else:
            profiles_sql, profiles_params = profiles.values("id").query.sql_with_params()
            devices = device_model()._meta.db_table
            sql = REACH_FROM_DEVICES_SQL.format(profiles=profiles_sql, devices=devices)
            params = [*profiles_params, app_id]
    except EmptyResultSet:  # a segment without rules holds nobody
        return Reach(0, 0, 0, 0, 0)
    with transaction.atomic(), connection.cursor() as cursor:
        count_session(cursor)
        cursor.execute(sql, params)
        return Reach(*(int(n) for n in cursor.fetchone()))


REACH_APPS = 5  # a count measures the reach in this many apps at most, the first by name


def reach_apps_for(user: User) -> list:
    """The apps whose reach a count measures for this user: those they see, the first REACH_APPS by name."""
    from django.apps import apps as django_apps

    try:
        app_model = django_apps.get_model("delivery", "App")
    except LookupError:
        return []
    return list(visible_to(user, app_model.objects.order_by("name", "id"))[:REACH_APPS])


def reach_of(figures: dict) -> Reach:
    """A Reach from one app's entry of ``Segment.last_reach``."""
    return Reach(**{key: figures[key] for key in ("profiles", "reachable", "ios", "android", "opted_in")})


def reach_kept(segment, app_id: int):
    """The segment's reach in the app at its last count, and when that was: (Reach, datetime), or None.

    An entry counted on its own (``segment_reach_keep``) carries its time; the others were counted
    with the segment (``last_counted_at``)."""
    import datetime as dt

    for figures in segment.last_reach or []:
        if figures.get("app") == app_id:
            at = figures.get("counted_at")
            return reach_of(figures), dt.datetime.fromisoformat(at) if at else segment.last_counted_at
    return None
