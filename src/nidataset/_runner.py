"""Dataset runs: find the inputs of a folder, resample each into its place, report every failure at the end.

Files run one after the other, on a local pool (of processes; of threads for files in a bucket, which
then share the store's client), or on any ``concurrent.futures.Executor`` (such as a Dask
cluster's). The unit of work is a :class:`DatasetJob`: small, immutable and picklable, it
carries everything a file needs, the threads it may use included, so that it runs the same in this
process, a pool's process or a Dask task. This module also knows the layout of the outputs (a folder
per case, or one folder) and clears what killed runs left there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from . import _nifti
from ._options import Options, check_input_file
from ._paths import is_url, join, uncompressed_hint
from ._pipeline import resample_file
from ._storage import LOCAL, Storage, clients_shared_by_threads

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetError",
    "DatasetJob",
    "case_folder",
    "is_dask",
    "list_inputs",
    "output_folder",
    "remove_stale_temporaries",
    "run",
    "without_outputs",
]


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


def list_inputs(folder: str | os.PathLike, suffix: str, storage: Storage = LOCAL) -> list[str]:
    """Paths of the entries directly in `folder` whose name ends in `suffix`, sorted by name.

    Every such entry is listed, whatever it is: one that is not a readable regular file (a folder, a FIFO,
    a broken or looping symbolic link) fails with its reason when its turn comes, and stops nothing. A
    URL's prefix lists the objects directly under it (see :meth:`Storage.list_folder`).

    Raises
    ------
    FileNotFoundError
        If `folder` does not exist, is not a folder, or holds no such entry.
    """
    folder = os.fspath(folder)
    if is_url(folder):
        return storage.list_folder(folder, suffix)
    if not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise FileNotFoundError(f"the dataset folder '{folder}' is a file, not a folder")
        raise FileNotFoundError(f"the dataset folder '{folder}' does not exist")
    with os.scandir(folder) as entries:
        every = [e.name for e in entries]
    names = sorted(name for name in every if name.endswith(suffix))
    if not names:
        raise FileNotFoundError(f"no '{suffix}' files in '{folder}'{uncompressed_hint(*every, folder=True)}")
    return [os.path.join(folder, name) for name in names]


def without_outputs(target: Callable[[str], str], inputs: Sequence[str]) -> list[str]:
    """Return `inputs` less the files that are outputs (``target(input)``) of other inputs.

    Such files are an earlier run's outputs when the output folder is the input folder: a run never takes
    its own outputs as inputs (they would be read and replaced at once).
    """
    outputs = set()
    for path in inputs:
        try:
            outputs.add(_real(target(path)))
        except ValueError:
            pass  # reported when that file runs
    kept = [path for path in inputs if _real(path) not in outputs]
    if len(kept) < len(inputs):
        logger.info("left out %d files that are outputs of this run", len(inputs) - len(kept))
    return kept


def _real(path: str) -> str:
    return path if is_url(path) else os.path.realpath(path)


@dataclass(frozen=True)
class DatasetJob:
    """Resample one file of a dataset into its place: picklable, for other processes and Dask tasks.

    `threads` is what each file may use: the caller's share when files run one after the other, one
    core when they run side by side on a pool or a cluster. `storage` opens the URLs (it travels with the
    job: a cluster's workers need no shared file system when inputs and outputs are URLs). `on_dask`:
    the job runs as a task of a Dask cluster (:func:`is_dask`), which gives its worker's thread back
    once only the store's part of its last upload is left (``distributed.secede``): the worker's next
    task computes while the store takes this one's output.
    """

    root: str
    saving_mode: str
    shape: tuple[int, int, int]
    options: Options
    threads: int
    skip_existing: bool = False
    storage: Storage = LOCAL
    on_dask: bool = False
    # Differs between runs: Dask would otherwise hand back the result of an identical earlier task.
    run: str = field(default_factory=lambda: secrets.token_hex(8))

    def folder(self, path: str) -> str:
        """Return the output folder of the input `path`."""
        return output_folder(self.root, self.saving_mode, path)

    def target(self, path: str) -> str:
        """Return the output file of the input `path`."""
        return join(self.folder(path), _nifti.output_name(path))

    def __call__(
        self,
        path: str,
        stop: threading.Event | None = None,
        ready: Callable[[], None] | None = None,
        waiting: Callable[[], None] | None = None,
    ) -> str:
        """Resample `path`; a thread pool may ask it to `stop`, and hear when it is `ready` or `waiting`.

        See :func:`resample_file`; on Dask, `waiting` gives the task's thread back to its worker.
        """
        if not is_url(path):  # checked here, where it runs: not a FIFO, a folder, a broken link
            check_input_file(path, _nifti.SUFFIX)  # (a listed object: opening it says what is wrong)
        return resample_file(
            path,
            self.folder(path),
            self.shape,
            self.options,
            threads=self.threads,
            skip_existing=self.skip_existing,
            storage=self.storage,
            stop=stop,
            ready=ready,
            waiting=waiting or (_leave_thread_pool if self.on_dask else None),
        )


def is_dask(executor: Executor | None) -> bool:
    """Whether `executor` runs its tasks on a Dask cluster (a ``distributed.Client``'s executor)."""
    return executor is not None and type(executor).__module__.partition(".")[0] == "distributed"


def _leave_thread_pool() -> None:
    """Give this task's thread back to its Dask worker, which may start its next task at once.

    The task goes on outside the pool and ends as usual (one of Dask's "long-running" tasks), holding
    its compressed output only. It keeps its thread where the worker already has as many tasks out of
    its pool as it has threads (so a worker of N threads has at most about N files computing and N
    waiting on the store); with fsspec before 2026.6, which makes a client of the store per thread
    (the next task would run on a new thread, and make one: a third of a CPU-second); and where the
    call does not run in a worker's task thread.
    """
    if not clients_shared_by_threads():
        return
    try:
        from distributed import get_worker, secede

        state = get_worker().state
        if len(state.long_running) >= state.nthreads:
            return
        secede()
    except Exception as err:  # not a worker's task thread (get_worker raises ValueError)
        logger.debug("this task keeps its thread: %s", err)


def output_folder(root: str, saving_mode: str, path: str) -> str:
    """Return the folder under `root` that the output of the input `path` goes in.

    Raises
    ------
    ValueError
        If ``saving_mode="case"`` and the name of `path` cannot name a folder (see :func:`case_folder`).

    Examples
    --------
    >>> output_folder("out", "case", "scans/patient_001.nii.gz")
    'out/patient_001'
    >>> output_folder("s3://bucket/out/", "folder", "scans/patient_001.nii.gz")
    's3://bucket/out/'
    """
    return root if saving_mode == "folder" else join(root, case_folder(path))


def case_folder(path: str) -> str:
    """Folder name of a case: the file's prefix, which must be a plain folder name.

    Examples
    --------
    >>> case_folder("scans/patient_001.nii.gz")
    'patient_001'
    """
    name = _nifti.prefix(path)
    if name in ("", ".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"'{path}' cannot name a case folder: its prefix is {name!r}")
    return name


def remove_stale_temporaries(job: DatasetJob, inputs: Sequence[str]) -> None:
    """Clear what killed runs left in the output folders of `inputs` (hidden temporary files only).

    In a bucket: the unfinished uploads of the outputs of `inputs` (S3), which are aborted.
    """
    if is_url(job.root):
        targets = []
        for path in inputs:
            with contextlib.suppress(ValueError):  # reported when that file runs
                targets.append(job.target(path))
        cleared = job.storage.abort_unfinished(targets)
        if cleared:
            logger.info("cleared %d uploads or hidden keys left by killed runs under %s", cleared, job.root)
        return
    folders = {job.root}
    for path in inputs:
        try:
            folders.add(job.folder(path))
        except ValueError:
            pass  # reported when that file runs
    removed = sum(_nifti.remove_stale_temporaries(folder) for folder in folders)
    if removed:
        logger.info("removed %d temporary files left by killed runs under %s", removed, job.root)


def run(
    inputs: Sequence[str],
    job: Callable[..., str],
    *,
    workers: int = 1,
    executor: Executor | None = None,
    in_threads: bool = False,
    progress: bool = True,
    desc: str = "Resampling",
) -> list[str]:
    """Apply `job` to every input, going on past failures.

    With ``workers > 1`` the inputs run on a local process pool of that size (`job` must then be
    picklable, and take a ``stop=`` flag, set when the run is interrupted), or on threads of this
    process if `in_threads`: `workers` of them compute at once, among at most three times as many, the
    others opening their inputs or waiting on the store to take their outputs (`job` then takes a
    ``stop=`` event, and ``ready=`` and ``waiting=`` callables, :class:`_Turns`); with an `executor`
    they run on it; otherwise one after the other in this process. The progress bar advances as inputs
    finish, in whatever order they finish.

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
        for index, path in enumerate(_bar(Bar, inputs, desc=desc, unit="file") if progress else inputs):
            record(index, job, path)
    else:
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed

        stop: Any = threading.Event()  # set when the run is interrupted
        size = min(workers, len(inputs))
        if executor is not None:
            pool, task = executor, job
        elif in_threads:
            # As many again opening their inputs, and as many ending their uploads: against a store far
            # away, 2 x size threads spend their time on the opening and the upload ahead of the turns.
            pool = ThreadPoolExecutor(3 * size, thread_name_prefix="nidataset-file")
            task = functools.partial(_Turns(size, stop).run, job)
        else:
            context = _pool_context()
            stop = _SharedFlag(context)  # the pool's processes read it: their files stop at the next slab
            pool = ProcessPoolExecutor(size, context, initializer=_start_pool_process, initargs=(stop,))
            task = functools.partial(_interruptible, job)
        futures = {}
        try:
            for index, path in enumerate(inputs):
                futures[pool.submit(task, path)] = index
            with _bar(Bar, total=len(inputs), desc=desc, unit="file") if progress else _NoBar() as bar:
                for future in as_completed(futures):
                    record(futures[future], future.result)
                    bar.update()
        except BaseException:
            stop.set()  # the files of a thread or process pool stop at their next slab
            for future in futures:
                future.cancel()
            raise
        finally:
            if in_threads and executor is None:
                _shut_down_threads(pool)
            elif executor is None:
                with _uninterrupted():
                    pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise DatasetError(
            [(inputs[i], failures[i]) for i in sorted(failures)], [results[i] for i in sorted(results)]
        )
    return [results[i] for i in range(len(inputs))]


def _bar(kind: Any, *args: Any, **kwargs: Any) -> Any:
    """Return ``kind(*args, **kwargs)``, a tqdm bar, leaving the process's start method unset if it was.

    tqdm's first bar makes a ``multiprocessing.RLock``, which fixes the start method for good: a
    caller's ``set_start_method`` would then fail. Unset again, it is the caller's to choose.
    """
    import multiprocessing

    unset = multiprocessing.get_start_method(allow_none=True) is None
    bar = kind(*args, **kwargs)
    if unset:
        multiprocessing.set_start_method(None, force=True)  # as it was: nothing had chosen one
    return bar


class _SharedFlag:
    """A flag the caller sets and the pool's processes read at each slab (``set``, ``is_set``).

    A shared byte, with no lock: a pool process killed while it reads holds nothing the caller's
    ``set`` would wait for (a ``multiprocessing.Event`` takes a lock on every look).
    """

    def __init__(self, context: Any):
        import ctypes

        self._value = context.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        """Raise the flag."""
        self._value.value = True

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return bool(self._value.value)


class _NoBar:
    """Where no progress bar is shown: no tqdm at all (its first bar fixes the process's start method)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def update(self) -> None:
        """Show nothing."""


def _pool_context() -> Any:
    """Return the start method's context for the local pool, without fixing the process's own.

    ``multiprocessing.get_context()`` with no name, which the pool calls when given none, sets the
    process's start method for good: a caller's ``set_start_method`` would then fail. Named, the
    context is the one the caller set, or the platform's default (the first of all start methods).
    """
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    return multiprocessing.get_context(method or multiprocessing.get_all_start_methods()[0])


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C off while the local pool shuts down, then put the caller's handler back.

    Interrupted, the pool's shutdown can wait forever for processes that were never told to stop. Its
    processes still take Ctrl-C while they work on a file, so a second one still ends the files in
    progress (each unwinds cleanly) and the shutdown completes. Python takes signals in the main thread
    only; from another thread nothing is changed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


class _Turns:
    """Files of a thread pool taking turns: `count` compute at once; the others open or end.

    A file takes a turn once its input is open (the `ready` of :func:`resample_file`: a store's first
    bytes come while other files compute), and gives it back when all that is left of it is the
    store's part of its last upload (the `waiting`), or when it ends: while the store takes one file's
    output, the next one computes. A file waiting for its turn stops once `stop` is set.
    """

    def __init__(self, count: int, stop: threading.Event):
        self.free, self.stop = threading.Semaphore(count), stop

    def run(self, job: Callable[..., str], path: str) -> str:
        """Return ``job(path, stop=..., ready=..., waiting=...)``, computing in turn."""
        held = False  # called by this file's own thread only

        def take() -> None:
            nonlocal held
            if held:
                return
            while not self.free.acquire(timeout=0.1):
                if self.stop.is_set():
                    raise KeyboardInterrupt
            held = True
            if self.stop.is_set():  # the turn of a file that stopped: this one does not go on either
                give_back()
                raise KeyboardInterrupt

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                self.free.release()

        try:
            return job(path, stop=self.stop, ready=take, waiting=give_back)
        finally:
            give_back()


def _shut_down_threads(pool: Executor) -> None:
    """Wait for a thread pool's files to end (asked to stop, they do at their next slab).

    A file waiting on its store ends only once its request does (the client's timeouts bound it): a
    Ctrl-C meanwhile stops the wait, and the threads end on their own.
    """
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


#: In a process of the local pool only: the run's event, set when it is interrupted.
_pool_stop: Any = None


def _start_pool_process(stop: Any) -> None:
    """Start a process of the local pool (its own process: these settings are the library's to make).

    - Its files stop at their next slab once `stop` (a :class:`_SharedFlag`) is set: the caller was
      interrupted, even by a SIGINT sent to the caller's process alone (``kill -INT``, a notebook's
      interrupt button).
    - Ctrl-C reaches it only while it works on a file (:func:`_interruptible`): the terminal sends SIGINT
      to every process of the group, and a pool process that took it while waiting for work would die
      and break the pool, which then kills the others mid-write, leaving their temporary files behind.
    - An interrupt that Python can only discard (one raised in a weakref callback or ``__del__``) is
      discarded without a traceback.
    - It ends when the caller's process does: its siblings hold the pipe it waits on open, so it would
      otherwise wait for work forever. On Linux, where the caller started it (``fork``, ``spawn``), the
      kernel ends it; otherwise (``forkserver``: the fork server, which lives as long as any of its
      processes, started it) a thread of its own waits for the caller's end.
    """
    import multiprocessing

    global _pool_stop
    _pool_stop = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.unraisablehook = quiet_interrupts
    caller = multiprocessing.parent_process()
    if caller is None:  # pragma: no cover (a pool's process always has one)
        return
    if sys.platform.startswith("linux") and os.getppid() == caller.pid:
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass
        else:
            if os.getppid() != caller.pid:  # the caller ended before the line above: end now
                os._exit(1)
            return
    threading.Thread(target=_end_with, args=(caller.sentinel,), name="nidataset-caller", daemon=True).start()


def _end_with(sentinel: int) -> None:
    """Wait for the caller's process to end (its `sentinel` is ready), then end as the kernel would."""
    from multiprocessing.connection import wait

    wait([sentinel])
    os.kill(os.getpid(), signal.SIGTERM)


def quiet_interrupts(unraisable: Any) -> None:
    """Report an unraisable exception as usual, unless it is a KeyboardInterrupt (a ``sys.unraisablehook``).

    That of a pool process, and of the command while it runs: a Ctrl-C that lands in a finalizer or a
    callback, where Python cannot raise it, prints nothing (the interrupt is handled where it can be).
    """
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _interruptible(job: Callable[..., str], path: str) -> str:
    """Run `job` on `path` in a pool process, taking Ctrl-C as KeyboardInterrupt meanwhile.

    It stops at its next slab once the run's event is set (:func:`_start_pool_process`).
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return job(path, stop=_pool_stop)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
