"""Apps the accounts tests grant and revoke access to."""

import pytest

from tests.factories import AppFactory


@pytest.fixture
def shop(db):
    return AppFactory(name="Shop")


@pytest.fixture
def bank(db):
    return AppFactory(name="Bank")
