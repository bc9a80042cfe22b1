"""The campaigns API: list and detail with reports (``read``), and API triggers (``trigger``)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import path, reverse
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, Throttled
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import (
    AnswerSerializer,
    JsonBooleanField,
    JsonCharField,
    JsonIntegerChoiceField,
    JsonIntegerField,
    JsonObjectField,
)
from accounts.authentication import request_stamps
from accounts.idempotency import (
    IDEMPOTENCY_KEY_PARAMETER,
    IN_PROGRESS_ANSWER,
    KEY_REUSED_ANSWER,
    idempotency_key_read,
    idempotent_call_open,
    idempotent_replayed_header,
)
from accounts.json_values import TEXT_REFUSED, json_value_problem
from accounts.pagination import ListQuery, QueryChoice, page_response, page_schema, query_params_valid, rows_matching
from accounts.services import TransitionError
from campaigns.models import Campaign, CampaignVariant, TriggerRequest, WinnerTest, variant_label
from campaigns.reports import campaign_report, campaign_sends, report_named, sends_counted
from campaigns.selectors import campaign_for, campaigns_visible_to
from campaigns.services.triggers import (
    MAX_RECIPIENTS,
    TriggerRefused,
    campaign_trigger,
    campaign_trigger_allowed,
    trigger_rate_take,
    trigger_request_finish,
)
from campaigns.services.winner import MAX_WAIT_MINUTES, WinnerInput, campaign_winner_set
from delivery.api import (
    ROWS_DELETED_HELP,
    ConversionGoalSerializer,
    ConversionReportSerializer,
    RowsDeletedSerializer,
)


class CampaignVariantOutSerializer(AnswerSerializer):
    variant = serializers.CharField(source="label", read_only=True, help_text="A, B, C… in their order.")
    content = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = CampaignVariant
        fields = ("variant", "content", "share")


VARIANT_LETTERS = [variant_label(n) for n in range(1, 11)]


class WinnerSettingsSerializer(serializers.Serializer):
    """Winner mode's settings (``winner`` of a campaign: null when off)."""

    sample_share = serializers.IntegerField(help_text="The sample's percentage of the audience.")
    wait_minutes = serializers.IntegerField(help_text="How long after the sample is sent the winner is picked.")
    metric = serializers.ChoiceField(choices=Campaign.WinnerMetric.values)
    confidence = serializers.IntegerField(help_text="Percent: the two-proportion z-test's confidence.")
    fallback = serializers.ChoiceField(choices=Campaign.WinnerFallback.values)
    fallback_variant = serializers.ChoiceField(
        choices=VARIANT_LETTERS, allow_null=True, help_text="With the default_variant fallback: A, B…"
    )


def winner_settings_out(campaign: Campaign) -> dict | None:
    settings = campaign.winner_settings()
    if settings is None:
        return None
    settings = {name: settings[name] for name in WinnerSettingsSerializer().fields}
    number = settings["fallback_variant"]
    return {**settings, "fallback_variant": variant_label(number) if number else None}


class WinnerStatusSerializer(serializers.Serializer):
    outcome = serializers.ChoiceField(
        choices=["not_sent", *WinnerTest.Outcome.values],
        help_text="not_sent; waiting (for the pick); winner; fallback (no winner); cancelled (nothing sent to the rest).",
    )
    due_at = serializers.DateTimeField(allow_null=True, help_text="When the winner is (or was) picked.")
    picked_at = serializers.DateTimeField(allow_null=True)
    winner = serializers.CharField(allow_null=True, help_text="The variant the rest get; null: all variants.")
    metric = serializers.CharField()
    confidence = serializers.IntegerField()
    reason = serializers.CharField(help_text="Which rule applied, and why, with the numbers.")
    figures = serializers.ListField(
        child=inline_serializer(
            "WinnerFigures",
            {
                "variant": serializers.CharField(),
                "trials": serializers.IntegerField(help_text="Accepted pushes, or profiles reached."),
                "successes": serializers.IntegerField(help_text="Opened, or converted."),
                "rate": serializers.FloatField(allow_null=True),
            },
        )
    )
    comparisons = serializers.ListField(
        child=inline_serializer(
            "WinnerComparison",
            {
                "variant": serializers.CharField(help_text="The variant the best is compared with."),
                "z": serializers.FloatField(),
                "p": serializers.FloatField(help_text="Two-sided."),
                "significant": serializers.BooleanField(),
            },
        )
    )
    sample_dispatch = serializers.IntegerField(allow_null=True)
    remainder_dispatch = serializers.IntegerField(allow_null=True, help_text="The dispatch that sent the rest.")


