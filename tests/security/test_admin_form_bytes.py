"""Bytes that are not UTF-8 in an admin form's text (a urlencoded or multipart body with \\xff in a
value): Django reads them with its 'replace' handler, as U+FFFD, which would be saved as the text.
The form refuses them under the field they were sent for, and saves nothing (the API refuses them
too: ``accounts.parsers``)."""

import re
from urllib.parse import quote_plus

import pytest
from django.test.client import BOUNDARY, encode_multipart

from tests.pages import page_form

PAGES = [
    "/admin/delivery/pushcontent/add/",
    "/admin/campaigns/campaign/add/",
    "/admin/audiences/segment/add/",
    "/admin/audiences/import/add/",
]
MARK = "undecodable-value"


def _urlencoded(data: dict[str, list[str]], name: str) -> str:
    return "&".join(
        f"{quote_plus(key)}={'caf%FF' if key == name else quote_plus(value)}"
        for key, values in data.items()
        for value in values
    )


def _multipart(data: dict[str, list[str]], name: str) -> bytes:
    body = encode_multipart(BOUNDARY, {**data, name: [MARK]})
    return body.replace(MARK.encode(), b"caf\xff")


def _field_of(form, name: str) -> str | None:
    """The form field an input named ``name`` belongs to (a split widget's ``schedule_0``: ``schedule``)."""
    for field in form.fields:
        key = form.add_prefix(field)
        if re.fullmatch(rf"{re.escape(key)}(?:_\d+)?", name):
            return field
    return None


@pytest.mark.parametrize("url", PAGES)
@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_a_text_field_given_bytes_that_are_not_utf8_is_refused_under_its_name(client, world, admin_erin, url, encoding):
    client.force_login(admin_erin)
    shown = page_form(client.get(url).content.decode())
    probed = []
    for name in sorted(shown.texts):
        if encoding == "urlencoded":
            answer = client.post(url, _urlencoded(shown.data, name), content_type="application/x-www-form-urlencoded")
        else:
            answer = client.post(
                url, _multipart(shown.data, name), content_type=f"multipart/form-data; boundary={BOUNDARY}"
            )
        assert answer.status_code == 200, (name, answer.status_code)  # answered again, not saved
        form = answer.context["adminform"].form
        field = _field_of(form, name)
        if field is None:
            continue  # an input no field of the form reads
        assert any("not UTF-8" in message for message in form.errors.get(field, [])), (name, form.errors)
        probed.append(name)
    assert len(probed) >= 2, probed


def _segment_posted(client, segment, **changes):
    url = f"/admin/audiences/segment/{segment.pk}/change/"
    data = {
        key: values if len(values) > 1 else values[0]
        for key, values in page_form(client.get(url).content.decode()).data.items()
    }
    return client.post(url, {**data, **changes})


def test_text_holding_u_fffd_from_before_passes_unchanged_and_is_refused_changed(client, admin_erin):
    """Text that really holds U+FFFD, saved before the forms refused it (or through a path that takes
    it), was refused whenever its object was edited, though the field was not: only a changed value
    is checked."""
    from audiences.models import Segment
    from tests.factories import SegmentFactory

    segment = SegmentFactory(name="Caf\ufffd regulars", description="Kept \ufffd as it was")
    client.force_login(admin_erin)

    answer = _segment_posted(client, segment, description="Kept \ufffd as it was", name="Caf\ufffd regulars")

    assert answer.status_code == 302, answer.context["adminform"].form.errors if answer.context else answer
    segment.refresh_from_db()
    assert (segment.name, segment.description) == ("Caf\ufffd regulars", "Kept \ufffd as it was")
    renamed = _segment_posted(client, segment, name="Caf\ufffd regulars 2")
    assert renamed.status_code == 200
    assert any("not UTF-8" in message for message in renamed.context["adminform"].form.errors["name"])
    assert "description" not in renamed.context["adminform"].form.errors
    assert Segment.objects.get(pk=segment.pk).name == "Caf\ufffd regulars"


def test_a_part_whose_name_is_not_utf8_is_refused_with_a_page_saying_so(client, admin_erin):
    """Django leaves such a part out, as though it had not been sent, and no field of the form is
    there to say it (the API refuses it naming it): the admin answers 400 saying so, and saves
    nothing."""
    from audiences.models import Segment

    client.force_login(admin_erin)
    url = "/admin/audiences/segment/add/"
    data = {
        key: values if len(values) > 1 else values[0]
        for key, values in page_form(client.get(url).content.decode()).data.items()
    }
    data.update(name="Regulars", kind="static")
    body = encode_multipart(BOUNDARY, {**data, "undecodable-name": "x"}).replace(b"undecodable-name", b"caf\xff")

    answer = client.post(url, body, content_type=f"multipart/form-data; boundary={BOUNDARY}")

    assert answer.status_code == 400
    assert "not UTF-8" in answer.content.decode()
    assert not Segment.objects.filter(name="Regulars").exists()
