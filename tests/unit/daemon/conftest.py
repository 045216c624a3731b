"""The daemon's unit tests' shared fixture: its log lines, as JSON, in a string."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from supervisord_batt import logs


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """The log, configured as JSON into a string for the test (restored after)."""
    stream = io.StringIO()
    logs.configure("json", logging.INFO, stream=stream)
    try:
        yield stream
    finally:
        logs.configure("json", logging.INFO)
