"""The journeys API: the journeys a key's user may see, and each one's per-step counts (``read`` scope);
discarding a journey's draft, pausing and resuming it (``journeys`` scope)."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import AnswerSerializer
from accounts.pagination import ListQuery, QueryChoice, page_response, page_schema, query_params_valid, rows_matching
from accounts.services import TransitionError
from delivery.api import (
    ROWS_DELETED_HELP,
    Conflict,
    ConversionFiguresSerializer,
    ConversionGoalSerializer,
    RowsDeletedSerializer,
)
from delivery.reports import rows_deleted
from journeys.models import Journey, JourneyVersion
from journeys.selectors import (
    journey_for,
    journey_open_version,
    journey_shown_version,
    journeys_visible_to,
    version_dispatches,
    version_step_stats,
    version_totals,
)
from journeys.services.lifecycle import (
    journey_draft_discard,
    journey_pause,
    journey_resume,
    segments_unfrozen_text,
)

# A version's status as its journey stands: the last live version of a stopped or closed journey
# runs no one any more, and says so (the admin's "(was live)").
WAS_LIVE = "was_live"


class VersionOutSerializer(AnswerSerializer):
    entry_segment = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)
    status = serializers.SerializerMethodField(
        help_text="draft, in_review, live, retired, or was_live (the last live version of a stopped or closed journey)."
    )
    segments_unfrozen = serializers.SerializerMethodField(
        help_text="True when the version was approved before its segments were part of approvals: the segments it "
        "reads are used as they are now (an edit of one reaches it unapproved) until a new version is approved, "
        "which freezes them. False otherwise: a version approved since refuses a segment edited after its approval "
        "where it is read."
    )

    class Meta:
        model = JourneyVersion
        fields = (
            "number",
            "status",
            "entry_kind",
            "entry_segment",
            "entry_every_hours",
            "entry_event",
            "reentry",
            "reentry_wait_seconds",
            "exit_event",
            "graph",
            "live_at",
            "segments_unfrozen",
        )

    def get_segments_unfrozen(self, obj) -> bool:
        return bool(segments_unfrozen_text(obj))

    def get_status(self, obj) -> str:
        journey = self.context.get("journey") or obj.journey
        if obj.status == JourneyVersion.Status.LIVE and journey.status not in Journey.ON_AIR:
            return WAS_LIVE
        return obj.status


class JourneyOutSerializer(AnswerSerializer):
    app = serializers.PrimaryKeyRelatedField(read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    live_version = serializers.SerializerMethodField(
        help_text="The number of the version live now: null unless the journey is live or paused (paused, "
        "it is the version its resume runs)."
    )
    last_live_version = serializers.IntegerField(
        source="live_version.number",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="The number of the version that went live last: live now, or until the journey was stopped or closed.",
    )
    approved_name = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="The name the pushes of the version that went live last give their content (context.journey.name): "
        "the journey's name when that version was approved. A rename reaches the pushes with the next approved "
        "version (a rename opens one only when a push shows the name), so it may differ from `name`. Null before "
        "any approval.",
    )

    class Meta:
        model = Journey
        fields = (
            "id",
            "name",
            "approved_name",
            "app",
            "status",
            "paused_at",
            "live_version",
            "last_live_version",
            "owner",
            "created_at",
            "updated_at",
        )

    def get_live_version(self, obj) -> int | None:
        return obj.live_version.number if obj.live_version_id and obj.status in Journey.ON_AIR else None


class StepStatsSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField()
    entered = serializers.IntegerField()
    waiting = serializers.IntegerField()
    due = serializers.IntegerField()
    held = serializers.IntegerField(
        help_text="Of those inside here (waiting or due), the ones the journey's pause holds where they are."
    )
    pushed = serializers.IntegerField(
        help_text="Push steps: profiles that went through the step, its push made for them, a phone or not. What "
        "reached a phone is in `targeted`, `sent`, `accepted` and `skipped`: a profile without a phone, not opted in "
        "or over the frequency cap counts here and is skipped there."
    )
    failed = serializers.IntegerField()
    exited = serializers.IntegerField(
        help_text="Left the journey here: at an exit, on the exit event, when the journey stopped, or as the "
        "profile was deleted."
    )
    exit_event = serializers.IntegerField(help_text="Ended here by the exit event.")
    stopped = serializers.IntegerField(help_text="Ended here when the journey was stopped.")
    deleted = serializers.IntegerField(
        help_text="Ended here as the profile was deleted (counted, nothing of the profile kept)."
    )
    passed = serializers.DictField(child=serializers.IntegerField())
    targeted = serializers.IntegerField(help_text="Push steps: the rows its sends made.")
    sent = serializers.IntegerField(
        help_text="Push steps: handed to a provider (accepted, unknown, or refused once it had them)."
    )
    accepted = serializers.IntegerField()
    send_failed = serializers.IntegerField(
        help_text="Push steps: failed, refused by the provider or before a provider had them (see `reason`)."
    )
    skipped = serializers.DictField(
        child=serializers.IntegerField(), help_text="Push steps: rows skipped, by reason (no_device, not_opted_in…)."
    )
    unsent = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Push steps: profiles whose batch was stopped before it made any row, so nothing was sent to "
        "them, by why: journey_stopped (with the journey), batch_stopped (the batch itself).",
    )
    skipped_paused = serializers.IntegerField(
        help_text="The entry step of an event entry: profiles whose entry event came while the journey was "
        "paused (not entered)."
    )
    reads_skipped_paused = serializers.IntegerField(
        help_text="The entry step of a recurring segment entry: the segment's reads that fell due while the "
        "journey was paused (not made up for at its resume)."
    )
    skipped_not_live = serializers.IntegerField(
        help_text="The entry step of an event entry: profiles whose entry event, replayed late (its entry "
        "had failed), was stored before the journey took that event (not live then, or entering on another "
        "event), so it entered no one; and those whose events call read this version live just before a new "
        "version entering on another event replaced it."
    )
    conversions = ConversionFiguresSerializer(
        required=False, help_text="Push steps, when the journey names a conversion goal: its conversions."
    )


class JourneyDetailSerializer(JourneyOutSerializer):
    version = serializers.SerializerMethodField(
        help_text="The live version, else the newest. Its status is that of the version as the journey stands: "
        "draft, in_review, live, retired, or was_live (the last live version of a stopped or closed journey)."
    )
    draft_version = serializers.SerializerMethodField()
    enrollments = serializers.SerializerMethodField()
    steps = serializers.SerializerMethodField()
    conversion = ConversionGoalSerializer(source="*", read_only=True, allow_null=True)
    rows_deleted = serializers.SerializerMethodField(help_text=f"Of the shown version's sends: {ROWS_DELETED_HELP}")

    class Meta(JourneyOutSerializer.Meta):
        fields = (
            *JourneyOutSerializer.Meta.fields,
            "version",
            "draft_version",
            "enrollments",
            "steps",
            "conversion",
            "rows_deleted",
        )

    def _shown(self, obj):
        if not hasattr(obj, "_shown_version"):
            obj._shown_version = journey_shown_version(obj)
        return obj._shown_version

    @extend_schema_field(VersionOutSerializer(allow_null=True))
    def get_version(self, obj) -> dict | None:
        version = self._shown(obj)
        return VersionOutSerializer(version, context={"journey": obj}).data if version else None

    def get_draft_version(self, obj) -> dict | None:
        version = journey_open_version(obj)
        return {"number": version.number, "status": version.status} if version else None

    def get_enrollments(self, obj) -> dict:
        version = self._shown(obj)
        return version_totals(version) if version else {}

    @extend_schema_field(RowsDeletedSerializer(allow_null=True))
    def get_rows_deleted(self, obj) -> dict | None:
        version = self._shown(obj)
        return rows_deleted(version_dispatches(version)) if version else None

    @extend_schema_field(StepStatsSerializer(many=True))
    def get_steps(self, obj) -> list[dict]:
        version = self._shown(obj)
        if version is None:
            return []
        return [{"id": step_id, **counts} for step_id, counts in version_step_stats(version).items()]


class JourneyListQuery(ListQuery):
    status = QueryChoice(Journey.Status.values)


class JourneyListView(APIView):
    """The journeys this key's user may see, last updated first (a cursor walk: by id, newest first,
    as an update moves a journey to the top)."""

    required_scope = "read"

    @extend_schema(
        operation_id="journeys_list",
        parameters=[JourneyListQuery],
        responses=page_schema("PaginatedJourneyOutList", JourneyOutSerializer),
    )
    def get(self, request):
        query = query_params_valid(JourneyListQuery, request)
        journeys = journeys_visible_to(request.user).order_by("-updated_at", "-id")
        journeys = rows_matching(journeys, query, status="status")
        return page_response(request, self, journeys, JourneyOutSerializer, query=query)


class JourneyDetailView(APIView):
    """One journey: its shown version (live, else the newest), enrollments by status, and per-step counts."""

    required_scope = "read"

    @extend_schema(operation_id="journey_detail", responses=JourneyDetailSerializer)
    def get(self, request, journey_id: int):
        return Response(JourneyDetailSerializer(journey_for(request.user, journey_id)).data)


class JourneyDraftDiscardView(APIView):
    """Discard the draft version of a journey that went live: the journey goes back to its live
    version (or, stopped or closed, the one that was live), as it was before the edit.

    Needs the role's right to change journeys and access to the journey. Answers the journey as
    ``GET /api/v1/journeys/{id}/`` does.
    """

    required_scope = "journeys"

    @extend_schema(
        operation_id="journey_draft_discard",
        request=None,
        responses={
            200: JourneyDetailSerializer,
            409: OpenApiResponse(
                description="`conflict`: nothing to discard: the journey never went live (delete it instead), "
                "its new version is in review (cancel the request first), or it has no draft."
            ),
        },
    )
    def post(self, request, journey_id: int):
        try:
            journey_draft_discard(journey_id=journey_id, by=request.user)
        except TransitionError as exc:
            raise Conflict(str(exc)) from exc
        return Response(JourneyDetailSerializer(journey_for(request.user, journey_id)).data)


class _JourneyTransitionView(APIView):
    """A change of a journey's status through its service; the journey's answer as ``GET`` gives it."""

    required_scope = "journeys"
    conflict_code = "conflict"

    def transition(self, *, journey_id: int, by) -> None:
        raise NotImplementedError

    def post(self, request, journey_id: int):
        try:
            self.transition(journey_id=journey_id, by=request.user)
        except TransitionError as exc:
            raise Conflict(str(exc), code=self.conflict_code) from exc
        return Response(JourneyDetailSerializer(journey_for(request.user, journey_id)).data)


class JourneyPauseView(_JourneyTransitionView):
    """Pause a live journey: everyone inside is held where they are (no step runs, a wait that ends
    meanwhile goes on at the resume), its push steps start no new batch (one already made goes out
    as approved), and no one enters (entry events are counted on the entry step, ``skipped_paused``).

    Needs the role's right to pause journeys (Administrator, Approver, Manager) and access to the
    journey. Answers the journey as ``GET /api/v1/journeys/{id}/`` does.
    """

    conflict_code = "journey_not_live"

    @extend_schema(
        operation_id="journey_pause",
        request=None,
        responses={
            200: JourneyDetailSerializer,
            409: OpenApiResponse(description="`journey_not_live`: only a live journey can be paused."),
        },
    )
    def post(self, request, journey_id: int):
        return super().post(request, journey_id)

    def transition(self, *, journey_id: int, by) -> None:
        journey_pause(journey_id=journey_id, by=by)


class JourneyResumeView(_JourneyTransitionView):
    """Resume a paused journey on the same approved version, without a new approval: everyone held
    goes on from where they were (a wait that ended during the pause is due now; they run in due
    order), and entries are taken again; a recurring segment read skipped meanwhile is not made up for.

    Needs the role's right to pause journeys and access to the journey. Answers the journey as
    ``GET /api/v1/journeys/{id}/`` does.
    """

    conflict_code = "journey_not_paused"

    @extend_schema(
        operation_id="journey_resume",
        request=None,
        responses={
            200: JourneyDetailSerializer,
            409: OpenApiResponse(description="`journey_not_paused`: only a paused journey can be resumed."),
        },
    )
    def post(self, request, journey_id: int):
        return super().post(request, journey_id)

    def transition(self, *, journey_id: int, by) -> None:
        journey_resume(journey_id=journey_id, by=by)


urlpatterns = [
    path("journeys/", JourneyListView.as_view(), name="journey-list"),
    path("journeys/<int:journey_id>/", JourneyDetailView.as_view(), name="journey-detail"),
    path("journeys/<int:journey_id>/discard-draft/", JourneyDraftDiscardView.as_view(), name="journey-discard-draft"),
    path("journeys/<int:journey_id>/pause/", JourneyPauseView.as_view(), name="journey-pause"),
    path("journeys/<int:journey_id>/resume/", JourneyResumeView.as_view(), name="journey-resume"),
]