def winner_status_out(campaign: Campaign) -> dict | None:
    """The winner test's state for the API: null when the campaign is not in winner mode, outcome
    ``not_sent`` with the settings and nothing else while no test has started."""
    try:
        test = campaign.winner_test  # joined by the list's query
    except WinnerTest.DoesNotExist:
        settings = campaign.winner_settings()
        if settings is None:
            return None
        return {
            "outcome": "not_sent",
            "due_at": None,
            "picked_at": None,
            "winner": None,
            "metric": settings["metric"],
            "confidence": settings["confidence"],
            "reason": "",
            "figures": [],
            "comparisons": [],
            "sample_dispatch": None,
            "remainder_dispatch": None,
        }
    return {
        "outcome": test.outcome,
        "due_at": test.due_at,
        "picked_at": test.picked_at,
        "winner": variant_label(test.winner) if test.winner else None,
        "metric": test.settings["metric"],
        "confidence": test.settings["confidence"],
        "reason": test.reason,
        "figures": [{k: f[k] for k in ("variant", "trials", "successes", "rate")} for f in test.figures],
        "comparisons": test.comparisons,
        "sample_dispatch": test.sample_dispatch_id,
        "remainder_dispatch": test.remainder_dispatch_id,
    }


class CampaignOutSerializer(AnswerSerializer):
    app = serializers.PrimaryKeyRelatedField(read_only=True)
    segment = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    content = serializers.PrimaryKeyRelatedField(read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    approved_name = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="The name its sends give their content (context.campaign.name): the approved version's, as it was "
        "approved. A rename reaches the sends with the next approval (a rename is a revision only when the content "
        "shows the name), so it may differ from `name`. Null before any approval.",
    )
    variants = CampaignVariantOutSerializer(
        many=True,
        read_only=True,
        help_text="The contents it tests (A/B/n), each with its share in percent; empty: one content for everyone.",
    )
    conversion = ConversionGoalSerializer(source="*", read_only=True, allow_null=True)
    winner = serializers.SerializerMethodField(help_text="Winner mode's settings; null when off.")
    winner_status = serializers.SerializerMethodField(
        help_text="Winner mode: waiting until due_at, the winner picked or the fallback (with the numbers), the rest's "
        "dispatch; null when off."
    )

    @extend_schema_field(WinnerSettingsSerializer(allow_null=True))
    def get_winner(self, campaign) -> dict | None:
        return winner_settings_out(campaign)

    @extend_schema_field(WinnerStatusSerializer(allow_null=True))
    def get_winner_status(self, campaign) -> dict | None:
        return WinnerStatusSerializer(found).data if (found := winner_status_out(campaign)) else None

    class Meta:
        model = Campaign
        fields = (
            "id",
            "name",
            "approved_name",
            "app",
            "kind",
            "purpose",
            "status",
            "segment",
            "content",
            "schedule_kind",
            "send_at",
            "time_zone",
            "recurrence",
            "cron",
            "ends_at",
            "at_local_time",
            "missed_window_minutes",
            "throttle_per_second",
            "variants",
            "holdout_share",
            "conversion",
            "winner",
            "winner_status",
            "next_occurrence_at",
            "activated_at",
            "owner",
            "created_at",
            "updated_at",
        )


class CampaignSendsPage(serializers.ListSerializer):
    """Sends (dispatches of a page), their rollups summed in one query."""

    def to_representation(self, data):
        return super().to_representation(sends_counted(data))


