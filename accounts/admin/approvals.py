"""The admin of approval policies and approval requests (the inbox and the review page)."""

import datetime as dt
import functools

from django import forms
from django.apps import apps as django_apps
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import capfirst

from accounts.admin.bases import (
    AccessAdmin,
    ReadableTextForm,
    ReadOnlyAdminMixin,
    drawn_for,
    linked_if_visible,
    page_request,
)
from accounts.approvals import approval_requests_sent_back, approval_subject_for, approvals_asked_at
from accounts.models import ApprovalPolicy, ApprovalRequest
from accounts.selectors import (
    approval_app_moves,
    approval_request_stuck,
    approval_requests_stuck_among,
    approval_requests_visible_to,
    approval_subjects,
    approval_subjects_hidden,
    approval_subjects_named,
    approvals_waiting_for,
    approver_standing,
    policy_approver_problems,
)
from accounts.services import (
    ApprovalError,
    SendNotConfirmed,
    TransitionError,
    approval_policy_activate,
    approval_policy_deactivate,
    audit,
)

CAMPAIGN_KINDS = (("scheduled", "Scheduled"), ("api_triggered", "API-triggered"))
# The Yes of the review's confirmation (``ApprovalRequestAdmin._send_confirmation``): an approval
# starting a send at once is made only by a post carrying it.
SEND_CONFIRMED = "_send_confirmed"
PURPOSES = (("marketing", "Marketing"), ("transactional", "Transactional"))


