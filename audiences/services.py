"""Every write of audiences: segments, profiles, events and CSV imports.

Profiles are org-wide (writable by Administrators and Managers); segments carry object access
(a creator gets access to what they create; others need a grant).
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import re
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone
from django_q.tasks import async_task

from accounts.models import User
from accounts.selectors import can
from accounts.services import access_grant, audit
from audiences.imports import (
    Batch,
    ErrorFile,
    ImportRefused,
    parse_record,
    plan_columns,
    records,
    sniff_header,
    write_batch,
)
from audiences.models import Event, Import, Profile, Segment, SegmentMember, SegmentReference
from audiences.rules import KEY_RE, rules_validate, segment_count, segment_profiles
from audiences.selectors import segment_for, segments_visible_to

UNSET: Any = object()
LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_PROPERTIES_BYTES = 8 * 1024
_TIMEZONES = None

log = logging.getLogger(__name__)


def _ensure_perm(user: User, perm: str, message: str) -> None:
    if user is None or not user.is_active or not user.has_perm(perm):
        raise PermissionDenied(message)


# --- segments ----------------------------------------------------------------------------------


def _check_rules(*, rules, by: User, segment_id: int | None) -> set[int]:
    allowed = set(segments_visible_to(by).values_list("pk", flat=True))
    return rules_validate(rules, segment_id=segment_id, allowed_segment_ids=allowed)


def _set_references(segment: Segment, references: set[int]) -> None:
    SegmentReference.objects.filter(source=segment).exclude(target_id__in=references).delete()
    SegmentReference.objects.bulk_create(
        [SegmentReference(source=segment, target_id=target) for target in references], ignore_conflicts=True
    )


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

    Locks the segment row. The new tree is validated against cycles through other segments'
    membership conditions. Raises Http404 outside the user's access, PermissionDenied when the
    role may not change segments, RulesInvalid / ValidationError for bad input.
    """
    segment_for(by, segment_id)  # 404 before 403: an object outside access does not exist
    _ensure_perm(by, "audiences.change_segment", "Your role may not change segments.")
    with transaction.atomic():
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
            references = _check_rules(rules=rules, by=by, segment_id=segment.pk)
            segment.rules = rules
            segment.last_count = None
            segment.last_counted_at = None
            changed += ["rules", "last_count", "last_counted_at"]
            _set_references(segment, references)
        if changed:
            segment.updated_at = timezone.now()
            segment.save(update_fields=[*changed, "updated_at"])
            audit(actor=by, action="segment_changed", obj=segment, summary={"fields": sorted(set(changed))})
    return segment


def segment_delete(*, segment_id: int, by: User) -> None:
    """Delete a segment. Refused (ValidationError) while another segment's rules use its membership."""
    segment_for(by, segment_id)
    _ensure_perm(by, "audiences.delete_segment", "Your role may not delete segments.")
    with transaction.atomic():
        segment = Segment.objects.select_for_update().get(pk=segment_id)
        if not can(by, "audiences.delete_segment", segment):
            raise PermissionDenied("You may not delete this segment.")
        users = list(Segment.objects.filter(pk__in=SegmentReference.objects.filter(target=segment).values("source_id")))
        if users:
            names = ", ".join(f"'{s.name}'" for s in users)
            raise ValidationError(f"Segment '{segment.name}' is used by {names}: change those first.")
        audit(actor=by, action="segment_deleted", obj=segment, summary={"name": segment.name})
        try:
            segment.delete()
        except ProtectedError as exc:  # a reference added concurrently
            raise ValidationError("This segment is used by another segment's rules.") from exc


@dataclass
class Preview:
    count: int
    sample: list[Profile] = field(default_factory=list)
    took_ms: int = 0


