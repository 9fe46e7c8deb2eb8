"""Helpers shared by the tests and the benchmarks: synthetic volumes written with nibabel, and SimpleITK and
scipy as the oracles for values."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np


def write_nifti(
    path,
    data,
    affine=None,
    *,
    slope=None,
    inter=None,
    qform_code=1,
    sform_code=1,
    units=("mm", "sec"),
    image_class=nib.Nifti1Image,
):
    """Write `data` as stored values to `path` (with nibabel only: not with the code under test)."""
    if affine is None:
        affine = np.diag([0.8, 0.9, 2.5, 1.0])
        affine[:3, 3] = [-40.0, 25.0, 7.5]
    image = image_class(np.asarray(data), affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    image.header.set_xyzt_units(*units)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    nib.save(image, path)
    return os.fspath(path)


def smooth_volume(shape, rng, dtype=np.float64, low=0.0, high=1000.0):
    """A smooth random field in [low, high] plus a little noise: CT-like structure at small size."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    for _ in range(4):
        centre = rng.uniform(0, 1, 3)
        width = rng.uniform(0.15, 0.5)
        field += rng.uniform(0.3, 1) * np.exp(
            -sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) / width**2
        )
    field += 0.05 * rng.standard_normal(shape)
    field = (field - field.min()) / (field.max() - field.min())
    values = low + (high - low) * field
    if np.dtype(dtype).kind in "iu":
        values = np.rint(values)
    return values.astype(dtype)


def sitk_resample(path, shape, interpolator="sitkBSpline"):
    """SimpleITK's float64 resample of `path` onto the same-origin grid of `shape`, as the reference
    does it (B-spline unless another interpolator is named), and the mask of samples where it is defined.

    Returns ``(values, valid)`` indexed ``[x, y, z]``. A sample is *valid* where SimpleITK interpolates:
    its continuous index ``i * N / n`` lies inside ``[-0.5, N - 0.5)`` on every axis (outside, SimpleITK
    returns the default value 0), and, for the B-spline on an axis of 2 voxels, not in ``[1, 1.5)``: there
    ITK mirrors the index 3 only once (to -1, see ``BSplineInterpolateImageFunction::
    ApplyMirrorBoundaryConditions``) and reads a coefficient outside its buffer.
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(os.fspath(path), sitk.sitkFloat64)
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing()) * size / np.array(shape)
    result = sitk.Resample(
        image,
        [int(n) for n in shape],
        sitk.Transform(),
        getattr(sitk, interpolator),
        image.GetOrigin(),
        spacing.tolist(),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat64,
    )
    values = sitk.GetArrayFromImage(result).T
    valid = np.ones(values.shape, dtype=bool)
    for axis, (old, new) in enumerate(zip(size, shape, strict=True)):
        position = np.arange(new) * old / new
        ok = position < old - 0.5 - 1e-9  # at exactly N - 0.5 rounding decides: leave it out
        if old == 2 and interpolator == "sitkBSpline":
            ok &= ~((position >= 1) & (position < 1.5))
        index = [np.newaxis] * 3
        index[axis] = slice(None)
        valid &= ok[tuple(index)]
    return values, valid


def mirror_spline(values, shape):
    """scipy's cubic spline (mirror boundary) at the sample positions of `shape`: defined everywhere."""
    from scipy import ndimage

    values = np.asarray(values, dtype=np.float64)
    coords = np.meshgrid(
        *[np.arange(n) * o / n for o, n in zip(values.shape, shape, strict=True)], indexing="ij"
    )
    return ndimage.map_coordinates(values, coords, order=3, mode="mirror")


#: Value ranges of synthetic volumes per stored type (CT-like for int16), for accuracy and identity runs.
DTYPE_RANGES = {
    "uint8": (0, 255),
    "int16": (-1024, 3071),
    "uint16": (0, 4095),
    "int32": (-100_000, 2_000_000),
    "float32": (-1.5, 2.5),
    "float64": (-3e3, 1e4),
}


def peak_allocation(function):
    """Call `function()`; return the peak of the memory Python and numpy allocated meanwhile (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def process_parents():
    """Map the pid of each process to its parent's (Linux: read off /proc; elsewhere, nothing)."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            continue
    return parents


def child_processes(parent):
    """The pids of the processes whose parent is `parent`."""
    return [pid for pid, of in process_parents().items() if of == parent]


def descendants(pid):
    """The pids of the processes `pid` started, those they started, and so on."""
    parents = process_parents()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        below = [child for child, of in parents.items() if of == parent]
        found.update(below)
        todo += below
    return found


def alive(pid):
    """Whether `pid` runs (a zombie, ended but not yet waited for, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
