"""Where a dispatch's rows lie in the deliveries' id order: the bounds a dispatch keeps (set when it
is made, and once no row can be added to it), which its deliveries' list (API and admin) reads
between instead of walking the table's other rows; and the migration that gives them to the
dispatches made before."""

import importlib
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.services import access_grant
from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import dispatch_prepare, dispatch_stop
from delivery.services.streams import Recipient, stream_append, streams_close, streams_watch
from tests.factories import (
    AppFactory,
    DeviceFactory,
    ProfileFactory,
    PushContentFactory,
    SegmentFactory,
    SegmentMemberFactory,
    orders_stream,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stream_gates_open")]

bounds_of_existing = importlib.import_module("delivery.migrations.0031_dispatch_rows_bounds").bounds_of_existing
SCHEMA_EDITOR = SimpleNamespace(connection=connection)  # what the migration reads of its schema editor


@pytest.fixture
def app(manager_alice):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    return app


def _finished_run(app, n: int) -> Dispatch:
    """Another send of the app, its rows written as a finished run's."""
    run = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done")
    for _ in range(n):
        device = DeviceFactory(app=app)
        Delivery.objects.create(dispatch=run, device=device, profile=device.profile, status="accepted")
    return run


def _bulk_run(app, n: int) -> Dispatch:
    """A send of a static segment of ``n`` phones, its audience resolved (not sent)."""
    segment = SegmentFactory(kind="static", rules=None)
    for _ in range(n):
        device = DeviceFactory(app=app)
        SegmentMemberFactory(segment=segment, profile=device.profile)
    content = PushContentFactory(app=app)
    run = Dispatch.objects.create(
        app=app, kind=Dispatch.Kind.CAMPAIGN, source_id=content.pk, content_spec=content.spec(), segment_id=segment.pk
    )
    dispatch_prepare(dispatch_id=run.pk)
    run.refresh_from_db()
    return run


def _ids(rows) -> list[int]:
    return sorted(rows.values_list("id", flat=True))


def _api_walk(client, dispatch: Dispatch, **query) -> list[int]:
    """Every delivery id the API lists for the dispatch, page by page (following ``next``)."""
    seen: list[int] = []
    url = f"/api/v1/dispatches/{dispatch.pk}/deliveries/?" + "&".join(f"{k}={v}" for k, v in query.items())
    while url:
        page = client.get(url).json()
        seen += [row["id"] for row in page["results"]]
        url = page["next"]
    return seen


@pytest.mark.embedded
@pytest.mark.usefixtures("no_campaign_audience_check")
def test_a_bulk_runs_rows_lie_between_its_bounds_and_its_list_walks_only_them(api_key_for, manager_alice, app):
    before = _finished_run(app, 4)
    run = _bulk_run(app, 5)
    after = _finished_run(app, 3)

    mine = _ids(Delivery.objects.filter(dispatch=run))
    assert len(mine) == 5
    assert max(_ids(before.deliveries.all())) <= run.rows_after_id < min(mine)
    assert max(mine) <= run.rows_until_id < min(_ids(after.deliveries.all()))
    assert _ids(run.rows()) == mine

    client = api_key_for(manager_alice, scopes=["read"])
    assert _api_walk(client, run, limit=2) == mine
    assert _api_walk(client, run, limit=2, status="queued") == mine
    assert _api_walk(client, before, limit=3) == _ids(before.deliveries.all())  # no upper bound: read to the end


def test_a_streams_bounds_hold_every_row_appended_and_close_when_it_is_stopped(api_key_for, manager_alice, pushsim_app):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    stream = orders_stream(PushContentFactory(app=pushsim_app), source_id=12345)
    source = ("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk])

    def append(n):
        profiles = [ProfileFactory() for _ in range(n)]
        for profile in profiles:
            DeviceFactory(profile=profile, app=pushsim_app)
        stream_append(
            dispatch_id=stream.pk,
            kind=stream.kind,
            app_id=pushsim_app.pk,
            recipients=[Recipient(p.pk) for p in profiles],
            source_lock=source,
        )

    append(2)
    between = _finished_run(pushsim_app, 3)  # another send's rows between two calls'
    append(2)
    stream.refresh_from_db()
    assert stream.rows_until_id is None  # calls may still append
    client = api_key_for(manager_alice, scopes=["read"])
    mine = _ids(Delivery.objects.filter(dispatch=stream))
    assert _api_walk(client, stream, limit=3) == mine and len(mine) == 4

    assert streams_close(kind=stream.kind, source_id=stream.source_id, by=None, reason="stopped") == 1
    later = _finished_run(pushsim_app, 2)
    stream.refresh_from_db()
    assert max(mine) <= stream.rows_until_id < min(_ids(later.deliveries.all()))
    assert stream.rows_after_id < min(mine) and min(_ids(between.deliveries.all())) > stream.rows_after_id
    assert _api_walk(client, stream, limit=3) == mine


def test_a_stream_finished_by_the_watchdog_and_a_stopped_run_keep_their_upper_bound(pushsim, pushsim_app, admin_erin):
    import datetime as dt

    from django.utils import timezone

    from delivery.services.stream_senders import streams_send

    stream = orders_stream(PushContentFactory(app=pushsim_app), source_id=777)
    device = DeviceFactory(app=pushsim_app)
    stream_append(
        dispatch_id=stream.pk,
        kind=stream.kind,
        app_id=pushsim_app.pk,
        recipients=[Recipient(device.profile_id)],
        source_lock=("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk]),
    )
    Dispatch.objects.filter(pk=stream.pk).update(stream_day=timezone.now().date() - dt.timedelta(days=1))
    streams_send(budget=0)
    assert streams_watch()["finished"] == 1
    stream.refresh_from_db()
    (row,) = _ids(Delivery.objects.filter(dispatch=stream))
    assert stream.status == "done" and stream.rows_after_id < row <= stream.rows_until_id

    waiting = Dispatch.objects.create(app=pushsim_app, kind="campaign", content_spec={})  # stopped before it resolved
    _finished_run(pushsim_app, 1)
    stopped = dispatch_stop(dispatch_id=waiting.pk, by=admin_erin)
    assert stopped.status == "stopped" and stopped.rows_until_id >= stopped.rows_after_id
    assert not stopped.rows().exists()


@pytest.mark.embedded
def test_the_admins_list_of_one_dispatchs_deliveries_reads_between_its_bounds(client, manager_alice, app):
    before = _finished_run(app, 3)
    run = _bulk_run(app, 4)
    _finished_run(app, 3)
    client.force_login(manager_alice)
    url = reverse("admin:delivery_delivery_changelist")

    listed = client.get(url, {"dispatch__id__exact": run.pk}).context["cl"].result_list
    assert sorted(d.pk for d in listed) == _ids(Delivery.objects.filter(dispatch=run))
    listed = client.get(url, {"dispatch__id__exact": before.pk}).context["cl"].result_list
    assert sorted(d.pk for d in listed) == _ids(Delivery.objects.filter(dispatch=before))
    assert client.get(url, {"dispatch__id__exact": "9" * 30}).status_code == 200  # not an id: no bounds


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the plan of PostgreSQL's walk")
def test_a_page_of_one_runs_rows_does_not_walk_the_other_runs_rows(app):
    """Thousands of other rows before and after: the page's plan reads its own rows only."""
    _finished_run(app, 1)
    other = Dispatch.objects.order_by("id").last()
    run = _bulk_run(app, 3)
    with connection.cursor() as cursor:  # the table's bulk, after the run and before it by id
        cursor.execute(
            "INSERT INTO delivery_delivery (dispatch_id, status, reason, provider_message_id, attempts, finished_at) "
            "SELECT %s, 'accepted', '', '', 1, now() FROM generate_series(1, 3000)",
            [other.pk],
        )
        cursor.execute("ANALYZE delivery_delivery")
    plan = run.rows().filter(id__gt=0).order_by("id")[:100].explain(analyze=True)
    removed = [int(line.split(":")[1]) for line in plan.splitlines() if "Rows Removed by Filter" in line]
    assert sum(removed) < 100, plan


@pytest.mark.usefixtures("no_campaign_audience_check")
def test_the_migration_gives_the_dispatches_made_before_their_bounds(app):
    made_before = _finished_run(app, 3)
    resolved = _bulk_run(app, 2)
    sending_stream = orders_stream(PushContentFactory(app=app), source_id=4242)
    device = DeviceFactory(app=app)
    Delivery.objects.create(
        dispatch=sending_stream,
        device=device,
        profile=device.profile,
        status="queued",
        queued_at=sending_stream.created_at,
    )
    empty = Dispatch.objects.create(app=app, kind="campaign", content_spec={})  # still preparing, no row
    Dispatch.objects.update(rows_after_id=None, rows_until_id=None)

    bounds_of_existing(apps, SCHEMA_EDITOR)

    def bounds(dispatch):
        dispatch.refresh_from_db()
        rows = _ids(Delivery.objects.filter(dispatch=dispatch))
        return dispatch.rows_after_id, dispatch.rows_until_id, rows

    low, high, rows = bounds(made_before)
    assert (low, high) == (rows[0] - 1, rows[-1])
    low, high, rows = bounds(resolved)
    assert (low, high) == (rows[0] - 1, rows[-1])  # its audience resolved: no row can be added
    low, high, rows = bounds(sending_stream)
    assert (low, high) == (rows[0] - 1, None)  # calls may still append
    assert bounds(empty)[:2] == (None, None)


def test_the_migration_writes_every_dispatchs_bounds_in_one_statement_whatever_their_number(app):
    """It read every dispatch into Python and wrote them back a thousand at a time: 300,000
    dispatches took four minutes and 1.4 GB, the dispatches' table locked meanwhile."""
    runs = Dispatch.objects.bulk_create(
        [Dispatch(app=app, kind="api_trigger", content_spec={}, status="done") for _ in range(2500)]
    )
    Delivery.objects.bulk_create([Delivery(dispatch=run, status="accepted") for run in runs for _ in range(2)])
    Dispatch.objects.update(rows_after_id=None, rows_until_id=None)

    with CaptureQueriesContext(connection) as statements:
        bounds_of_existing(apps, SCHEMA_EDITOR)

    assert len(statements) == 1, [q["sql"][:80] for q in statements]
    rows = {}
    for pk, dispatch_id in Delivery.objects.filter(dispatch__in=runs).values_list("id", "dispatch_id"):
        rows.setdefault(dispatch_id, []).append(pk)
    bounds = dict(
        (pk, (low, high))
        for pk, low, high in Dispatch.objects.filter(pk__in=rows).values_list("pk", "rows_after_id", "rows_until_id")
    )
    assert bounds == {pk: (min(ids) - 1, max(ids)) for pk, ids in rows.items()}
