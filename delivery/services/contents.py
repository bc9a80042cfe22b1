"""Push content: validated save and the test send."""

from __future__ import annotations

import copy

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from accounts.models import User
from accounts.selectors import can, in_scope, uses_described
from accounts.services import access_grant, audit
from config.db import Holders
from delivery.models import App, Dispatch, PushContent
from delivery.payloads import data_shape_check, spec_authoring_check, spec_validate, variants_shape_check
from delivery.services.dispatches import dispatch_create


def sends_to_simulator(app_id: int | None) -> bool:
    """Whether the app sends to the push simulator (read alone: none of its credentials is needed)."""
    return App.objects.filter(pk=app_id, uses_simulator=True).exists()


def pushcontent_save(*, content: PushContent, by: User, uses_simulator: bool | None = None) -> PushContent:
    """Validate and save push content (new or changed); the creator gets access to it.

    Validation (``delivery.payloads.spec_validate``): templates parse and use known names,
    URLs use allowed schemes, options are valid, and every variant's worst-case payload fits
    APNs' and FCM's 4,096 bytes; then ``spec_authoring_check``: URLs a phone opens, one text per
    locale, an image over http on this machine only for an app that sends to the push simulator
    (``uses_simulator``, as the caller read it for the content's app: the admin form, which checked
    the content with it; read here when None). Raises ValidationError naming every wrong field at
    once (``pushcontent_check``), PermissionDenied when ``by`` may not write content for the app it
    sets (one granted the content alone keeps its app, which they may not name).
    """
    creating = content.pk is None
    perm = "delivery.add_pushcontent" if creating else "delivery.change_pushcontent"
    # The app must be one ``by`` may name when it is set now: a content granted without its app
    # keeps it, as saved, through its editor's changes.
    saved_app_id = (
        None if creating else PushContent.objects.filter(pk=content.pk).values_list("app_id", flat=True).first()
    )
    setting_app = creating or content.app_id != saved_app_id
    if not by.has_perm(perm) or (setting_app and not in_scope(by, App.objects.filter(pk=content.app_id)).exists()):
        raise PermissionDenied("You may not write push content for this app.")
    if not creating and not can(by, "delivery.change_pushcontent", content):
        raise PermissionDenied("You may not change this push content.")
    if uses_simulator is None:
        uses_simulator = sends_to_simulator(content.app_id)
    pushcontent_check(content=content, uses_simulator=uses_simulator)
    with transaction.atomic():
        content.updated_at = timezone.now()
        if creating:
            content.created_by = by
            content.save()
        else:
            locked = PushContent.objects.select_for_update().get(pk=content.pk)
            content.version = locked.version + 1
            content.save()
        audit(
            actor=by,
            action="pushcontent_created" if creating else "pushcontent_changed",
            obj=content,
            summary={"version": content.version},
        )
        if creating:
            access_grant(obj=content, to=by, by=None)
    return content


def pushcontent_check(*, content: PushContent, uses_simulator: bool) -> None:
    """Check content as ``pushcontent_save`` does, saving nothing: ``spec_validate`` and
    ``spec_authoring_check`` both, so one answer names every wrong field.

    Custom data or variants that are not objects of texts are refused first, alone: the texts are
    read from them. ``uses_simulator`` says whether the content's app sends to the push simulator.
    Raises ValidationError naming each wrong field by its path (``body``, ``variants.fr.title``).
    """
    spec = content.spec()
    errors: dict[str, list[str]] = {}

    def check(callable_, *args, **kwargs) -> None:
        try:
            callable_(*args, **kwargs)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)

    check(variants_shape_check, spec.get("variants") or {})
    check(data_shape_check, spec.get("data") or {})
    if errors:
        raise ValidationError(errors)
    check(spec_validate, spec)
    check(spec_authoring_check, spec, uses_simulator=uses_simulator)
    if errors:
        raise ValidationError(errors)


# Not copied: the copy is new content, at its first version, created now by whoever copies it.
_NOT_COPIED = {"id", "name", "version", "created_by", "created_at", "updated_at"}


def pushcontent_duplicate(*, content_id: int, by: User) -> PushContent:
    """A copy of push content named "<name> (copy)", created by ``by`` (who gets access to it).

    Raises Http404 when the content does not exist or is outside ``by``'s access, PermissionDenied
    when their role may not write content for its app.
    """
    source = in_scope(by, PushContent.objects.filter(pk=content_id)).first()
    if source is None:
        raise Http404(f"No push content {content_id}.")
    fields = {
        field.attname: copy.deepcopy(getattr(source, field.attname))
        for field in PushContent._meta.concrete_fields
        if field.name not in _NOT_COPIED
    }
    duplicate = PushContent(name=f"{source.name} (copy)"[:200], **fields)
    with transaction.atomic():
        pushcontent_save(content=duplicate, by=by)
        audit(actor=by, action="pushcontent_duplicated", obj=duplicate, summary={"from": source.pk})
    return duplicate


def pushcontent_test_send(
    *, content_id: int, by: User, context: dict | None = None, label: str | None = None, time_zone: str = ""
) -> Dispatch:
    """Send the content as it is now to its app's test devices (no approval needed), rendered with
    ``context``: what the sends it tests give it (a campaign's ``{"campaign": {"id", "name"}}``),
    its ``now`` in ``time_zone`` (a campaign's; "": UTC); ``label`` names the send (default:
    "Test of <content>").

    Raises GateClosed when ``by`` may not send tests of this content, ValidationError when the
    content is not sendable.
    """
    content = PushContent.objects.get(pk=content_id)
    return dispatch_create(
        app_id=content.app_id,
        kind=Dispatch.Kind.TEST,
        spec=content.spec(),
        by=by,
        content_id=content.pk,
        source_id=content.pk,
        label=label or f"Test of {content.name}",
        context=context or {},
        time_zone=time_zone,
    )


# What holds push content without a foreign key protecting it (a journey's steps name theirs in its
# graph): each, given content ids and the reader, says what may still send them (a line each);
# content said so is not deleted.
_CONTENT_HOLDERS = Holders()
pushcontent_holders_register = _CONTENT_HOLDERS.register


def pushcontent_uses_described(*, objects, by: User) -> list[str]:
    """What keeps push content from being deleted (a ProtectedError's objects: a campaign sending it,
    a variant of one), as ``by`` may be told: "the content of campaign 'X'", "variant B of campaign
    'Y'"; what they may not see, without its name. At most five."""

    def describe(obj):
        owner = getattr(obj, "campaign", None)  # a variant: its campaign
        if owner is None:
            return "the content of", obj, "the content of"
        return f"variant {obj.label} of", owner, "a variant of"

    return uses_described(objects, by=by, describe=describe, owner_field="campaign")


# What still to send sends push content (a campaign's content or variant, a journey's push step):
# each, given content ids and the reader, says what of it sends any of them (a line each). An edit
# of the content needs a new approval of each before it sends it again.
_CONTENT_SENDERS = Holders()
pushcontent_senders_register = _CONTENT_SENDERS.register


def pushcontent_senders(content_id: int, *, by: User | None) -> list[str]:
    """What still to send sends ``content_id``, said to ``by`` (``pushcontent_senders_register``)."""
    return _CONTENT_SENDERS({content_id}, by=by)


def pushcontent_holders(content_ids, *, by: User | None) -> list[str]:
    """What may still send any of ``content_ids`` besides a campaign (whose foreign key protects its
    content): a reason to keep them, said to ``by``. Empty when nothing does."""
    return _CONTENT_HOLDERS(content_ids, by=by)
