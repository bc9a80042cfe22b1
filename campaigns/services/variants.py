"""Content variants of a campaign (A/B/n) and its holdout: the one entry point that sets them.

A campaign with variants sends each profile one of 2–10 contents, by a hash of the profile and the
campaign (``delivery.variants``), in the shares set here; the holdout share gets nothing and is
the control group. Variant A is the campaign's own content. The approval covers every variant,
its share and the holdout (``Campaign.fingerprint``): setting them returns an approved campaign's
edit to review like any other edit.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from accounts.selectors import in_scope
from accounts.services import audit
from campaigns.models import Campaign, CampaignVariant, variant_label
from campaigns.services.lifecycle import campaign_context_check, lock_editable

MIN_VARIANTS = 2
MAX_VARIANTS = 10


@dataclass(frozen=True)
class VariantInput:
    """One variant as asked for: its content and its share of the audience, in percent."""

    content_id: int
    share: int


def variants_check(*, variants: list[VariantInput], holdout_share: int, app_id: int) -> None:
    """Check variants and holdout together; raises ValidationError naming the field and the rule.

    None at all (and no holdout) is a campaign with one content. Otherwise 2–10 variants of
    different contents of the campaign's app, each with a share of at least 1%, which with the
    holdout add up to 100%.
    """
    from delivery.models import PushContent

    if not 0 <= holdout_share < 100:
        raise ValidationError({"holdout_share": "The holdout is a percentage from 0 to 99."})
    if not variants:
        if holdout_share:
            raise ValidationError({"holdout_share": "A holdout needs variants: add at least two."})
        return
    if not MIN_VARIANTS <= len(variants) <= MAX_VARIANTS:
        raise ValidationError(
            {"variants": f"A campaign tests {MIN_VARIANTS} to {MAX_VARIANTS} variants, not {len(variants)}."}
        )
    for index, variant in enumerate(variants):
        if variant.share < 1:
            raise ValidationError({"variants": f"Variant {variant_label(index + 1)} needs a share of at least 1%."})
    ids = [v.content_id for v in variants]
    if len(set(ids)) != len(ids):
        raise ValidationError({"variants": "Each variant needs its own content: one is listed twice."})
    apps = dict(PushContent.objects.filter(pk__in=ids).values_list("pk", "app_id"))
    for index, content_id in enumerate(ids):
        if apps.get(content_id) != app_id:
            raise ValidationError(
                {"variants": f"The content of variant {variant_label(index + 1)} belongs to another app."}
            )
    total = sum(v.share for v in variants) + holdout_share
    if total != 100:
        raise ValidationError(
            {"variants": f"The variants' shares and the holdout add up to {total}%: they must add up to 100%."}
        )


def campaign_variants_set(
    *, campaign_id: int, by: User, variants: list[VariantInput], holdout_share: int = 0
) -> Campaign:
    """Replace a campaign's variants and holdout; an empty list makes it a one-content campaign again.

    Variant A becomes the campaign's content. Contents that are new to the campaign must be within
    ``by``'s access; a scheduled campaign's may not show a call's context (``campaign_context_check``).
    The same states as any edit allow it (a draft, or an approved campaign whose
    edit becomes a revision waiting for its own approval). Raises Http404 outside ``by``'s access,
    PermissionDenied when the role may not edit campaigns, TransitionError in another state,
    ValidationError naming the field and the rule broken.
    """
    from delivery.models import PushContent

    with transaction.atomic():
        campaign = lock_editable(campaign_id, by=by)
        variants_check(variants=variants, holdout_share=holdout_share, app_id=campaign.app_id)
        if campaign.winner_mode and not variants:
            raise ValidationError({"variants": "Winner mode needs variants: turn it off first."})
        if campaign.winner_mode and (campaign.winner_fallback_variant or 0) > len(variants):
            raise ValidationError(
                {"variants": "The default variant of winner mode's fallback would be gone: choose another first."}
            )
        before = [(v.content_id, v.share) for v in campaign.variant_list()]
        known = {content_id for content_id, _ in before} | {campaign.content_id}
        new = {v.content_id for v in variants} - known
        if new and in_scope(by, PushContent.objects.filter(pk__in=new)).count() != len(new):
            raise ValidationError({"variants": "Choose push contents you have access to."})
        after = [(v.content_id, v.share) for v in variants]
        if before == after and campaign.holdout_share == holdout_share:
            return campaign
        CampaignVariant.objects.filter(campaign=campaign).delete()
        CampaignVariant.objects.bulk_create(
            CampaignVariant(campaign=campaign, number=n, content_id=v.content_id, share=v.share)
            for n, v in enumerate(variants, start=1)
        )
        if variants:
            campaign.content_id = variants[0].content_id
        campaign_context_check(campaign, by=by)  # a variant's content may show a call's context
        campaign.holdout_share = holdout_share
        campaign.updated_at = timezone.now()
        campaign.save(update_fields=["content", "holdout_share", "updated_at"])
        revision = campaign.is_active and campaign.has_pending_revision
        audit(
            actor=by,
            action="campaign_revision_edited" if revision else "campaign_variants_set",
            obj=campaign,
            summary={
                "variants": [
                    {"variant": variant_label(n), "content": v.content_id, "share": v.share}
                    for n, v in enumerate(variants, start=1)
                ],
                "holdout_share": holdout_share,
            },
        )
    return campaign
