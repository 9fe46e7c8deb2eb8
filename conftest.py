"""Runs for every test pytest collects, the docstring examples of ``src/nidataset`` among them."""

import tempfile

import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _examples_write_in_tmp_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each docstring example a temporary folder of pytest's, removed as pytest removes its own.

    The examples make their files with ``tempfile.mkdtemp()``, as a user would; left in the system's
    temporary folder, every run of the suite would leave them behind.
    """
    if isinstance(request.node, DoctestItem):
        folder = request.getfixturevalue("tmp_path_factory").mktemp("example")
        monkeypatch.setattr(tempfile, "tempdir", str(folder))
