"""The admin of API keys: create (the key is shown once) and revoke."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import reverse

from accounts.admin.bases import AccessAdmin, asks_again
from accounts.form_tokens import (
    FORM_TOKEN_FIELD,
    FormTokenRefused,
    FormTokenUsed,
    form_token_done,
    form_token_issue,
    form_token_use,
)
from accounts.models import ApiKey
from accounts.selectors import (
    api_key_owner_choices,
    api_keys_visible_to,
)
from accounts.services import (
    api_key_create,
    api_key_revoke,
)

# What the add form's one-time token is drawn for (``accounts.form_tokens``).
ADD_PURPOSE = "accounts.apikey:add"


class ApiKeyAddForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple)
    # Read in the form's _post_clean, where it is used with the key's creation: never a field error.
    form_token = forms.CharField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = ApiKey
        fields = ("user", "name", "scopes", "expires_at")
        help_texts = {"expires_at": "In UTC (the server's zone). Empty: never expires."}


@admin.register(ApiKey)
class ApiKeyAdmin(AccessAdmin):
    empty_hint = (
        "No API key yet. Add one for a user (Add API key): its secret is shown once, when it is made. "
        "The key an app ships gets the ingest scope alone."
    )
    list_display = ("name", "user", "masked", "scope_list", "status", "created_at", "expires_at", "last_used_at")
    search_fields = ("name", "user__username", "prefix")
    actions = ["revoke_keys"]
    readonly_fields = (
        "masked",
        "user",
        "name",
        "scopes",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )

    def get_queryset(self, request):
        return api_keys_visible_to(request.user)

    def lookup_allowed(self, lookup, value, request=None):
        """Refuse (400) a lookup on a key's hash, to everyone: the admin never shows it, and asked
        letter by letter (``?key_hash__startswith=a``) the list spelt it out."""
        if lookup.split(LOOKUP_SEP, 1)[0] == "key_hash":
            return False
        return super().lookup_allowed(lookup, value, request)

    def get_form(self, request, obj=None, **kwargs):
        """The add form creates the key through the service while it validates, so the service's
        refusals of the input (an expiry in the past, a role that may not own keys) show on their
        fields with what was typed; a refusal of the person creating it stays a 403.

        It creates one key per form drawn: the key is made with the use of the form's one-time token,
        so the page showing the key reloaded (its form posted again) makes no second key and answers
        that the key was created (``render_change_form``); a form without a token of its own is drawn
        again saying so, with a new one."""
        if obj is not None:
            return super().get_form(request, obj, **kwargs)
        kwargs["form"] = ApiKeyAddForm
        form_class = super().get_form(request, obj, **kwargs)

        class CreatingForm(form_class):
            def _post_clean(self):
                super()._post_clean()
                if self.errors:
                    return
                data = self.cleaned_data
                try:
                    with transaction.atomic():
                        use = form_token_use(
                            token=self.data.get(FORM_TOKEN_FIELD, ""), user=request.user, purpose=ADD_PURPOSE
                        )
                        request._pushdesk_new_key = api_key_create(
                            user=data["user"],
                            name=data["name"],
                            scopes=data["scopes"],
                            expires_at=data.get("expires_at"),
                            by=request.user,
                        )
                        form_token_done(use, result_id=request._pushdesk_new_key[0].pk)
                except FormTokenRefused as exc:
                    self.add_error(None, str(exc))
                    self.data = self.data.copy()  # drawn again with a token of its own
                    self.data[FORM_TOKEN_FIELD] = form_token_issue(user=request.user, purpose=ADD_PURPOSE)
                except FormTokenUsed as exc:
                    request._pushdesk_key_sent_again = exc.use
                    self.add_error(None, "This form was sent already: the key was created.")
                except ValidationError as exc:
                    for field, errors in exc.message_dict.items():
                        self.add_error(field if field in self.fields else None, errors)

        return CreatingForm

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("user", "name", "scopes", "expires_at", FORM_TOKEN_FIELD)
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            # Only users whose role may own a key: never a Viewer or a user without a role.
            kwargs["queryset"] = api_key_owner_choices(request.user)
            if not request.user.has_perm("accounts.manage_others_apikey"):
                kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_changeform_initial_data(self, request):
        return {"user": request.user.pk, FORM_TOKEN_FIELD: form_token_issue(user=request.user, purpose=ADD_PURPOSE)}

    def has_change_permission(self, request, obj=None):
        return False  # keys are immutable; revoke and create a new one

    def has_delete_permission(self, request, obj=None):
        return False  # revoked keys stay for the record

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No API key with this id.")

    def save_model(self, request, obj, form, change):
        obj.pk = request._pushdesk_new_key[0].pk  # the service made it while the form validated

    def save_related(self, request, form, formsets, change):
        pass  # nothing related; the service saved everything

    def response_add(self, request, obj, post_url_continue=None):
        """The key shown once; "Save and add another" and "Save and continue editing" lead on from
        it (to a new form, to the key's page) rather than away from the only view of the secret."""
        key, raw = request._pushdesk_new_key
        then = None
        if "_addanother" in request.POST:
            then = (reverse("admin:accounts_apikey_add"), "Add another API key")
        elif "_continue" in request.POST:
            then = (reverse("admin:accounts_apikey_change", args=[key.pk]), "Open this key's page")
        return self._key_page(request, "admin/accounts/apikey/created.html", key=key, raw_key=raw, then=then)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        use = getattr(request, "_pushdesk_key_sent_again", None)
        if not add or use is None:
            return super().render_change_form(request, context, add, change, form_url, obj)
        key = api_keys_visible_to(request.user).filter(pk=use.result_id).first()
        return self._key_page(request, "admin/accounts/apikey/created_already.html", key=key, use=use)

    def _key_page(self, request, template: str, **context):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "API key created",
            **context,
        }
        response = TemplateResponse(request, template, context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.display(description="Key")
    def masked(self, obj):
        return f"pdk_{obj.prefix}_…"

    @admin.display(description="Scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes)

    @admin.action(description="Revoke selected API keys", permissions=["revoke_keys"])
    @asks_again(
        verb="Revoke",
        consequences=[
            "Every call made with them is refused from now on (401). A revoked key cannot be restored: "
            "the integrations using it need a new key."
        ],
    )
    def revoke_keys(self, request, queryset):
        for key in queryset:
            api_key_revoke(key_id=key.pk, by=request.user)
        revoked = queryset.count()
        self.message_user(request, f"{revoked} key{pluralize(revoked)} revoked.", messages.SUCCESS)

    def has_revoke_keys_permission(self, request):
        return request.user.has_perm("accounts.change_apikey")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions
