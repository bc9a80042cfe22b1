from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns"

    def ready(self) -> None:
        from accounts.approvals import ApprovalSubject, register_approval_subject
        from campaigns.models import Campaign
        from campaigns.review import campaign_review_html
        from campaigns.services import campaign_api_gate, campaign_approve, campaign_gate, campaign_request_changes
        from delivery.models import Dispatch
        from delivery.services.dispatches import dispatch_gate_register

        dispatch_gate_register(kind=Dispatch.Kind.CAMPAIGN, gate=campaign_gate)
        dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=campaign_api_gate)

        register_approval_subject(
            Campaign,
            ApprovalSubject(
                review_html=campaign_review_html,
                approve=lambda *, subject_id, by, comment: campaign_approve(
                    campaign_id=subject_id, by=by, comment=comment
                ),
                request_changes=lambda *, subject_id, by, comment: campaign_request_changes(
                    campaign_id=subject_id, by=by, comment=comment
                ),
            ),
        )
