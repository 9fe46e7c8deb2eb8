"""Dataset runs: find the inputs of a folder, process each, and report every failure at the end."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "list_inputs", "run"]


class DatasetError(RuntimeError):
    """Some files of a dataset failed; all the others were written.

    Attributes
    ----------
    failures : list of (str, Exception)
        Each failed input file with the exception it raised, in input order.
    outputs : list of str
        The output files that were written, in input order.
    """

    def __init__(self, failures: Sequence[tuple[str, BaseException]], outputs: Sequence[str]):
        self.failures = list(failures)
        self.outputs = list(outputs)
        lines = [f"  {path}: {type(err).__name__}: {err}" for path, err in self.failures]
        total = len(self.failures) + len(self.outputs)
        super().__init__(f"{len(self.failures)} of {total} files failed:\n" + "\n".join(lines))


def list_inputs(folder: str | os.PathLike, suffix: str) -> list[str]:
    """Paths of the files directly in `folder` whose name ends in `suffix`, sorted by name.

    Raises
    ------
    FileNotFoundError
        If `folder` is not an existing folder or holds no such file.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the dataset folder '{folder}' does not exist")
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.name.endswith(suffix) and e.is_file())
    if not names:
        raise FileNotFoundError(f"no '{suffix}' files in '{folder}'")
    return [os.path.join(folder, name) for name in names]


def run(
    inputs: Sequence[str],
    job: Callable[[str], str],
    *,
    progress: bool = True,
    desc: str = "Resampling",
) -> list[str]:
    """Apply `job` to every input, in order, going on past failures.

    Returns the outputs in input order. If any input failed, raises :class:`DatasetError` once all
    the others are done, naming each failed input and its reason.
    """
    from tqdm import tqdm

    outputs: list[str] = []
    failures: list[tuple[str, BaseException]] = []
    for path in tqdm(inputs, desc=desc, unit="file", disable=not progress):
        try:
            outputs.append(job(path))
        except Exception as err:
            logger.warning("failed: %s: %s", path, err)
            failures.append((path, err))
    if failures:
        raise DatasetError(failures, outputs)
    return outputs