class CampaignSendSerializer(serializers.Serializer):
    """What one send of the campaign made (its rollup's figures)."""

    id = serializers.IntegerField()
    label = serializers.CharField()
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    targeted = serializers.IntegerField()
    accepted = serializers.IntegerField()
    opened = serializers.IntegerField()

    class Meta:
        list_serializer_class = CampaignSendsPage


REPORT_SENDS = 100  # the newest sends a report lists; the others are paged (``CampaignSendsView``)


class ReportSerializer(serializers.Serializer):
    targeted = serializers.IntegerField()
    accepted = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()
    unknown = serializers.IntegerField()
    pending = serializers.IntegerField()
    opened = serializers.IntegerField()
    open_rate = serializers.FloatField(allow_null=True)
    failed_by_reason = serializers.DictField(child=serializers.IntegerField())
    skipped_by_reason = serializers.DictField(child=serializers.IntegerField())
    dispatches = CampaignSendSerializer(
        many=True,
        help_text=f"The newest {REPORT_SENDS} sends (test sends excluded), newest first, each with what it made; "
        "the figures above count every send. The others: `dispatches_next`.",
    )
    dispatches_count = serializers.IntegerField(help_text="How many sends the campaign made, test sends excluded.")
    dispatches_next = serializers.URLField(
        allow_null=True,
        help_text="The paged list of every send (/api/v1/campaigns/{id}/dispatches/), at the first send the report "
        "does not list; null when it lists them all.",
    )
    variants = serializers.ListField(
        help_text="Per variant, over every dispatch: profiles, sent (to a provider), accepted, opened, open rate.",
        child=inline_serializer(
            "VariantReport",
            {
                "variant": serializers.CharField(),
                "content": serializers.CharField(),
                "share": serializers.IntegerField(allow_null=True),
                "profiles": serializers.IntegerField(),
                "sent": serializers.IntegerField(),
                "accepted": serializers.IntegerField(),
                "opened": serializers.IntegerField(),
                "open_rate": serializers.FloatField(allow_null=True),
            },
        ),
    )
    holdout = inline_serializer(
        "HoldoutReport",
        {"profiles": serializers.IntegerField(help_text="Profiles held out: they were sent nothing.")},
        allow_null=True,
    )
    conversions = ConversionReportSerializer(
        allow_null=True,
        help_text="With a conversion goal: overall, per variant with its uplift against the holdout, the holdout.",
    )
    winner = WinnerStatusSerializer(allow_null=True, help_text="Winner mode's status; null when off.")
    rows_deleted = RowsDeletedSerializer(allow_null=True, help_text=ROWS_DELETED_HELP)


class RecipientSerializer(serializers.Serializer):
    external_id = JsonCharField(max_length=255, trim_whitespace=False)
    context = JsonObjectField(
        required=False,
        default=dict,
        help_text="This recipient's own context.*, merged over the call's `context`: where both name a key, "
        "its keys win (one level deep: a key holding an object replaces the shared one whole).",
    )


class TriggerInSerializer(serializers.Serializer):
    recipients = serializers.ListField(
        child=RecipientSerializer(),
        min_length=1,
        max_length=MAX_RECIPIENTS,
        error_messages={
            "min_length": "Send at least one recipient.",
            "max_length": f"Send at most {MAX_RECIPIENTS} recipients a call.",
        },
    )
    context = JsonObjectField(required=False, default=dict, help_text="Shared by every recipient: context.*")


def _trigger_validated(body) -> dict | None:
    """The body as ``TriggerInSerializer`` validates it, or None when the serializer must look at it.

    A shortcut for the usual body (recipients with a text external id and an optional context
    object, an optional shared context), several times cheaper than DRF's nested fields. It
    accepts nothing the serializer refuses and returns what the serializer returns; anything else,
    every body with a problem included, goes through the serializer, which words the errors.
    """
    if type(body) is not dict:
        return None
    recipients, context = body.get("recipients"), body.get("context", {})
    if type(recipients) is not list or not 1 <= len(recipients) <= MAX_RECIPIENTS:
        return None
    if type(context) is not dict or json_value_problem(context) is not None:
        return None
    validated = []
    for item in recipients:
        if type(item) is not dict:
            return None
        external_id, own = item.get("external_id"), item.get("context", {})
        if type(external_id) is not str or not external_id.strip() or len(external_id) > 255:
            return None
        if TEXT_REFUSED.search(external_id) or type(own) is not dict or json_value_problem(own) is not None:
            return None
        validated.append({"external_id": external_id, "context": dict(own)})
    return {"recipients": validated, "context": dict(context)}


