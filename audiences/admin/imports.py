"""The admin of CSV imports: upload, progress, restart."""

from __future__ import annotations

import datetime as dt
import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat, pluralize
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from accounts.admin.bases import AccessAdmin, with_reader_sees
from audiences.imports import ErrorFile
from audiences.models import Import, Segment
from audiences.selectors import (
    imports_visible_to,
    segments_visible_to,
)
from audiences.services.imports import (
    ERROR_FILE_MISSING,
    IMPORT_ENDED,
    import_create,
    import_not_taken_up_since,
    import_restart,
    import_stalled_minutes,
)
from config import digits
from config.labels import numbered

# The failed rows an import's page lists; the others are in the error file, downloaded.
FAILED_ROWS_SHOWN = 20


class ImportAddForm(forms.ModelForm):
    segment = digits.ModelChoiceField(
        queryset=Segment.objects.none(),
        required=False,
        help_text="The static segment the rows are added to, or whose members they replace.",
    )
    columns_text = forms.CharField(
        label="Columns",
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 4, "placeholder": "age = number\nCustomer ID -> external_id\nnotes = skip"}
        ),
        help_text=(
            "Optional, one per line: <code>column = type</code> (auto, string, number, boolean, date, skip) or "
            "<code>column -&gt; name</code> or <code>column -&gt; name : type</code>. Other columns become attributes "
            "with inferred types; the external_id column is required."
        ),
    )

    class Meta:
        model = Import
        fields = ("file", "encoding", "target", "segment", "segment_name")
        # The fields of the target chosen (pushdesk/fields_by_choice.js): a segment named for a new
        # one, picked for one added to or replaced.
        widgets = {
            "target": forms.Select(
                attrs={
                    "data-shows": json.dumps(
                        {
                            Import.Target.PROFILES: [],
                            Import.Target.NEW_SEGMENT: ["segment_name"],
                            Import.Target.ADD_TO_SEGMENT: ["segment"],
                            Import.Target.REPLACE_SEGMENT: ["segment"],
                        }
                    )
                }
            )
        }

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.created: Import | None = None
        self.fields["segment"].queryset = segments_visible_to(user, perm="audiences.change_segment").filter(
            kind=Segment.Kind.STATIC
        )

    def clean_columns_text(self):
        mapping: dict = {}
        for number, line in enumerate((self.cleaned_data.get("columns_text") or "").splitlines(), start=1):
            if not line.strip():
                continue
            if "->" in line:
                column, _, rest = line.partition("->")
                name, _, kind = rest.partition(":")
                spec = {"to": name.strip()}
                if kind.strip():
                    spec["type"] = kind.strip()
            elif "=" in line:
                column, _, kind = line.partition("=")
                spec = {"type": kind.strip()}
            else:
                raise ValidationError(f"Line {number}: write 'column = type' or 'column -> name'.")
            mapping[column.strip()] = spec
        return mapping

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            self.created = import_create(
                upload=data["file"],
                by=self.user,
                encoding=data.get("encoding") or "utf-8",
                columns=data.get("columns_text") or {},
                target=data.get("target") or Import.Target.PROFILES,
                segment_id=data["segment"].pk if data.get("segment") else None,
                segment_name=data.get("segment_name") or "",
            )
        except ValidationError as exc:
            raise ValidationError(exc.messages) from exc
        except Http404 as exc:
            raise ValidationError("You may not change that segment.") from exc
        return data


