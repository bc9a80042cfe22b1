"""Profiles: checks and bulk upsert. Profiles are org-wide (writable by Administrators and Managers)."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from accounts.json_values import json_compact, json_text_problem
from accounts.models import User
from accounts.selectors import has_every_scope, in_scope
from accounts.services import audit
from audiences.models import Event, Profile, SegmentErasure, SegmentMember
from audiences.rules.schema import KEY_RE
from config.db import deletion_counts_within

LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*\Z")
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTES_BYTES = 16 * 1024
_TIMEZONES = None


def _ensure_perm(user: User, perm: str, message: str) -> None:
    if user is None or not user.is_active or not user.has_perm(perm):
        raise PermissionDenied(message)


# Names a system's zone files hold that are no IANA zone: the machine's own zone (a link), rules kept
# for POSIX strings. A profile kept with one would be read in the zone of whichever machine reads it.
_SERVER_ZONE_FILES = frozenset({"localtime", "posixrules"})


def _timezones() -> set[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = zoneinfo.available_timezones() - _SERVER_ZONE_FILES
    return _TIMEZONES


def text_problem(value, *, max_length: int) -> str | None:
    """What is wrong with a required text field (None when it is a non-empty string short enough)."""
    if not isinstance(value, str) or not value.strip():
        return "This field is required: a non-empty string."
    if len(value) > max_length:
        return f"At most {max_length} characters."
    return json_text_problem(value)  # PostgreSQL stores no NUL, JSON carries no lone surrogate


EXTERNAL_ID_PADDED = "An external id may not begin or end with white space: send it as your system keeps it."


def external_id_problem(value) -> str | None:
    """What is wrong with an external id given to create or write a profile (None: fine).

    Beside ``text_problem``'s rules, white space around it is refused rather than trimmed: " u1"
    and "u1" were two profiles, and trimming now would send the writes meant for a profile kept
    under " u1" from before to "u1" without a word. Every call that may create a profile (profiles,
    events, devices, CSV imports) checks with this.
    """
    if problem := text_problem(value, max_length=255):
        return problem
    if value != value.strip():
        return EXTERNAL_ID_PADDED
    return None


# How far ahead of the clock an event's time, or a profile's last visit, may be.
FUTURE_LIMIT = dt.timedelta(days=1)
FUTURE_PROBLEM = "This time is more than a day in the future."


def profile_check(data: dict) -> dict[str, str]:
    """Check one profile's fields; return {field: message} for each problem (empty: fine).

    Used by the API serializers and the services alike, so both say the same thing.
    """
    errors: dict[str, str] = {}
    if problem := external_id_problem(data.get("external_id")):
        errors["external_id"] = problem
    attributes = data.get("attributes")
    if attributes is not None:
        if not isinstance(attributes, dict):
            errors["attributes"] = "Must be an object of name → value."
        elif len(attributes) > MAX_ATTRIBUTES:
            errors["attributes"] = f"At most {MAX_ATTRIBUTES} attributes."
        else:
            bad = [k for k in attributes if not KEY_RE.match(k)]
            if bad:
                errors["attributes"] = (
                    f"Attribute name {bad[0]!r} is invalid: letters, digits, _ . : - (at most 100 characters)."
                )
            elif len(json_compact(attributes)) > MAX_ATTRIBUTES_BYTES:
                errors["attributes"] = f"Attributes take at most {MAX_ATTRIBUTES_BYTES} bytes as JSON."
    locale = data.get("locale")
    if locale not in (None, "") and (not isinstance(locale, str) or not LOCALE_RE.match(locale) or len(locale) > 35):
        errors["locale"] = "Not a locale: use a language tag such as 'fr' or 'fr-FR'."
    tz = data.get("timezone")
    if tz not in (None, "") and (not isinstance(tz, str) or tz not in _timezones()):
        errors["timezone"] = "Not a time zone: use an IANA name such as 'Europe/Paris'."
    seen = data.get("last_seen_at")
    if isinstance(seen, dt.datetime) and seen > timezone.now() + FUTURE_LIMIT:
        errors["last_seen_at"] = FUTURE_PROBLEM  # it only moves forward: a year 2999 would stay
    return errors


def _merged(current: dict, changes: dict | None) -> dict:
    """Top-level merge: given names replace, a null value removes the attribute."""
    if not changes:
        return current
    merged = dict(current)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def attributes_limit_problem(current: dict, merged: dict, given: dict) -> str | None:
    """Which limit a profile whose attributes ``current`` become ``merged`` (by an item giving
    ``given``) would break, as "The profile would hold 300 attributes (at most 200)", or None.

    The limits hold for what the profile keeps, not only for what one call gives: calls adding
    new names each would otherwise grow it without end. A profile already over a limit (kept
    from before the limit) may still change as long as it does not grow past where it was.
    ``given`` must be within the limits by itself (``profile_check``). The profile API and CSV
    imports both measure with this, each adding its own advice.
    """
    if len(merged) > MAX_ATTRIBUTES and len(merged) > len(current):
        return f"The profile would hold {len(merged)} attributes (at most {MAX_ATTRIBUTES})"
    if all(name in given for name in merged):  # its values are the item's own: profile_check measured them
        return None
    size = len(json_compact(merged))
    if size > MAX_ATTRIBUTES_BYTES and size > len(json_compact(current)):
        return f"The profile's attributes would take {size} bytes as JSON (at most {MAX_ATTRIBUTES_BYTES})"
    return None


def merged_attributes_problem(current: dict, merged: dict, given: dict) -> str | None:
    """Why a profile whose attributes ``current`` become ``merged`` (by an item giving ``given``)
    would break the limits ``profile_check`` states for one item (``attributes_limit_problem``),
    or None."""
    problem = attributes_limit_problem(current, merged, given)
    return None if problem is None else f"{problem}: remove some by giving them as null."


def _apply(profile: Profile, item: dict, *, limits: bool = True) -> dict[str, str]:
    """Give ``profile`` (in memory) one upsert item's values, or nothing when the attributes it
    would keep break the limits (``merged_attributes_problem``, unless ``limits`` is off): return
    {field: message} then. Applying a profile's items a second time changes nothing: each name,
    locale, time zone ends as its last item says, the last seen time at the latest."""
    attributes = _merged(profile.attributes, item.get("attributes"))
    if limits and attributes is not profile.attributes:
        problem = merged_attributes_problem(profile.attributes, attributes, item["attributes"])
        if problem is not None:
            return {"attributes": problem}
    profile.attributes = attributes
    if item.get("locale") is not None:
        profile.locale = item["locale"]
    if item.get("timezone") is not None:
        profile.timezone = item["timezone"]
    if item.get("last_seen_at") is not None:
        profile.last_seen_at = max(filter(None, [profile.last_seen_at, item["last_seen_at"]]))
    return {}


def _values(profile: Profile) -> tuple:
    """What an upsert item may change on a profile."""
    return (profile.attributes, profile.locale, profile.timezone, profile.last_seen_at)


@dataclass
class UpsertResult:
    external_id: str
    status: str  # created | updated | unchanged | refused
    profile_id: int
    errors: dict[str, str] | None = None  # refused: {field: message}


def _locked(profiles):
    """Lock ``profiles`` in id order, the order every writer of profiles locks them in, so no two
    of them wait for each other in a circle: the events call, an import's batch (into a segment,
    the profiles it leaves as they are too), a static segment's member changes, a deletion
    (``profiles_delete``), the device calls and the devices' reach triggers (the profiles before
    the devices), a segment entry's enrollments (their foreign key checks). Those that create
    profiles create them after, by external id as Python sorts them. The lock leaves the key alone
    (``FOR NO KEY UPDATE``): events and devices referring to a profile are not held up by it."""
    return profiles.select_for_update(no_key=True).order_by("id")


def members_lock(members) -> None:
    """Lock the segment members ``members`` (a queryset) ``FOR UPDATE`` in id order, as every writer
    that removes members of a list without holding each member's profile does before its deletion: a
    replace import's removal of those its file does not name and a segment's deletion
    (``segment_delete``), each holding the segment, and a deletion of profiles (the profiles held).
    Each removed them in the order its plan read them (the list's rows as stored, its index by
    profile, the profiles' index), so each could hold a member the other waited for ('deadlock
    detected'). The one coming second waits holding no member, and finds gone those the first
    removed. No-op on SQLite, whose writers take turns."""
    if connection.vendor != "postgresql":
        return
    sql, params = members.select_for_update().order_by("pk").values("pk").query.sql_with_params()
    with connection.cursor() as cursor:  # counted, not fetched: a list may hold millions
        cursor.execute(f"SELECT count(*) FROM ({sql}) held", params)  # noqa: S608 (the ORM's own query)


def profiles_upsert(*, items: list[dict], by: User) -> list[UpsertResult]:
    """Create or update profiles by external id, in one transaction; return one result per item, in order.

    Each item: ``external_id`` (required), ``attributes`` (merged: a null removes a name),
    ``locale``, ``timezone``, ``last_seen_at``. Items must be valid (``profile_check``); an
    external id given twice is applied in order. An item whose attributes, merged over what the
    profile holds, break the limits (``merged_attributes_problem``) changes nothing and is
    answered ``refused`` with its errors; the others land. A profile is answered ``created`` by
    the first item of the call that inserted it, its later items ``updated`` or ``unchanged`` by
    what each changed over the ones before: one another writer inserted meanwhile is updated like
    a known one.
    Rows are locked as ``_locked`` says; rows that would not change are not written.
    Raises PermissionDenied when the role may not write profiles, ValidationError on bad items.
    """
    _ensure_perm(by, "audiences.add_profile", "Your role may not write profiles.")
    _ensure_perm(by, "audiences.change_profile", "Your role may not write profiles.")
    if len(items) > settings.AUDIENCES_BULK_MAX_ITEMS:
        raise ValidationError(f"At most {settings.AUDIENCES_BULK_MAX_ITEMS} profiles per call.")
    for index, item in enumerate(items):
        problems = profile_check(item)
        if problems:
            raise ValidationError({f"[{index}].{k}": v for k, v in problems.items()})
    if not items:
        return []
    now = timezone.now()
    ids = sorted({item["external_id"] for item in items})
    refused: dict[int, dict[str, str]] = {}  # an item's position -> its errors
    with transaction.atomic():
        existing = {p.external_id: p for p in _locked(Profile.objects.filter(external_id__in=ids))}
        missing = [x for x in ids if x not in existing]
        created_ids: set[str] = set()
        # A created profile's items after its first: whether each changed it over the ones before.
        later_changed: dict[int, bool] = {}
        if missing:
            # A new profile is written once, with what its items give it. One another writer
            # created meanwhile (this insert is then ignored) takes the items like a known one.
            fresh = {x: Profile(external_id=x, created_at=now, updated_at=now) for x in missing}
            given: set[str] = set()  # the new ids an item landed on already
            for index, item in enumerate(items):
                profile = fresh.get(item["external_id"])
                if profile is None:
                    continue
                before = _values(profile)
                if problems := _apply(profile, item):
                    refused[index] = problems
                elif profile.external_id in given:
                    later_changed[index] = _values(profile) != before
                else:
                    given.add(profile.external_id)
            Profile.objects.bulk_create(list(fresh.values()), ignore_conflicts=True)
            for profile in _locked(Profile.objects.filter(external_id__in=missing)):
                existing[profile.external_id] = profile
                if profile.created_at == now:  # this call's insert; another writer's has its own time
                    created_ids.add(profile.external_id)
            # Another writer's profile takes the items like a known one: measured against what it holds.
            refused = {
                index: problems for index, problems in refused.items() if items[index]["external_id"] in created_ids
            }
        created_as_read = {x: _values(existing[x]) for x in created_ids}
        changed: dict[str, Profile] = {}
        results: list[UpsertResult] = []
        for index, item in enumerate(items):
            profile = existing[item["external_id"]]
            before = _values(profile)
            # A profile created here holds the items its row was written with, refused ones left
            # out: applied again, they end the same, and are not measured again.
            if index not in refused and (
                problems := _apply(profile, item, limits=profile.external_id not in created_ids)
            ):
                refused[index] = problems
            if index in refused:
                results.append(
                    UpsertResult(profile.external_id, status="refused", profile_id=profile.pk, errors=refused[index])
                )
                continue
            if profile.external_id in created_ids:
                if index not in later_changed:
                    status = "created"
                else:
                    status = "updated" if later_changed[index] else "unchanged"
            else:
                if _values(profile) != before:
                    changed[profile.external_id] = profile
                status = "updated" if profile.external_id in changed else "unchanged"
            results.append(UpsertResult(external_id=profile.external_id, status=status, profile_id=profile.pk))
        # A profile created here holds its items' values already (applying them again ends the
        # same): it is not written again unless they differ from the row as it was read back.
        changed.update((x, existing[x]) for x, values in created_as_read.items() if _values(existing[x]) != values)
        for profile in changed.values():
            profile.updated_at = now
        if changed:
            Profile.objects.bulk_update(
                list(changed.values()), ["attributes", "locale", "timezone", "last_seen_at", "updated_at"]
            )
        counts = {s: sum(1 for r in results if r.status == s) for s in ("created", "updated", "unchanged")}
        if refused:
            counts["refused"] = len(refused)
        if len(refused) < len(items):  # a call refused whole wrote nothing
            audit(actor=by, action="profiles_upserted", summary=counts)
    return results


def profile_upsert(
    *,
    external_id: str,
    by: User,
    attributes: dict | None = None,
    locale: str | None = None,
    timezone_name: str | None = None,
    last_seen_at: dt.datetime | None = None,
) -> UpsertResult:
    """Create or update one profile (see ``profiles_upsert`` for the rules)."""
    item = {"external_id": external_id, "attributes": attributes, "locale": locale, "timezone": timezone_name}
    if last_seen_at is not None:
        item["last_seen_at"] = last_seen_at
    return profiles_upsert(items=[item], by=by)[0]


# What apps further down the chain do before profiles go (journeys count the open enrollments
# that go with them as ended): each is called with the ids of the locked profiles, in the deletion's
# transaction, before anything is deleted.
_DELETION_LISTENERS: list = []


def profile_deletion_listeners_register(fn) -> None:
    """``fn(profile_ids=[...])``: called by ``profiles_delete`` before those profiles are deleted."""
    if fn not in _DELETION_LISTENERS:
        _DELETION_LISTENERS.append(fn)


# Per kind of row erased with a profile and kept by an app further down the chain (devices,
# journey enrollments), the rows of that kind a user may reach: ``rows(user)``, a queryset.
_ROW_READERS: dict = {}


def profile_out_of_reach(*, who: str, many: bool, stop: str = ":") -> str:
    """Why an erasure is refused when profiles hold rows outside their reader's access, neither how
    many nor of which kind, said of ``who`` ("it", "these profiles"): one profile, or ``many``;
    ``stop`` ends its first clause (":" or ".")."""
    holds, them = ("hold", "them") if many else ("holds", "it")
    who_may = "only" if stop == ":" else "Only"
    return (
        f"{who} {holds} data in apps, segments or journeys outside your access{stop} {who_may} someone with"
        f" access to all of it (an Administrator) can delete {them}."
    )


def profile_row_readers_register(*, model, rows) -> None:
    """Let ``rows(user)`` (a queryset of ``model``) say which of its rows that go with a profile
    ``user`` may reach: a profile's erasure counts those only, and is refused to whoever cannot
    reach them all (``profiles_delete_counts``)."""
    _ROW_READERS[model] = rows


def _profile_rows_reached(user: User):
    """``deletion_counts_within``'s ``seen`` for ``user``: the rows of each kind they may reach;
    a kind no app registered is reached by whoever sees every object only."""
    from audiences.models import Segment
    from audiences.selectors import events_visible_to, profiles_visible_to

    readers = {
        Profile: profiles_visible_to,
        Event: events_visible_to,
        SegmentMember: lambda u: SegmentMember.objects.filter(
            segment__in=in_scope(u, Segment.objects.all()).values("pk")
        ),
        **_ROW_READERS,
    }
    every = has_every_scope(user)

    def seen(model):
        if every:
            return model._default_manager.all()
        reader = readers.get(model)
        return reader(user) if reader is not None else model._default_manager.none()

    return seen


def profiles_delete(*, profile_ids: list[int], by: User) -> int:
    """Delete profiles with everything that refers to them (events, devices, memberships...); return
    how many there were.

    The profiles are locked ``FOR UPDATE`` first, in id order: segment members and events have no
    database constraint on their profile, and each writer of members or events holds the profile
    locked until it commits (an import batch, ``segment_members_change``, ``events_ingest``), so the
    deletion waits for those rows and removes them too. The deletion listeners run then, in the same
    transaction. Their memberships go first, each kept list recording what it lost
    (``_memberships_erase``): approvals of what reads the list stand. Raises PermissionDenied when
    the role may not delete profiles.
    """
    _ensure_perm(by, "audiences.delete_profile", "Your role may not delete profiles.")
    with transaction.atomic():
        profiles = list(Profile.objects.select_for_update().filter(pk__in=profile_ids).order_by("id"))
        if profiles and profiles_hidden_rows(profile_ids=[p.pk for p in profiles], by=by):
            said = profile_out_of_reach(who="These profiles", many=True)
            raise PermissionDenied(f"{said} Nothing was deleted.")
        for profile in profiles:
            audit(actor=by, action="profile_deleted", obj=profile)
        if profiles:
            ids = [p.pk for p in profiles]
            for listener in list(_DELETION_LISTENERS):
                listener(profile_ids=ids)
            _memberships_erase(ids)
            Profile.objects.filter(pk__in=ids).delete()
    return len(profiles)


def _memberships_erase(profile_ids: list[int]) -> None:
    """Remove the memberships of these profiles (locked by the caller) and record, per kept list,
    how many went and the newest of their member ids (``SegmentErasure``), which its membership
    stamp counts back (``Segment.members_stamp``).

    The members are locked first, in id order (``members_lock``), then told by the deletion itself
    (``RETURNING``): a replace import removing some of them meanwhile (it holds the segment, not the
    profiles) is then counted as its own change, not as an erasure. No member of these profiles is
    added meanwhile (its writer holds the profile). The segments are not locked: see
    ``SegmentErasure.segment``."""
    members_lock(SegmentMember.objects.filter(profile_id__in=profile_ids))
    lost: dict[int, tuple[int, int]] = {}
    with connection.cursor() as cursor:
        for at in range(0, len(profile_ids), 5000):  # within SQLite's parameters of one query
            chunk = profile_ids[at : at + 5000]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(
                f"DELETE FROM audiences_segmentmember WHERE profile_id IN ({marks}) RETURNING segment_id, id",  # noqa: S608 (placeholders)
                chunk,
            )
            for segment_id, member_id in cursor.fetchall():
                members, newest = lost.get(segment_id, (0, member_id))
                lost[segment_id] = (members + 1, max(newest, member_id))
    SegmentErasure.objects.bulk_create(
        SegmentErasure(segment_id=segment_id, members=members, newest=newest)
        for segment_id, (members, newest) in sorted(lost.items())
    )


def profiles_hidden_rows(*, profile_ids: list[int], by: User) -> int:
    """How many rows outside ``by``'s access go with these profiles (none counted for whoever sees
    every object, nor of a kind they see whole): ``profiles_delete`` refuses them the erasure when
    any does, and the profile's page offers no Delete then."""
    if has_every_scope(by):
        return 0
    _, hidden = deletion_counts_within(
        Profile.objects.filter(pk__in=profile_ids), seen=_profile_rows_reached(by), counted=False
    )
    return hidden


@dataclass(frozen=True)
class ProfilesDeletion:
    """What erasing profiles removes, as its reader may be told: ``counts`` {kind (plural): rows}
    of the rows they may reach, ``hidden`` how many others go too (neither counted by kind nor named)."""

    counts: dict[str, int]
    hidden: int


def profiles_delete_counts(*, profile_ids: list[int], by: User) -> ProfilesDeletion:
    """What ``profiles_delete`` removes with these profiles, as ``by`` may be told it: the rows of
    each kind they may reach, the profiles first, kinds with no row left out
    (``config.db.deletion_counts_within``: the plan the deletion itself follows; events and
    memberships are counted, not loaded), and how many rows outside their access go too: a
    profile is every app's, its phones, enrollments and memberships are each an app's, a
    journey's or a segment's, and whoever may not see those is told neither how many there are
    nor of which kind (``profiles_delete`` refuses them the erasure)."""
    counts, hidden = deletion_counts_within(Profile.objects.filter(pk__in=profile_ids), seen=_profile_rows_reached(by))
    return ProfilesDeletion({str(model._meta.verbose_name_plural): rows for model, rows in counts.items()}, hidden)
