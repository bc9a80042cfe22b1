"""The admin's delete confirmation with counts (``deleted_objects_counted``): what keeps a deletion
from happening is named and linked to a reader who may open it, and counted by kind, without a name
or a link, to anyone else."""

import pytest
from django.contrib import admin
from django.test import RequestFactory

from accounts.admin.bases import deleted_objects_counted
from accounts.services import access_grant
from audiences.models import Segment
from campaigns.services.lifecycle import campaign_create
from tests.factories import AppFactory, PushContentFactory, SegmentFactory


@pytest.fixture
def held_segment(manager_alice, manager_mallory):
    """A segment granted to both, the audience of two campaigns of manager_mallory's app, which
    manager_alice was never granted."""
    app = AppFactory(name="Mallory's app")
    access_grant(obj=app, to=manager_mallory, by=None)
    segment = SegmentFactory(name="Everyone", created_by=manager_mallory)
    for user in (manager_alice, manager_mallory):
        access_grant(obj=segment, to=user, by=None)
    content = PushContentFactory(app=app, name="Promo")
    for name in ("Secret launch", "Secret sale"):
        campaign_create(by=manager_mallory, name=name, app=app, segment=segment, content=content)
    return segment


def _protected(user, segment) -> list[str]:
    request = RequestFactory().get(f"/admin/audiences/segment/{segment.pk}/delete/")
    request.user = user
    listed, counts, perms_needed, protected = deleted_objects_counted(
        admin.site.get_model_admin(Segment), request, [segment]
    )
    assert counts == {} and listed
    return [str(line) for line in protected]


def test_what_keeps_a_deletion_is_counted_not_named_to_a_reader_who_may_not_see_it(manager_alice, held_segment):
    protected = _protected(manager_alice, held_segment)
    assert protected == ["2 campaigns you cannot see"]


def test_what_keeps_a_deletion_is_named_and_linked_to_a_reader_who_may_see_it(manager_mallory, held_segment):
    protected = _protected(manager_mallory, held_segment)
    assert len(protected) == 2 and all("/admin/campaigns/campaign/" in line for line in protected)
    assert any("Secret launch" in line for line in protected) and any("Secret sale" in line for line in protected)
