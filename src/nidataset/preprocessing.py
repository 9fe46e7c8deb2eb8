"""Resampling of NIfTI volumes to a fixed array size: the public API.

Each function checks its arguments (:mod:`nidataset._options`), then hands the work on: one file to the
pipeline (:mod:`nidataset._pipeline`: reader, engine and writer, a slab at a time), a folder to the
dataset runner (:mod:`nidataset._runner`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from . import _nifti, _options, _runner
from ._nifti import InvalidVolumeError
from ._paths import is_url, join, local_path
from ._pipeline import resample_file
from ._runner import DatasetError
from ._storage import Storage

__all__ = ["DatasetError", "InvalidVolumeError", "resampling", "resampling_dataset"]


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
    threads: int | None = None,
    skip_existing: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Resample a 3D NIfTI volume to `desired_volume` voxels, keeping its field of view.

    The volume is interpolated with a cubic B-spline on a grid of `desired_volume` voxels that starts at
    the same origin, has the same directions and spans the same extent: the voxel spacing becomes
    ``spacing * old_size / new_size``. The result is written to ``<output_path>/<PREFIX>_resampled.nii.gz``
    in the input's data type.

    Parameters
    ----------
    nii_path : str or os.PathLike
        Input volume, a ``.nii.gz`` file. A 4D file whose extra dimensions are all 1 is read as 3D. Or an
        fsspec URL: ``s3://bucket/scans/ct.nii.gz``, ``gs://...``, ``az://...``, ``https://...``
        (``pip install 'nidataset[cloud]'``; S3 comes with it, the others need gcsfs, adlfs, aiohttp).
    output_path : str or os.PathLike
        Folder for the result; created if needed ("" is the current folder). Or a URL's prefix, such as
        ``s3://bucket/resampled/``.
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
        matplotlib, ``pip install matplotlib``).
    threads : int, optional
        Threads this call may use (reading ahead, computing, compressing). By default all the cores of
        the process when called from its main thread, and 1 from any other thread (a thread pool, a
        Dask task) or from a process of a pool, whose siblings share the cores. BLAS runs on one thread
        during the call and is left as it was after.
    skip_existing : bool, optional
        If the output already exists, keep it untouched (drawing its preview if one is asked for and
        missing) instead of resampling again.
    storage_options : dict, optional
        For URLs: the options of their fsspec file system, such as ``{"endpoint_url": ..., "key": ...,
        "secret": ...}`` for S3 (s3fs's), or ``{"anon": True}``. By default fsspec's own configuration
        (``FSSPEC_S3_ENDPOINT_URL``, ...) and the store's usual credentials (``AWS_PROFILE``, ...) apply.

    Returns
    -------
    str
        Path of the written (or kept) file.

    Raises
    ------
    FileNotFoundError
        If `nii_path` does not exist (or is a symbolic link to nothing).
    IsADirectoryError
        If `nii_path` is a folder.
    ValueError
        If `nii_path` does not end in ``.nii.gz``, `desired_volume` is not three positive integers, or an
        option is not one of its choices (or `antialias` is asked with "nearest" or "label").
    InvalidVolumeError
        (a ``ValueError``) If the file is not a readable 3D NIfTI volume of integer or real values (a
        FIFO or a device included); the message names the file and what is wrong.
    NotADirectoryError, PermissionError
        If `output_path` is not a folder, or cannot be created or written in: checked before the input
        is read.
    ImportError
        If `preview` is asked for and matplotlib is not installed, or a URL is given and fsspec (or the
        package of its protocol) is not, before any work.
    OSError
        If reading or writing fails (a full disk, a device error); the message names the file. For a URL
        (in ``err.filename``): FileNotFoundError (no such bucket or object), PermissionError (refused
        credentials), ConnectionError (the store does not answer, or stops answering).

    See Also
    --------
    resampling_dataset : The same for every volume of a folder.

    Notes
    -----
    *Geometry.* The output affine is ``affine @ diag(old_size / new_size, 1)``: output voxel ``i`` lies
    at input voxel ``i * old_size / new_size``. Origin and direction are kept exactly (also for oblique and
    sheared affines); the sform and the qform are both updated this way and keep their codes, as do the
    units and the header's other fields (but the slice timing, cleared where the slice axis of
    ``dim_info`` is resized, or any axis if it gives none). With ``align="center"`` voxel ``i`` lies at
    ``(i + 0.5) * old_size / new_size - 0.5`` instead, and the origin moves there.

    *Values.* Cubic B-spline interpolation (order 3, interpolating) with a mirror boundary: the values
    SimpleITK's ``Resample(..., sitkBSpline, origin, new_spacing, direction)`` computes, evaluated the same
    way past the last input voxel, where SimpleITK returns 0 when upsampling by 2 or more. Results are
    clipped to the input's range; integer types are rounded to nearest. Data scaled by
    ``scl_slope``/``scl_inter`` are resampled as stored and keep their scaling, which is the same as
    resampling the scaled values and storing them back to within half a stored unit. A NaN voxel stays
    local: output voxels whose nearest input voxel is NaN are NaN, the others are finite.

    *Files.* The output is written to a hidden temporary file in `output_path` and renamed once
    complete, so a failed or interrupted call never leaves a partial ``.nii.gz``. In a bucket (S3, GCS,
    Azure) it is uploaded as it is compressed, by a multipart upload that is committed only once
    complete: a failed or killed call leaves no object (other stores: a hidden temporary key, then moved).
    An S3 input is read by one request, its header and then its voxels as they stream through (other
    stores: ranged requests of a few MiB); its header alone is read by small ranged requests where an
    existing output is compared first (`skip_existing`).

    *Memory.* The volume streams from the input file to the output file a slab of slices at a time;
    what is held whole is the smaller of the input and the output, in its stored type (a float volume
    holding NaN or infinity is held whole: the nearest finite value of a voxel can lie anywhere).

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
    >>> import shutil
    >>> shutil.rmtree(folder)
    """
    storage = Storage.of(storage_options)
    path = _check_input_file(nii_path, storage)
    shape = _options.check_desired_volume(desired_volume)
    options = _options.check_options(interpolation, antialias, align, preview)
    threads = _options.resolve_threads(threads)
    skip_existing = _options.check_flag("skip_existing", skip_existing)
    folder = _check_output_folder(output_path, storage, reached=path)
    storage.abort_unfinished([join(folder, _nifti.output_name(path))])  # left by a killed run
    target = resample_file(
        path, folder, shape, options, threads=threads, skip_existing=skip_existing, storage=storage
    )
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
    threads: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Resample every ``.nii.gz`` volume of a folder to `desired_volume` voxels.

    Each file directly in `nii_folder` whose name ends in ``.nii.gz`` is resampled as by
    :func:`resampling`; other files are ignored. A file that fails does not stop the others: every other
    file is written, then a :class:`DatasetError` names each failed file and why. The outputs are the same,
    byte for byte, however the files are run.

    Parameters
    ----------
    nii_folder : str or os.PathLike
        Folder holding the input volumes; or a URL's prefix, such as ``s3://bucket/scans/``, whose
        ``*.nii.gz`` objects directly under it are the inputs (see :func:`resampling` for URLs).
    output_path : str or os.PathLike
        Root folder of the results; created if needed. Or a URL's prefix: the layouts are the same.
    desired_volume : sequence of 3 int
        Output size ``(X, Y, Z)`` in voxels.
    saving_mode : {"case", "folder"}, optional
        ``"case"`` writes ``<output_path>/<PREFIX>/<PREFIX>_resampled.nii.gz`` (a folder per volume),
        ``"folder"`` writes every ``<PREFIX>_resampled.nii.gz`` directly in `output_path`.
    debug : bool, optional
        Print ``Resampling completed for all files in '<nii_folder>'`` once all files are written.
    interpolation, antialias, align, preview : optional
        As for :func:`resampling`.
    workers : int, optional
        Number of files resampled at once, each on one core: by local processes, or by threads of this
        process when the inputs or the outputs are URLs (they then share the store's client, with
        fsspec 2026.6 or later; before, fsspec makes one per thread). With URLs, a file whose output
        only waits on the store makes way for the next: `workers` files compute at once, and at most
        three times as many are under way (the others opening their inputs, or ending their uploads with
        their compressed outputs only).
    executor : concurrent.futures.Executor, optional
        Run the files on this executor instead, e.g. a ``ProcessPoolExecutor`` or a Dask cluster's
        ``distributed.Client(address).get_executor()`` (``pip install distributed``); its workers
        must see the same paths, or inputs and outputs are URLs (the workers then need no shared file
        system, only the store and its credentials). Not together with ``workers > 1``.
    skip_existing : bool, optional
        Keep outputs that already exist, untouched, and resample only the others: resumes an interrupted
        run (outputs only ever appear complete, see :func:`resampling`).
    progress : bool, optional
        Show a progress bar on stderr; it advances as files finish.
    threads : int, optional
        Threads each file may use. By default, files run one after the other use what a lone
        :func:`resampling` call would, and files run side by side (``workers > 1`` or an `executor`) one
        each: the pool or the cluster owns the cores.
    storage_options : dict, optional
        As for :func:`resampling`; handed to every worker with its files.

    Returns
    -------
    list of str
        Paths of the written (or kept) files, in input order.

    Raises
    ------
    FileNotFoundError
        If `nii_folder` does not exist, is a file, or holds no ``.nii.gz`` file (for a URL: no such
        bucket, or no ``.nii.gz`` object directly under the prefix).
    NotADirectoryError, PermissionError
        If `output_path` is not a folder, or cannot be created or written in: checked before any input
        is read.
    ImportError
        If `preview` is asked for and matplotlib is not installed, before any work.
    ValueError
        If `desired_volume` is not three positive integers, `saving_mode` is not "case" or "folder", an
        option is not one of its choices, `workers` is not a positive integer, or both `workers > 1` and
        `executor` are given.
    TypeError
        If `executor` is not a ``concurrent.futures.Executor``.
    DatasetError
        (a ``RuntimeError``) After all other files are written, if any file failed. Its ``failures``
        lists each failed file with its exception; its ``outputs`` the files written. Every
        ``*.nii.gz`` entry of the folder is tried: one that is not a readable regular file (a folder, a
        FIFO, a broken or looping symbolic link) fails with its reason and stops nothing.

    See Also
    --------
    resampling : One file.

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

    From a bucket to a bucket (here fsspec's in-memory store; ``s3://`` with ``storage_options`` for
    the endpoint and credentials works the same, and so does a Dask cluster's executor):

    >>> import fsspec
    >>> store = fsspec.filesystem("memory")
    >>> store.put(os.path.join(folder, "a.nii.gz"), "memory://scans/a.nii.gz")
    >>> resampling_dataset("memory://scans/", "memory://out/", (10, 10, 5), progress=False)
    ['memory://out/a/a_resampled.nii.gz']
    >>> store.rm("memory://scans/", recursive=True); store.rm("memory://out/", recursive=True)
    >>> import shutil
    >>> shutil.rmtree(folder)
    """
    shape = _options.check_desired_volume(desired_volume)
    options = _options.check_options(interpolation, antialias, align, preview)
    saving_mode = _options.check_saving_mode(saving_mode)
    workers = _options.check_positive_int("workers", workers)
    skip_existing = _options.check_flag("skip_existing", skip_existing)
    if executor is not None:
        if not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
        if workers > 1:
            raise ValueError("give workers or executor, not both")
    side_by_side = workers > 1 or executor is not None
    threads = _options.resolve_threads(threads) if threads is not None or not side_by_side else 1
    storage = Storage.of(storage_options, files=3 * workers)  # in a bucket: opening, computing, ending
    source = _path("nii_folder", nii_folder)
    inputs = _runner.list_inputs(source, _nifti.SUFFIX, storage)
    folder = _check_output_folder(output_path, storage, reached=source)
    on_dask = _runner.is_dask(executor)
    job = _runner.DatasetJob(folder, saving_mode, shape, options, threads, skip_existing, storage, on_dask)
    inputs = _runner.without_outputs(job.target, inputs)
    _runner.remove_stale_temporaries(job, inputs)
    # Files in a bucket wait on the store as much as on the cores: threads of this process run them,
    # sharing its client of the store (fsspec >= 2026.6), which each process of a pool would make
    # afresh (a third of a CPU-second: botocore reads its service descriptions).
    in_threads = is_url(source) or is_url(folder)
    outputs = _runner.run(
        inputs, job, workers=workers, executor=executor, in_threads=in_threads, progress=progress
    )
    if debug:
        print(f"Resampling completed for all files in '{os.fspath(nii_folder)}'")
    return outputs


def _path(name: str, value: str | os.PathLike) -> str:
    path = os.fspath(value)
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    return local_path(path)  # a file:// URL is a local path


def _check_input_file(nii_path: str | os.PathLike, storage: Storage) -> str:
    path = _path("nii_path", nii_path)
    if is_url(path):
        return storage.check_input(path, _nifti.SUFFIX)
    return _options.check_input_file(path, _nifti.SUFFIX)


def _check_output_folder(output_path: str | os.PathLike, storage: Storage, reached: str) -> str:
    folder = _path("output_path", output_path)
    if is_url(folder):
        return storage.check_output_folder(folder, reached)
    return _options.check_output_folder(folder)
