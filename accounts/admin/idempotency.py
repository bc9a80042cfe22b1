"""The admin of the API's Idempotency-Key records (``accounts.idempotency``): read-only, big tables.

Administrators and Viewers read them (the roles table's ``read_idempotency``); nobody adds,
changes or deletes one here: retention deletes them (``PUSHDESK_RETENTION_IDEMPOTENCY_DAYS``).
The stored answers are never shown: an events call's answer names its profiles and echoes the
values it refused, personal data the record keeps only to replay it to its user's API keys. Who does
not read the API keys of others (all but Administrators) reads a trigger record of a campaign
they may see with another user's key unnamed, and the events calls of their own keys alone.
"""

import datetime as dt

from django.contrib import admin
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet, Value
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from accounts.admin.bases import BigTableAdmin, ReadOnlyAdminMixin, SinceFilter
from accounts.idempotency import CLAIM_ABANDONED_AFTER
from accounts.models import ApiKey, IdempotentRequest
from audiences.models import EventBulkRequest
from audiences.selectors import event_bulk_requests_visible_to
from campaigns.models import TriggerRequest
from campaigns.selectors import trigger_requests_visible_to


class AgeFilter(SinceFilter):
    """How long ago the call came, read through the index on ``created_at``."""

    title = "age"
    parameter_name = "age"
    SPANS = {
        "hour": ("in the last hour", dt.timedelta(hours=1)),
        "day": ("in the last 24 hours", dt.timedelta(days=1)),
        "week": ("in the last 7 days", dt.timedelta(days=7)),
    }
    older_label = "more than 7 days ago"


class IdempotentRequestAdmin(ReadOnlyAdminMixin, BigTableAdmin):
    """An endpoint's Idempotency-Key records: the key, the API key that sent it, whether its call
    answered and with which status code; never the answer itself."""

    list_display = ("created_at", "idempotency_key", "api_key_prefix", "state", "response_status")
    list_filter = (AgeFilter,)
    list_select_related = ("api_key",)
    search_fields = ("=idempotency_key",)
    search_help_text = "An Idempotency-Key, exactly as the client sent it."
    ordering = ("-created_at", "-id")
    sortable_by = ()
    actions = []
    fields = ("idempotency_key", "api_key_prefix", "state", "response_status", "body_hash", "created_at")
    readonly_fields = fields
    # Whose key sent a record is said only to whoever reads the keys of others: asked by a user's
    # id or a key's (``?user__id__exact=``), a list keeping or dropping a record it shows with
    # "another user's key" would say it, one id after another.
    withheld_fields = ("user", "api_key")

    def reads_withheld(self, request) -> bool:
        return request.user.has_perm("accounts.manage_others_apikey")

    def get_queryset(self, request):
        return self.records_visible_to(request.user).annotate(api_key_named=self._key_named(request.user))

    def lookup_allowed(self, lookup, value, request=None):
        """Refuse (400) a lookup on the stored answer, to everyone: the list never shows it, and
        asked letter by letter (``?response_body__icontains=j``) it spelt out what it holds."""
        if lookup.split(LOOKUP_SEP, 1)[0] == "response_body":
            return False
        return super().lookup_allowed(lookup, value, request)

    def records_visible_to(self, user) -> QuerySet:
        raise NotImplementedError

    @staticmethod
    def _key_named(user):
        """Whether the reader may be told the record's API key: their own, or anyone's for whoever
        reads the keys of others (``can_manage_api_keys_of``), judged in the list's one query."""
        if user.has_perm("accounts.manage_others_apikey"):
            return Value(True)
        return ExpressionWrapper(Q(api_key__user_id=user.pk), output_field=BooleanField())

    def get_search_results(self, request, queryset, search_term):
        key = search_term.strip()
        if not key:
            return queryset, False
        # Through the (user, Idempotency-Key) unique index, once per user owning a key: they are few.
        return queryset.filter(user__in=ApiKey.objects.values("user"), idempotency_key=key), False

    @admin.display(description="API key")
    def api_key_prefix(self, obj: IdempotentRequest) -> str:
        if not getattr(obj, "api_key_named", False):
            return "another user's key"
        return f"{obj.api_key.prefix}… {obj.api_key.name}"

    @admin.display(description="Status")
    def state(self, obj: IdempotentRequest) -> str:
        if obj.finished:
            return "answered (replayed to a call sent again with the key)"
        if timezone.now() - obj.created_at > CLAIM_ABANDONED_AFTER:
            return "abandoned (its call died unanswered: a call sent again runs)"
        return "running"


@admin.register(TriggerRequest)
class TriggerRequestAdmin(IdempotentRequestAdmin):
    list_display = (*IdempotentRequestAdmin.list_display, "campaign")
    list_select_related = ("api_key", "campaign")
    fields = (*IdempotentRequestAdmin.fields, "campaign", "dispatch")
    readonly_fields = fields

    def records_visible_to(self, user) -> QuerySet:
        return trigger_requests_visible_to(user)


@admin.register(EventBulkRequest)
class EventBulkRequestAdmin(IdempotentRequestAdmin):
    def records_visible_to(self, user) -> QuerySet:
        return event_bulk_requests_visible_to(user)
