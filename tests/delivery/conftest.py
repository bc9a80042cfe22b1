"""Fixtures of the delivery tests: the push simulator over real HTTP/2, and an app that sends to it."""

from tests.delivery.sending import sim, sim_app, sim_session  # noqa: F401
