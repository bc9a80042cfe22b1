"""The delivery API: devices and opens from the mobile app (``ingest``), dispatch results (``read``)."""

from __future__ import annotations

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist
from django.http import Http404
from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from accounts.api import (
    INGEST_THROTTLED,
    AnswerSerializer,
    FieldNotFound,
    FieldRefused,
    JsonBooleanField,
    JsonCharField,
    JsonIntegerField,
)
from accounts.authentication import IngestRateLimited
from accounts.models import ApiKey
from accounts.pagination import (
    MAX_LIMIT,
    ListQuery,
    QueryChoice,
    QueryInteger,
    page_response,
    page_schema,
    query_params_valid,
    rows_matching,
)
from audiences.services.profiles import external_id_problem
from config.db import ROW_IDS
from delivery.models import Delivery, Device, Dispatch, Platform
from delivery.selectors import (
    apps_in_scope,
    deliveries_visible_to,
    dispatch_for,
    dispatch_named,
    dispatch_outcomes,
    dispatch_rows_visible,
    dispatch_rows_withheld,
    dispatches_visible_to,
    with_source_seen,
)
from delivery.services.apps import IdentitySecretUnreadable, IdentityUnverified, app_identity_verify
from delivery.services.devices import MARK_TEST_DEVICE, device_opt_in_set, device_register, device_unregister
from delivery.services.dispatches import dispatch_counted_now, dispatches_counted_now
from delivery.services.opens import AlreadyOpened, NotAccepted, delivery_open_report


class IdentitySecretUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "identity_secret_unreadable"
    default_detail = (
        "This app's identity secret cannot be decrypted by the server, so no identity_hash can be checked "
        "now: retry later (its administrator is told by the server's status)."
    )


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


# --- serializers ----------------------------------------------------------------------------------


class DeviceInSerializer(serializers.Serializer):
    app = JsonIntegerField(help_text="The app's id.")
    external_id = JsonCharField(max_length=255, trim_whitespace=False, help_text="The profile's id.")
    platform = serializers.ChoiceField(
        choices=Platform.choices, error_messages={"invalid_choice": "Unknown platform “{input}”; use ios or android."}
    )
    token = JsonCharField(
        max_length=512,
        allow_blank=True,
        trim_whitespace=False,
        help_text="The push token: for ios, APNs's hexadecimal device token (64 to 200 digits, in either case: it is "
        "kept in lowercase, so the same token in capitals is the same device); for android, FCM's registration token, "
        "kept as given (its case counts).",
    )
    push_enabled = JsonBooleanField(
        required=False,
        help_text="The phone's notification opt-in. Left out: true for a new token; a known one keeps its own.",
    )
    is_test = JsonBooleanField(
        required=False,
        help_text="A test device (it gets test sends, of drafts too): true only with a key of the test_devices scope "
        "(403 insufficient_scope otherwise) whose user is an Administrator (403 permission_denied otherwise). False "
        "unmarks a known token only with such a key: from any other (the key an app ships sends false at every "
        "registration) the token is registered and keeps its mark, which the answer's is_test says. Left out: false "
        "for a new token; a known one keeps its own (the flag an admin set).",
    )

    identity_hash = JsonCharField(
        required=False,
        max_length=64,
        trim_whitespace=False,
        help_text="The lowercase hex HMAC-SHA256 of external_id under the app's identity secret, computed by your "
        "backend and handed to the phone at sign-in. Required when the app requires identity verification and the "
        "key has neither the read nor the trigger scope (the key an app ships): missing, 400 naming identity_hash; "
        "wrong, 403 identity_unverified. A backend's key is not asked for it.",
    )

    def validate_external_id(self, value: str) -> str:
        """As a profile's: the profile is created with it (POST /api/v1/profiles/ checks it alike)."""
        if problem := external_id_problem(value):
            raise serializers.ValidationError(problem)
        return value


class DeviceRefSerializer(serializers.Serializer):
    app = JsonIntegerField()
    token = JsonCharField(
        max_length=512, trim_whitespace=False, help_text="The token as registered (an APNs token in either case)."
    )


class DeviceOptInSerializer(DeviceRefSerializer):
    push_enabled = JsonBooleanField()


class DeviceOutSerializer(AnswerSerializer):
    external_id = serializers.CharField(source="profile.external_id")

    class Meta:
        model = Device
        fields = (
            "id",
            "app",
            "external_id",
            "platform",
            "token",
            "push_enabled",
            "is_test",
            "active",
            "invalidated_at",
            "invalidated_reason",
            "last_registered_at",
        )


class SentBySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["campaign", "journey", "test"],
        help_text="campaign: a campaign's run or its API triggers' stream; journey: a journey's push step; "
        "test: a test send.",
    )
    campaign_id = serializers.IntegerField(
        allow_null=True, help_text="The campaign that sent it, or the one a test send tested (null: none)."
    )
    journey_id = serializers.IntegerField(
        allow_null=True, help_text="The journey whose version sent it (null to a reader who may not see it)."
    )
    journey_version = serializers.IntegerField(
        allow_null=True, help_text="That version's number (null to a reader who may not see it)."
    )
    name = serializers.CharField(
        allow_null=True,
        help_text="The campaign's or the journey's name, null to a reader who may not see it (or once it is deleted).",
    )


def dispatches_sent_by(dispatches: list[Dispatch]) -> dict[int, dict | None]:
    """What sent each of ``dispatches``, as its page's *Sent by* says it: the campaign, the journey
    version, or the campaign a test send tested (its context names it). Named only to a reader who
    may see it (``with_source_seen``'s ``source_seen``), by its id alone to the others, as the page
    says it by number. None for a send whose source is not kept. Two queries at most, whatever the
    number of dispatches."""
    campaign_of: dict[int, int | None] = {}
    version_ids = set()
    for dispatch in dispatches:
        campaign_of[dispatch.pk] = dispatch.campaign_sent_by
        if dispatch.kind == Dispatch.Kind.JOURNEY and dispatch.source_id is not None:
            version_ids.add(dispatch.source_id)
    seen = [d for d in dispatches if getattr(d, "source_seen", True)]
    campaign_ids = {campaign_of[d.pk] for d in seen} - {None}
    names = (
        dict(apps.get_model("campaigns", "Campaign").objects.filter(pk__in=campaign_ids).values_list("pk", "name"))
        if campaign_ids
        else {}
    )
    version_ids &= {d.source_id for d in seen}
    versions = (
        {
            row["pk"]: row
            for row in apps.get_model("journeys", "JourneyVersion")
            .objects.filter(pk__in=version_ids)
            .values("pk", "journey_id", "number", "journey__name")
        }
        if version_ids
        else {}
    )
    said: dict[int, dict | None] = {}
    for dispatch in dispatches:
        shown = getattr(dispatch, "source_seen", True)
        answer = {"campaign_id": None, "journey_id": None, "journey_version": None, "name": None}
        if dispatch.kind == Dispatch.Kind.JOURNEY:
            if dispatch.source_id is None:
                said[dispatch.pk] = None
                continue
            version = versions.get(dispatch.source_id) if shown else None
            if version is not None:
                answer.update(
                    journey_id=version["journey_id"], journey_version=version["number"], name=version["journey__name"]
                )
            said[dispatch.pk] = {"kind": "journey", **answer}
            continue
        campaign_id = campaign_of[dispatch.pk]
        if dispatch.kind != Dispatch.Kind.TEST and campaign_id is None:
            said[dispatch.pk] = None
            continue
        answer.update(campaign_id=campaign_id, name=names.get(campaign_id) if shown else None)
        said[dispatch.pk] = {"kind": "test" if dispatch.kind == Dispatch.Kind.TEST else "campaign", **answer}
    return said


class DispatchOutSerializer(AnswerSerializer):
    percent = serializers.FloatField(read_only=True)
    outcomes = serializers.SerializerMethodField()
    sent_by = serializers.SerializerMethodField(
        help_text="What sent it, as its page's Sent by says it: the campaign, the journey version, or the campaign "
        "a test send tested; named only to a reader who may see it. Null when what sent it is not kept."
    )
    time_zone = serializers.SerializerMethodField(
        help_text="The IANA zone the send renders its content's now in (its campaign's); "
        "UTC for a send that names none (a journey's, a test's, one made before sends named theirs). "
        "A send at each profile's local time renders it in each profile's own."
    )

    class Meta:
        model = Dispatch
        fields = (
            "id",
            "app",
            "kind",
            "source_id",
            "label",
            "status",
            "total",
            "accepted",
            "failed",
            "skipped",
            "unknown",
            "opened",
            "retries",
            "percent",
            "outcomes",
            "time_zone",
            "sent_by",
            "created_at",
            "started_at",
            "finished_at",
        )

    def to_representation(self, instance):
        data = super().to_representation(dispatch_counted_now(instance))  # an open stream's, summed now
        # The label names what sent it: to a reader who may not see that (``with_source_seen``), its number.
        data["label"] = dispatch_named(instance, seen=getattr(instance, "source_seen", True))
        return data

    def get_time_zone(self, obj) -> str:
        return obj.time_zone or "UTC"

    @extend_schema_field(SentBySerializer(allow_null=True))
    def get_sent_by(self, obj) -> dict | None:
        said = getattr(obj, "sent_by_said", None)  # a page's, read for all its dispatches at once
        return said[obj.pk] if said is not None else dispatches_sent_by([obj])[obj.pk]

    def get_outcomes(self, obj) -> list[dict]:
        return [
            {"status": row["status"], "reason": row["reason"], "count": row["count"]} for row in dispatch_outcomes(obj)
        ]


