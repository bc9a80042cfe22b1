"""Helpers the campaign tests share: variants set through the service, the admin change form's post,
and a revision moving a live campaign to another app."""

from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_submit, campaign_update
from campaigns.services.variants import VariantInput, campaign_variants_set
from delivery.models import PushContent


def revision_moving_to(campaign, app, *, by):
    """Edit the live ``campaign`` into ``app`` and submit the revision: it waits for approval, the
    approved version sending to the old app meanwhile."""
    theirs = PushContent.objects.create(app=app, name="Theirs", title="Words for the new app", body="There")
    campaign_update(campaign_id=campaign.pk, by=by, app=app, content=theirs)
    campaign_submit(campaign_id=campaign.pk, by=by)
    revision = Campaign.objects.get(pk=campaign.pk)
    assert revision.status == "live" and revision.has_pending_revision and revision.app_id == app.pk


def variants_set(campaign, by, contents, shares, holdout=0):
    """The campaign's variants, one per content with its share, set through the service."""
    return campaign_variants_set(
        campaign_id=campaign.pk,
        by=by,
        variants=[VariantInput(content_id=c.pk, share=s) for c, s in zip(contents, shares, strict=True)],
        holdout_share=holdout,
    )


def change_form(campaign, variants=(), holdout="", **fields):
    """What the admin's change form posts for ``campaign`` as it is, with ``variants`` as
    (content, share) pairs, the holdout, and ``fields`` over the rest."""
    data = {
        "name": campaign.name,
        "app": campaign.app_id,
        "kind": campaign.kind,
        "purpose": campaign.purpose,
        "segment": campaign.segment_id or "",
        "content": campaign.content_id,
        "schedule_kind": campaign.schedule_kind,
        "time_zone": campaign.time_zone,
        "missed_window_minutes": 60,
        "holdout_share": holdout,
        "occurrences-TOTAL_FORMS": 0,
        "occurrences-INITIAL_FORMS": 0,
        "variants-TOTAL_FORMS": len(variants),
        "variants-INITIAL_FORMS": 0,
        "variants-MIN_NUM_FORMS": 0,
        "variants-MAX_NUM_FORMS": 10,
    }
    for index, (content, share) in enumerate(variants):
        data[f"variants-{index}-content"] = content.pk
        data[f"variants-{index}-share"] = share
    return {**data, **fields}
