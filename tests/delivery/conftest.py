"""Fixtures of the delivery tests: the push simulator over real HTTP/2, and an app that sends to it."""

from tests.delivery.sending import sim, sim_app, sim_session  # noqa: F401
from tests.fakes.pushsim import (  # noqa: F401 (fixtures: see tests/fakes/pushsim.py)
    apns_credentials,
    fcm_credentials,
    pushsim,
    pushsim_app,
    pushsim_server,
)