def segment_preview(
    *, by: User, segment_id: int | None = None, rules: dict | None = None, sample_size: int | None = None
) -> Preview:
    """Count a segment's profiles and take a sample (two queries), for a saved segment or an unsaved tree.

    For a saved segment the count is remembered on it (``last_count``). An unsaved tree is
    validated first (RulesInvalid). Raises Http404 for a segment outside the user's access.
    """
    sample_size = settings.AUDIENCES_PREVIEW_SAMPLE if sample_size is None else sample_size
    started = timezone.now()
    if segment_id is not None and rules is None:
        segment = segment_for(by, segment_id)
    else:
        _check_rules(rules=rules, by=by, segment_id=segment_id)
        if segment_id is not None:
            segment_for(by, segment_id)
        segment = Segment(pk=segment_id, kind=Segment.Kind.RULES, rules=rules)
    count = segment_count(segment)
    sample = list(segment_profiles(segment).order_by()[:sample_size]) if count else []
    if segment_id is not None and rules is None:
        Segment.objects.filter(pk=segment_id).update(last_count=count, last_counted_at=timezone.now())
    took = int((timezone.now() - started).total_seconds() * 1000)
    return Preview(count=count, sample=sample, took_ms=took)


def segment_members_change(
    *, segment_id: int, by: User, add: list[str] = (), remove: list[str] = ()
) -> tuple[int, int, list[str]]:
    """Add and remove profiles (by external id) of a static segment.

    Returns (added, removed, unknown external ids). Raises ValidationError on a segment that is
    not static, Http404 / PermissionDenied outside access or role.
    """
    segment_for(by, segment_id)
    _ensure_perm(by, "audiences.change_segment", "Your role may not change segments.")
    with transaction.atomic():
        segment = Segment.objects.select_for_update().get(pk=segment_id)
        if not can(by, "audiences.change_segment", segment):
            raise PermissionDenied("You may not change this segment.")
        if segment.kind != Segment.Kind.STATIC:
            raise ValidationError("Only static segments have hand-kept members.")
        wanted = {x.strip() for x in add if x.strip()}
        dropped = {x.strip() for x in remove if x.strip()}
        found = dict(Profile.objects.filter(external_id__in=wanted | dropped).values_list("external_id", "pk"))
        unknown = sorted((wanted | dropped) - set(found))
        before = SegmentMember.objects.filter(segment=segment).count()
        SegmentMember.objects.bulk_create(
            [SegmentMember(segment=segment, profile_id=found[x]) for x in wanted if x in found], ignore_conflicts=True
        )
        removed, _ = SegmentMember.objects.filter(
            segment=segment, profile_id__in=[found[x] for x in dropped if x in found]
        ).delete()
        added = SegmentMember.objects.filter(segment=segment).count() - before + removed
        segment.updated_at = timezone.now()
        segment.save(update_fields=["updated_at"])
        audit(actor=by, action="segment_members_changed", obj=segment, summary={"added": added, "removed": removed})
    return added, removed, unknown


# --- profiles ----------------------------------------------------------------------------------


def _timezones() -> set[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = zoneinfo.available_timezones()
    return _TIMEZONES


def profile_check(data: dict) -> dict[str, str]:
    """Check one profile's fields; return {field: message} for each problem (empty: fine).

    Used by the API serializers and the services alike, so both say the same thing.
    """
    errors: dict[str, str] = {}
    external_id = data.get("external_id")
    if not isinstance(external_id, str) or not external_id.strip():
        errors["external_id"] = "This field is required: a non-empty string."
    elif len(external_id) > 255:
        errors["external_id"] = "At most 255 characters."
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
            elif len(_json_dumps(attributes)) > MAX_ATTRIBUTES_BYTES:
                errors["attributes"] = f"Attributes take at most {MAX_ATTRIBUTES_BYTES} bytes as JSON."
    locale = data.get("locale")
    if locale not in (None, "") and (not isinstance(locale, str) or not LOCALE_RE.match(locale) or len(locale) > 35):
        errors["locale"] = "Not a locale: use a language tag such as 'fr' or 'fr-FR'."
    tz = data.get("timezone")
    if tz not in (None, "") and (not isinstance(tz, str) or tz not in _timezones()):
        errors["timezone"] = "Not a time zone: use an IANA name such as 'Europe/Paris'."
    return errors


def _json_dumps(value) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), default=str)


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


@dataclass
class UpsertResult:
    external_id: str
    status: str  # created | updated | unchanged
    profile_id: int


def profiles_upsert(*, items: list[dict], by: User) -> list[UpsertResult]:
    """Create or update profiles by external id, in one transaction; return one result per item, in order.

    Each item: ``external_id`` (required), ``attributes`` (merged: a null removes a name),
    ``locale``, ``timezone``, ``last_seen_at``. Items must be valid (``profile_check``); an
    external id given twice is applied in order. Existing rows are locked in external-id order
    (no deadlock between concurrent calls); rows that would not change are not written.
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
    with transaction.atomic():
        existing = {p.external_id: p for p in Profile.objects.select_for_update().filter(external_id__in=ids)}
        missing = [x for x in ids if x not in existing]
        created_ids: set[str] = set()
        if missing:
            Profile.objects.bulk_create(
                [Profile(external_id=x, created_at=now, updated_at=now) for x in missing], ignore_conflicts=True
            )
            for profile in Profile.objects.select_for_update().filter(external_id__in=missing).order_by("external_id"):
                existing[profile.external_id] = profile
                created_ids.add(profile.external_id)
        changed: dict[str, Profile] = {}
        results: list[UpsertResult] = []
        for item in items:
            profile = existing[item["external_id"]]
            before = (profile.attributes, profile.locale, profile.timezone, profile.last_seen_at)
            profile.attributes = _merged(profile.attributes, item.get("attributes"))
            if item.get("locale") is not None:
                profile.locale = item["locale"]
            if item.get("timezone") is not None:
                profile.timezone = item["timezone"]
            if item.get("last_seen_at") is not None:
                profile.last_seen_at = max(filter(None, [profile.last_seen_at, item["last_seen_at"]]))
            after = (profile.attributes, profile.locale, profile.timezone, profile.last_seen_at)
            if after != before:
                profile.updated_at = now
                changed[profile.external_id] = profile
            if profile.external_id in created_ids:
                status = "created"
            else:
                status = "updated" if profile.external_id in changed else "unchanged"
            results.append(UpsertResult(external_id=profile.external_id, status=status, profile_id=profile.pk))
        if changed:
            Profile.objects.bulk_update(
                list(changed.values()), ["attributes", "locale", "timezone", "last_seen_at", "updated_at"]
            )
        counts = {s: sum(1 for r in results if r.status == s) for s in ("created", "updated", "unchanged")}
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


# --- events ------------------------------------------------------------------------------------


def event_check(data: dict, *, now: dt.datetime | None = None) -> dict[str, str]:
    """Check one event's fields; return {field: message} for each problem (empty: fine)."""
    errors: dict[str, str] = {}
    external_id = data.get("external_id")
    if not isinstance(external_id, str) or not external_id.strip():
        errors["external_id"] = "This field is required: a non-empty string."
    elif len(external_id) > 255:
        errors["external_id"] = "At most 255 characters."
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        errors["name"] = "This field is required: a non-empty string."
    elif len(name) > 100:
        errors["name"] = "At most 100 characters."
    properties = data.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            errors["properties"] = "Must be an object of name → value."
        elif any(not KEY_RE.match(k) for k in properties):
            errors["properties"] = "Property names use letters, digits, _ . : - (at most 100 characters)."
        elif len(_json_dumps(properties)) > MAX_PROPERTIES_BYTES:
            errors["properties"] = f"Properties take at most {MAX_PROPERTIES_BYTES} bytes as JSON."
    occurred_at = data.get("occurred_at")
    if not isinstance(occurred_at, dt.datetime) or timezone.is_naive(occurred_at):
        errors["occurred_at"] = "This field is required: an ISO 8601 time with a time zone."
    elif occurred_at > (now or timezone.now()) + dt.timedelta(days=1):
        errors["occurred_at"] = "This time is more than a day in the future."
    return errors


