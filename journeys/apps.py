from django.apps import AppConfig


class JourneysConfig(AppConfig):
    name = "journeys"
    verbose_name = "Journeys"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from accounts.approvals import ApprovalSubject, register_approval_subject
        from audiences.rules.validation import rules_tree_holders_register
        from audiences.services.events import event_listeners_register
        from audiences.services.profiles import profile_deletion_listeners_register, profile_row_readers_register
        from audiences.services.segments import segment_holders_register, segment_senders_register
        from config.zones import zoned
        from delivery.models import DeliveryRules, Dispatch
        from delivery.selectors import dispatch_source_readers_register
        from delivery.services.contents import pushcontent_holders_register, pushcontent_senders_register
        from delivery.services.dispatches import dispatch_gate_register
        from delivery.services.streams import stream_current_check_register, stream_recipients_check_register
        from journeys.models import Enrollment, Journey, JourneyVersion
        from journeys.review import journey_enters_now_text, journey_references, journey_review_html
        from journeys.selectors import (
            enrollments_in_scope,
            journey_versions_granted_to,
            journey_versions_visible_to,
            journeys_conditions_naming,
            journeys_reading_segments,
            journeys_rule_trees_naming,
            journeys_sending_contents,
            journeys_with_a_draft,
        )
        from journeys.services.engine import (
            JOURNEYS_STAMP,
            STREAM_RECIPIENTS_REFUSAL,
            STREAM_RECIPIENTS_SQL,
            journey_stream_is_current,
            journeys_changed,
        )
        from journeys.services.entries import journeys_on_events, journeys_profiles_deleting
        from journeys.services.lifecycle import (
            journey_approve,
            journey_changed_since_submitted,
            journey_gate,
            journey_read_mark,
            journey_request_changes,
        )

        for model in (Journey, JourneyVersion, DeliveryRules):
            post_save.connect(journeys_changed, sender=model, dispatch_uid=f"journeys.stamp.{model.__name__}")
            post_delete.connect(journeys_changed, sender=model, dispatch_uid=f"journeys.stamp.{model.__name__}.gone")
        dispatch_gate_register(kind=Dispatch.Kind.JOURNEY, gate=journey_gate)
        dispatch_source_readers_register(
            kind=Dispatch.Kind.JOURNEY, sources=journey_versions_visible_to, granted=journey_versions_granted_to
        )
        pushcontent_holders_register(journeys_sending_contents)
        pushcontent_senders_register(journeys_sending_contents)
        rules_tree_holders_register(journeys_rule_trees_naming)
        segment_holders_register(journeys_conditions_naming)
        segment_senders_register(journeys_reading_segments)
        stream_current_check_register(kind=Dispatch.Kind.JOURNEY, check=journey_stream_is_current)
        stream_recipients_check_register(
            kind=Dispatch.Kind.JOURNEY, condition=STREAM_RECIPIENTS_SQL, refusal=STREAM_RECIPIENTS_REFUSAL
        )
        event_listeners_register(journeys_on_events, stamps=(JOURNEYS_STAMP,))
        profile_deletion_listeners_register(journeys_profiles_deleting)
        profile_row_readers_register(model=Enrollment, rows=enrollments_in_scope)
        register_approval_subject(
            Journey,
            ApprovalSubject(
                review_html=journey_review_html,
                # by, comment, request_id, read_mark and send_confirmed, as the review passes them
                approve=lambda *, subject_id, **decision: journey_approve(journey_id=subject_id, **decision),
                read_mark=journey_read_mark,
                request_changes=lambda *, subject_id, by, comment, request_id=None: journey_request_changes(
                    journey_id=subject_id, by=by, comment=comment, request_id=request_id
                ),
                references=journey_references,
                referenced_models=frozenset({"delivery.app", "audiences.segment", "delivery.pushcontent"}),
                zoned=lambda journey, value: zoned(value, "UTC"),  # a journey has no zone of its own
                awaiting_author=journeys_with_a_draft,
                changed_since_submitted=journey_changed_since_submitted,
                sends_at_once=journey_enters_now_text,
            ),
        )