@admin.register(Import)
class ImportAdmin(AccessAdmin):
    empty_hint = "Upload a CSV file of profiles (Add import), or POST one to /api/v1/imports/."
    list_display = (
        "__str__",
        "status",
        "progress_bar",
        "rows_done",
        "rows_failed",
        "segment_shown",
        "created_by",
        "created_at",
    )
    list_filter = ("status", "target")
    # The name typed for the new segment: ``segment_shown`` says it by number to whoever no longer sees it.
    withheld_fields = ("segment_name",)
    withheld_columns = ("segment_shown",)  # sorted by the segment's name, which it may withhold
    list_select_related = ("segment", "created_by")
    actions = ["restart_imports"]
    readonly_fields = (
        "progress",
        "status",
        "original_name",
        "size_shown",
        "encoding",
        "separator",
        "target",
        "segment_shown",
        "waiting_for_text",
        "columns_shown",
        "rows_done",
        "rows_imported",
        "rows_failed",
        "rows_duplicate",
        "members_removed",
        "note",
        "error",
        "error_file_link",
        "failed_rows",
        "created_by",
        "uploaded_with",
        "created_at",
        "started_at",
        "run_started_at",
        "finished_at",
    )

    class Media:
        js = ["audiences/import_progress.js", "audiences/import_mapping.js", "pushdesk/fields_by_choice.js"]
        css = {"all": ["audiences/rule_builder.css"]}

    def get_queryset(self, request):
        # One's own import may feed a segment one no longer sees: it is said by number (``segment_shown``).
        return with_reader_sees(
            imports_visible_to(request.user).select_related("created_by_key"),
            request.user,
            field="segment_id",
            model=Segment,
        )

    @admin.display(description="Columns")
    def columns_shown(self, obj):
        """The columns' mapping as it was typed on the upload form, one per line ("age = number",
        "Customer ID -> external_id"); the file's other columns became attributes of inferred types."""
        if not obj.columns:
            return "—"
        lines = []
        for column, spec in obj.columns.items():
            spec = spec or {}
            if spec.get("to"):
                line = f"{column} -> {spec['to']}" + (f" : {spec['type']}" if spec.get("type") else "")
            else:
                line = f"{column} = {spec.get('type') or 'auto'}"
            lines.append(line)
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines))

    @admin.display(description="Size")
    def size_shown(self, obj):
        """The file's size in words a person reads ("2.1 KB"), with its exact count of bytes; under
        a kilobyte the words are the count ("241 bytes")."""
        if obj.size < 1024:
            return filesizeformat(obj.size)
        return f"{filesizeformat(obj.size)} ({obj.size:,} bytes)"

    @admin.display(description="Segment", ordering="segment__name")
    def segment_shown(self, obj):
        """The segment it feeds, named to a reader who may see it, "segment #12" to the others."""
        if obj.segment_id is None:
            return "—"
        return obj.segment.name if getattr(obj, "reader_sees", False) else numbered("segment", obj.segment_id)

    @admin.display(description="Uploaded with")
    def uploaded_with(self, obj):
        """The API key that uploaded the file (its name and prefix, never the key), or the admin."""
        return str(obj.created_by_key) if obj.created_by_key_id else "the admin (no API key)"

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            user = request.user

            class BoundForm(ImportAddForm):
                def __init__(self, *args, **kw):
                    kw["user"] = user
                    super().__init__(*args, **kw)

            return self.form_reading_text(request, BoundForm)
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("file", "encoding", "target", "segment", "segment_name", "columns_text")
        return self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        obj.pk = form.created.pk

    def save_related(self, request, form, formsets, change):
        pass

    def response_add(self, request, obj, post_url_continue=None):
        self.message_user(request, "The import is queued; its progress shows below.", messages.SUCCESS)
        return redirect(reverse("admin:audiences_import_change", args=[obj.pk]))

    def _get_obj_does_not_exist_redirect(self, request, opts, object_id):
        raise Http404("No import with this id.")

    @admin.display(description="Progress")
    def progress_bar(self, obj):
        return format_html('<progress max="100" value="{}"></progress> {}%', obj.percent, obj.percent)

    @admin.display(description="Progress")
    def progress(self, obj):
        url = reverse("admin:audiences_import_status", args=[obj.pk])
        return format_html(
            '<div class="import-progress" data-status-url="{}" data-status="{}">'
            '<progress max="100" value="{}"></progress> <span class="import-progress-text">{}</span></div>',
            url,
            obj.status,
            obj.percent,
            _progress_text(obj),
        )

    @admin.display(description="Waiting for")
    def waiting_for_text(self, obj):
        """The import this queued one waits for: its number only (it may be someone else's)."""
        if obj.status != Import.Status.QUEUED or not obj.waiting_for_id:
            return "—"
        if Import.objects.filter(pk=obj.waiting_for_id, status__in=IMPORT_ENDED).exists():
            return f"import #{obj.waiting_for_id} into the same segment has ended: this one waits for a worker"
        return f"import #{obj.waiting_for_id} into the same segment: this one runs once it has finished"

    @admin.display(description="Error file")
    def error_file_link(self, obj):
        if not obj.error_file:
            return "—"
        url = reverse("admin:audiences_import_errors", args=[obj.pk])
        # The file lists the rows that repeated an earlier row's id too (applied over it, counted apart).
        what = "the rows that failed or repeated an id" if obj.rows_duplicate else "the rows that failed"
        return format_html('<a href="{}">Download {} (CSV)</a>', url, what)

    @admin.display(description="Rows that failed or repeated an id")
    def failed_rows(self, obj):
        """The error file's first rows (line, external_id, reason), then how many more its download
        holds: those that failed and those that repeated an id, as the file lists them."""
        if not obj.error_file:
            return "—"
        try:
            with ErrorFile.open_committed(obj) as fh:
                rows = ErrorFile.first_rows(fh, FAILED_ROWS_SHOWN)
        except FileNotFoundError:
            return ERROR_FILE_MISSING
        if not rows:
            return "—"
        more = obj.rows_failed + obj.rows_duplicate - len(rows)
        url = reverse("admin:audiences_import_errors", args=[obj.pk])
        return format_html(
            '<table class="import-failed-rows"><tr><th>line</th><th>external_id</th><th>reason</th></tr>{}</table>{}',
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((line, Truncator(external_id).chars(60) or "—", reason) for line, external_id, reason in rows),
            ),
            format_html('<p>and {} more: <a href="{}">download the whole file</a></p>', f"{more:,}", url)
            if more > 0
            else "",
        )

    def get_urls(self):
        return [
            path(
                "<int:object_id>/status/", self.admin_site.admin_view(self.status_view), name="audiences_import_status"
            ),
            path(
                "<int:object_id>/errors/", self.admin_site.admin_view(self.errors_view), name="audiences_import_errors"
            ),
            *super().get_urls(),
        ]

    def status_view(self, request, object_id: int):
        """JSON for the progress bar: rows done / failed, percentage, time left."""
        record = self.get_queryset(request).filter(pk=object_id).first()
        if record is None:
            raise Http404
        return JsonResponse(
            {
                "status": record.status,
                "status_display": record.get_status_display(),
                "waiting_for": record.waiting_for_id,
                "percent": record.percent,
                "rows_done": record.rows_done,
                "rows_imported": record.rows_imported,
                "rows_failed": record.rows_failed,
                "rows_duplicate": record.rows_duplicate,
                "seconds_left": record.seconds_left,
                "error": record.error,
                "text": _progress_text(record),
                "error_file_url": reverse("admin:audiences_import_errors", args=[record.pk])
                if record.error_file
                else None,
            }
        )

    def errors_view(self, request, object_id: int):
        record = self.get_queryset(request).filter(pk=object_id).first()
        if record is None or not record.error_file:
            raise Http404
        try:
            errors = ErrorFile.open_committed(record)
        except FileNotFoundError:
            self.message_user(request, ERROR_FILE_MISSING, messages.ERROR)
            return redirect(reverse("admin:audiences_import_change", args=[record.pk]))
        return FileResponse(
            errors,
            as_attachment=True,
            filename=f"import-{record.pk}-errors.csv",
            content_type="text/csv",
        )

    @admin.action(description="Restart stalled or failed imports", permissions=["add"])
    def restart_imports(self, request, queryset):
        restarted = 0
        for record in queryset:
            try:
                import_restart(import_id=record.pk, by=request.user)
                restarted += 1
            except ValidationError as exc:
                self.message_user(request, f"{record}: {' '.join(exc.messages)}", messages.WARNING)
            except PermissionDenied as exc:
                self.message_user(request, f"{record}: {exc}", messages.WARNING)
            except Http404:  # the list shows it, so its segment is what is out of reach
                self.message_user(
                    request, f"{record}: you may not change its segment, so you may not restart it.", messages.WARNING
                )
        if restarted:
            self.message_user(request, f"{restarted} import{pluralize(restarted)} queued again.", messages.SUCCESS)