def events_ingest(*, items: list[dict], by: User) -> list[int]:
    """Store events (``external_id``, ``name``, ``properties``, ``occurred_at``); return their ids, in order.

    A profile unknown so far is created (events may arrive before the profile upsert). Each
    profile's ``last_seen_at`` moves forward to its newest event. Events are data, not changes
    of configuration: they are not written to the audit log. Raises PermissionDenied when the
    role may not write events, ValidationError on bad items (``event_check``).
    """
    _ensure_perm(by, "audiences.add_event", "Your role may not write events.")
    if len(items) > settings.AUDIENCES_BULK_MAX_ITEMS:
        raise ValidationError(f"At most {settings.AUDIENCES_BULK_MAX_ITEMS} events per call.")
    now = timezone.now()
    for index, item in enumerate(items):
        problems = event_check(item, now=now)
        if problems:
            raise ValidationError({f"[{index}].{k}": v for k, v in problems.items()})
    if not items:
        return []
    ids = sorted({item["external_id"] for item in items})
    with transaction.atomic():

        def locked(external_ids):
            return {
                p.external_id: p
                for p in Profile.objects.select_for_update()
                .filter(external_id__in=external_ids)
                .order_by("external_id")
                .only("id", "external_id", "last_seen_at")
            }

        profiles = locked(ids)
        missing = [x for x in ids if x not in profiles]
        if missing:  # only unknown ids are inserted: no sequence values burnt on known profiles
            Profile.objects.bulk_create(
                [Profile(external_id=x, created_at=now, updated_at=now) for x in missing], ignore_conflicts=True
            )
            profiles.update(locked(missing))
        events = Event.objects.bulk_create(
            [
                Event(
                    profile_id=profiles[item["external_id"]].pk,
                    name=item["name"],
                    properties=item.get("properties") or {},
                    occurred_at=item["occurred_at"],
                    received_at=now,
                )
                for item in items
            ]
        )
        seen: dict[str, dt.datetime] = {}
        for item in items:
            when = min(item["occurred_at"], now)
            seen[item["external_id"]] = max(seen.get(item["external_id"], when), when)
        moved = []
        for external_id, when in seen.items():
            profile = profiles[external_id]
            if profile.last_seen_at is None or profile.last_seen_at < when:
                profile.last_seen_at = when
                moved.append(profile)
        if moved:
            Profile.objects.bulk_update(moved, ["last_seen_at"])
        if _EVENT_LISTENERS:
            transaction.on_commit(lambda: _events_notify(events))
    return [e.pk for e in events]


# Apps further down the chain (journeys) react to events without audiences importing them.
_EVENT_LISTENERS: list[Callable[..., None]] = []


def event_listeners_register(fn: Callable[..., None]) -> None:
    """Call ``fn(events=[Event, ...])`` after each batch of ingested events is committed.

    Listeners should only queue work (e.g. a task with the event ids): they run inside the
    request that sent the events. A listener that raises is logged and the others still run.
    """
    if fn not in _EVENT_LISTENERS:
        _EVENT_LISTENERS.append(fn)


def _events_notify(events: list[Event]) -> None:
    for fn in list(_EVENT_LISTENERS):
        try:
            fn(events=events)
        except Exception:
            log.exception("Event listener %r failed", fn)


def event_record(
    *, external_id: str, name: str, by: User, occurred_at: dt.datetime, properties: dict | None = None
) -> int:
    """Store one event (see ``events_ingest``)."""
    item = {"external_id": external_id, "name": name, "occurred_at": occurred_at, "properties": properties}
    return events_ingest(items=[item], by=by)[0]


# --- CSV imports -------------------------------------------------------------------------------


