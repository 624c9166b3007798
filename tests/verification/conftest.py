"""Fixtures of the verification tests."""

from __future__ import annotations

import pytest

from kyc import create_app
from kyc.runtime import Runtime


@pytest.fixture
def app_with(database_url, make_config):
    """An app on the test database with some settings changed."""
    runtimes = []

    def make(**overrides):
        rt = Runtime.start(make_config(database_url, **overrides), migrate=False)
        runtimes.append(rt)
        return create_app(runtime=rt)

    yield make
    for rt in runtimes:
        rt.engine.dispose()
