"""Resampling of NIfTI volumes to a fixed array size: the public API.

Each function validates its arguments, then reads, computes and writes; the arithmetic lives in
``_resize`` (values) and ``_geometry`` (affines), the file handling in ``_nifti``, and the dataset loop
in ``_runner``.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from . import _nifti, _resize, _runner
from ._labels import resize_labels
from ._nifti import InvalidVolumeError
from ._resize import ALIGNS, NonFiniteError, resize, resize_slabs, slab_rows
from ._runner import DatasetError

__all__ = ["DatasetError", "InvalidVolumeError", "resampling", "resampling_dataset"]

logger = logging.getLogger(__name__)

_SAVING_MODES = ("case", "folder")
#: Interpolation names and their spline orders ("label" has its own algorithm, on linear interpolation).
_INTERPOLATIONS = {"bspline": 3, "linear": 1, "nearest": 0, "label": None}


def resampling(
    nii_path: str | os.PathLike,
    output_path: str | os.PathLike,
    desired_volume: Sequence[int],
    debug: bool = False,
    *,
    interpolation: str = "bspline",
    antialias: bool = False,
    align: str = "origin",
    preview: bool = False,
) -> str:
    """Resample a 3D NIfTI volume to `desired_volume` voxels, keeping its field of view.

    The volume is interpolated with a cubic B-spline on a grid of `desired_volume` voxels that starts at
    the same origin, has the same directions and spans the same extent: the voxel spacing becomes
    ``spacing * old_size / new_size``. The result is written to ``<output_path>/<PREFIX>_resampled.nii.gz``
    in the input's data type.

    Parameters
    ----------
    nii_path : str or os.PathLike
        Input volume, a ``.nii.gz`` file. A 4D file whose extra dimensions are all 1 is read as 3D.
    output_path : str or os.PathLike
        Folder for the result; created if needed ("" is the current folder).
    desired_volume : sequence of 3 int
        Output size ``(X, Y, Z)`` in voxels: three positive integers (Python or NumPy).
    debug : bool, optional
        Print ``Resampled image saved at: '<path>'`` once the file is written.
    interpolation : {"bspline", "linear", "nearest", "label"}, optional
        Cubic B-spline (the default); linear; the nearest voxel's value; or, for segmentation masks,
        ``"label"``: each voxel takes the label whose one-hot map, interpolated linearly, is largest there
        (as nnU-Net does), so shapes are followed better than by ``"nearest"`` and only labels present in
        the input appear.
    antialias : bool, optional
        Before interpolating, smooth each axis that shrinks with a Gaussian of standard deviation
        ``(old_size / new_size - 1) / 2`` voxels (scikit-image's rule), so that detail finer than the new
        voxels does not fold back as false patterns. For "bspline" and "linear" only.
    align : {"origin", "center"}, optional
        ``"origin"`` (the default) keeps the first voxel's centre; ``"center"`` centres the new grid on the
        old one (the outer voxel edges stay in place), so that resampling commutes with flipping; the
        origin in the header moves accordingly.
    preview : bool, optional
        Also write ``<PREFIX>_preview.png`` beside the output: the mid-planes of both volumes (needs
        matplotlib, ``pip install 'nidataset[preview]'``).

    Returns
    -------
    str
        Path of the written file.

    Raises
    ------
    FileNotFoundError
        If `nii_path` does not exist.
    ValueError
        If `nii_path` does not end in ``.nii.gz``, `desired_volume` is not three positive integers, or an
        option is not one of its choices (or `antialias` is asked with "nearest" or "label").
    InvalidVolumeError
        (a ``ValueError``) If the file is not a readable 3D NIfTI volume of integer or real values;
        the message names the file.

    See Also
    --------
    resampling_dataset : the same for every volume of a folder.

    Notes
    -----
    *Geometry.* The output affine is ``affine @ diag(old_size / new_size, 1)``: output voxel ``i`` lies
    at input voxel ``i * old_size / new_size``. Origin and direction are kept exactly (also for oblique and
    sheared affines); the sform and the qform are both updated this way and keep their codes, as do the
    units and the header's other fields. With ``align="center"`` voxel ``i`` lies at
    ``(i + 0.5) * old_size / new_size - 0.5`` instead, and the origin moves there.

    *Values.* Cubic B-spline interpolation (order 3, interpolating) with a mirror boundary: the values
    SimpleITK's ``Resample(..., sitkBSpline, origin, new_spacing, direction)`` computes, evaluated the same
    way past the last input voxel, where SimpleITK returns 0 when upsampling by 2 or more. Results are
    clipped to the input's range; integer types are rounded to nearest. Data scaled by
    ``scl_slope``/``scl_inter`` are resampled as stored and keep their scaling, which is the same as
    resampling the scaled values and storing them back to within half a stored unit. A NaN voxel stays
    local: output voxels whose nearest input voxel is NaN are NaN, the others are finite.

    *Files.* The output is written to a hidden temporary file in `output_path` and renamed once
    complete, so a failed or interrupted call never leaves a partial ``.nii.gz``.

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel as nib
    >>> import numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> scan = os.path.join(folder, "scan.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((64, 64, 40), np.int16), np.diag([0.5, 0.5, 2.0, 1])), scan)
    >>> out = resampling(scan, os.path.join(folder, "out"), (32, 32, 16), debug=True)  # doctest: +ELLIPSIS
    Resampled image saved at: '.../out/scan_resampled.nii.gz'
    >>> image = nib.load(out)
    >>> image.shape, [float(z) for z in image.header.get_zooms()], image.get_data_dtype().name
    ((32, 32, 16), [1.0, 1.0, 5.0], 'int16')

    A segmentation mask, on a grid centred on the scan's:

    >>> mask = os.path.join(folder, "mask.nii.gz")
    >>> organs = np.zeros((64, 64, 40), np.uint8)
    >>> organs[10:30, 20:40, 5:25], organs[40:50, 30:60, 10:30] = 1, 7
    >>> nib.save(nib.Nifti1Image(organs, np.diag([0.5, 0.5, 2.0, 1])), mask)
    >>> masks = os.path.join(folder, "masks")
    >>> out = resampling(mask, masks, (32, 32, 16), interpolation="label", align="center")
    >>> sorted(np.unique(np.asanyarray(nib.load(out).dataobj)).tolist())
    [0, 1, 7]

    Shrunk 8-fold, smoothed first so that fine detail does not alias, with a picture to check by eye:

    >>> small = os.path.join(folder, "small")
    >>> out = resampling(scan, small, (8, 8, 5), interpolation="linear", antialias=True, preview=True)
    >>> sorted(os.listdir(small))
    ['scan_preview.png', 'scan_resampled.nii.gz']
    """
    path = _check_input_file(nii_path)
    shape = _check_desired_volume(desired_volume)
    options = _check_options(interpolation, antialias, align)
    folder = os.fspath(output_path)
    target = os.path.join(folder, _nifti.output_name(path))
    source = _nifti.open_volume(path)
    data = _compute_file(source, shape, **options)
    header = _nifti.resized_header(source.header, shape, align=align)
    _make_folder(folder)
    _nifti.write(target, data, header)
    logger.info("resampled %s %s -> %s %s", path, source.shape, target, shape)
    if preview:
        _draw_preview(path, target, folder)
    if debug:
        print(f"Resampled image saved at: '{target}'")
    return target


def resampling_dataset(
    nii_folder: str | os.PathLike,
    output_path: str | os.PathLike,
    desired_volume: Sequence[int],
    saving_mode: str = "case",
    debug: bool = False,
    *,
    interpolation: str = "bspline",
    antialias: bool = False,
    align: str = "origin",
    preview: bool = False,
    workers: int = 1,
    executor: Executor | None = None,
    skip_existing: bool = False,
    progress: bool = True,
) -> list[str]:
    """Resample every ``.nii.gz`` volume of a folder to `desired_volume` voxels.

    Each file directly in `nii_folder` whose name ends in ``.nii.gz`` is resampled as by
    :func:`resampling`; other files are ignored. A file that fails does not stop the others: every other
    file is written, then a :class:`DatasetError` names each failed file and why. The outputs are the same,
    byte for byte, however the files are run.

    Parameters
    ----------
    nii_folder : str or os.PathLike
        Folder holding the input volumes.
    output_path : str or os.PathLike
        Root folder of the results; created if needed.
    desired_volume : sequence of 3 int
        Output size ``(X, Y, Z)`` in voxels.
    saving_mode : {"case", "folder"}, optional
        ``"case"`` writes ``<output_path>/<PREFIX>/<PREFIX>_resampled.nii.gz`` (a folder per volume),
        ``"folder"`` writes every ``<PREFIX>_resampled.nii.gz`` directly in `output_path`.
    debug : bool, optional
        Print ``Resampling completed for all files in '<nii_folder>'`` once all files are written.
    interpolation, antialias, align, preview
        As for :func:`resampling`.
    workers : int, optional
        Number of local processes resampling files at once (each uses one core).
    executor : concurrent.futures.Executor, optional
        Run the files on this executor instead, e.g. a ``ProcessPoolExecutor`` or a Dask cluster's
        ``distributed.Client(address).get_executor()`` (``pip install nidataset[dask]``); its workers
        must see the same paths. Not together with ``workers > 1``.
    skip_existing : bool, optional
        Keep outputs that already exist, untouched, and resample only the others: resumes an interrupted
        run (outputs only ever appear complete, see :func:`resampling`).
    progress : bool, optional
        Show a progress bar on stderr; it advances as files finish.

    Returns
    -------
    list of str
        Paths of the written (or kept) files, in input order.

    Raises
    ------
    FileNotFoundError
        If `nii_folder` does not exist or holds no ``.nii.gz`` file.
    ValueError
        If `desired_volume` is not three positive integers, `saving_mode` is not "case" or "folder", an
        option is not one of its choices, `workers` is not a positive integer, or both `workers > 1` and
        `executor` are given.
    TypeError
        If `executor` is not a ``concurrent.futures.Executor``.
    DatasetError
        (a ``RuntimeError``) After all other files are written, if any file failed. Its ``failures``
        lists each failed file with its exception; its ``outputs`` the files written.

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel as nib
    >>> import numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("a", "b"):
    ...     image = nib.Nifti1Image(np.ones((20, 20, 10), np.float32), np.eye(4))
    ...     nib.save(image, os.path.join(folder, f"{name}.nii.gz"))
    >>> outputs = resampling_dataset(folder, os.path.join(folder, "out"), (10, 10, 5), progress=False)
    >>> [os.path.relpath(p, folder) for p in outputs]
    ['out/a/a_resampled.nii.gz', 'out/b/b_resampled.nii.gz']

    Files can run in parallel; on platforms that start processes afresh (``spawn``, ``forkserver``),
    call this from a script guarded by ``if __name__ == "__main__":``, as for any process pool.

    >>> parallel = os.path.join(folder, "parallel")
    >>> outputs = resampling_dataset(folder, parallel, (10, 10, 5), workers=2, progress=False)
    """
    shape = _check_desired_volume(desired_volume)
    options = {**_check_options(interpolation, antialias, align), "preview": bool(preview)}
    if saving_mode not in _SAVING_MODES:
        raise ValueError(f"saving_mode must be 'case' or 'folder', got {saving_mode!r}")
    if not isinstance(workers, numbers.Integral) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if executor is not None:
        if not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
        if workers > 1:
            raise ValueError("give workers or executor, not both")
    inputs = _runner.list_inputs(nii_folder, _nifti.SUFFIX)
    _remove_stale_temporaries(os.fspath(output_path), inputs, saving_mode)
    job = _DatasetJob(
        os.fspath(output_path), saving_mode, shape, options, bool(skip_existing), secrets.token_hex(8)
    )
    outputs = _runner.run(
        inputs, job, workers=int(workers), executor=executor, progress=progress, initializer=_one_thread_each
    )
    if debug:
        print(f"Resampling completed for all files in '{os.fspath(nii_folder)}'")
    return outputs


@dataclass(frozen=True)
class _DatasetJob:
    """Resample one file of a dataset into its place; picklable, so that it can run in other processes."""

    root: str
    saving_mode: str
    shape: tuple[int, int, int]
    options: dict  # keyword options of resampling()
    skip_existing: bool
    run: str  # differs between runs: Dask would otherwise hand back the result of an identical earlier task

    def __call__(self, path: str) -> str:
        folder = self.root if self.saving_mode == "folder" else os.path.join(self.root, _case_folder(path))
        return _resample_unless_done(path, folder, self.shape, self.options, self.skip_existing)


def _one_thread_each() -> None:
    """Set up a process of the local pool: the processes fill the cores, so each computes on one thread."""
    _resize.OVERLAP = False
    _nifti.COMPRESS_THREADS = 1


def _resample_unless_done(
    path: str,
    folder: str,
    shape: tuple[int, int, int],
    options: dict,
    skip_existing: bool,
    debug: bool = False,
) -> str:
    """Resample `path` into `folder`, or with `skip_existing` keep an output that is already there.

    A kept output only gets its preview drawn, if one is asked for and missing: the run that wrote the
    output may have been killed before it drew the picture.
    """
    target = os.path.join(folder, _nifti.output_name(path))
    if not (skip_existing and os.path.isfile(target)):
        return resampling(path, folder, shape, debug, **options)
    logger.info("kept %s", target)
    if options.get("preview"):
        _draw_preview(path, target, folder, missing_only=True)
    return target


def _draw_preview(path: str, target: str, folder: str, missing_only: bool = False) -> None:
    """Write ``<PREFIX>_preview.png`` of `path` and its output `target` into `folder`."""
    from ._preview import preview_name, write_preview  # matplotlib: only when a preview is asked for

    picture = os.path.join(folder, preview_name(path))
    if not (missing_only and os.path.isfile(picture)):
        write_preview(path, target, picture)


def _remove_stale_temporaries(root: str, inputs: Sequence[str], saving_mode: str) -> None:
    """Clear what killed runs left in the output folders (hidden temporary files only)."""
    folders = {root}
    if saving_mode == "case":
        for path in inputs:
            try:
                folders.add(os.path.join(root, _case_folder(path)))
            except ValueError:
                pass  # reported when that file runs
    removed = sum(_nifti.remove_stale_temporaries(folder) for folder in folders)
    if removed:
        logger.info("removed %d temporary files left by killed runs under %s", removed, root)


def _check_options(interpolation: str, antialias: bool, align: str) -> dict:
    """Check the keyword options of resampling(); return them as the engine takes them."""
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(_INTERPOLATIONS)}, got {interpolation!r}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if not isinstance(antialias, bool | np.bool_):
        raise ValueError(f"antialias must be True or False, got {antialias!r}")
    if antialias and interpolation in ("nearest", "label"):
        raise ValueError(
            f"antialias applies to the bspline and linear interpolations, not to {interpolation!r}"
        )
    return {"interpolation": interpolation, "antialias": bool(antialias), "align": align}


def _compute_file(
    source: _nifti.Source, shape: tuple[int, int, int], interpolation: str, antialias: bool, align: str
) -> np.ndarray:
    """Resample the stored values of `source`; the result keeps their type.

    B-spline and linear interpolation take the volume a slab of slices at a time, each computed while
    the next is decompressed; a volume holding NaN or infinity is then read whole (see _resize.resize).
    """
    order = _INTERPOLATIONS[interpolation]
    if order in (1, 3):
        stored = source.shape[::-1]  # the voxels' C order: Z, Y, X
        slabs = _nifti.read_slabs(source, slab_rows(stored))
        try:
            with contextlib.closing(slabs):
                options = {"order": order, "align": align, "antialias": antialias}
                return resize_slabs(
                    slabs, stored, source.dtype, shape[::-1], **options, output_dtype=source.dtype
                ).T
        except NonFiniteError:
            logger.debug("'%s' holds NaN or infinite values: reading it whole", source.path)
    return _compute(_nifti.read(source.path).data, shape, interpolation, antialias, align)


def _compute(data: np.ndarray, shape: tuple[int, int, int], interpolation: str, antialias: bool, align: str):
    """Resample stored values; the result keeps the input's type."""
    if interpolation == "label":
        return resize_labels(data, shape, align=align)
    order = _INTERPOLATIONS[interpolation]
    return resize(data, shape, order=order, align=align, antialias=antialias, output_dtype=data.dtype)


def _check_input_file(nii_path: str | os.PathLike) -> str:
    path = os.fspath(nii_path)
    if not isinstance(path, str):
        raise TypeError(f"nii_path must be a str or os.PathLike, got {type(nii_path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the input file '{path}' does not exist")
    if not path.endswith(_nifti.SUFFIX):
        raise ValueError(f"the input file must be a '{_nifti.SUFFIX}' file, got '{path}'")
    return path


def _check_desired_volume(desired_volume: Sequence[int]) -> tuple[int, int, int]:
    """Three positive Python or NumPy integers (not bools), as a tuple of int."""
    try:
        values = tuple(desired_volume)
    except TypeError:
        values = None
    if (
        values is None
        or isinstance(desired_volume, str | bytes)
        or len(values) != 3
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_) for v in values)
        or not all(v > 0 for v in values)
    ):
        raise ValueError(f"desired_volume must be three positive integers (X, Y, Z), got {desired_volume!r}")
    return tuple(int(v) for v in values)


def _case_folder(path: str) -> str:
    """Folder name of a case: the file's prefix, which must be a plain folder name."""
    name = _nifti.prefix(path)
    if name in ("", ".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"'{path}' cannot name a case folder: its prefix is {name!r}")
    return name


def _make_folder(folder: str | os.PathLike) -> None:
    try:
        os.makedirs(os.fspath(folder) or os.curdir, exist_ok=True)  # "" is the current folder
    except OSError as err:
        raise OSError(
            err.errno, f"cannot create the output folder '{os.fspath(folder)}': {err.strerror}"
        ) from err