def import_create(
    *,
    upload,
    by: User,
    encoding: str = "utf-8",
    columns: dict | None = None,
    target: str = "profiles",
    segment_id: int | None = None,
    segment_name: str = "",
) -> Import:
    """Store an uploaded CSV file and queue its import on a worker.

    The header is checked now, so a file that is not CSV, is too big, or has no external_id
    column is refused (ImportRefused, a ValidationError) before anything is stored.
    ``target``: ``profiles`` only, ``new_segment`` (an imported segment named ``segment_name``,
    created now and granted to ``by``), ``add_to_segment`` / ``replace_segment`` (a static
    segment ``by`` may change). Raises PermissionDenied / Http404 for roles and access.
    """
    _ensure_perm(by, "audiences.add_import", "Your role may not import profiles.")
    if encoding not in Import.Encoding.values:
        raise ValidationError({"encoding": f"Unknown encoding {encoding!r}; use utf-8 or latin-1."})
    if target not in Import.Target.values:
        raise ValidationError({"target": f"Unknown target {target!r}; use one of {', '.join(Import.Target.values)}."})
    size = getattr(upload, "size", None) or 0
    if size > settings.PUSHDESK_IMPORT_MAX_BYTES:
        raise ImportRefused(
            f"The file is {size:,} bytes; the limit is {settings.PUSHDESK_IMPORT_MAX_BYTES:,} bytes "
            "(PUSHDESK_IMPORT_MAX_BYTES)."
        )
    header = sniff_header(upload, encoding=encoding)
    plan_columns(header, columns)
    segment = None
    if target in (Import.Target.ADD_TO_SEGMENT, Import.Target.REPLACE_SEGMENT):
        if segment_id is None:
            raise ValidationError({"segment": "Choose the static segment to add to or replace."})
        segment = segment_for(by, segment_id, perm="audiences.change_segment")
        if segment.kind != Segment.Kind.STATIC:
            raise ValidationError({"segment": "Only a static segment can be added to or replaced by an import."})
    elif target == Import.Target.NEW_SEGMENT and not segment_name.strip():
        raise ValidationError({"segment_name": "Name the new segment."})
    with transaction.atomic():
        if target == Import.Target.NEW_SEGMENT:
            segment = segment_create(name=segment_name, kind=Segment.Kind.IMPORTED, by=by)
        record = Import(
            original_name=(getattr(upload, "name", "") or "")[:255],
            size=size,
            encoding=encoding,
            columns=columns or {},
            target=target,
            segment=segment,
            segment_name=segment_name,
            created_by=by,
        )
        record.file.save(f"{uuid.uuid4().hex}.csv", upload, save=False)
        record.save()
        audit(
            actor=by,
            action="import_created",
            obj=record,
            summary={"target": target, "segment": segment.pk if segment else None, "size": size},
        )
        transaction.on_commit(lambda: async_task("audiences.tasks.import_run", record.pk))
    return record


def _claim_import(import_id: int, now: dt.datetime) -> bool:
    stale = now - dt.timedelta(seconds=settings.Q_CLUSTER.get("timeout", 300) + 60)
    claimed = Import.objects.filter(pk=import_id).filter(
        Q(status=Import.Status.QUEUED) | Q(status=Import.Status.RUNNING, heartbeat_at__lt=stale)
    )
    return bool(claimed.update(status=Import.Status.RUNNING, heartbeat_at=now))


def import_process(*, import_id: int, seconds: float | None = None) -> bool:
    """Run (or resume) an import: read the file in batches, write good rows, report bad ones.

    Claims the import first (a queued one, or a running one whose worker stopped sending
    heartbeats), so two workers never run it at once. Each batch commits its rows together with
    the progress counters and the resume position, so a rerun neither repeats nor loses work;
    the same file imported twice changes nothing more (unchanged profiles are not written).
    Returns True when the time budget ran out and the rest must run in a new task.
    """
    seconds = settings.PUSHDESK_IMPORT_TASK_SECONDS if seconds is None else seconds
    started = time.monotonic()
    now = timezone.now()
    if not _claim_import(import_id, now):
        return False
    record = Import.objects.select_related("segment").get(pk=import_id)
    if record.started_at is None:
        record.started_at = now
        Import.objects.filter(pk=record.pk).update(started_at=now)
    try:
        with record.file.open("rb") as stored:
            fh = getattr(stored, "file", stored)
            header = sniff_header(fh, encoding=record.encoding)
            plan = plan_columns(header, record.columns)
            fh.seek(0)
            return _import_rows(record, fh, plan, started=started, seconds=seconds)
    except ImportRefused as exc:
        _import_finish(record, status=Import.Status.FAILED, error=" ".join(exc.messages))
        return False
    except FileNotFoundError:
        _import_finish(record, status=Import.Status.FAILED, error="The uploaded file is missing from storage.")
        return False


