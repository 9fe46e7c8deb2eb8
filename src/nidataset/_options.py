"""The options of a resampling and their checks: one table for the API and the command line."""

from __future__ import annotations

import multiprocessing
import numbers
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._operators import ALIGNS

__all__ = [
    "ALIGNS",
    "INTERPOLATIONS",
    "SAVING_MODES",
    "Options",
    "available_cores",
    "check_desired_volume",
    "check_flag",
    "check_options",
    "check_positive_int",
    "check_saving_mode",
    "resolve_threads",
]

#: Interpolations and their spline orders ("label" has its own algorithm, on linear weights).
INTERPOLATIONS: dict[str, int | None] = {"bspline": 3, "linear": 1, "nearest": 0, "label": None}
#: Layouts of a dataset's outputs: a folder per case, or all in one folder.
SAVING_MODES = ("case", "folder")
#: Interpolations that antialiasing applies to.
SMOOTHABLE = ("bspline", "linear")


@dataclass(frozen=True)
class Options:
    """How one volume is resampled (beyond its size): checked, immutable and picklable."""

    interpolation: str = "bspline"
    antialias: bool = False
    align: str = "origin"
    preview: bool = False

    @property
    def order(self) -> int | None:
        """Spline order of the interpolation (``None`` for "label")."""
        return INTERPOLATIONS[self.interpolation]


def check_options(
    interpolation: str = "bspline", antialias: bool = False, align: str = "origin", preview: bool = False
) -> Options:
    """Check the keyword options of a resampling.

    Examples
    --------
    >>> check_options("linear", antialias=True)
    Options(interpolation='linear', antialias=True, align='origin', preview=False)
    >>> check_options("nearest", antialias=True)
    Traceback (most recent call last):
    ...
    ValueError: antialias applies to the bspline and linear interpolations, not to 'nearest'
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    antialias = check_flag("antialias", antialias)
    preview = check_flag("preview", preview)
    if antialias and interpolation not in SMOOTHABLE:
        raise ValueError(
            f"antialias applies to the bspline and linear interpolations, not to {interpolation!r}"
        )
    return Options(interpolation, antialias, align, preview)


def check_flag(name: str, value: object) -> bool:
    """`value` as a bool: only True or False (Python's or NumPy's) are taken.

    Examples
    --------
    >>> check_flag("preview", "no")
    Traceback (most recent call last):
    ...
    ValueError: preview must be True or False, got 'no'
    """
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_desired_volume(desired_volume: Sequence[int]) -> tuple[int, int, int]:
    """Three positive Python or NumPy integers (not bools), as a tuple of int.

    Examples
    --------
    >>> check_desired_volume([224, np.int64(224), 128])
    (224, 224, 128)
    >>> check_desired_volume((224, 224))
    Traceback (most recent call last):
    ...
    ValueError: desired_volume must be three positive integers (X, Y, Z), got (224, 224)
    """
    try:
        values = tuple(desired_volume)
    except TypeError:
        values = ()
    if (
        isinstance(desired_volume, str | bytes)
        or len(values) != 3
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_) for v in values)
        or not all(int(v) > 0 for v in values)
    ):
        raise ValueError(f"desired_volume must be three positive integers (X, Y, Z), got {desired_volume!r}")
    x, y, z = (int(v) for v in values)
    return x, y, z


def check_saving_mode(saving_mode: str) -> str:
    """One of :data:`SAVING_MODES`."""
    if saving_mode not in SAVING_MODES:
        raise ValueError(f"saving_mode must be 'case' or 'folder', got {saving_mode!r}")
    return saving_mode


def check_positive_int(name: str, value: object) -> int:
    """Check for a positive Python or NumPy integer (not a bool); return it as an int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool | np.bool_) or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(threads: int | None) -> int:
    """Threads one call may use: `threads` itself, or by default the cores a lone call has.

    A call from the main thread of a process that ``multiprocessing`` did not start (a script, a
    notebook, the command line) has every core of the process. A call from any other thread (a thread
    pool, a Dask task) or from a process that ``multiprocessing`` started (a pool's worker, say) is taken
    to share the cores with its siblings, so it takes one.
    """
    if threads is not None:
        return check_positive_int("threads", threads)
    if threading.current_thread() is threading.main_thread() and multiprocessing.parent_process() is None:
        return available_cores()
    return 1
