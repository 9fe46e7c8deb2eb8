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
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["one_blas_thread"]

_lock = threading.Lock()
_users = 0
_restore: list[Callable[[], None]] = []


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Keep every loaded BLAS on one thread while the block runs; restore what was there after.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> with one_blas_thread():
    ...     print({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
    {1}
    """
    from threadpoolctl import ThreadpoolController

    global _users
    controller = ThreadpoolController()
    blas = [info for info in controller.info() if info["user_api"] == "blas"]
    with _lock:
        if _users == 0:
            _restore[:] = [_limit_process_wide(controller, info) for info in blas if _process_wide(info)]
        _users += 1
    try:
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
        with _lock:
            _users -= 1
            if _users == 0:
                for restore in _restore:
                    restore()
                _restore.clear()


def _process_wide(info: dict[str, Any]) -> bool:
    """Whether a BLAS (threadpoolctl's description) has one thread count for the whole process.

    OpenBLAS on pthreads, BLIS and FlexiBLAS do; MKL and OpenBLAS on OpenMP keep one per thread.
    """
    if info.get("internal_api") == "openblas":
        return info.get("threading_layer") != "openmp"
    return info.get("internal_api") in ("blis", "flexiblas")


def _limit_process_wide(controller: Any, info: dict[str, Any]) -> Callable[[], None]:
    """Set a process-wide BLAS to one thread; return what sets it back."""
    if info.get("internal_api") != "openblas":  # threadpoolctl sets these from any thread
        limiter = controller.select(filepath=info["filepath"]).limit(limits=1)
        return limiter.restore_original_limits
    return _limit_openblas(info)


def _limit_openblas(info: dict[str, Any]) -> Callable[[], None]:
    """Set an OpenBLAS library to one thread through its own functions; return what sets it back."""
    library = ctypes.CDLL(info["filepath"])  # already loaded: the same handle
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                before = int(get())
                put(1)
                return lambda: put(before)
    return lambda: None