def _progress_text(record: Import) -> str:
    said = record.get_status_display()  # the status in words ("Running"), not its code
    status = said
    now = timezone.now()
    stalled = import_stalled_minutes(record, now=now)
    waited = import_not_taken_up_since(record, now=now)
    if waited is not None:
        status = (
            f"Queued, waiting for a worker since {waited.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC "
            f"({int((now - waited).total_seconds() // 60)} min): no worker has taken it up since it was queued "
            "or wrote its last batch; are the workers running, and reading its queue?"
        )
    elif stalled is not None:
        status = (
            f"{said}, stalled: no batch written for {stalled} min (its worker stopped); "
            "it is taken up again, or ended, within a minute"
        )
    elif record.status == Import.Status.FAILED and record.stalled_runs >= 2:
        status = (
            "Failed: its worker stopped before writing a batch in two runs in a row "
            "(its file may be what stops the worker)"
        )
    elif record.stalled_runs and record.status in (Import.Status.QUEUED, Import.Status.RUNNING):
        status = (
            f"{said}, taken up again: its worker stopped before its run wrote a batch; a second such run ends it failed"
        )
    elif record.status == Import.Status.QUEUED and record.waiting_for_id:
        ahead = Import.objects.filter(pk=record.waiting_for_id).first()
        if ahead is not None and ahead.status in IMPORT_ENDED:
            status = (
                f"Queued, its turn has come (import #{ahead.pk} into the same segment ended): "
                "waiting for a worker to take it up"
            )
        else:
            status = f"Queued, waiting for import #{record.waiting_for_id} into the same segment to finish"
        ahead_stalled = import_stalled_minutes(ahead) if ahead is not None else None
        if ahead_stalled is not None:
            status += f" (stalled: no batch written for {ahead_stalled} min; it is taken up again, or ended, soon)"
    parts = [
        status,
        f"{record.percent}%",
        f"{record.rows_done:,} row{pluralize(record.rows_done)} read",
        f"{record.rows_failed:,} failed",
    ]
    if record.rows_duplicate:
        parts.append(f"{record.rows_duplicate:,} duplicate{pluralize(record.rows_duplicate)}")
    left = record.seconds_left
    if left is not None:
        parts.append(f"about {int(left)} s left" if left < 120 else f"about {int(left // 60)} min left")
    return " · ".join(parts)