class DeliveryOutSerializer(AnswerSerializer):
    class Meta:
        model = Delivery
        fields = (
            "id",
            "device",
            "profile",
            "status",
            "reason",
            "variant",
            "provider_message_id",
            "attempts",
            "finished_at",
            "opened_at",
        )


class DeliveryDetailSerializer(AnswerSerializer):
    external_id = serializers.CharField(source="profile.external_id", allow_null=True, default=None)
    platform = serializers.ChoiceField(
        choices=Platform.choices, source="device.platform", allow_null=True, default=None, read_only=True
    )

    class Meta:
        model = Delivery
        fields = (
            "id",
            "dispatch",
            "device",
            "platform",
            "profile",
            "external_id",
            "status",
            "reason",
            "variant",
            "provider_message_id",
            "attempts",
            "queued_at",
            "held_until",
            "finished_at",
            "opened_at",
        )
        extra_kwargs = {"held_until": {"help_text": "When the quiet hours that held it back end (null: never held)."}}


class OpenInSerializer(serializers.Serializer):
    app = JsonIntegerField()
    delivery = JsonIntegerField(help_text="The delivery id the push carried (pushdesk.delivery).")
    token = JsonCharField(
        max_length=512,
        trim_whitespace=False,
        help_text="The push token of the phone the push reached, as the app registered it: the delivery must have "
        "been sent to it (404 otherwise).",
    )


# --- views ----------------------------------------------------------------------------------------------


def _app_in_scope(request, app_id: int) -> int:
    """The app a device or open is written for: it must be in the user's scope (``apps_in_scope``)."""
    if not apps_in_scope(request.user).filter(pk=app_id).exists():
        raise FieldNotFound(field="app", detail="No app with this id.")
    return app_id


# A key holding one of these is a backend's, trusted with any external id; a key without them (the
# key an app ships, public) proves the external id with identity_hash where the app requires it.
BACKEND_SCOPES = frozenset({ApiKey.Scope.READ, ApiKey.Scope.TRIGGER})


class DeviceRegisterView(IngestRateLimited, APIView):
    """Register a push token for a profile (created if new); registering a known token moves it.

    Where the app requires identity verification, a key with neither ``read`` nor ``trigger`` sends
    ``identity_hash`` (400 when missing, 403 ``identity_unverified`` when wrong)."""

    required_scope = "ingest"

    @extend_schema(
        operation_id="device_register",
        request=DeviceInSerializer,
        responses={
            201: DeviceOutSerializer,
            200: DeviceOutSerializer,  # a token it knew
            429: INGEST_THROTTLED,
            503: OpenApiResponse(
                description="`identity_secret_unreadable`: the app requires identity verification and the server "
                "cannot decrypt its identity secret (another PUSHDESK_ENCRYPTION_KEY); retry later."
            ),
        },
    )
    def post(self, request):
        data = DeviceInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if values.get("is_test") and ApiKey.Scope.TEST_DEVICES not in getattr(request.auth, "scopes", ()):
            # A key an app ships is public: with ingest alone, anyone's phone could make itself a test
            # device and be sent every draft's test, before any approval.
            raise exceptions.PermissionDenied(
                "is_test: a test device is registered only with a key of the 'test_devices' scope (a test device "
                "gets test sends of drafts not yet approved); an Administrator marks it in the admin (Devices → Mark "
                "as test devices), or registers it with such a key.",
                code="insufficient_scope",
            )
        if values.get("is_test") and not request.user.has_perm(MARK_TEST_DEVICE):
            # The scope is not enough: the key acts with its user's role (``device_register`` checks it too).
            raise FieldRefused(
                field="is_test",
                code="permission_denied",  # the role's, as every refusal for want of one
                detail="only an Administrator's key registers a test device (a test device gets test sends of "
                "content not yet approved).",
            )
        if values.get("is_test") is False and ApiKey.Scope.TEST_DEVICES not in getattr(request.auth, "scopes", ()):
            # Sent by apps at every registration: the mark an Administrator set stays (``device_register``
            # keeps it too for a user who may not mark), and the answer's is_test says so.
            del values["is_test"]
        app_id = _app_in_scope(request, values.pop("app"))
        identity_hash = values.pop("identity_hash", None)
        if not BACKEND_SCOPES.intersection(getattr(request.auth, "scopes", ())):
            try:
                app_identity_verify(app_id=app_id, external_id=values["external_id"], identity_hash=identity_hash)
            except IdentityUnverified:
                raise FieldRefused(
                    field="identity_hash",
                    code="identity_unverified",
                    detail="This is not the identity hash of this external id for this app: your backend computes "
                    "it as the HMAC-SHA256 of external_id under the app's identity secret (lowercase hex).",
                ) from None
            except IdentitySecretUnreadable:
                raise IdentitySecretUnavailable() from None
        device, created = device_register(app_id=app_id, by=request.user, **values)
        return Response(
            DeviceOutSerializer(device).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class DeviceOptInView(IngestRateLimited, APIView):
    """Record the phone's notification opt-in for a registered token."""

    required_scope = "ingest"

    @extend_schema(
        operation_id="device_opt_in",
        request=DeviceOptInSerializer,
        responses={200: DeviceOutSerializer, 429: INGEST_THROTTLED},
    )
    def post(self, request):
        data = DeviceOptInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        app_id = _app_in_scope(request, data.validated_data["app"])
        try:
            device = device_opt_in_set(
                app_id=app_id,
                token=data.validated_data["token"],
                push_enabled=data.validated_data["push_enabled"],
                by=request.user,
            )
        except Device.DoesNotExist as exc:
            raise FieldNotFound(field="token", detail="No device with this token for this app.") from exc
        return Response(DeviceOutSerializer(device).data)


class DeviceUnregisterView(IngestRateLimited, APIView):
    """Deactivate a token (logout, uninstall): it is not targeted again until registered anew."""

    required_scope = "ingest"

    @extend_schema(
        operation_id="device_unregister",
        request=DeviceRefSerializer,
        responses={200: DeviceOutSerializer, 429: INGEST_THROTTLED},
    )
    def post(self, request):
        data = DeviceRefSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        app_id = _app_in_scope(request, data.validated_data["app"])
        try:
            device = device_unregister(app_id=app_id, token=data.validated_data["token"], by=request.user)
        except Device.DoesNotExist as exc:
            raise FieldNotFound(field="token", detail="No device with this token for this app.") from exc
        return Response(DeviceOutSerializer(device).data)


class DispatchPageSerializer(serializers.ListSerializer):
    """A page of dispatches, its open streams' counters summed in one query, what sent them read
    in two at most (``dispatches_sent_by``)."""

    def to_representation(self, data):
        rows = dispatches_counted_now(list(data))
        said = dispatches_sent_by(rows)
        for row in rows:
            row.sent_by_said = said
        return super().to_representation(rows)


class DispatchListItemSerializer(DispatchOutSerializer):
    class Meta(DispatchOutSerializer.Meta):
        fields = tuple(f for f in DispatchOutSerializer.Meta.fields if f != "outcomes")
        list_serializer_class = DispatchPageSerializer


class DispatchListQuery(ListQuery):
    status = QueryChoice(Dispatch.Status.values)
    kind = QueryChoice(Dispatch.Kind.values)
    app = QueryInteger(required=False, min_value=1, max_value=ROW_IDS.stop - 1, help_text="The app's id.")


class DispatchListView(APIView):
    """The dispatches the key's user may see, newest first; filter by ``status``, ``kind`` and ``app``."""

    required_scope = "read"

    @extend_schema(
        operation_id="dispatches_list",
        parameters=[DispatchListQuery],
        responses=page_schema("PaginatedDispatchList", DispatchListItemSerializer),
    )
    def get(self, request):
        query = query_params_valid(DispatchListQuery, request)
        rows = with_source_seen(dispatches_visible_to(request.user).select_related(None), request.user)
        rows = rows_matching(rows, query, status="status", kind="kind", app="app_id")
        return page_response(request, self, rows.order_by("-id"), DispatchListItemSerializer, query=query)


class DispatchDetailView(APIView):
    """A dispatch's status, counters and outcomes by reason."""

    required_scope = "read"

    @extend_schema(operation_id="dispatch_detail", responses=DispatchOutSerializer)
    def get(self, request, dispatch_id: int):
        try:
            dispatch = with_source_seen(dispatches_visible_to(request.user), request.user).get(pk=dispatch_id)
        except Dispatch.DoesNotExist as exc:
            raise Http404 from exc
        return Response(DispatchOutSerializer(dispatch).data)


class DispatchDeliveriesQuery(serializers.Serializer):
    status = QueryChoice(Delivery.Status.values)
    after = QueryInteger(required=False, min_value=0, help_text="Return deliveries with a larger id.")
    limit = QueryInteger(
        required=False, min_value=1, max_value=MAX_LIMIT, help_text=f"Page size, 1 to {MAX_LIMIT} (default 100)."
    )


class DispatchDeliveriesView(APIView):
    """A dispatch's deliveries in id order, filterable by status; page with ``after`` (the last id
    seen), or follow ``next``. A walk by id neither skips nor repeats a row while sends change their
    statuses; rows a stream appends meanwhile come at its end. The rows are read with access to the
    dispatch's app, or a grant on the campaign or journey that sent it."""

    required_scope = "read"

    @extend_schema(
        operation_id="dispatch_deliveries",
        parameters=[DispatchDeliveriesQuery],
        responses={
            200: inline_serializer(
                "DeliveryPage",
                {
                    "results": DeliveryOutSerializer(many=True),
                    "next_after": serializers.IntegerField(
                        allow_null=True, help_text="The last id of a full page: the next page's after (else null)."
                    ),
                    "next": serializers.URLField(
                        allow_null=True, help_text="The next page's link: this one with that after."
                    ),
                },
            ),
            403: OpenApiResponse(
                description="`insufficient_scope`: the key lacks the scope; `permission_denied`: its user lacks the "
                "role, or it reads the dispatch through its campaign or journey, seen through another app (a live campaign a revision waiting for approval "
                "moves to the key's app): its counts, not its rows, which are the dispatch's app's."
            ),
        },
    )
    def get(self, request, dispatch_id: int):
        query = query_params_valid(DispatchDeliveriesQuery, request)
        try:
            dispatch = dispatch_for(request.user, dispatch_id)
        except Dispatch.DoesNotExist as exc:
            raise Http404 from exc
        if not dispatch_rows_visible(request.user, dispatch):
            raise exceptions.PermissionDenied(
                f"You may read this dispatch's counts, not its deliveries. {dispatch_rows_withheld(dispatch)}"
            )
        rows = dispatch.rows()
        if "status" in query:
            rows = rows.filter(status=query["status"])
        after, limit = min(query.get("after", 0), 2**63 - 1), query.get("limit", 100)
        page = list(rows.filter(id__gt=after).order_by("id")[:limit])
        next_after = page[-1].id if len(page) == limit else None
        return Response(
            {
                "results": DeliveryOutSerializer(page, many=True).data,
                "next_after": next_after,
                "next": None
                if next_after is None
                else replace_query_param(request.build_absolute_uri(), "after", next_after),
            }
        )


class DeliveryDetailView(APIView):
    """One delivery (e.g. one an API trigger answered with): its status, reason and provider id."""

    required_scope = "read"

    @extend_schema(operation_id="delivery_detail", responses=DeliveryDetailSerializer)
    def get(self, request, delivery_id: int):
        delivery = (
            deliveries_visible_to(request.user).select_related("device", "profile").filter(pk=delivery_id).first()
        )
        if delivery is None:
            raise Http404
        return Response(DeliveryDetailSerializer(delivery).data)


class OpenReportView(IngestRateLimited, APIView):
    """The app reports a tap on a push: sets the delivery's ``opened_at`` once (409 the second time)."""

    required_scope = "ingest"

    @extend_schema(
        operation_id="open_report",
        request=OpenInSerializer,
        responses={
            200: DeliveryOutSerializer,
            409: OpenApiResponse(
                description="`already_opened`: an open was already reported for this delivery; "
                "`not_accepted`: the delivery was not accepted by the provider, so it cannot have been opened."
            ),
            429: INGEST_THROTTLED,
        },
    )
    def post(self, request):
        data = OpenInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        app_id = _app_in_scope(request, data.validated_data["app"])
        try:
            delivery = delivery_open_report(
                delivery_id=data.validated_data["delivery"],
                app_id=app_id,
                token=data.validated_data["token"],
                by=request.user,
            )
        except ObjectDoesNotExist as exc:
            raise FieldNotFound(
                field="delivery", detail="No delivery with this id sent to this token of this app."
            ) from exc
        except AlreadyOpened as exc:
            raise Conflict("An open was already reported for this delivery.", code="already_opened") from exc
        except NotAccepted as exc:
            raise Conflict(exc.messages[0], code="not_accepted") from exc
        return Response(DeliveryOutSerializer(delivery).data)


urlpatterns = [
    path("devices/", DeviceRegisterView.as_view(), name="device-register"),
    path("devices/opt-in/", DeviceOptInView.as_view(), name="device-opt-in"),
    path("devices/unregister/", DeviceUnregisterView.as_view(), name="device-unregister"),
    path("dispatches/", DispatchListView.as_view(), name="dispatch-list"),
    path("dispatches/<int:dispatch_id>/", DispatchDetailView.as_view(), name="dispatch-detail"),
    path("dispatches/<int:dispatch_id>/deliveries/", DispatchDeliveriesView.as_view(), name="dispatch-deliveries"),
    path("deliveries/<int:delivery_id>/", DeliveryDetailView.as_view(), name="delivery-detail"),
    path("opens/", OpenReportView.as_view(), name="open-report"),
]


class ConversionGoalSerializer(serializers.Serializer):
    """A campaign's or journey's conversion goal (null: none); set in the admin."""

    event = serializers.CharField(source="conversion_event", help_text="The event that counts as a conversion.")
    where = serializers.ListField(
        source="conversion_where",
        child=serializers.DictField(),
        help_text="Property conditions on the event, as in a segment's event rule: {property, type, op, value}.",
    )
    window_hours = serializers.IntegerField(source="conversion_window_hours", help_text="Hours after the anchor.")
    anchor = serializers.ChoiceField(
        source="conversion_anchor", choices=["accepted", "opened"], help_text="Counted from acceptance or opening."
    )

    def to_representation(self, instance):
        return super().to_representation(instance) if instance.conversion_event else None


class RowsDeletedSerializer(serializers.Serializer):
    """Sends whose per-device rows retention deleted (PUSHDESK_RETENTION_DELIVERY_DAYS)."""

    sends = serializers.IntegerField(help_text="Sends whose per-device rows retention deleted.")
    last_finished_at = serializers.DateTimeField(help_text="When the latest of them finished.")


ROWS_DELETED_HELP = (
    "Sends whose per-device rows retention deleted (PUSHDESK_RETENTION_DELIVERY_DAYS): the totals count them, and "
    "so do the figures counted per profile (their profiles were kept), the conversions for the goal set when the "
    "rows went (a goal changed since counts the sends whose rows remain); null when none."
)


class ConversionFiguresSerializer(serializers.Serializer):
    reached = serializers.IntegerField(help_text="Profiles reached (accepted; for the holdout, held out).")
    conversions = serializers.IntegerField(help_text="Reached profiles that did the event within the window.")
    conversion_rate = serializers.FloatField(allow_null=True)
    rate_low = serializers.FloatField(allow_null=True, help_text="95% Wilson interval, lower bound.")
    rate_high = serializers.FloatField(allow_null=True, help_text="95% Wilson interval, upper bound.")


class UpliftFiguresSerializer(ConversionFiguresSerializer):
    variant = serializers.CharField()
    uplift = serializers.FloatField(
        allow_null=True, help_text="(rate − holdout's rate) / holdout's rate; null without a holdout or conversion."
    )
    difference = serializers.FloatField(allow_null=True, help_text="rate − holdout's rate.")
    difference_low = serializers.FloatField(allow_null=True, help_text="95% Newcombe interval of the difference.")
    difference_high = serializers.FloatField(allow_null=True)


class ConversionReportSerializer(serializers.Serializer):
    goal = serializers.DictField(help_text="The goal counted: event, where, window_hours, anchor.")
    overall = ConversionFiguresSerializer()
    variants = UpliftFiguresSerializer(many=True)
    holdout = ConversionFiguresSerializer(allow_null=True)
