"""A large segment's resolve is written by several connections at once, one range of profile ids
each: the same rows and counts as one statement, a resolve that died part-way written again whole,
and a slice whose worker died waited for before its rows are deleted."""

import threading

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection, connections
from django.utils import timezone

from delivery.models import Delivery, DeliveryRollup, Device, Dispatch
from delivery.services.dispatches import (
    _resolve_in_slices,
    _resolve_slices,
    dispatch_counts,
    dispatch_prepare,
)
from tests.delivery.test_rollups import assert_rollup_is_the_count
from tests.factories import (
    AppFactory,
    DeviceFactory,
    ProfileFactory,
    PushContentFactory,
    SegmentFactory,
    SegmentMemberFactory,
)
from tests.locks import eventually

pytestmark = [
    pytest.mark.skipif(
        connections["default"].vendor != "postgresql", reason="slices are written on PostgreSQL connections"
    ),
]


@pytest.fixture
def audience(transactional_db, pushsim, pushsim_app):
    """A static segment of 40 profiles over a wider span of ids: devices of the app (opted in or
    not), of another app, none. The app sends to the push simulator (prepared, a dispatch sends)."""
    app = pushsim_app
    other_app = AppFactory()
    segment = SegmentFactory(kind="static", rules=None)
    profiles = ProfileFactory.create_batch(60)
    members = [profile for n, profile in enumerate(profiles) if n % 3 != 2]  # over the whole span of ids
    for n, profile in enumerate(members):
        SegmentMemberFactory(segment=segment, profile=profile)
        if n % 5 == 0:
            continue  # no device
        DeviceFactory(profile=profile, app=app, platform="ios" if n % 2 else "android", push_enabled=n % 7 != 0)
        if n % 3 == 0:
            DeviceFactory(profile=profile, app=app, platform="android")  # a second phone
        if n % 4 == 0:
            DeviceFactory(profile=profile, app=other_app)
    for profile in profiles[2::3]:
        DeviceFactory(profile=profile, app=app)  # not in the segment
    return app, segment


def _dispatch(app, segment, **fields) -> Dispatch:
    """A dispatch of the segment, preparing; those of one test share their content, so their
    variants' salt (a hash of profile and source) too."""
    content = PushContentFactory._meta.model.objects.filter(app=app).first() or PushContentFactory(app=app)
    fields.setdefault("kind", Dispatch.Kind.API_TRIGGER)
    return Dispatch.objects.create(
        app=app, source_id=content.pk, content_spec=content.spec(), segment_id=segment.pk, label="Slices", **fields
    )


def _rows(dispatch) -> list[tuple]:
    return sorted(
        Delivery.objects.filter(dispatch=dispatch).values_list("profile_id", "device_id", "status", "reason", "variant")
    )


def _counters(dispatch) -> tuple:
    dispatch.refresh_from_db()
    return dispatch.status, dispatch.total, dispatch.skipped, dispatch.accepted


def _reason(variant: int | None, opted_in: bool | None) -> str:
    """A resolved row's reason (``opted_in`` None: no device): no device, then a phone not opted
    in, then the holdout (which takes only the rows that would be sent)."""
    if opted_in is None:
        return "no_device"
    if not opted_in:
        return "not_opted_in"
    return "holdout" if variant == 0 else ""


def test_a_resolve_in_slices_writes_the_rows_and_counts_of_one_statement(audience, settings):
    app, segment = audience
    content = PushContentFactory(app=app)
    # A holdout of 30 %, not 10 %: the 40 members' variants hash from the content's id, and with
    # 10 % none of them fell in the holdout in about one run of 70 (0.9 ** 40).
    variants = [
        {"number": n, "label": label, "content_id": content.pk, "share": 35, "spec": content.spec()}
        for n, label in ((1, "A"), (2, "B"))
    ]
    settings.PUSHDESK_RESOLVE_SLICES = 1
    whole = _dispatch(app, segment, variants=variants, holdout_share=30)
    assert _resolve_slices(whole) == ([], False)
    dispatch_prepare(dispatch_id=whole.pk)

    settings.PUSHDESK_RESOLVE_SLICES = 3
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 10
    sliced = _dispatch(app, segment, variants=variants, holdout_share=30)
    slices, leftovers = _resolve_slices(sliced)
    assert len(slices) == 3 and not leftovers
    assert slices[0][0] < slices[0][1] < slices[1][0] < slices[1][1] < slices[2][0] <= slices[2][1]
    dispatch_prepare(dispatch_id=sliced.pk)

    rows = _rows(sliced)
    assert len(rows) > 40 and {r[2] for r in rows} == {"accepted", "skipped"}
    # Each row's reason, the holdout last: eight profiles have no device and four a phone not
    # opted in, whichever variant they drew.
    opted_in = dict(Device.objects.values_list("id", "push_enabled"))
    for _, device_id, _, reason, variant in rows:
        assert reason == _reason(variant, opted_in.get(device_id))
    assert {r[3] for r in rows} == {"", "no_device", "not_opted_in", "holdout"}
    assert rows == _rows(whole)
    assert _counters(sliced) == ("done", *_counters(whole)[1:])
    assert_rollup_is_the_count(sliced)
    # Written by three statements: each counted its rows into a rollup shard of its own.
    assert set(DeliveryRollup.objects.filter(dispatch=sliced).values_list("shard", flat=True)) == {0, 1, 2}


