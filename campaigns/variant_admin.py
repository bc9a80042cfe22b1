"""The campaign page's variants: an inline of contents and shares, checked with the campaign's holdout.

The inline only collects and checks what the user typed; ``campaign_variants_set`` writes it
(``CampaignAdmin.save_related``), so the admin, the service and their rules are one.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from accounts.admin.bases import KeptChoiceField
from accounts.selectors import in_scope
from campaigns.models import Campaign, CampaignVariant
from campaigns.services.variants import MAX_VARIANTS, VariantInput, variants_check

VARIANTS_HELP = (
    "To test contents against each other, list 2 to 10 variants below, each a content of the campaign's app "
    "with its share of the audience; the holdout gets nothing (the control group). The shares and the "
    "holdout add up to 100%. Variant A becomes the campaign's content. A profile gets the same variant "
    "every time. No variants: one content for everyone."
)


class CampaignVariantFormSet(forms.BaseInlineFormSet):
    def variant_inputs(self) -> list[VariantInput]:
        """The variants as typed, in their order, without the rows marked for deletion or left empty."""
        inputs = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if not data or data.get("DELETE") or data.get("content") is None:
                continue
            inputs.append(VariantInput(content_id=data["content"].pk, share=data.get("share") or 0))
        return inputs

    def clean(self):
        super().clean()
        if any(form.errors for form in self.forms):
            return
        campaign = self.instance
        if campaign.app_id is None:
            return  # the campaign's own form says what is missing
        try:
            variants_check(
                variants=self.variant_inputs(), holdout_share=campaign.holdout_share or 0, app_id=campaign.app_id
            )
            from campaigns.winner_admin import winner_formset_check

            winner_formset_check(campaign, len(self.variant_inputs()))
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc


class CampaignVariantInline(admin.TabularInline):
    """Variants A, B, C… in their order: each a content of the campaign's app and its share (%)."""

    model = CampaignVariant
    formset = CampaignVariantFormSet
    fields = ("content", "share")
    extra = 0
    max_num = MAX_VARIANTS
    ordering = ("number",)
    verbose_name = "variant"
    verbose_name_plural = "Variants (A/B/n)"

    def get_queryset(self, request):
        # Each row is headed by its variant's name, which names its content.
        return super().get_queryset(request).select_related("content")

    def get_formset(self, request, obj=None, **kwargs):
        # The page posts its count of rows: never build more than a campaign holds (Django's
        # default builds up to a thousand more, each shown again with its error).
        kwargs.setdefault("absolute_max", MAX_VARIANTS)
        return super().get_formset(request, obj, **kwargs)

    def _campaign_admin(self):
        return self.admin_site._registry[Campaign]

    # Variants are part of the campaign: who may edit the campaign may edit them.
    def has_view_permission(self, request, obj=None):
        return self._campaign_admin().has_view_permission(request, obj)

    def has_add_permission(self, request, obj=None):
        if obj is None:
            return self._campaign_admin().has_add_permission(request)
        return self._campaign_admin().has_change_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self.has_add_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_add_permission(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "content":
            from delivery.models import PushContent

            # The contents the user may pick, and those the campaign already has (a colleague's).
            mine = in_scope(request.user, PushContent.objects.select_related("app"))
            object_id = (request.resolver_match.kwargs.get("object_id") if request.resolver_match else None) or ""
            kept = CampaignVariant.objects.filter(campaign_id=object_id if object_id.isdigit() else None)
            kwargs["queryset"] = mine | PushContent.objects.filter(pk__in=kept.values("content_id"))
            kwargs["form_class"] = KeptChoiceField  # one read for every row of the inline
            kwargs["label_fields"] = ("name",)  # PushContent.__str__
            field = super().formfield_for_foreignkey(db_field, request, **kwargs)
            field.reader = request.user  # a colleague's content they may not see: by number, not by name
            return field
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def variants_report_html(variants: list[dict], holdout: dict | None) -> str:
    """The report's table per variant (profiles, sent, accepted, opened, open rate) and the holdout's size."""
    if not variants:
        return ""
    rows = format_html_join(
        "",
        '<tr data-variant="{}"><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>'
        "<td>{}</td></tr>",
        [
            (
                v["variant"],
                v["variant"],
                v["content"],
                f"{v['share']}%" if v["share"] is not None else "—",
                v["profiles"],
                v["sent"],
                v["accepted"],
                v["opened"],
                f"{v['open_rate']:.1%}" if v["open_rate"] is not None else "—",
            )
            for v in variants
        ],
    )
    return format_html(
        '<table id="variant-report"><thead><tr><th>variant</th><th>content</th><th>share</th><th>profiles</th>'
        "<th>sent</th><th>accepted</th><th>opened</th><th>open rate</th></tr></thead>{}"
        '<tr data-variant="holdout"><th>holdout</th><td colspan="2">gets nothing</td><td>{}</td>'
        '<td colspan="4">—</td></tr></table>',
        rows,
        holdout["profiles"] if holdout else 0,
    )


def conversions_report_html(conversions: dict | None) -> str:
    """The report's conversions: all, each variant with its uplift against the holdout, the holdout."""
    from delivery.reports import conversions_html

    if not conversions:
        return ""
    rows = [("all", conversions["overall"])] + [(v["variant"], v) for v in conversions["variants"]]
    if conversions["holdout"]:
        rows.append(("holdout", conversions["holdout"]))
    return conversions_html(rows, conversions["goal"], table_id="campaign-conversions")