def _error_path(record: Import):
    return Path(settings.MEDIA_ROOT) / "imports" / "errors" / f"import-{record.pk}-errors.csv"


def _import_rows(record: Import, fh, plan, *, started: float, seconds: float) -> bool:
    batch_rows = settings.PUSHDESK_IMPORT_BATCH_ROWS
    replace = record.target == Import.Target.REPLACE_SEGMENT
    segment_id = record.segment_id if record.target != Import.Target.PROFILES else None
    errors = ErrorFile(_error_path(record), resume_at=record.error_bytes)
    seen: set[int] = set()  # hashes of external ids already read: duplicates are reported
    counters = {
        "done": record.rows_done,
        "imported": record.rows_imported,
        "failed": record.rows_failed,
        "duplicate": record.rows_duplicate,
    }
    position = 0
    batch = Batch()
    tz_names = _timezones()
    committer = _Committer(record, segment_id=segment_id, replace=replace)

    def commit() -> None:
        try:
            bytes_done = fh.tell()
        except (OSError, ValueError):
            bytes_done = record.bytes_done
        if committer.threaded:
            batch.prepare_copy()  # here, so the writer thread holds the GIL as little as possible
        committer.submit(batch, position=position, bytes_done=bytes_done, error_bytes=errors.tell(), **counters)

    try:
        for item in records(fh, encoding=record.encoding):
            position += 1
            if position <= record.position:
                if item.cells is not None and len(item.cells) > plan.id_index:
                    seen.add(hash(item.cells[plan.id_index].strip()))
                continue
            counters["done"] += 1
            parsed = parse_record(item, plan, timezones=tz_names)
            if isinstance(parsed, str):
                external_id = item.cells[plan.id_index] if item.cells and len(item.cells) > plan.id_index else ""
                errors.add(item.line, external_id, parsed)
                counters["failed"] += 1
            else:
                key = hash(parsed.external_id)
                if key in seen:
                    errors.add(
                        parsed.line,
                        parsed.external_id,
                        "duplicate external_id: an earlier row has it; this later row wins",
                    )
                    counters["duplicate"] += 1
                else:
                    seen.add(key)
                    counters["imported"] += 1
                batch.rows[parsed.external_id] = parsed
            if len(batch) >= batch_rows or counters["done"] % batch_rows == 0:
                commit()
                batch = Batch()
                if time.monotonic() - started > seconds:
                    committer.close()
                    _import_hand_over(record)
                    return True
        commit()
        committer.close()
    finally:
        committer.close(raise_error=False)
        errors.close()
    with transaction.atomic():
        if replace and record.segment_id:
            SegmentMember.objects.filter(segment_id=record.segment_id).exclude(source_import_id=record.pk).delete()
        has_errors = record.rows_failed or record.rows_duplicate
        if has_errors:
            record.error_file.name = str(_error_path(record).relative_to(settings.MEDIA_ROOT))
        _import_finish(record, status=Import.Status.DONE)
    return False


