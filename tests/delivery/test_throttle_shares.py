"""An app's send rate is shared by its sends: tokens taken and not used go back to its bucket.

A campaign throttled below its app's rate takes from the app only what it sends; tokens taken for
rows that were not sent after all (a claim that found fewer, rows held by quiet hours) are given
back, on Redis and on the database (the embedded mode) alike.
"""

import time

import pytest
from django.conf import settings
from django_q.conf import Conf

from delivery import throttle as throttle_module
from delivery.models import App, Delivery, Device
from delivery.services.sending import dispatch_send
from delivery.services.stream_senders import streams_send
from delivery.throttle import DatabaseThrottle, RedisThrottle, throttle_acquire, throttle_release
from tests.delivery.test_quiet_hours_at_claim import _quiet_from_now_on, append_to, stream_of
from tests.delivery.test_sending_expiry import prepared
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_gate")]


@pytest.fixture(params=["redis", "database"])
def limiter(request, monkeypatch):
    """Each limiter in turn as the installation's (``throttle()``)."""
    if request.param == "redis":
        if not settings.REDIS_URL:
            pytest.skip("needs Redis")
        chosen = RedisThrottle(settings.REDIS_URL)
    else:
        chosen = DatabaseThrottle()
    monkeypatch.setattr(throttle_module, "throttle", lambda: chosen)
    return chosen


def _key(name: str) -> str:
    return f"test:{name}:{time.time_ns()}"


class Counted:
    """A limiter as it is, with what it granted under ``key`` less what came back summed in
    ``taken``; ``on_grant`` runs once, at the first grant under ``key``."""

    def __init__(self, limiter, key: str, on_grant=None):
        self.limiter, self.key, self.on_grant, self.taken = limiter, key, on_grant, 0

    def take_until(self, **kwargs):
        granted, wait, ends = self.limiter.take_until(**kwargs)
        if kwargs["key"] == self.key and granted:
            self.taken += granted
            if self.on_grant is not None:
                self.on_grant()
                self.on_grant = None
        return granted, wait, ends

    def give_back(self, **kwargs):
        self.limiter.give_back(**kwargs)
        if kwargs["key"] == self.key:
            self.taken -= kwargs["count"]


@pytest.mark.embedded
def test_a_throttled_campaign_takes_from_its_app_only_what_it_sends(limiter):
    app, campaign = _key("app"), _key("campaign")
    assert throttle_acquire(limits=[(app, 1000), (campaign, 50)], count=2000) == 5  # a tenth of a second at 50/s
    # The app's burst (100) less those 5 is left for its other sends (taken whole before: none was).
    left, _ = limiter.take(key=app, rate=1000, count=1000)
    assert 95 <= left <= 100


@pytest.mark.embedded
def test_what_a_later_limit_grants_less_goes_back_to_the_one_before(limiter):
    app, campaign = _key("app"), _key("campaign")
    assert limiter.take(key=app, rate=1000, count=90)[0] == 90  # the app's other sends took most of its burst
    granted = throttle_acquire(limits=[(app, 1000), (campaign, 500)], count=2000)
    # The campaign's 50, cut to what the app had left: 10, and what it refilled since (1 a ms).
    assert 10 <= granted <= 50
    left, _ = limiter.take(key=campaign, rate=500, count=1000)
    assert left >= 50 - granted  # the campaign's tokens the app could not match are back


@pytest.mark.embedded
def test_a_deadline_passed_while_waiting_gives_back_what_was_taken(limiter):
    """Two limits of one token every half second: the first grants, the second has none."""
    campaign, app = _key("campaign"), _key("app")
    assert limiter.take(key=app, rate=2, count=10)[0] == 1  # the app's burst is spent
    assert throttle_acquire(limits=[(campaign, 2), (app, 2)], count=10, deadline=time.monotonic()) == 0
    assert limiter.take(key=campaign, rate=2, count=10)[0] == 1  # the campaign's token is back


@pytest.mark.embedded
def test_released_tokens_serve_the_next_take_and_a_bucket_holds_no_more_than_its_burst(limiter):
    app = _key("app")
    granted = throttle_acquire(limits=[(app, 100)], count=1000)
    assert granted == 10
    throttle_release(granted, 10)
    granted = throttle_acquire(limits=[(app, 100)], count=1000)
    assert granted == 10
    throttle_release(granted, 1000)  # more than was taken: the burst, no more
    assert limiter.take(key=app, rate=100, count=1000)[0] == 10
    throttle_release(throttle_acquire(limits=[(app, 0)], count=5), 5)  # no limit: nothing to give back


