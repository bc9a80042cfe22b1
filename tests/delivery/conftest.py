from tests.fakes.pushsim import (  # noqa: F401 (fixtures)
    apns_credentials,
    fcm_credentials,
    pushsim,
    pushsim_app,
    pushsim_server,
)
