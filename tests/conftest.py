"""Fixtures shared by the tests (helpers shared with the benchmarks are in helpers.py)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)
