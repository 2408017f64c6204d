"""Shared test hygiene."""

import logging

import pytest


@pytest.fixture(autouse=True)
def _dvc_logging_stays_within_its_test():
    """DVC's CLI, run in-process by a test, binds handlers of the "dvc" logger to that test's captured
    streams, which pytest closes afterwards; a later in-process DVC call would then fail to log."""
    logger = logging.getLogger("dvc")
    before = list(logger.handlers)
    yield
    for handler in [h for h in logger.handlers if h not in before]:
        logger.removeHandler(handler)