class _Committer:
    """Writes an import's batches, each in its own transaction with the progress that accounts for it.

    On PostgreSQL, outside a surrounding transaction, it writes from a second thread (its own
    connection) while the caller parses the next batch: the database and Python then work at
    the same time. Batches are written in order, one at a time; an error stops the import.
    """

    def __init__(self, record: Import, *, segment_id: int | None, replace: bool):
        self.record = record
        self.segment_id = segment_id
        self.replace = replace
        self.error: BaseException | None = None
        self.closed = False
        self.threaded = connection.vendor == "postgresql" and not connection.in_atomic_block
        if self.threaded:
            self.queue: queue.Queue = queue.Queue(maxsize=1)
            self.thread = threading.Thread(target=self._loop, name=f"import-{record.pk}-writer", daemon=True)
            self.thread.start()

    def submit(self, batch: Batch, **progress) -> None:
        if self.error is not None:
            raise self.error
        if self.threaded:
            self.queue.put((batch, progress))
        else:
            self._write(batch, **progress)

    def close(self, *, raise_error: bool = True) -> None:
        if self.threaded and not self.closed:
            self.closed = True
            self.queue.put(None)
            self.thread.join()
        if raise_error and self.error is not None:
            raise self.error

    def _loop(self) -> None:
        try:
            while (job := self.queue.get()) is not None:
                if self.error is None:
                    self._write(job[0], **job[1])
        except BaseException as exc:  # handed to the parsing thread, which raises it
            self.error = exc
            while self.queue.get() is not None:  # let the producer finish; nothing more is written
                pass
        finally:
            connection.close()

    def _write(self, batch: Batch, *, position, bytes_done, error_bytes, done, imported, failed, duplicate) -> None:
        record = self.record
        now = timezone.now()
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # A batch lost to a crash is redone on resume (its position commits with it), so
                # the import need not wait for each commit to reach the disk.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit = off")
            write_batch(batch, now=now, segment_id=self.segment_id, import_id=record.pk, replace=self.replace)
            record.position = position
            record.error_bytes = error_bytes
            record.rows_done = done
            record.rows_imported = imported
            record.rows_failed = failed
            record.rows_duplicate = duplicate
            record.bytes_done = min(bytes_done, record.size) if record.size else bytes_done
            record.heartbeat_at = now
            record.save(
                update_fields=[
                    "position",
                    "error_bytes",
                    "rows_done",
                    "rows_imported",
                    "rows_failed",
                    "rows_duplicate",
                    "bytes_done",
                    "heartbeat_at",
                ]
            )


def _import_hand_over(record: Import) -> None:
    with transaction.atomic():
        Import.objects.filter(pk=record.pk, status=Import.Status.RUNNING).update(status=Import.Status.QUEUED)
        transaction.on_commit(lambda: async_task("audiences.tasks.import_run", record.pk))


def _import_finish(record: Import, *, status: str, error: str = "") -> None:
    record.status = status
    record.error = error
    record.finished_at = timezone.now()
    if status == Import.Status.DONE:
        record.bytes_done = record.size
    record.save(update_fields=["status", "error", "finished_at", "bytes_done", "error_file"])
    audit(
        actor=None,
        action="import_finished" if status == Import.Status.DONE else "import_failed",
        obj=record,
        summary={
            "rows": record.rows_done,
            "imported": record.rows_imported,
            "failed": record.rows_failed,
            "duplicate": record.rows_duplicate,
            "error": error[:200],
        },
    )


def import_restart(*, import_id: int, by: User) -> Import:
    """Queue again an import whose worker stopped (no heartbeat for longer than a task may run).

    It resumes where its last committed batch ended. Raises ValidationError when the import is
    finished or still alive, PermissionDenied when ``by`` may not import.
    """
    _ensure_perm(by, "audiences.add_import", "Your role may not import profiles.")
    stale = timezone.now() - dt.timedelta(seconds=settings.Q_CLUSTER.get("timeout", 300) + 60)
    with transaction.atomic():
        record = Import.objects.select_for_update().get(pk=import_id)
        alive = record.status == Import.Status.RUNNING and record.heartbeat_at and record.heartbeat_at >= stale
        if record.status in (Import.Status.DONE, Import.Status.FAILED) or alive:
            raise ValidationError("Only an import whose worker stopped can be restarted.")
        record.status = Import.Status.QUEUED
        record.save(update_fields=["status"])
        audit(actor=by, action="import_restarted", obj=record)
        transaction.on_commit(lambda: async_task("audiences.tasks.import_run", record.pk))
    return record