@pytest.mark.parametrize("part", ["sample", "rest"])
def test_a_winner_campaigns_sample_and_its_rest_resolve_in_slices_as_in_one_statement(audience, settings, part):
    app, segment = audience
    settings.PUSHDESK_RESOLVE_SLICES = 1
    whole = _dispatch(app, segment, sample={"part": part, "share": 40})
    dispatch_prepare(dispatch_id=whole.pk)
    settings.PUSHDESK_RESOLVE_SLICES = 2
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 10
    sliced = _dispatch(app, segment, sample={"part": part, "share": 40})
    assert len(_resolve_slices(sliced)[0]) == 2
    dispatch_prepare(dispatch_id=sliced.pk)
    rows = _rows(sliced)
    assert 0 < len({r[0] for r in rows}) < 40  # a part of the segment's profiles
    assert rows == _rows(whole)
    assert _counters(sliced) == _counters(whole)


def test_a_small_table_and_a_test_send_resolve_in_one_statement(audience, settings):
    app, segment = audience
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 100  # more per slice than the ids span
    assert _resolve_slices(_dispatch(app, segment)) == ([], False)
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 1
    assert _resolve_slices(_dispatch(app, segment, kind=Dispatch.Kind.TEST)) == ([], False)
    assert len(_resolve_slices(_dispatch(app, segment))[0]) == 2  # the default: two


def test_a_resolve_that_died_after_some_slices_committed_is_written_again_whole(audience, settings):
    app, segment = audience
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 10
    dispatch = _dispatch(app, segment)
    slices, _ = _resolve_slices(dispatch)
    # What a worker killed after the first slice committed leaves: its rows, its rollup rows, and
    # the dispatch still preparing (its own transaction never committed).
    _resolve_in_slices(dispatch, slices=slices[:1], now=timezone.now())
    left = Delivery.objects.filter(dispatch=dispatch).count()
    assert left and Dispatch.objects.get(pk=dispatch.pk).status == "preparing"

    dispatch_prepare(dispatch_id=dispatch.pk)

    settings.PUSHDESK_RESOLVE_SLICES = 1
    whole = _dispatch(app, segment)
    dispatch_prepare(dispatch_id=whole.pk)
    assert [r[1:4] for r in _rows(dispatch)] == [r[1:4] for r in _rows(whole)]
    assert len(_rows(dispatch)) > left
    assert _counters(dispatch) == ("done", *_counters(whole)[1:])
    assert_rollup_is_the_count(dispatch)

    # The same leftovers, prepared again in one statement (the settings changed since): written whole too.
    again = _dispatch(app, segment)
    settings.PUSHDESK_RESOLVE_SLICES = 2
    _resolve_in_slices(again, slices=_resolve_slices(again)[0][1:], now=timezone.now())
    assert _resolve_slices(again)[1], "the leftovers are seen"
    settings.PUSHDESK_RESOLVE_SLICES = 1
    dispatch_prepare(dispatch_id=again.pk)
    assert [r[1:4] for r in _rows(again)] == [r[1:4] for r in _rows(whole)]
    assert_rollup_is_the_count(again)


