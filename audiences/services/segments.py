"""Segments: create, update, delete, preview and static membership.

Segments carry object access (a creator gets access to what they create; others need a grant).
"""

from __future__ import annotations

import functools
import operator
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Case, Exists, F, IntegerField, ProtectedError, Q, Value, When
from django.utils import timezone

from accounts.models import User
from accounts.selectors import can, uses_described, visible_to
from accounts.services import access_grant, audit
from audiences.models import Profile, Segment, SegmentMember, SegmentReference, segments_closure, segments_used
from audiences.rules.compiler import segment_count, segment_profiles
from audiences.rules.validation import rules_validate_for
from audiences.selectors import Reach, audience_reach, reach_apps_for, rules_unread_warnings, segment_for
from audiences.services.profiles import _ensure_perm, members_lock
from config.db import Holders

UNSET: Any = object()


def _check_rules(*, rules, by: User, segment_id: int | None, kept=None) -> set[int]:
    return rules_validate_for(rules, by=by, segment_id=segment_id, kept=kept)


def _set_references(segment: Segment, references: set[int]) -> None:
    SegmentReference.objects.filter(source=segment).exclude(target_id__in=references).delete()
    SegmentReference.objects.bulk_create(
        [SegmentReference(source=segment, target_id=target) for target in references], ignore_conflicts=True
    )


# The advisory lock class of the edits giving a segment rules that use others (its object id is 0):
# a constant of ours, as ``delivery.rules._CAP_LOCK_CLASS`` is.
_USES_LOCK_CLASS = 0x50C6


def _uses_hold(segment_ids: set[int]) -> None:
    """Hold the segments a rule tree about to be saved uses, ``FOR KEY SHARE`` in id order, until
    commit; the caller takes them before the segment it edits, and before any other lock. No-op
    on SQLite, whose writers take turns.

    Each new reference checks its key on committing, taking this lock: with the edited segment
    held already, while a change of a segment it uses held that one and waited for the edited
    segment (using it through another) to forget its figures, 'deadlock detected', and one of the
    two saves failed. Taken first, the edit waits for such a change holding nothing it waits for.
    The lock holds up only a change, a member change or a deletion of the used segment (``FOR
    UPDATE``): forgettings, counts and an import's batches leave the key alone.

    Before them, one such edit at a time (a transaction-level advisory lock, taken holding
    nothing): two edits making segments use each other (A made to use B while B is made to use A)
    each held the segment the other edits, then waited for its own, held by the other: 'deadlock
    detected', and one of the two saves failed with it. The second now waits for the first to
    commit, and its cycle check, run under the locks, reads the first's rules and refuses it as it
    refuses any cycle."""
    if not segment_ids or connection.vendor != "postgresql":
        return
    sql, params = Segment.objects.filter(pk__in=sorted(segment_ids)).order_by("pk").values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [_USES_LOCK_CLASS])
        cursor.execute(f"{sql} FOR KEY SHARE", params)


def segment_create(
    *, name: str, by: User, kind: str = Segment.Kind.RULES, rules: dict | None = None, description: str = ""
) -> Segment:
    """Create a segment and give its creator access to it.

    A rules segment needs a valid rule tree; imported and static segments take none.
    Raises PermissionDenied when the role may not add segments, RulesInvalid (a ValidationError
    naming each broken rule's path) for a bad tree, ValidationError for a bad name or kind.
    """
    _ensure_perm(by, "audiences.add_segment", "Your role may not create segments.")
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "A segment needs a name."})
    if kind not in Segment.Kind.values:
        raise ValidationError({"kind": f"Unknown kind {kind!r}; use one of {', '.join(Segment.Kind.values)}."})
    references: set[int] = set()
    if kind == Segment.Kind.RULES:
        if rules is None:
            raise ValidationError({"rules": "A rules segment needs a rule tree."})
        references = _check_rules(rules=rules, by=by, segment_id=None)
    elif rules is not None:
        raise ValidationError({"rules": "Only rules segments have rules."})
    with transaction.atomic():
        segment = Segment.objects.create(
            name=name[:200], description=description, kind=kind, rules=rules, created_by=by
        )
        _set_references(segment, references)
        access_grant(obj=segment, to=by, by=None)
        audit(actor=by, action="segment_created", obj=segment, summary={"kind": kind})
    return segment


