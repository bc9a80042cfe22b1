import pytest

from delivery.models import Dispatch
from delivery.services.dispatches import _AUDIENCE_CHECKS, _GATES, dispatch_gate_register


@pytest.fixture
def open_gate():
    """A gate for API-triggered dispatches that lets everything through (campaigns test their own)."""
    saved = dict(_GATES)
    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    yield
    _GATES.clear()
    _GATES.update(saved)


@pytest.fixture
def no_campaign_audience_check(monkeypatch):
    """Campaign-kind dispatches made by hand, with no campaign behind them, have their segments read
    as the engine reads any (campaigns test their audience check themselves)."""
    monkeypatch.delitem(_AUDIENCE_CHECKS, Dispatch.Kind.CAMPAIGN)
