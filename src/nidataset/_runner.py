"""Dataset runs: find the inputs of a folder, process each, and report every failure at the end.

Files run one after the other, on a local process pool, or on any ``concurrent.futures.Executor`` (such
as a Dask cluster's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "list_inputs", "run"]


class DatasetError(RuntimeError):
    """Some files of a dataset failed; all the others were written.

    Attributes
    ----------
    failures : list of (str, Exception)
        Each failed input file with the exception it raised, in input order.
    outputs : list of str
        The output files that were written (or kept), in input order.
    """

    def __init__(self, failures: Sequence[tuple[str, BaseException]], outputs: Sequence[str]):
        self.failures = list(failures)
        self.outputs = list(outputs)
        lines = [f"  {path}: {type(err).__name__}: {err}" for path, err in self.failures]
        total = len(self.failures) + len(self.outputs)
        super().__init__(f"{len(self.failures)} of {total} files failed:\n" + "\n".join(lines))

    def __reduce__(self):  # picklable, so that it can cross process boundaries like any exception
        return type(self), (self.failures, self.outputs)


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
    workers: int = 1,
    executor: Executor | None = None,
    progress: bool = True,
    desc: str = "Resampling",
    initializer: Callable[[], None] | None = None,
) -> list[str]:
    """Apply `job` to every input, going on past failures.

    With ``workers > 1`` the inputs run on a local process pool of that size (`job` must then be
    picklable), each of whose processes first runs `initializer`; with an `executor` they run on it;
    otherwise one after the other in this process. The progress bar advances as inputs finish, in
    whatever order they finish.

    Returns the outputs in input order. If any input failed, raises :class:`DatasetError` once all the
    others are done, naming each failed input and its reason.
    """
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: nothing of ours runs beside a forking process pool

    results: dict[int, str] = {}
    failures: dict[int, BaseException] = {}

    def record(index: int, outcome: Callable[..., str], *args: str) -> None:
        try:
            results[index] = outcome(*args)
        except Exception as err:
            logger.warning("failed: %s: %s", inputs[index], err)
            failures[index] = err

    if executor is None and workers == 1:
        for index, path in enumerate(Bar(inputs, desc=desc, unit="file", disable=not progress)):
            record(index, job, path)
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = executor or ProcessPoolExecutor(max_workers=min(workers, len(inputs)), initializer=initializer)
        futures = {}
        try:
            for index, path in enumerate(inputs):
                futures[pool.submit(job, path)] = index
            with Bar(total=len(inputs), desc=desc, unit="file", disable=not progress) as bar:
                for future in as_completed(futures):
                    record(futures[future], future.result)
                    bar.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            if executor is None:
                pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise DatasetError(
            [(inputs[i], failures[i]) for i in sorted(failures)], [results[i] for i in sorted(results)]
        )
    return [results[i] for i in range(len(inputs))]
