"""The buttons of objects with a lifecycle (campaigns, journeys), each POSTing to one transition view."""

import functools

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, router, transaction
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from accounts.admin.bases import drawn_for, page_answers, page_request
from accounts.form_tokens import (
    FORM_TOKEN_FIELD,
    FormTokenRefused,
    FormTokenUsed,
    form_token_done,
    form_token_issue,
    form_token_use,
)
from accounts.services import APPROVAL_MESSAGE_MAX, TransitionError


class LifecycleAdminMixin:
    """State-aware action buttons on an object's page, each POSTing to one transition view.

    Subclasses name the buttons the user may use now (``lifecycle_actions``) and what each does
    (``lifecycle_handlers``: name → callable; a callable may return ``(message, url)`` to say
    something else or go elsewhere). A refused step (TransitionError, ValidationError) comes back
    as an error message on the object's page; a role or access refusal is a 403 / 404. An object
    whose state locks it (``lifecycle_locked``) is read-only.
    """

    lifecycle_button_name = "lifecycle_action"
    # The actions that cannot be undone, or weigh as much: pressing one shows what it will do and asks
    # again (``lifecycle_consequences``); the transition is done only when that page's answer is posted.
    lifecycle_asked_again: tuple[str, ...] = ()
    # Of those, the ones another action undoes (a pause, a resume): asked again without saying it is final.
    lifecycle_undoable: tuple[str, ...] = ()
    # The action that acts once per page drawn (a test send: a double click must not send twice): the
    # page carries a one-time token (``accounts.form_tokens``) for its user, the action and the object,
    # used in the transaction of what it does; when the action is also asked again, the question
    # carries it instead, as a list action's (``asks_again(once=...)``), and each question drawn acts
    # once. Its handler returns ``(message, url, result_id)``; a press with a used token is answered
    # by ``lifecycle_sent_again``, one without a token of its own is refused, saying why, and the page
    # (or question) drawn again gives a new one.
    lifecycle_once: str = ""

    def _changeform_view(self, request, object_id, form_url, extra_context):
        # The add and change forms save through the object's services: a save they refuse
        # (ValidationError, TransitionError) comes back as an error message on the same page, as a
        # refused step does, and every write of the save is undone (the view's own transaction
        # would commit what came before the refusal).
        try:
            with transaction.atomic(using=router.db_for_write(self.model)):
                return super()._changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            self.message_user(request, " ".join(exc.messages), messages.ERROR)
        except TransitionError as exc:
            self.message_user(request, f"{exc} Your changes were not saved.", messages.ERROR)
        except PermissionDenied:
            # A form left open while the object moved on (a colleague submitted it for approval,
            # an approver decided, it finished): refused with the reason to whoever could change
            # the object in its earlier state. Anyone else gets Django's 403.
            obj = self.get_object(request, unquote(object_id)) if object_id is not None else None
            locked = self.lifecycle_locked(request, obj) if obj is not None else ""
            if not (locked and super().has_change_permission(request, obj)):
                raise
            self.message_user(request, f"{locked} Your changes were not saved.", messages.ERROR)
        return HttpResponseRedirect(request.path)

    # The service deleting one object (``delete(<model>_id=, by=)``), which locks it and reads its
    # state again: the list's delete action goes through it as the object's own delete page does.
    lifecycle_delete = None

    def delete_model(self, request, obj):
        if self.lifecycle_delete is None:
            return super().delete_model(request, obj)
        self.lifecycle_delete(**{f"{self.model._meta.model_name}_id": obj.pk}, by=request.user)
        return None

    def log_deletions(self, request, queryset):
        # The list's action: written with the deletion itself (``delete_queryset``), so that a refused
        # one leaves no record. An object's own delete page (a list of one) runs in its view's
        # transaction already.
        if self.lifecycle_delete is None or not isinstance(queryset, models.QuerySet):
            return super().log_deletions(request, queryset)
        request._lifecycle_deleting = True
        return None

    def delete_queryset(self, request, queryset):
        """The list's delete action: all or none, each object through its delete service, which locks
        it and reads its state again (one submitted for review since the permission check is
        refused, not deleted), and the admin's deletion records written in the same transaction."""
        if self.lifecycle_delete is None or not getattr(request, "_lifecycle_deleting", False):
            return super().delete_queryset(request, queryset)
        field = f"{self.model._meta.model_name}_id"
        with transaction.atomic(using=router.db_for_write(self.model)):
            ids = list(queryset.order_by("pk").values_list("pk", flat=True))
            super().log_deletions(request, self.model.objects.filter(pk__in=ids))
            for pk in ids:
                try:
                    self.lifecycle_delete(**{field: pk}, by=request.user)
                except TransitionError as exc:
                    raise PermissionDenied(f"{exc} Nothing was deleted.") from exc
        return None

    def lifecycle_locked(self, request, obj) -> str:
        """Why ``obj``'s state forbids changing it now ('' when it does not). The object's page is
        then read-only, and a form left open from before is refused with this reason."""
        return ""

    def has_change_permission(self, request, obj=None):
        if obj is not None and self.lifecycle_locked(request, obj):
            return False
        return super().has_change_permission(request, obj)

    def lifecycle_actions(self, user, obj, *, answers: dict | None = None) -> list[tuple[str, str]]:
        """The (action, label) buttons ``user`` may use on ``obj`` now; ``answers`` keeps the page's
        permission checks (``accounts.selectors.can``)."""
        raise NotImplementedError

    def lifecycle_handlers(self, request, object_id: int) -> dict:
        raise NotImplementedError

    def lifecycle_consequences(self, obj, action: str) -> list[str]:
        """What ``action`` (one of ``lifecycle_asked_again``) will do to ``obj`` as it stands, each a
        line of the page that asks again."""
        return []

    def _once_purpose(self) -> str:
        return f"{self.model._meta.label_lower}:{self.lifecycle_once}"

    def lifecycle_sent_again(self, request, use) -> str:
        """The message answering ``lifecycle_once`` pressed again with the token ``use`` used."""
        return f"This was done already, on {use.used_at:%Y-%m-%d %H:%M} UTC: nothing was done again."

    def _transition_url_name(self) -> str:
        opts = self.model._meta
        return f"{opts.app_label}_{opts.model_name}_transition"

    @admin.display(description="Actions")
    def lifecycle_buttons(self, obj):
        request = page_request()
        if obj is None or obj.pk is None or request is None:
            return "—"
        actions = self.lifecycle_actions(request.user, obj, answers=page_answers(request))
        if not actions:
            opts = self.model._meta
            if not request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}"):
                # The role, not the state: no state would give this reader a button.
                return f"Your role may view this {opts.verbose_name}, not act on it."
            return "Nothing you can do in this state."
        note = mark_safe("")  # noqa: S308 (empty)
        if any(name == "submit" for name, _ in actions):
            # Posted with the form by whichever button is pressed; Submit for review sends it along.
            note = format_html(
                '<label for="id_lifecycle_message">Note to the approvers (optional)</label>'
                '<textarea id="id_lifecycle_message" name="message" rows="2" cols="60" maxlength="{}" '
                'placeholder="What changed, why, anything to check"></textarea><br>',
                APPROVAL_MESSAGE_MAX,
            )
        if self.lifecycle_once not in self.lifecycle_asked_again and any(
            name == self.lifecycle_once for name, _ in actions
        ):
            token = form_token_issue(user=request.user, purpose=self._once_purpose(), subject=str(obj.pk))
            note += format_html('<input type="hidden" name="{}" value="{}">', FORM_TOKEN_FIELD, token)
        return note + format_html_join(
            " ",
            '<button type="submit" formaction="{}" formnovalidate class="button" name="{}" value="{}">{}</button>',
            (
                (
                    reverse(f"admin:{self._transition_url_name()}", args=[obj.pk, name]),
                    self.lifecycle_button_name,
                    name,
                    label,
                )
                for name, label in actions
            ),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return drawn_for(request, functools.partial(super().change_view, request, object_id, form_url, extra_context))

    def approval_of(self, obj):
        """``obj``'s current approval request (``approval_current``), read once per page: its
        Approval line and the warning of a request no one may decide both read it."""
        from accounts.selectors import approval_current

        if "_approval_current" not in obj.__dict__:
            obj.__dict__["_approval_current"] = approval_current(obj)
        return obj.__dict__["_approval_current"]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if request.method == "GET" and obj is not None and obj.pk is not None:
            self._warn_when_no_one_may_approve(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _warn_when_no_one_may_approve(self, request, obj) -> None:
        """While ``obj``'s request waits and no one may decide it (the stuck flag's reading), say what
        is missing, to its submitter (the page they land on when they submit it says it at once) and
        to an Administrator, who may fix it: it names the request's policies, not shown to others."""
        from accounts.selectors import approval_stuck_text, has_every_scope

        current = self.approval_of(obj)
        if current is None or current.status != current.Status.PENDING:
            return
        if current.requested_by_id != request.user.pk and not has_every_scope(request.user):
            return
        text = approval_stuck_text(current, reader=request.user)
        if text:
            self.message_user(request, text, messages.WARNING)

    def get_urls(self):
        return [
            path(
                "<int:object_id>/transition/<str:action>/",
                self.admin_site.admin_view(self.transition_view),
                name=self._transition_url_name(),
            ),
            *super().get_urls(),
        ]

    def transition_view(self, request, object_id, action):
        from accounts.services import TransitionError

        if request.method != "POST":
            raise Http404("Transitions are POSTed.")
        handlers = self.lifecycle_handlers(request, object_id)
        if action not in handlers:
            raise Http404("Unknown action.")
        opts = self.model._meta
        target = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id])
        if action in self.lifecycle_asked_again and request.POST.get("confirmed") != "yes":
            obj = self.get_object(request, unquote(str(object_id)))
            labels = dict(self.lifecycle_actions(request.user, obj)) if obj is not None else {}
            # Only to whom may press it now: anyone else is refused by the transition itself, as before.
            if action in labels:
                return self._asked_again(request, obj, action, labels[action], back_url=target)
        try:
            if action == self.lifecycle_once:
                outcome = self._once(request, object_id, handlers[action])
            else:
                outcome = handlers[action]()
        except FormTokenRefused as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(target)
        except FormTokenUsed as exc:
            self.message_user(request, self.lifecycle_sent_again(request, exc.use), messages.WARNING)
            return HttpResponseRedirect(target)
        except (TransitionError, ValidationError) as exc:
            self.message_user(request, " ".join(getattr(exc, "messages", [str(exc)])), messages.ERROR)
            return HttpResponseRedirect(target)
        message, url = outcome if isinstance(outcome, tuple) else (f"Done: {action.replace('_', ' ')}.", None)
        self.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(url or target)

    def _once(self, request, object_id, handler):
        """``handler`` run with the use of the page's one-time token, in one transaction: after it, so
        that a role or access refused answers as without a token (403, 404); a token refused or used
        already rolls back what the handler did."""
        with transaction.atomic(using=router.db_for_write(self.model)):
            message, url, result_id = handler()
            use = form_token_use(
                token=request.POST.get(FORM_TOKEN_FIELD, ""),
                user=request.user,
                purpose=self._once_purpose(),
                subject=str(object_id),
            )
            form_token_done(use, result_id=result_id)
        return message, url

    def _asked_again(self, request, obj, action: str, label: str, *, back_url: str):
        from django.template.response import TemplateResponse

        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "opts": opts,
            "object": obj,
            "title": f"{label} {opts.verbose_name} “{obj}”?",
            "question": f"{label} {opts.verbose_name} “{obj}”?"
            + ("" if action in self.lifecycle_undoable else " This cannot be undone."),
            "consequences": self.lifecycle_consequences(obj, action),
            "label": label,
            "action_url": request.get_full_path(),
            "back_url": back_url,
        }
        if action == self.lifecycle_once:
            context["form_token_field"] = FORM_TOKEN_FIELD
            context["form_token"] = form_token_issue(
                user=request.user, purpose=self._once_purpose(), subject=str(obj.pk)
            )
        return TemplateResponse(request, "admin/lifecycle_confirm.html", context)


def approval_text(request, *, time_zone: str, pending: str = "") -> str:
    """An object's Approval line from its current request (``approval_current``): who asked and when
    while it waits (``pending`` words it, e.g. a revision of something live), who decided and when
    once decided, with the decider's comment; times in ``time_zone``, named."""
    from config.zones import zoned

    if request is None:
        return "Not submitted yet."
    if request.status == request.Status.PENDING:
        when = zoned(request.requested_at, time_zone)
        return format_html("{}: asked by {} on {}", pending or request.get_status_display(), request.requested_by, when)
    decided = f" by {request.decided_by} on {zoned(request.decided_at, time_zone)}" if request.decided_by else ""
    comment = format_html(" — “{}”", request.comment) if request.comment else ""
    return format_html("{}{}{}", request.get_status_display(), decided, comment)