def segment_update(
    *, segment_id: int, by: User, name: str = UNSET, description: str = UNSET, rules: dict = UNSET
) -> Segment:
    """Change a segment's name, description or rule tree (rules segments only).

    Locks the segments a new tree uses (``_uses_hold``: one such edit at a time), then the segment
    row, then those whose figures a change of the tree forgets (``_users_figures_forget``). The new
    tree is validated under these locks against cycles through other segments' membership
    conditions, an edit committed meanwhile included: a segment or app the saved tree names already
    may stay, one named anew needs the user's access (``rules_validate_for``'s ``kept``). Raises
    Http404 outside the user's access, PermissionDenied when the role may not change segments,
    RulesInvalid / ValidationError for bad input.
    """
    segment_for(by, segment_id)  # 404 before 403: an object outside access does not exist
    _ensure_perm(by, "audiences.change_segment", "Your role may not change segments.")
    with transaction.atomic():
        if rules is not UNSET:
            _uses_hold(segments_used(rules) - {segment_id})
        segment = Segment.objects.select_for_update().get(pk=segment_id)
        if not can(by, "audiences.change_segment", segment):
            raise PermissionDenied("You may not change this segment.")
        changed: list[str] = []
        if name is not UNSET:
            name = (name or "").strip()
            if not name:
                raise ValidationError({"name": "A segment needs a name."})
            if name != segment.name:
                segment.name = name[:200]
                changed.append("name")
        if description is not UNSET and description != segment.description:
            segment.description = description
            changed.append("description")
        if rules is not UNSET and rules != segment.rules:
            if segment.kind != Segment.Kind.RULES:
                raise ValidationError({"rules": "Only rules segments have rules."})
            references = _check_rules(rules=rules, by=by, segment_id=segment.pk, kept=segment.rules)
            segment.rules = rules
            changed += ["rules", *_figures_forget(segment)]
            _set_references(segment, references)
        if changed:
            segment.updated_at = timezone.now()
            segment.save(update_fields=[*changed, "updated_at"])
            audit(actor=by, action="segment_changed", obj=segment, summary={"fields": sorted(set(changed))})
    return segment


# What a count keeps on a segment: the figures of what it held when counted.
_FIGURES = ("last_count", "last_counted_at", "last_reach")
# A forgetting clears them and moves the definition's version, so that a count begun before keeps nothing.
_FORGOTTEN = {**dict.fromkeys(_FIGURES), "definition_version": F("definition_version") + 1}


def _figures_forget(segment: Segment) -> list[str]:
    """Clear the kept count and reach of a segment (locked by the caller) whose rules or members
    changed (they were the figures of what it held before) and move its ``definition_version``;
    those of the segments using it too (``_users_figures_forget``). Return the fields to save."""
    for name in _FIGURES:
        setattr(segment, name, None)
    segment.definition_version += 1
    _users_figures_forget(segment.pk)
    return [*_FIGURES, "definition_version"]


