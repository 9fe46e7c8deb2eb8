"""BLAS on one thread while a resampling runs, in whichever thread it runs; left as it was after.

The engine's matrix products are small and many, and a call brings its own threads (reading,
compressing) or shares the cores with other calls: BLAS threads would only compete with them. Worse,
OpenBLAS (the BLAS of NumPy's wheels) runs the threaded products of concurrent callers one at a time.

OpenBLAS built on pthreads (NumPy's and SciPy's wheels) has one process-wide thread count, so calls
running at once share one limit: the first to enter sets it, the last to leave restores the count it
found. It is set through OpenBLAS's own functions, found with threadpoolctl: threadpoolctl's limiter lets
only the first thread that ever set this count change it again, which would leave calls from other
threads unlimited, or unable to restore. BLIS and FlexiBLAS, also process-wide, are counted the same
way through threadpoolctl. Libraries whose count is per thread (MKL, OpenBLAS on OpenMP) are limited
in the calling thread only, with threadpoolctl.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["one_blas_thread"]

_lock = threading.RLock()  # re-entered by a finalizer that runs while it is held


class _Token:
    """One call inside :func:`one_blas_thread`."""


#: The calls inside :func:`one_blas_thread`: the first to enter sets the counts, the last to leave puts
#: them back. A set, not a count: a token is taken out once however often its call tries; and a weak
#: one, so that a call an interrupt kept from leaving leaves when its token is gone.
_callers: weakref.WeakSet[_Token] = weakref.WeakSet()
#: What puts each process-wide count back, filled before the count is changed.
_restore: list[Callable[[], None]] = []


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Keep every loaded BLAS on one thread while the block runs; restore what was there after.

    A count that someone else changed while the block ran (another library's limiter ending) is theirs
    and stays. The counts are put back even when an interrupt (Ctrl-C) comes while they are set or
    restored.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with one_blas_thread():
    ...     print({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
    {1}
    """
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()
    blas = [info for info in controller.info() if info["user_api"] == "blas"]
    token = _Token()
    finalizer = weakref.finalize(token, _leave, None)  # if an interrupt keeps the call from leaving
    try:
        with _lock:
            first = not _callers
            _callers.add(token)
            if first:
                for info in blas:
                    if _process_wide(info):
                        _limit_process_wide(controller, info, _restore)
        per_thread = controller.select(
            filepath=[info["filepath"] for info in blas if not _process_wide(info)]
        )
        limiter = per_thread.limit(limits=1) if per_thread.lib_controllers else None
        try:
            yield
        finally:
            if limiter is not None:
                limiter.restore_original_limits()
    finally:
        _leave(token)
        finalizer.detach()  # not if leaving was cut short: the finalizer then finishes it


def _leave(token: _Token | None) -> None:
    """Take `token` out; the last caller out puts the counts back. An interrupt meanwhile waits till then.

    Re-entered by a finalizer (a token's, collected while a count is put back), it may put back every
    count itself: the outer call then finds nothing left to do.
    """
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            with _lock:
                if token is not None:
                    _callers.discard(token)
                while not _callers and _restore:
                    restore = _restore[-1]
                    restore()  # putting a count back twice does no harm
                    if _restore and _restore[-1] is restore:
                        _restore.pop()
            break
        except KeyboardInterrupt as err:
            interrupted = err
    if interrupted is not None:
        try:
            raise interrupted
        finally:
            interrupted = None  # no cycle through this frame: its token goes at once


def _process_wide(info: dict[str, Any]) -> bool:
    """Whether a BLAS (threadpoolctl's description) has one thread count for the whole process.

    OpenBLAS on pthreads, BLIS and FlexiBLAS do; MKL and OpenBLAS on OpenMP keep one per thread.
    """
    if info.get("internal_api") == "openblas":
        return info.get("threading_layer") != "openmp"
    return info.get("internal_api") in ("blis", "flexiblas")


def _limit_process_wide(controller: Any, info: dict[str, Any], restore: list[Callable[[], None]]) -> None:
    """Set a process-wide BLAS to one thread, having first added to `restore` what sets it back."""
    if info.get("internal_api") != "openblas":  # threadpoolctl sets these from any thread
        library = controller.select(filepath=info["filepath"])
        before = info["num_threads"]
        restore.append(lambda: library.limit(limits=before) if _counts(library) == {1} else None)
        library.limit(limits=1)
        return
    _limit_openblas(info, restore)


def _counts(library: Any) -> set[int]:
    """Return the thread counts of the libraries in threadpoolctl's `library` selection."""
    return {info["num_threads"] for info in library.info()}


def _limit_openblas(info: dict[str, Any], restore: list[Callable[[], None]]) -> None:
    """Set an OpenBLAS library to one thread through its own functions.

    What sets it back is added to `restore` first; it leaves a count someone else changed meanwhile.
    """
    library = ctypes.CDLL(info["filepath"])  # already loaded: the same handle
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                restore.append(functools.partial(_put_back, get, put, int(get())))
                put(1)
                return


def _put_back(get: Any, put: Any, before: int) -> None:
    """Set an OpenBLAS count back to `before`, unless it is no longer the 1 this module set."""
    if int(get()) == 1:
        put(before)
