"""The options of a resampling and their checks: one table for the API and the command line."""

from __future__ import annotations

import errno
import importlib.util
import multiprocessing
import numbers
import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._operators import ALIGNS
from ._paths import uncompressed_hint

__all__ = [
    "ALIGNS",
    "INTERPOLATIONS",
    "SAVING_MODES",
    "Options",
    "available_cores",
    "check_desired_volume",
    "check_flag",
    "check_input_file",
    "check_installed",
    "check_options",
    "check_output_folder",
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
    if preview:
        check_installed("matplotlib", "preview=True")
    return Options(interpolation, antialias, align, preview)


def check_installed(module: str, feature: str, install: str | None = None) -> None:
    """Refuse `feature` at once, before any work, if the optional `module` cannot be imported.

    Raises
    ------
    ImportError
        Naming the feature and how to install what it needs (``pip install <install or module>``).
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        found = False
    if not found:
        raise ImportError(
            f"{feature} needs {module}, which is not installed: pip install {install or module}"
        )


def check_input_file(path: str, suffix: str) -> str:
    """Check that `path` is a regular file (or a link to one) whose name ends in `suffix`; return it.

    Nothing is opened: a FIFO would block whoever opened it, waiting for a writer.

    Raises
    ------
    FileNotFoundError
        If nothing is at `path`, or it is a symbolic link to nothing.
    IsADirectoryError
        If `path` is a folder.
    OSError
        If `path` is a loop of symbolic links, or cannot be looked at.
    ValueError
        If the name does not end in `suffix`; an :class:`~nidataset._nifti.InvalidVolumeError` (a
        ValueError) if it is a FIFO, a device or a socket.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(
                f"the input file '{path}' is a symbolic link to '{os.readlink(path)}', which does not exist"
            ) from None
        raise FileNotFoundError(f"the input file '{path}' does not exist") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OSError(err.errno, f"the input file '{path}' is a loop of symbolic links") from None
        raise OSError(err.errno, f"cannot look at the input file '{path}': {err.strerror}") from err
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(
            f"'{path}' is a folder, not a '{suffix}' file (resampling_dataset() resamples a folder)"
        )
    if not path.endswith(suffix):
        raise ValueError(f"the input file must be a '{suffix}' file, got '{path}'{uncompressed_hint(path)}")
    if not stat.S_ISREG(mode):
        from ._nifti import InvalidVolumeError

        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise InvalidVolumeError(f"'{path}' is a {kind}, not a regular file")
    return path


def check_output_folder(folder: str) -> str:
    """Check that `folder` is a folder this process may write in, or one it may create; return it.

    Nothing is created (the folder is made when the first output is written): the nearest part of the
    path that exists must be a folder, writable.

    Raises
    ------
    NotADirectoryError
        If `folder`, or the nearest part of it that exists, is not a folder.
    PermissionError
        If that folder cannot be written in.
    """
    existing = os.path.abspath(folder or os.curdir)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    where = "it" if existing == os.path.abspath(folder or os.curdir) else f"'{existing}'"
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"cannot write in the output folder '{folder}': {where} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write in the output folder '{folder}': {where} is not writable")
    return folder


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