def test_a_slice_of_a_dead_resolve_still_running_is_waited_for_and_its_rows_are_not_kept(audience, settings, pushsim):
    app, segment = audience
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 10
    dispatch = _dispatch(app, segment)
    db = django_settings.DATABASES["default"]
    # A slice whose worker was killed: its server process still runs its statement, a row of the
    # dispatch written and not committed (it never will be: no COMMIT comes).
    orphan = psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        dbname=connection.settings_dict["NAME"],
    )
    try:
        device = Device.objects.filter(app=app, push_enabled=True, profile__memberships__segment=segment).first()
        orphan.execute(
            "INSERT INTO delivery_delivery (dispatch_id, device_id, profile_id, status, reason, provider_message_id, "
            "attempts) VALUES (%s, %s, %s, 'queued', '', '', 0)",
            [dispatch.pk, device.pk, device.profile_id],
        )
        done = threading.Event()

        def prepare():
            try:
                dispatch_prepare(dispatch_id=dispatch.pk)
            finally:
                connection.close()
                done.set()

        threading.Thread(target=prepare, daemon=True).start()

        def waiting():
            return orphan.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted "
                "AND transactionid = pg_current_xact_id()::text::xid"
            ).fetchone()[0]

        # The slice that writes the same device's row waits on the unique index for the orphan.
        assert eventually(lambda: waiting() == 1 or done.is_set(), timeout=30)
        assert not done.is_set(), "the resolve went on while a slice of the one before still ran"
        assert waiting() == 1
        orphan.rollback()  # its client gone, its statement ended: the transaction rolls back
    finally:
        orphan.close()
    assert done.wait(30)
    assert _counters(dispatch)[0] == "done"
    assert Delivery.objects.filter(dispatch=dispatch, device=device).count() == 1
    assert pushsim.state.count(device.token) == 1
    assert_rollup_is_the_count(dispatch)


def test_a_slice_that_fails_fails_the_prepare_after_the_others_end_and_the_next_one_writes_it_whole(audience, settings):
    app, segment = audience
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 10
    dispatch = _dispatch(app, segment)
    slices, _ = _resolve_slices(dispatch)
    last = Device.objects.filter(app=app, profile__memberships__segment=segment).order_by("profile_id").last()
    assert last.profile_id >= slices[-1][0]  # written by the last slice
    with connection.cursor() as cursor:  # PostgreSQL refuses that one row
        cursor.execute(
            "CREATE FUNCTION delivery_refused() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF NEW.profile_id = {last.profile_id} THEN RAISE EXCEPTION 'delivery refused'; END IF; "
            "RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER delivery_refused BEFORE INSERT ON delivery_delivery "
            "FOR EACH ROW EXECUTE FUNCTION delivery_refused()"
        )
    try:
        with pytest.raises(Exception, match="delivery refused"):
            dispatch_prepare(dispatch_id=dispatch.pk)
        # The first slice committed; the dispatch is still preparing, so none of it is sent.
        assert Delivery.objects.filter(dispatch=dispatch).exists()
        assert not Delivery.objects.filter(dispatch=dispatch, profile_id__gte=slices[-1][0]).exists()
        assert _counters(dispatch)[0] == "preparing"
        assert not Delivery.objects.filter(dispatch=dispatch).exclude(status__in=("queued", "skipped")).exists()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER delivery_refused ON delivery_delivery")
            cursor.execute("DROP FUNCTION delivery_refused()")

    dispatch_prepare(dispatch_id=dispatch.pk)  # as the watchdog queues it again

    settings.PUSHDESK_RESOLVE_SLICES = 1
    whole = _dispatch(app, segment)
    dispatch_prepare(dispatch_id=whole.pk)
    assert [r[1:4] for r in _rows(dispatch)] == [r[1:4] for r in _rows(whole)]
    assert _counters(dispatch) == ("done", *_counters(whole)[1:])
    assert_rollup_is_the_count(dispatch)


def test_a_device_moved_between_two_slices_is_targeted_once_and_counted_once(audience, settings):
    """Each slice reads the audience in its own snapshot: a phone re-registered meanwhile under a
    profile of a later slice is seen by both. The second slice leaves its row out (the first one
    targeted the phone), the resolve ends, and its counts and rollup are the rows written."""
    app, segment = audience
    settings.PUSHDESK_RESOLVE_SLICES = 2
    settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 10
    dispatch = _dispatch(app, segment)
    (first, second), _ = _resolve_slices(dispatch)
    members = segment.members.values_list("profile_id", flat=True)
    moved = (
        Device.objects.filter(app=app, profile_id__in=members, profile_id__lte=first[1], push_enabled=True)
        .order_by("id")
        .first()
    )
    to = Device.objects.filter(app=app, profile_id__in=members, profile_id__gte=second[0]).order_by("id").first()
    now = timezone.now()

    _resolve_in_slices(dispatch, slices=[first], now=now)
    Device.objects.filter(pk=moved.pk).update(profile_id=to.profile_id)  # between the two slices' statements
    _resolve_in_slices(dispatch, slices=[second], now=now)

    rows = Delivery.objects.filter(dispatch=dispatch)
    assert list(rows.filter(device=moved).values_list("profile_id", flat=True)) == [moved.profile_id]
    counts = dispatch_counts(dispatch_id=dispatch.pk)
    assert counts["total"] == rows.count() == len(set(rows.values_list("device_id", "profile_id")))
    assert counts["skipped"] == rows.filter(status="skipped").count()
    assert_rollup_is_the_count(dispatch)