def _references() -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Every segment reference, both ways: the segments using each (``used_by``), and those each
    uses (``uses``). One query."""
    used_by: dict[int, set[int]] = {}
    uses: dict[int, set[int]] = {}
    for source, target in SegmentReference.objects.values_list("source_id", "target_id"):
        used_by.setdefault(target, set()).add(source)
        uses.setdefault(source, set()).add(target)
    return used_by, uses


def _users_of(segment_id: int, used_by: dict[int, set[int]]) -> set[int]:
    """The segments using ``segment_id``, directly or through others (``used_by``: ``_references``)."""
    users: set[int] = set()
    targets = {segment_id}
    while targets:  # no cycles: segments use segments at most 10 levels deep
        targets = set().union(*(used_by.get(pk, ()) for pk in targets)) - users
        users |= targets
    return users - {segment_id}


def _users_figures_forget(segment_id: int) -> None:
    """Clear the kept figures of every segment whose rules use ``segment_id``'s membership, directly
    or through others, and move their ``definition_version``: they were counted with what it held.
    (A campaign page showed the count of an audience whose nested list had changed since, as of its
    age.)

    Each is waited for when locked (edited, keeping a count): one skipped kept the figures of what
    it no longer holds. The caller holds ``segment_id``; the using segments are locked after it by
    the depth of the segments they use, then by id, so that every forgetting locks in one order
    (a segment after each it uses) and two never wait for each other. One query for the
    references, one locking the segments, one writing them."""
    used_by, uses = _references()
    users = _users_of(segment_id, used_by)
    if not users:
        return
    heights: dict[int, int] = {}

    def height(pk: int) -> int:  # how deep the segments it uses go
        if pk not in heights:
            heights[pk] = 0  # a cycle (refused when saved) reads as none
            heights[pk] = 1 + max(map(height, uses[pk])) if uses.get(pk) else 0
        return heights[pk]

    order = sorted(users, key=lambda pk: (height(pk), pk))
    with transaction.atomic():
        rank = Case(*(When(pk=pk, then=Value(n)) for n, pk in enumerate(order)), output_field=IntegerField())
        locked = Segment.objects.select_for_update(no_key=True).filter(pk__in=order).order_by(rank)
        Segment.objects.filter(pk__in=list(locked.values_list("pk", flat=True))).update(**_FORGOTTEN)


def segment_members_landed(segment_id: int) -> None:
    """An import changed the segment's members: forget its kept count and reach, as a change of its
    members in the admin does (those of the segments using it too), and mark it changed (a count
    begun before is then not kept)."""
    Segment.objects.filter(pk=segment_id).update(**_FORGOTTEN, updated_at=timezone.now())
    _users_figures_forget(segment_id)


# What names segments without a foreign key protecting them (a journey's conditions name theirs in
# its graph): each, given segment ids and the reader, says what may still read them (a line each); a
# segment said so is not deleted.
_SEGMENT_HOLDERS = Holders()
segment_holders_register = _SEGMENT_HOLDERS.register


# What still to send reads segments (a campaign's audience, a journey's entry or conditions): each,
# given segment ids and the reader, says what of it reads any of them (a line each). An edit of a
# segment's rules or members needs a new approval of each before it sends to the segment again.
_SEGMENT_SENDERS = Holders()
segment_senders_register = _SEGMENT_SENDERS.register


def segments_using(segment_id: int) -> set[int]:
    """The segments whose rules use ``segment_id``'s membership, directly or through others."""
    used_by, _ = _references()
    return _users_of(segment_id, used_by)


def segment_senders(segment_id: int, *, by: User | None, using: set[int] | None = None) -> list[str]:
    """What still to send reads ``segment_id``, directly or through the segments ``using`` it
    (``segments_using`` when not given), said to ``by`` (``segment_senders_register``)."""
    if using is None:
        using = segments_using(segment_id)
    return _SEGMENT_SENDERS({segment_id} | using, by=by)


def segment_holders(segment_ids, *, by: User | None) -> list[str]:
    """What may still read any of ``segment_ids`` besides another segment's rules, a campaign's
    audience or a journey's entry (which their foreign keys or references protect): a reason to keep
    them, said to ``by``. Empty when nothing does."""
    return _SEGMENT_HOLDERS(segment_ids, by=by)


def segment_delete(*, segment_id: int, by: User) -> None:
    """Delete a segment. Refused (ValidationError) while another segment's rules use its membership,
    a campaign or a journey's entry targets it, or a journey that may still run tests it in a
    condition (``segment_holders``). Locks the segment, then its members in id order
    (``members_lock``), before deleting them with it."""
    segment_for(by, segment_id)
    _ensure_perm(by, "audiences.delete_segment", "Your role may not delete segments.")
    with transaction.atomic():
        segment = Segment.objects.select_for_update().get(pk=segment_id)
        if not can(by, "audiences.delete_segment", segment):
            raise PermissionDenied("You may not delete this segment.")
        users = Segment.objects.filter(pk__in=SegmentReference.objects.filter(target=segment).values("source_id"))
        if users.exists():
            # Those ``by`` may not see are counted, not named.
            seen = list(visible_to(by, users).order_by("name", "id").values_list("name", flat=True))
            unseen = users.count() - len(seen)
            names = [f"'{name}'" for name in seen]
            if unseen:
                names.append("a segment you cannot see" if unseen == 1 else f"{unseen} segments you cannot see")
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            raise ValidationError(f"Segment '{segment.name}' is used by {listed}: change those first.")
        if held := segment_holders([segment.pk], by=by):
            change = "it" if len(held) == 1 else "them"
            raise ValidationError(f"Segment '{segment.name}' is used by {'; '.join(held)}: change {change} first.")
        audit(actor=by, action="segment_deleted", obj=segment, summary={"name": segment.name})
        # Its members go in id order, as an erasure of profiles removes them (``members_lock``): the
        # cascade removed them as its plan read them, so each could wait for a member the other held.
        # An erasure holding some is waited for, and what it recorded on the list goes with it.
        members_lock(SegmentMember.objects.filter(segment=segment))
        try:
            segment.delete()
        except ProtectedError as exc:  # a campaign's audience, a journey's entry, or a reference added concurrently
            uses = segment_uses_described(objects=exc.protected_objects, by=by)
            raise ValidationError(
                f"Segment '{segment.name}' is {', '.join(uses)}: change {'it' if len(uses) == 1 else 'them'} first."
            ) from exc


