from tests.delivery.sending import sim, sim_app, sim_session  # noqa: F401 (fixtures: the push simulator)
