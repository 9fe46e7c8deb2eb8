"""Fixtures shared by the tests (helpers shared with the benchmarks are in helpers.py)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261121)


@pytest.fixture
def volume(tmp_path, rng):
    """A 20x30x17 int16 volume of random values, written to a file: ``(path, data)``."""
    from helpers import write_nifti

    data = np.asfortranarray(rng.integers(-1000, 3000, (20, 30, 17)).astype(np.int16))
    return write_nifti(tmp_path / "v.nii.gz", data), data