def segment_uses_described(*, objects, by: User) -> list[str]:
    """What keeps a segment from being deleted (a ProtectedError's objects), as ``by`` may be told:
    "the entry of journey 'X'", "the audience of campaign 'Y'"; what they may not see, without its
    name. At most five."""

    def describe(obj):
        if isinstance(obj, SegmentReference):
            return "used by another segment's rules", None, ""
        owner = getattr(obj, "journey", None)  # a journey version: its journey
        return ("the audience of", obj, "the audience of") if owner is None else ("the entry of", owner, "the entry of")

    return uses_described(objects, by=by, describe=describe, owner_field="journey")


@dataclass
class Preview:
    count: int
    sample: list[Profile] = field(default_factory=list)
    took_ms: int = 0
    reach: list[dict] = field(default_factory=list)  # per app, as kept in Segment.last_reach
    warnings: list[dict] = field(default_factory=list)  # values the rules read as nothing (rules_unread_warnings)

    @property
    def unread(self) -> list[str]:
        """The warnings' sentences, as the rule builder shows them."""
        return [warning["message"] for warning in self.warnings]


def segment_preview(
    *,
    by: User,
    segment_id: int | None = None,
    rules: dict | None = None,
    sample_size: int | None = None,
    reach: bool = True,
    keep: bool = False,
    unread: bool = True,
) -> Preview:
    """Count a segment's profiles and take a sample (two queries), for a saved segment or an unsaved tree.

    An unsaved tree is validated first (RulesInvalid). With ``reach``, the size is also measured as
    profiles → reachable → opted in in each app the user sees (up to REACH_APPS, one query each).
    With ``unread``, a rules segment's preview also says which values its attribute conditions read
    as nothing (``rules_unread_warnings``: one query over the newest profiles).
    A preview writes nothing, so whoever may see a segment may preview it (a Viewer, a GET, the
    API's ``read`` scope). With ``keep`` (the segment page's preview, a POST), the figures of a
    saved segment counted from its saved rules are kept on it for the segment list as
    ``segment_count_keep`` keeps them, but only when ``by`` may change the segment: one they may
    only view is counted and shown, never written. Raises Http404 for a segment outside the
    user's access.
    """
    sample_size = settings.AUDIENCES_PREVIEW_SAMPLE if sample_size is None else sample_size
    started = timezone.now()
    saved = None
    if segment_id is not None and rules is None:
        segment = saved = segment_for(by, segment_id)
    else:
        if segment_id is not None:
            # 404 before the rules are checked: their cycle check reads the segment's uses.
            saved = segment_for(by, segment_id)
        _check_rules(rules=rules, by=by, segment_id=segment_id)
        segment = Segment(pk=segment_id, kind=Segment.Kind.RULES, rules=rules)
    keep = keep and saved is not None and (rules is None or rules == saved.rules)
    read = segment_definition_read(saved) if keep else None  # before counting: what the count is of
    count = segment_count(segment)
    sample = list(segment_profiles(segment).order_by()[:sample_size]) if count and sample_size else []
    reaches = []
    if reach and count:
        for app in reach_apps_for(by):
            figures = audience_reach(segment=segment, app_id=app.pk)
            reaches.append({"app": app.pk, "name": app.name, **asdict(figures)})
    if unread and segment.kind == Segment.Kind.RULES and segment.rules:
        warnings = rules_unread_warnings(segment.rules)
    else:
        warnings = []
    took = int((timezone.now() - started).total_seconds() * 1000)
    preview = Preview(count=count, sample=sample, took_ms=took, reach=reaches, warnings=warnings)
    if keep:
        _figures_keep(segment=saved, by=by, preview=preview, read=read)
    return preview


