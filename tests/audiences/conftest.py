import pytest


@pytest.fixture
def media(settings, tmp_path):
    """Uploaded files and error files go to a fresh MEDIA_ROOT."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def under_review(manager_alice, approver_bob):
    """Make a segment the audience of ``manager_alice``'s campaign waiting for ``approver_bob``, who
    then reads the segment (read-only) without a grant on it."""
    from accounts.services import access_grant
    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from tests.factories import AppFactory, PushContentFactory

    def submit(segment):
        app = AppFactory(name="Review")
        access_grant(obj=app, to=manager_alice, by=None)
        content = PushContentFactory(app=app)
        campaign = campaign_create(by=manager_alice, name="Promo", app=app, segment=segment, content=content)
        access_grant(obj=campaign, to=approver_bob, by=None)  # shared with the approver, not the segment
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        return campaign

    return submit
