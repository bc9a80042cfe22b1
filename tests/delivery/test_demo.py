"""The demo data `make run` sets up works on a machine without internet: what its contents show
comes from this installation."""

import io
from urllib.parse import urlsplit

import pytest

from delivery.demo import DEMO_APP, populate_devices_and_content
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from tests.factories import AppFactory

pytestmark = pytest.mark.django_db


def test_the_demo_contents_images_are_served_by_this_installation(client, admin_erin):
    """The Flash sale showed an image from the internet (picsum.photos): broken offline in its
    previews. Its image is a file of the repository, served by the web under `make run`
    (127.0.0.1:8000), and the content passes the checks of a content saved in the admin."""
    app = AppFactory(name=DEMO_APP, uses_simulator=True)
    populate_devices_and_content(stdout=io.StringIO())
    contents = list(PushContent.objects.filter(app=app))
    images = [c.image_url for c in contents if c.image_url]
    assert images, [c.name for c in contents]
    for url in images:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("http", "127.0.0.1:8000"), url
        answer = client.get(parts.path)
        assert answer.status_code == 200, url
        assert answer["Content-Type"] == "image/jpeg"
        assert b"".join(answer.streaming_content if answer.streaming else [answer.content])[:3] == b"\xff\xd8\xff"
    for content in contents:
        pushcontent_save(content=content, by=admin_erin)  # as written in the admin: every check passes
