"""CSV exports are safe to open in a spreadsheet: no cell runs as a formula."""

import csv
import io

import pytest

FORMULAS = ['=HYPERLINK("https://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]


@pytest.mark.parametrize("name", FORMULAS)
def test_a_campaign_named_like_a_formula_exports_as_text(client, world, manager_alice, name):
    from campaigns.models import Campaign

    campaign = world["campaigns.campaign"]
    Campaign.objects.filter(pk=campaign.pk).update(name=name)
    client.force_login(manager_alice)
    response = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    cells = [cell for row in rows for cell in row]
    assert "'" + name in cells
    assert not any(cell[:1] in ("=", "+", "@", "\t", "\r") for cell in cells)
    assert not any(cell.startswith("-") and not cell.lstrip("-").replace(".", "").isdigit() for cell in cells)


def test_the_import_error_file_exports_formulas_as_text(client, manager_alice, django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audiences.models import Import
    from audiences.services.imports import import_create

    upload = SimpleUploadedFile(
        "people.csv",
        b'external_id,age\n=cmd|"/c calc"!A1,x\n@SUM(1),\n',
        content_type="text/csv",
    )
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice, columns={"age": {"type": "number"}})
    record = Import.objects.get(pk=record.pk)
    client.force_login(manager_alice)
    response = client.get(f"/admin/audiences/import/{record.pk}/errors/")
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    cells = [cell for row in csv.reader(io.StringIO(text)) for cell in row]
    assert any(cell.startswith("'=cmd") for cell in cells), text
    assert not any(cell[:1] in ("=", "+", "@") for cell in cells)