@extend_schema_serializer(deprecate_fields=["accepted"])
class TriggerOutSerializer(serializers.Serializer):
    dispatch = serializers.IntegerField(
        allow_null=True, help_text="The campaign's standing dispatch (one per approved version and UTC day)."
    )
    queued = serializers.IntegerField(
        help_text="Deliveries made to be sent (one per opted-in device), now or when quiet hours end; "
        "whether the provider accepted each is its delivery's status (GET /api/v1/deliveries/{id}/)."
    )
    accepted = serializers.IntegerField(
        help_text="Deprecated: the same count as `queued`, under its first name (it never meant accepted by "
        "the provider). Read `queued`; this goes in API v2."
    )
    problems = serializers.ListField(
        child=inline_serializer(
            "RecipientProblem",
            {
                "index": serializers.IntegerField(help_text="The recipient's position in `recipients`, from 0."),
                "external_id": serializers.CharField(),
                "code": serializers.CharField(
                    help_text="`unknown_profile`: no profile has this external id; `no_device`: it has no active "
                    "device for the campaign's app; `not_opted_in`: none of its devices for the app has opted in "
                    "to push; `duplicate`: listed twice in the call, sent once."
                ),
                "detail": serializers.CharField(),
            },
        )
    )
    deliveries = serializers.ListField(
        help_text="The deliveries this call created, for GET /api/v1/deliveries/{id}/.",
        child=inline_serializer(
            "TriggerDelivery",
            {
                "id": serializers.IntegerField(),
                "external_id": serializers.CharField(),
                "status": serializers.CharField(help_text="queued, or skipped with its reason."),
                "reason": serializers.CharField(),
            },
        ),
    )


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class Unprocessable(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "unprocessable"


class CampaignListQuery(ListQuery):
    status = QueryChoice(Campaign.Status.values)


class CampaignListView(APIView):
    """The campaigns the key's user may see, newest first; ``?status=`` filters."""

    required_scope = "read"

    @extend_schema(
        operation_id="campaigns_list",
        parameters=[CampaignListQuery],
        responses=page_schema("PaginatedCampaignOutList", CampaignOutSerializer),
    )
    def get(self, request):
        query = query_params_valid(CampaignListQuery, request)
        campaigns = (
            campaigns_visible_to(request.user)
            .select_related("winner_test")
            .prefetch_related("variants")
            .order_by("-id")
        )
        campaigns = rows_matching(campaigns, query, status="status")
        return page_response(request, self, campaigns, CampaignOutSerializer, query=query)


class CampaignDetailView(APIView):
    required_scope = "read"

    @extend_schema(operation_id="campaigns_detail", responses=CampaignOutSerializer)
    def get(self, request, campaign_id: int):
        return Response(CampaignOutSerializer(campaign_for(request.user, campaign_id)).data)


class CampaignReportView(APIView):
    required_scope = "read"

    @extend_schema(operation_id="campaigns_report", responses=ReportSerializer)
    def get(self, request, campaign_id: int):
        campaign = campaign_for(request.user, campaign_id)
        status_ = winner_status_out(campaign)
        sends = campaign_sends(campaign)
        shown = list(sends[:REPORT_SENDS])
        count = len(shown) if len(shown) < REPORT_SENDS else sends.count()
        rest = None
        if count > len(shown):
            url = reverse("api:campaign-dispatches", kwargs={"campaign_id": campaign.pk})
            rest = request.build_absolute_uri(f"{url}?offset={REPORT_SENDS}&limit={REPORT_SENDS}")
        return Response(
            {
                **report_named(campaign_report(campaign), reader=request.user),
                "dispatches": CampaignSendSerializer(shown, many=True).data,
                "dispatches_count": count,
                "dispatches_next": rest,
                "winner": WinnerStatusSerializer(status_).data if status_ else None,
            }
        )


class CampaignSendsView(APIView):
    """Every send of the campaign (test sends excluded), newest first, each with what it made, as the
    report lists its newest: paged by offset or by cursor."""

    required_scope = "read"

    @extend_schema(
        operation_id="campaigns_dispatches",
        parameters=[ListQuery],
        responses=page_schema("PaginatedCampaignSendList", CampaignSendSerializer),
    )
    def get(self, request, campaign_id: int):
        campaign = campaign_for(request.user, campaign_id)
        query = query_params_valid(ListQuery, request)
        return page_response(request, self, campaign_sends(campaign), CampaignSendSerializer, query=query)


class WinnerInSerializer(serializers.Serializer):
    winner_mode = JsonBooleanField(help_text="false: winner mode off (the other fields are then ignored).")
    sample_share = JsonIntegerField(required=False, default=20, min_value=1, max_value=99)
    wait_minutes = JsonIntegerField(required=False, default=120, min_value=0, max_value=MAX_WAIT_MINUTES)
    metric = serializers.ChoiceField(choices=Campaign.WinnerMetric.values, required=False, default="open_rate")
    confidence = JsonIntegerChoiceField(choices=[80, 90, 95, 99], required=False, default=95)
    fallback = serializers.ChoiceField(choices=Campaign.WinnerFallback.values, required=False, default="all_variants")
    fallback_variant = serializers.ChoiceField(choices=VARIANT_LETTERS, required=False, allow_null=True, default=None)


class CampaignWinnerView(APIView):
    """Set a campaign's winner mode (scheduled, one-off campaigns with variants; not API-triggered ones).

    An edit like any other: the approval covers the settings, so a scheduled or live campaign's change is
    a pending revision. Errors name the field (``winner_mode`` for an API-triggered campaign).
    """

    required_scope = "campaigns"

    @extend_schema(
        operation_id="campaigns_winner_set",
        request=WinnerInSerializer,
        responses={
            200: CampaignOutSerializer,
            409: OpenApiResponse(description="`conflict`: the campaign is in review or finished: it cannot be edited."),
        },
    )
    def put(self, request, campaign_id: int):
        data = WinnerInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        settings = None
        if values["winner_mode"]:
            letter = values["fallback_variant"]
            settings = WinnerInput(
                sample_share=values["sample_share"],
                wait_minutes=values["wait_minutes"],
                metric=values["metric"],
                confidence=int(values["confidence"]),
                fallback=values["fallback"],
                fallback_variant=VARIANT_LETTERS.index(letter) + 1 if letter else None,
            )
        try:
            campaign = campaign_winner_set(campaign_id=campaign_id, by=request.user, settings=settings)
        except TransitionError as exc:
            raise Conflict(str(exc)) from exc
        except DjangoValidationError as exc:
            # The service names the campaign's fields (winner_wait_minutes); the body names them without the prefix.
            errors = {
                (key if key == "winner_mode" else key.removeprefix("winner_")): value
                for key, value in exc.message_dict.items()
            }
            raise serializers.ValidationError(errors) from exc
        return Response(CampaignOutSerializer(campaign).data)


class CampaignTriggerView(APIView):
    """Send an API-triggered campaign to up to 1,000 recipients, each with an optional context.

    With an ``Idempotency-Key`` header, the same key and body replay the first answer; the same key
    with another body answers 422; a request still running answers 409.
    """

    required_scope = "trigger"

    def stamp_names(self, kwargs) -> list[str]:
        """The version stamps the authentication reads with the key's (see accounts.stamps)."""
        return [f"campaign:{kwargs.get('campaign_id')}"]

    def rate_limit(self) -> tuple[str, float]:
        """The per-key rate limit the authentication takes with the stamps: (bucket name, per second)."""
        return "trigger", settings.PUSHDESK_TRIGGER_RATE_PER_KEY

    @extend_schema(
        operation_id="campaigns_trigger",
        request=TriggerInSerializer,
        responses={
            202: TriggerOutSerializer,
            409: OpenApiResponse(
                description="`campaign_not_live`: the campaign has no live approved version; "
                "`not_api_triggered`: it is a scheduled campaign; "
                "`gate_closed`: it is being stopped or changed, try again; "
                "`content_refused`: its approved content no longer passes the send's checks (a URL scheme "
                "since taken off the settings, say): `detail` names the field and the rule; "
                f"{IN_PROGRESS_ANSWER}"
            ),
            422: OpenApiResponse(description=f"{KEY_REUSED_ANSWER.removesuffix('.')}, or to trigger another campaign."),
            429: OpenApiResponse(
                description="`throttled`: too many triggers from this key; retry after `Retry-After` seconds."
            ),
            503: OpenApiResponse(
                description="`instance_not_claimed`: this copy's database belongs to another instance "
                "(a restored copy, a staging clone), so it sends nothing until an operator runs "
                "`manage.py instance_claim`; `detail` says why. "
                "`credentials_undecryptable`: the campaign's app's credentials cannot be decrypted on this "
                "server (its encryption key is not the one they were stored under); nothing was queued."
            ),
        },
        parameters=[
            IDEMPOTENCY_KEY_PARAMETER,
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                response=[429],
                description="Seconds to wait before the key may trigger again.",
            ),
            idempotent_replayed_header(202),
        ],
    )
    def post(self, request, campaign_id: int):
        stamps = request_stamps(request)
        if stamps is not None and stamps.rate_granted is False:
            raise Throttled(wait=max(stamps.rate_wait, 0.001), detail="Too many triggers for this API key.")
        if stamps is None or stamps.rate_granted is None:
            wait = trigger_rate_take(api_key=request.auth)
            if wait is not None:
                raise Throttled(wait=wait, detail="Too many triggers for this API key.")
        idempotency_key = idempotency_key_read(request)
        record = None
        if idempotency_key:
            campaign_trigger_allowed(campaign_id=campaign_id, by=request.user, stamps=stamps)
            record, replayed = idempotent_call_open(
                request,
                TriggerRequest,
                idempotency_key=idempotency_key,
                other_use=lambda record: f"This Idempotency-Key was used to trigger campaign {record.campaign_id}.",
                campaign_id=campaign_id,
            )
            if replayed is not None:
                return replayed
        try:
            data = _trigger_validated(request.data)
            if data is None:
                serializer = TriggerInSerializer(data=request.data)
                serializer.is_valid(raise_exception=True)
                data = serializer.validated_data
            result = campaign_trigger(
                campaign_id=campaign_id,
                by=request.user,
                recipients=data["recipients"],
                context=data["context"],
                stamps=stamps,
                request_record=record,  # the answer is stored with the rows, in their transaction
            )
        except (serializers.ValidationError, TriggerRefused, DjangoValidationError) as exc:
            from accounts.api import api_exception_handler

            response = api_exception_handler(exc.as_api() if isinstance(exc, TriggerRefused) else exc, {"view": self})
            if record is not None:
                # An answer about the body is the body's for good: kept, and replayed. A refusal
                # by the campaign's state (409: not live yet, its approval changed) may not last:
                # the key is freed, so that the integrator's retry with it runs.
                kept = response.status_code in (400, 422)
                trigger_request_finish(
                    record=record, status_code=response.status_code if kept else None, body=response.data
                )
            return response
        except Exception:
            if record is not None:
                trigger_request_finish(record=record, status_code=None, body=None)  # kept once it has rows
            raise
        return Response(result.answer(), status=status.HTTP_202_ACCEPTED)


urlpatterns = [
    path("campaigns/", CampaignListView.as_view(), name="campaigns"),
    path("campaigns/<int:campaign_id>/", CampaignDetailView.as_view(), name="campaign"),
    path("campaigns/<int:campaign_id>/report/", CampaignReportView.as_view(), name="campaign-report"),
    path("campaigns/<int:campaign_id>/dispatches/", CampaignSendsView.as_view(), name="campaign-dispatches"),
    path("campaigns/<int:campaign_id>/winner/", CampaignWinnerView.as_view(), name="campaign-winner"),
    path("campaigns/<int:campaign_id>/trigger/", CampaignTriggerView.as_view(), name="campaign-trigger"),
]
