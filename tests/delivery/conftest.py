import pytest

from delivery.models import Dispatch
from delivery.services.dispatches import _GATES, dispatch_gate_register


@pytest.fixture
def open_gate():
    """A gate for API-triggered dispatches that lets everything through (campaigns test their own)."""
    saved = dict(_GATES)
    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    yield
    _GATES.clear()
    _GATES.update(saved)
