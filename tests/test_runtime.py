"""The long-running processes tune their garbage collector once they are ready (config.runtime)."""

import gc
import json
import math

import pytest
from django_q.signals import pre_execute
from django_q.tasks import async_task

import config.runtime
from tests.test_settings import _python

_READ = "import gc, json; print(json.dumps([gc.get_threshold(), gc.get_freeze_count()]))"


def test_the_web_app_freezes_what_it_loaded_and_collects_young_objects_less_often(tmp_path):
    result = _python(f"import config.wsgi; {_READ}", {}, tmp_path)
    assert result.returncode == 0, result.stderr
    thresholds, frozen = json.loads(result.stdout)
    assert thresholds == [10_000, 10, 10]
    assert frozen > 10_000  # Django's and the app's objects


@pytest.mark.parametrize(("value", "expected"), [("", [700, 10, 10]), ("2000,5,5", [2000, 5, 5])])
def test_the_thresholds_are_a_setting_and_empty_keeps_pythons_own(tmp_path, value, expected):
    result = _python(f"import config.wsgi; {_READ}", {"PUSHDESK_GC_THRESHOLD": value}, tmp_path)
    assert result.returncode == 0, result.stderr
    thresholds, frozen = json.loads(result.stdout)
    assert thresholds == expected
    assert (frozen > 0) is bool(value)


@pytest.fixture
def collector_restored(monkeypatch):
    monkeypatch.setattr(config.runtime, "_tuned_in", None)
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_a_worker_tunes_its_collector_before_its_first_task_and_only_then(collector_restored):
    """What django-q2's worker sends before each task (``pre_execute``), as a worker process sends it."""
    gc.set_threshold(700, 10, 10)
    pre_execute.send(sender="django_q", func=math.floor, task={"name": "first", "func": "math.floor"})
    assert gc.get_threshold() == (10_000, 10, 10)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    gc.set_threshold(700, 10, 10)
    pre_execute.send(sender="django_q", func=math.floor, task={"name": "second", "func": "math.floor"})
    # Once per process: nothing frozen again (frozen objects that were freed since leave the count).
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() <= frozen


@pytest.mark.django_db
def test_a_task_run_in_the_calling_process_leaves_its_collector_as_it_is(collector_restored, settings):
    """The tests and PUSHDESK_TASKS_SYNC run tasks in the calling process, through django-q2's worker."""
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "sync": True}
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    async_task("math.floor", 1.5, sync=True)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() <= frozen
