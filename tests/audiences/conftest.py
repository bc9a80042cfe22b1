import pytest


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded files and error files go to a fresh MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT
