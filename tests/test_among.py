"""``config.db.among``: an id list as one parameter on PostgreSQL, ``IN`` elsewhere, the same rows."""

import pytest
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext

from config.db import among
from delivery.models import Delivery
from tests.delivery.reporting import sent_dispatch
from tests.factories import AppFactory

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_the_rows_are_those_of_in_whatever_the_list_and_however_it_is_combined():
    app = AppFactory()
    first, second, third = (sent_dispatch(app) for _ in range(3))
    rows = Delivery.objects.order_by("pk").values_list("pk", flat=True)
    for ids in ([first.pk], [first.pk, third.pk, third.pk], range(first.pk, third.pk + 1), [], [10**12]):
        listed = list(ids)
        assert list(rows.filter(among("dispatch_id", ids))) == list(rows.filter(dispatch_id__in=listed))
        assert list(rows.exclude(among("dispatch_id", ids))) == list(rows.exclude(dispatch_id__in=listed))
    either = rows.filter(Q(among("dispatch_id", [first.pk]), status="accepted") | Q(among("pk", [rows.last()])))
    assert list(either) == list(
        rows.filter(Q(dispatch_id=first.pk, status="accepted") | Q(pk=rows.last())).order_by("pk")
    )
    twice = rows.filter(among("dispatch_id", (pk for pk in (first.pk, second.pk))))  # a generator, read once
    assert list(twice) == list(twice.all()) == list(rows.filter(dispatch_id__in=[first.pk, second.pk]))
    assert set(rows.filter(Delivery.of_dispatches([second.pk, third.pk]))) == set(
        rows.filter(dispatch_id__in=[second.pk, third.pk])
    )


def test_on_postgresql_the_list_is_one_parameter_however_long():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's arrays")
    dispatch = sent_dispatch(AppFactory())
    ids = [dispatch.pk, *range(10**9, 10**9 + 2000)]
    with CaptureQueriesContext(connection) as captured:
        found = list(Delivery.objects.filter(Delivery.of_dispatches(ids)).values_list("dispatch_id", flat=True))
    assert found and set(found) == {dispatch.pk}
    (sql,) = [q["sql"] for q in captured]
    assert "= ANY(" in sql and str(10**9 + 1999) in sql and "IN (" not in sql
    with pytest.raises(ValueError):
        list(Delivery.objects.filter(among("dispatch_id", ["1}, {2"])))  # only integers reach the literal


def test_a_query_of_dispatches_is_read_by_the_database_not_listed():
    from delivery.models import Dispatch

    app = AppFactory()
    first, second, third = (sent_dispatch(app) for _ in range(3))
    rows = Delivery.objects.order_by("pk").values_list("pk", flat=True)
    for chosen in ([first.pk], [first.pk, third.pk], []):
        sends = Dispatch.objects.filter(pk__in=chosen).order_by("-id")  # an ordering of its own is dropped
        listed, others = list(rows.filter(dispatch_id__in=chosen)), list(rows.exclude(dispatch_id__in=chosen))
        with CaptureQueriesContext(connection) as captured:
            assert list(rows.filter(among("dispatch_id", sends))) == listed
            assert list(rows.exclude(among("dispatch_id", sends))) == others
            assert sorted(rows.filter(Delivery.of_dispatches(sends))) == listed
        assert len(captured) <= 3, "the dispatches are not read on their own"
    by_app = Dispatch.objects.filter(app=app).values_list("pk", flat=True)  # a list of ids as a query
    assert set(rows.filter(Delivery.of_dispatches(by_app))) == set(rows)
    if connection.vendor == "postgresql":
        with CaptureQueriesContext(connection) as captured:
            list(rows.filter(Delivery.of_dispatches(Dispatch.objects.filter(app=app))))
        (sql,) = [q["sql"] for q in captured]
        # Read once, then each partial index probed as for a list ("IN (subquery)" under the OR
        # scans every row, testing each against the hashed subquery).
        assert sql.count("= ANY(ARRAY(SELECT") == 2 and "IN (SELECT" not in sql