class ApprovalPolicyForm(forms.ModelForm):
    app_ids = forms.TypedMultipleChoiceField(
        coerce=int, required=False, label="Apps", help_text="Only objects of these apps (none chosen: any app)."
    )
    campaign_kinds = forms.MultipleChoiceField(
        choices=CAMPAIGN_KINDS, required=False, widget=forms.CheckboxSelectMultiple, help_text="None chosen: any kind."
    )
    purposes = forms.MultipleChoiceField(
        choices=PURPOSES, required=False, widget=forms.CheckboxSelectMultiple, help_text="None chosen: any purpose."
    )

    class Meta:
        model = ApprovalPolicy
        fields = (
            "name",
            "description",
            "applies_to_campaigns",
            "applies_to_journeys",
            "app_ids",
            "campaign_kinds",
            "purposes",
            "approver_users",
            "approver_groups",
            "block_self_approval",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        app_model = django_apps.get_model("delivery", "App")
        self.fields["app_ids"].choices = list(app_model.objects.order_by("name").values_list("pk", "name"))

    def clean(self):
        data = super().clean()
        if not (data.get("applies_to_campaigns") or data.get("applies_to_journeys")):
            raise ValidationError("A policy applies to campaigns, journeys, or both.")
        users, groups = data.get("approver_users") or [], data.get("approver_groups") or []
        if users or groups:
            problems = policy_approver_problems(
                users=users,
                groups=groups,
                app_ids=data.get("app_ids") or [],
                campaigns=bool(data.get("applies_to_campaigns")),
                journeys=bool(data.get("applies_to_journeys")),
            )
            if problems:
                raise ValidationError([*problems, "Requests routed to this policy could not be decided."])
        return data


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(AccessAdmin):
    form = ApprovalPolicyForm
    list_display = (
        "name",
        "is_active",
        "activated_at",
        "applies_to_campaigns",
        "applies_to_journeys",
        "block_self_approval",
    )
    filter_horizontal = ("approver_users", "approver_groups")
    actions = ["activate", "deactivate"]

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.is_active:
            return False  # an active policy is not edited: deactivate it first
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_active:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        audit(actor=request.user, action="approval_policy_changed" if change else "approval_policy_created", obj=obj)

    @admin.action(description="Activate selected policies", permissions=["change"])
    def activate(self, request, queryset):
        for policy in queryset:
            try:
                approval_policy_activate(policy_id=policy.pk, by=request.user)
            except ValidationError as exc:
                self.message_user(request, f"{policy}: {' '.join(exc.messages)}", messages.ERROR)
            else:
                self.message_user(
                    request, f"Activated “{policy}”: it routes the requests it matches.", messages.SUCCESS
                )

    @admin.action(description="Deactivate selected policies", permissions=["change"])
    def deactivate(self, request, queryset):
        for policy in queryset:
            approval_policy_deactivate(policy_id=policy.pk, by=request.user)
            self.message_user(
                request,
                f"Deactivated “{policy}”: new requests no longer go to it (pending ones keep their approvers).",
                messages.SUCCESS,
            )


class _InboxFilter(admin.SimpleListFilter):
    title = "show"
    parameter_name = "show"

    def lookups(self, request, model_admin):
        # Opens on what the user can act on: an approver on what waits for them, a requester (who
        # decides nothing) on their own requests, a Viewer (who does neither) on all they can see.
        if request.user.has_perm("accounts.decide_approvalrequest"):
            self.default = "mine_to_decide"
        elif request.user.has_perm("campaigns.change_campaign") or request.user.has_perm("journeys.change_journey"):
            self.default = "my_requests"
        else:
            self.default = "all"
        return (
            ("mine_to_decide", "Waiting for my approval"),
            ("my_requests", "My requests"),
            ("sent_back", "Sent back to me"),
            ("all", "All I can see"),
        )

    def choices(self, changelist):
        value = self.value() or self.default
        for lookup, title in self.lookup_choices:
            yield {
                "selected": value == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request, queryset):
        value = self.value() or self.default
        if value == "mine_to_decide":
            return queryset.filter(pk__in=[r.pk for r in approvals_waiting_for(request.user)])
        if value == "my_requests":
            return queryset.filter(requested_by=request.user)
        if value == "sent_back":  # as the home page's box lists them
            return approval_requests_sent_back(queryset.filter(requested_by=request.user))
        return queryset


class ApprovalDecisionForm(ReadableTextForm, forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)


def _moved_between(approval: ApprovalRequest, subject) -> tuple[str, str] | None:
    """The names of the two apps ``approval`` moves its ``subject`` between (``approval_app_moves``:
    a live campaign's revision moving it to another app), read by its review, whose reader may
    decide it and so has access to both; None for any other request."""
    move = approval_app_moves([approval], {approval.pk: subject}).get(approval.pk)
    if move is None:
        return None
    names = django_apps.get_model("delivery", "App").objects.in_bulk(list(move))
    return tuple(str(names[app_id]) if app_id in names else f"app #{app_id}" for app_id in move)


@admin.register(ApprovalRequest)
class ApprovalRequestAdmin(ReadOnlyAdminMixin, AccessAdmin):
    """The approvers' inbox ("Waiting for my approval") and the requesters' view of decisions."""

    list_display = (
        "what",
        "subject_kind",
        "state",
        "governed_by",
        "requested_by",
        "asked",
        "decided_by",
        "comment_said",
    )
    list_display_links = None
    show_facets = admin.ShowFacets.NEVER
    list_filter = (_InboxFilter, "status")
    list_select_related = ("requested_by", "decided_by", "subject_type")
    readonly_fields = (
        "subject_kind",
        "subject_said",
        "status",
        "message_said",
        "requested_by",
        "asked",
        "policy",
        "source_policy",
        "decided_by",
        "decided",
        "comment_said",
        "fingerprint",
    )
    fields = readonly_fields
    # The subject's name and copy kept with the request, and the words of its requester and approver
    # (which may name it or quote it): said by number, or withheld, to whoever no longer sees it.
    withheld_fields = ("subject_label", "snapshot", "message", "comment")
    # Sorted by the subject's name or the approver's words, which it may withhold.
    withheld_columns = ("what", "comment_said")

    def get_queryset(self, request):
        return approval_requests_visible_to(request.user)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None:
            page = list(changelist.result_list)
            stuck = approval_requests_stuck_among(page)
            subjects = approval_subjects(page)
            unruled = [obj for obj in page if not obj.policies]
            moves = approval_app_moves(unruled, subjects) if unruled else {}
            hidden = approval_subjects_hidden(request.user, page)
            named = approval_subjects_named(request.user, page, hidden=hidden)
            asked = approvals_asked_at(page, subjects=subjects)
            decided = approvals_asked_at(page, field="decided_at", subjects=subjects)
            for obj in page:
                obj.stuck = obj.pk in stuck
                obj.moves_app = obj.pk in moves
                obj.subject_named, obj.subject_hidden = named[obj.pk], obj.pk in hidden
                obj.asked_shown, obj.decided_shown = asked[obj.pk], decided[obj.pk]
        return response

    def get_urls(self):
        return [
            path(
                "<int:request_id>/review/",
                self.admin_site.admin_view(self.review_view),
                name="accounts_approvalrequest_review",
            ),
            *super().get_urls(),
        ]

    def get_object(self, request, object_id, from_field=None):
        """The request as its reader may read it: its subject named as they may see it now
        (``approval_subjects_named``), in the page's title and breadcrumbs too. Never saved: the
        requests are read-only here."""
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            hidden = approval_subjects_hidden(request.user, [obj])
            obj.subject_hidden = obj.pk in hidden
            obj.subject_named = obj.subject_label = approval_subjects_named(request.user, [obj], hidden=hidden)[obj.pk]
        return obj

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The reader, for the subject's link (``subject_said``).
        return drawn_for(request, functools.partial(super().change_view, request, object_id, form_url, extra_context))

    @admin.display(description="Subject")
    def subject_said(self, obj):
        """Its subject named and linked as its reader may see it (``linked_if_visible``), and while
        the request waits, the way to its review; a deleted subject's name, said so."""
        subject = obj.subject
        if subject is None:
            return f"{obj.subject_label} (deleted)"
        said = linked_if_visible(page_request(), subject)
        if obj.status != ApprovalRequest.Status.PENDING:
            return said
        review = reverse("admin:accounts_approvalrequest_review", args=[obj.pk])
        return format_html('{} · <a href="{}">Review</a>', said, review)

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No such approval request.")

    @admin.display(description="Status", ordering="status")
    def state(self, obj):
        stuck = getattr(obj, "stuck", None)  # the changelist's, found for its whole page at once
        if stuck is None:
            stuck = approval_request_stuck(obj)
        if stuck:
            return format_html(
                '<strong class="stuck">{}</strong>', "Stuck: nobody may decide it (ask an Administrator)"
            )
        return obj.get_status_display()

    @admin.display(description="Policies")
    def governed_by(self, obj):
        """Which policies name who decides: a move to another app is governed by both apps', and
        without one its approver still needs access to both (``approver_standings``)."""
        if obj.policies:
            return " and ".join(f"'{policy}'" for policy in obj.policies)
        moves_app = getattr(obj, "moves_app", None)  # the changelist's, found for its whole page at once
        if moves_app is None:
            moves_app = obj.pk in approval_app_moves([obj], approval_subjects([obj]))
        return "None: any Approver with access to both apps" if moves_app else "None: any Approver"

    @admin.display(description="Kind", ordering="subject_type")
    def subject_kind(self, obj):
        """What waits, in a word ("Campaign", "Journey"), not the name of its table."""
        model = obj.subject_type.model_class()
        return capfirst(model._meta.verbose_name) if model is not None else "—"

    # A time is shown in the zone it was entered in, named: a campaign's request in its campaign's
    # zone, a journey's (it has no zone) and a deleted subject's in UTC (``approvals_asked_at``).
    @admin.display(description="Requested at", ordering="requested_at")
    def asked(self, obj):
        shown = getattr(obj, "asked_shown", None)  # the changelist's, found for its whole page at once
        return shown if shown is not None else approvals_asked_at([obj])[obj.pk]

    @admin.display(description="Decided at", ordering="decided_at")
    def decided(self, obj):
        shown = getattr(obj, "decided_shown", None)  # the changelist's, found for its whole page at once
        return shown if shown is not None else approvals_asked_at([obj], field="decided_at")[obj.pk]

    def _withheld(self, obj, text: str) -> str:
        """``text`` (the requester's message, the approver's comment), which may name the request's
        subject or quote its copy, unless the reader may not see that subject now (the changelist's
        and ``get_object``'s ``subject_hidden``)."""
        if text and getattr(obj, "subject_hidden", False):
            return f"withheld: you no longer have access to {obj.subject_named}"
        return text

    @admin.display(description="Message")
    def message_said(self, obj):
        return self._withheld(obj, obj.message)

    @admin.display(description="Comment", ordering="comment")
    def comment_said(self, obj):
        return self._withheld(obj, obj.comment)

    @admin.display(description="What", ordering="subject_label")
    def what(self, obj):
        """Its subject named as the reader may see it now (``approval_subjects_named``, found for
        the changelist's whole page at once). Pending requests open the review (approvers decide
        there), unless it would show a subject the reader may not see; the others their record."""
        if obj.status == ApprovalRequest.Status.PENDING and not obj.subject_hidden:
            url = reverse("admin:accounts_approvalrequest_review", args=[obj.pk])
        else:
            url = reverse("admin:accounts_approvalrequest_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, obj.subject_named)

    def review_view(self, request, request_id):
        approval = self.get_queryset(request).filter(pk=request_id).first()
        if approval is None:
            raise Http404("No such approval request.")
        handler = approval_subject_for(approval.subject_type.model_class())
        if handler is None:
            raise Http404("Nothing can review this kind of object.")
        subject = approval.subject
        if subject is None:  # a draft deleted since it was reviewed: its record is what is left
            self.message_user(
                request,
                f"'{approval.subject_label}' was deleted since this request was made: nothing is left to review.",
                messages.WARNING,
            )
            return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_change", args=[approval.pk]))
        if approval_subjects_hidden(request.user, [approval]):  # its requester or decider, who lost access since
            named = approval_subjects_named(request.user, [approval])[approval.pk]
            self.message_user(request, f"You have no access to {named}: its review is not shown.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_change", args=[approval.pk]))
        allowed, reason = approver_standing(request.user, approval)
        if request.method == "POST" and not allowed:
            raise PermissionDenied(reason)
        decided = approval.status != ApprovalRequest.Status.PENDING
        if decided and allowed:
            # A decision sent from a page left open after it was decided (by this approver, or
            # another) changes nothing and says why, as the page now does.
            status = approval.get_status_display().lower()
            allowed, reason = False, f"This request is {status}: nothing is left to decide."
        form = ApprovalDecisionForm(request.POST or None)
        # Read before the review is drawn: a save landing while it is drawn makes the page show more
        # than the mark, and the approval is refused, never the other way round.
        read_mark = handler.read_mark(subject) if handler.read_mark is not None and allowed and not decided else ""
        # Changed since it was submitted: its approval would be refused; said before it is read. The
        # mark just read is the subject's fingerprint now: equal to the request's, nothing changed
        # (the usual case, without reading the subject again).
        changed = (
            allowed
            and not decided
            and handler.changed_since_submitted is not None
            and not (read_mark and read_mark == approval.fingerprint)
            and handler.changed_since_submitted(subject, approval)
        )
        if request.method == "POST" and not decided:
            if form.is_valid():
                comment = form.cleaned_data["comment"]
                try:
                    # The decision is on this request only: another submitted since is refused.
                    decision = {
                        "subject_id": subject.pk,
                        "by": request.user,
                        "comment": comment,
                        "request_id": approval.pk,
                    }
                    if "_approve" in request.POST:
                        # What the page the approver read was drawn from (its decision form posts it):
                        # the approval freezes that, or nothing. One that starts a send at once is
                        # asked first (``SendNotConfirmed``), its Yes posting all this again.
                        shown = request.POST.get("shown")
                        handler.approve(
                            **decision,
                            **({"read_mark": shown} if shown is not None else {}),
                            send_confirmed=SEND_CONFIRMED in request.POST,
                        )
                        self.message_user(request, f"Approved and activated: {subject}.", messages.SUCCESS)
                    elif "_request_changes" in request.POST:
                        handler.request_changes(**decision)
                        self.message_user(
                            request,
                            f"Changes requested on {subject}: the requester sees your comment.",
                            messages.SUCCESS,
                        )
                    else:
                        raise PermissionDenied("Choose approve or request changes.")
                except ValidationError as exc:
                    form.add_error(None, exc)
                except TransitionError as exc:  # decided, or its subject moved, since this request was read
                    form.add_error(None, str(exc))
                except ApprovalError as exc:  # closed, and its subject submitted again, since it was read
                    self.message_user(request, str(exc), messages.ERROR)
                    return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_changelist"))
                except SendNotConfirmed:  # nothing approved: the approver confirms first
                    return self._send_confirmation(request, approval, handler, subject)
                else:
                    return HttpResponseRedirect(reverse("admin:accounts_approvalrequest_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Review: {approval.subject_label}",
            "approval": approval,
            "asked_at": handler.zoned(subject, approval.requested_at) if handler.zoned else _utc(approval.requested_at),
            "review": handler.review_html(subject, request=approval, user=request.user),
            "form": form,
            "may_decide": allowed,
            "changed_since_submitted": changed,
            "read_mark": read_mark,
            "moved": _moved_between(approval, subject),
            "reason": reason,
        }
        return TemplateResponse(request, "admin/accounts/approvalrequest/review.html", context)

    def _send_confirmation(self, request, approval: ApprovalRequest, handler, subject) -> TemplateResponse:
        """The page asking an approver whose Approve and activate would start a send at once to
        confirm it: what starts (``ApprovalSubject.sends_at_once``), a Yes posting again all the
        review posted (its comment, the mark of what it showed, checked again) with the
        confirmation, and a No back to the review, which changes nothing."""
        carried = [
            (name, value)
            for name, values in request.POST.lists()
            if name not in ("csrfmiddlewaretoken", "_approve", SEND_CONFIRMED)
            for value in values
        ]
        starts = (
            handler.sends_at_once(subject, user=request.user)
            if handler.sends_at_once is not None
            else f"'{approval.subject_label}' starts sending now."
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Approve and send now? {approval.subject_label}",
            "approval": approval,
            "starts": starts,
            "carried": carried,
            "send_confirmed": SEND_CONFIRMED,
            "review_url": reverse("admin:accounts_approvalrequest_review", args=[approval.pk]),
        }
        return TemplateResponse(request, "admin/accounts/approvalrequest/confirm_send.html", context)


def _utc(value: dt.datetime | None) -> str:
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if value else "—"