@pytest.mark.embedded
def test_tokens_given_back_after_their_time_passed_add_nothing_to_the_rate(limiter):
    """A claim that took longer than its tokens' tenth of a second: those tokens' time has passed
    (the bucket refilled meanwhile, and another send took the refill), so giving them back then
    would let that send take a second burst at once, over the rate."""
    # The bucket refills 100 tokens a second: from the other send's take to the next, the next
    # may get what that time refills, but not the 10 given back (a whole burst). On a loaded
    # machine those three calls may take tens of milliseconds; the story is told again, on a key
    # of its own, until they took less than 50 ms, which refill at most 5 tokens.
    for _ in range(10):
        app = _key("app")
        slow = throttle_acquire(limits=[(app, 100)], count=1000)
        assert slow == 10
        time.sleep(0.15)  # the slow claim; the bucket refills its burst
        started = time.monotonic()
        assert limiter.take(key=app, rate=100, count=1000)[0] == 10  # another send takes it
        throttle_release(slow, 10)  # the slow claim found no row
        granted, _ = limiter.take(key=app, rate=100, count=1000)
        took = time.monotonic() - started
        if took < 0.05:
            break
    else:
        pytest.fail(f"three calls to the limiter took {took * 1000:.0f} ms ten times over")
    assert granted <= 1 + int(took * 100)  # what the time since refilled, not a second burst


def test_rows_held_by_quiet_hours_give_their_tokens_back_to_the_app(
    pushsim_app, pushsim, django_capture_on_commit_callbacks, limiter, monkeypatch
):
    """One message a second for the app: each claim's row is held, its token given back, so the
    three rows are judged at once and the app's next send finds its token."""
    monkeypatch.setattr(Conf, "SYNC", False)  # the held rows' next send is scheduled, not awaited here
    App.objects.filter(pk=pushsim_app.pk).update(rate_limit_per_second=1)
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profiles = [ProfileFactory(timezone="Europe/Paris") for _ in range(3)]
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = prepared(content, profiles, django_capture_on_commit_callbacks, purpose="marketing")
    _quiet_from_now_on(pushsim_app, "Europe/Paris")  # started a minute ago, after the resolve: judged at the claim

    dispatch_send(dispatch_id=dispatch.pk)

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason")) == {
        ("queued", "quiet_hours")
    }
    assert limiter.take(key=f"app:{pushsim_app.pk}", rate=1, count=1)[0] == 1


def test_a_marketing_streams_rows_held_by_quiet_hours_take_no_token_from_the_app(
    pushsim_app, pushsim, limiter, settings
):
    """One message a second for the app: a stream's sender takes the tokens after its claim, for
    the rows it sends; the three rows held are judged at once, and the app's next send finds its token."""
    App.objects.filter(pk=pushsim_app.pk).update(rate_limit_per_second=1)
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profiles = [ProfileFactory(timezone="Europe/Paris") for _ in range(3)]
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    stream = stream_of(content, purpose="marketing")
    append_to(stream, profiles)
    _quiet_from_now_on(pushsim_app, "Europe/Paris")  # started a minute ago, after the append: judged at the claim

    streams_send(budget=0, dispatch_ids=[stream.pk])

    assert set(Delivery.objects.filter(dispatch=stream).values_list("status", "reason")) == {("queued", "quiet_hours")}
    assert limiter.take(key=f"app:{pushsim_app.pk}", rate=1, count=1)[0] == 1


def test_rows_skipped_at_the_claim_give_their_tokens_back_to_the_app(
    pushsim_app, pushsim, django_capture_on_commit_callbacks, limiter, monkeypatch
):
    """Phones logged out after the resolve are skipped at the claim and sent nothing: every token
    taken for them goes back, for the app's other sends."""
    counted = Counted(limiter, f"app:{pushsim_app.pk}")
    monkeypatch.setattr(throttle_module, "throttle", lambda: counted)
    App.objects.filter(pk=pushsim_app.pk).update(rate_limit_per_second=10)
    content = PushContentFactory(app=pushsim_app)
    profiles = [ProfileFactory() for _ in range(3)]
    devices = [DeviceFactory(profile=profile, app=pushsim_app, platform="android") for profile in profiles]
    dispatch = prepared(content, profiles, django_capture_on_commit_callbacks)
    Device.objects.filter(pk__in=[d.pk for d in devices]).update(active=False)

    dispatch_send(dispatch_id=dispatch.pk)

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason")) == {
        ("skipped", "device_inactive")
    }
    assert counted.taken == 0


@pytest.mark.embedded
def test_a_send_stopped_while_it_waited_for_tokens_gives_them_back_to_the_app(
    pushsim_app, pushsim, django_capture_on_commit_callbacks, limiter, monkeypatch, admin_erin
):
    """Stopped from the admin while its sender took its tokens: the sender finds it stopped, sends
    nothing, and every token it took goes back, for the app's other sends."""
    from delivery.services.dispatches import dispatch_stop

    # The stop lands with the first take.
    counted = Counted(
        limiter, f"app:{pushsim_app.pk}", on_grant=lambda: dispatch_stop(dispatch_id=dispatch.pk, by=admin_erin)
    )
    monkeypatch.setattr(throttle_module, "throttle", lambda: counted)
    App.objects.filter(pk=pushsim_app.pk).update(rate_limit_per_second=10)
    content = PushContentFactory(app=pushsim_app)
    profiles = [ProfileFactory() for _ in range(3)]
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = prepared(content, profiles, django_capture_on_commit_callbacks)

    dispatch_send(dispatch_id=dispatch.pk)

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason")) == {("skipped", "stopped")}
    assert counted.taken == 0