def segment_count_keep(*, segment_id: int, by: User) -> Preview:
    """Count a saved segment now and keep the figures on it, which the segment list shows ("Count
    reach now").

    Requires change access to the segment, the check an edit of it makes: a segment one may only
    view (a Viewer's, or an Approver's read through a pending approval) is refused, since its kept
    figures are what everyone reads. Raises Http404 outside the user's access, PermissionDenied
    when the role may not change segments or the user may not change this one.
    """
    segment = segment_for(by, segment_id)  # 404 before 403: an object outside access does not exist
    _ensure_perm(by, "audiences.change_segment", "Your role may not change segments.")
    if not can(by, "audiences.change_segment", segment):
        raise PermissionDenied("You may not change this segment.")
    return segment_preview(by=by, segment_id=segment_id, sample_size=0, unread=False, keep=True)


def segment_definition_read(segment: Segment) -> dict[int, int]:
    """The ``definition_version`` of ``segment`` as read (the row given) and of the segments its
    rules use at any depth, read now: what a count about to begin is of, for ``_figures_keep`` to
    check. One query per level of nesting, none for rules that use no segment."""
    used = segments_used(segment.rules) - {segment.pk}
    closure = segments_closure(used, "definition_version") if used else {}
    return {**{pk: version for pk, (version, _) in closure.items()}, segment.pk: segment.definition_version}


def _definition_unchanged(segment_id: int, read: dict[int, int]) -> Q:
    """The row of ``segment_id`` while its definition is the one ``read`` (``segment_definition_read``):
    its own version and, read by the same statement, those of the segments its rules use."""
    unchanged = Q(pk=segment_id, definition_version=read[segment_id])
    used = [(pk, version) for pk, version in read.items() if pk != segment_id]
    if used:
        moved = Segment.objects.filter(pk__in=[pk for pk, _ in used]).exclude(
            functools.reduce(operator.or_, (Q(pk=pk, definition_version=version) for pk, version in used))
        )
        unchanged &= ~Exists(moved)
    return unchanged


def _figures_keep(*, segment: Segment, by: User, preview: Preview, read: dict[int, int]) -> bool:
    """Keep a count of ``segment`` on its row; False when nothing was kept.

    The profile count is everyone's: profiles are org-wide and the rules say the same to every
    user. The reach is per app, and a count measures only the apps its counter sees, so it
    replaces the entries of those apps and keeps the other apps' entries, each with the time it
    was counted (``counted_at``, whose age the list shows beside it). A user who sees fewer apps thus never narrows what others read as the segment's
    reach: each reads the entries of the apps they see. A segment that holds nobody is reached in
    no app, and keeps no entry.

    ``read`` is what the count was of (``segment_definition_read``, taken before counting). Locks
    the segment; keeps nothing when it is gone, when its definition moved since (its rules, a kept
    list's members, or a segment its rules use: these would not be the figures of what it holds
    now), which the statement writing them checks, or when ``by`` may no longer change it. A
    forgetting waits for the lock, so one committing after this is kept forgets it again.
    """
    with transaction.atomic():
        locked = Segment.objects.select_for_update(no_key=True).filter(pk=segment.pk).first()
        if locked is None or locked.definition_version != read[segment.pk]:
            return False
        if not can(by, "audiences.change_segment", locked):
            return False
        counted = {figures["app"] for figures in preview.reach}
        earlier = locked.last_counted_at.isoformat() if locked.last_counted_at else None
        others = [
            {**figures, "counted_at": figures.get("counted_at") or earlier}
            for figures in locked.last_reach or []
            if figures.get("app") not in counted and preview.count
        ]
        kept = Segment.objects.filter(_definition_unchanged(segment.pk, read)).update(
            last_count=preview.count, last_counted_at=timezone.now(), last_reach=[*others, *preview.reach]
        )
    return bool(kept)


def segment_reach_keep(*, segment_id: int, app, reach: Reach, read: dict[int, int]) -> bool:
    """Keep the segment's reach in one app (counted by whoever asks: a campaign page, its Count now)
    beside the other apps' figures, with its own time; False when nothing was kept. A change to the
    rules clears them all.

    ``read`` is what ``reach`` was measured from (``segment_definition_read`` of the segment as
    saved, taken before counting): kept only while neither its definition nor those of the
    segments its rules use have moved since, as ``_figures_keep`` checks."""
    with transaction.atomic():
        segment = Segment.objects.select_for_update(no_key=True).filter(pk=segment_id).first()
        if segment is None or segment.definition_version != read[segment_id]:
            return False
        kept = [figures for figures in segment.last_reach or [] if figures.get("app") != app.pk]
        kept.append({"app": app.pk, "name": app.name, **asdict(reach), "counted_at": timezone.now().isoformat()})
        return bool(Segment.objects.filter(_definition_unchanged(segment_id, read)).update(last_reach=kept))


def segment_members_check(*, add: list[str] = (), remove: list[str] = ()) -> None:
    """Check a change of a static segment's members (external ids, one per item) before it is made.

    Raises ValidationError on ``remove_members`` naming the external ids listed both to add and
    to remove: the change cannot do both, and doing either is not what the other list asked.
    """
    twice = sorted({x.strip() for x in add if x.strip()} & {x.strip() for x in remove if x.strip()})
    if twice:
        shown = ", ".join(twice[:10]) + ("…" if len(twice) > 10 else "")
        raise ValidationError(
            {"remove_members": f"Listed both to add and to remove: {shown}. Keep each external id in one list."}
        )


def segment_members_change(
    *, segment_id: int, by: User, add: list[str] = (), remove: list[str] = ()
) -> tuple[int, int, list[str]]:
    """Add and remove profiles (by external id) of a static segment.

    Returns (added, removed, unknown external ids): those added that were not members already,
    those removed that were. Locks the segment (as an import's batches do), and each profile
    named. Raises ValidationError on a segment that is not static or an external id listed both
    to add and to remove (``segment_members_check``; nothing changes), Http404 / PermissionDenied
    outside access or role.
    """
    segment_for(by, segment_id)
    _ensure_perm(by, "audiences.change_segment", "Your role may not change segments.")
    segment_members_check(add=add, remove=remove)
    with transaction.atomic():
        segment = Segment.objects.select_for_update().get(pk=segment_id)
        if not can(by, "audiences.change_segment", segment):
            raise PermissionDenied("You may not change this segment.")
        if segment.kind != Segment.Kind.STATIC:
            raise ValidationError("Only static segments have hand-kept members.")
        wanted = {x.strip() for x in add if x.strip()}
        dropped = {x.strip() for x in remove if x.strip()}
        # Held until commit: members have no database constraint on their profile, and a deletion
        # locks the profile first, so it waits for these members and then removes them too. The
        # lock leaves the key alone and goes in id order, as ``profiles_upsert`` locks.
        known = Profile.objects.select_for_update(no_key=True).filter(external_id__in=wanted | dropped).order_by("id")
        found = dict(known.values_list("external_id", "pk"))
        unknown = sorted((wanted | dropped) - set(found))
        # Who is added is told by the profiles named, not by counting every member twice: the
        # segment's lock keeps other writers of its members out meanwhile.
        joining = [found[x] for x in wanted if x in found]
        present = SegmentMember.objects.filter(segment=segment, profile_id__in=joining).count() if joining else 0
        SegmentMember.objects.bulk_create(
            [SegmentMember(segment=segment, profile_id=pk) for pk in joining], ignore_conflicts=True
        )
        leaving = [found[x] for x in dropped if x in found]
        removed = SegmentMember.objects.filter(segment=segment, profile_id__in=leaving).delete()[0] if leaving else 0
        added = len(joining) - present
        segment.updated_at = timezone.now()
        # Its kept count was of the members it had: forgotten, as a rules segment's on a rules change.
        forgotten = _figures_forget(segment) if added or removed else []
        segment.save(update_fields=["updated_at", *forgotten])
        audit(actor=by, action="segment_members_changed", obj=segment, summary={"added": added, "removed": removed})
    return added, removed, unknown
