from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        from accounts.approvals import ApprovalSubject, register_approval_subject
        from audiences.services.segments import segment_senders_register
        from campaigns.models import Campaign
        from campaigns.review import campaign_references, campaign_review_html, campaign_sends_now_text
        from campaigns.selectors import (
            campaign_ids_granted_to,
            campaign_ids_visible_to,
            campaigns_sending_contents,
            campaigns_sending_to,
        )
        from campaigns.services.lifecycle import campaign_approve, campaign_request_changes
        from campaigns.services.scheduling import (
            campaign_api_gate,
            campaign_audience_check,
            campaign_dispatch_accepted_late,
            campaign_dispatch_refused,
            campaign_gate,
        )
        from campaigns.services.triggers import (
            campaign_changed,
            campaign_content_changed,
            campaign_rules_changed,
            campaign_stream_is_current,
        )
        from config.zones import zoned
        from delivery.models import Dispatch
        from delivery.selectors import dispatch_source_readers_register
        from delivery.services.contents import pushcontent_senders_register
        from delivery.services.dispatches import (
            dispatch_accepted_late_register,
            dispatch_audience_check_register,
            dispatch_gate_register,
        )
        from delivery.services.streams import stream_current_check_register

        segment_senders_register(campaigns_sending_to)
        pushcontent_senders_register(campaigns_sending_contents)
        dispatch_gate_register(kind=Dispatch.Kind.CAMPAIGN, gate=campaign_gate)
        dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=campaign_api_gate)
        dispatch_audience_check_register(
            kind=Dispatch.Kind.CAMPAIGN, check=campaign_audience_check, refused=campaign_dispatch_refused
        )
        dispatch_accepted_late_register(kind=Dispatch.Kind.CAMPAIGN, then=campaign_dispatch_accepted_late)
        stream_current_check_register(kind=Dispatch.Kind.API_TRIGGER, check=campaign_stream_is_current)
        # A campaign granted without its app shows its own sends; its test sends are its content's.
        for kind in (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER):
            dispatch_source_readers_register(
                kind=kind, sources=campaign_ids_visible_to, granted=campaign_ids_granted_to
            )

        from django.db.models.signals import post_delete, post_save

        from delivery.models import DeliveryRules, PushContent

        post_save.connect(campaign_changed, sender=Campaign, dispatch_uid="campaigns.stamp.campaign")
        post_save.connect(campaign_content_changed, sender=PushContent, dispatch_uid="campaigns.stamp.content")
        post_save.connect(campaign_rules_changed, sender=DeliveryRules, dispatch_uid="campaigns.stamp.rules")
        post_delete.connect(campaign_rules_changed, sender=DeliveryRules, dispatch_uid="campaigns.stamp.rules_gone")

        register_approval_subject(
            Campaign,
            ApprovalSubject(
                review_html=campaign_review_html,
                # by, comment, request_id, read_mark and send_confirmed, as the review passes them
                approve=lambda *, subject_id, **decision: campaign_approve(campaign_id=subject_id, **decision),
                read_mark=lambda campaign: campaign.fingerprint(),
                request_changes=lambda *, subject_id, by, comment, request_id=None: campaign_request_changes(
                    campaign_id=subject_id, by=by, comment=comment, request_id=request_id
                ),
                references=campaign_references,
                referenced_models=frozenset({"delivery.app", "audiences.segment", "delivery.pushcontent"}),
                zoned=lambda campaign, value: zoned(value, campaign.time_zone),
                changed_since_submitted=lambda campaign, request: not campaign.submitted_as(request.fingerprint),
                sends_at_once=campaign_sends_now_text,
            ),
        )
