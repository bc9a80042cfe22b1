import pytest


@pytest.fixture(autouse=True)
def _tasks_run_inline(monkeypatch):
    """Run django-q2 tasks in-process. django-q2 reads its settings once, at import, which happens
    before tests/conftest.py sets PUSHDESK_TASKS_SYNC, so the setting alone does not take effect."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", True)


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded files and error files go to a fresh MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT
