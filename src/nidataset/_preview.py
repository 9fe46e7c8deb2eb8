"""A picture to check a resampling by eye: the mid-planes of two volumes, side by side (needs matplotlib)."""

from __future__ import annotations

import os

import numpy as np

from . import _nifti

__all__ = ["preview_name", "write_preview"]

#: (title, axis held at its middle, horizontal axis, vertical axis) of each plane shown.
_PLANES = (("axial", 2, 0, 1), ("coronal", 1, 0, 2), ("sagittal", 0, 1, 2))


def preview_name(path: str | os.PathLike) -> str:
    """Name of the preview of a volume: ``<PREFIX>_preview.png``.

    Examples
    --------
    >>> preview_name("scans/scan_042.nii.gz")
    'scan_042_preview.png'
    """
    return f"{_nifti.prefix(path)}_preview.png"


def write_preview(original: str, resampled: str, picture: str) -> str:
    """Write a PNG with the axial, coronal and sagittal mid-planes of two volumes, one row each.

    Each plane is drawn in millimetres, so it appears at its physical aspect ratio, and each row is titled
    with its volume's shape and voxel spacing. Both rows share the grey scale of the original (its 0.5th
    to 99.5th percentiles on the planes shown). The file is written atomically.

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install 'nidataset[preview]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("previews need matplotlib: pip install 'nidataset[preview]'") from err
    import nibabel as nib

    rows = []
    for role, path in (("original", original), ("resampled", resampled)):
        try:
            image = nib.load(path)
            shape = tuple(int(n) for n in image.shape[:3])
            zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
            planes = [_mid_plane(image, shape, held) for _, held, _, _ in _PLANES]
        except (FileNotFoundError, PermissionError):
            raise
        except _nifti.READ_ERRORS as err:
            raise _nifti.InvalidVolumeError(f"'{path}' is not a readable NIfTI file: {err}") from err
        rows.append((role, shape, zooms, planes))
    shown = np.concatenate([plane[np.isfinite(plane)].ravel() for plane in rows[0][3]])
    low, high = np.percentile(shown, [0.5, 99.5]) if shown.size else (0.0, 1.0)

    figure = Figure(figsize=(12, 8.5), dpi=100, layout="constrained")
    for band, (role, shape, zooms, planes) in zip(figure.subfigures(2, 1), rows, strict=True):
        size = " x ".join(map(str, shape))
        spacing = " x ".join(f"{z:.3g}" for z in zooms)
        band.suptitle(f"{role}: {size} voxels, {spacing} mm", fontsize=12, weight="bold")
        for ax, (title, _, across, up), plane in zip(band.subplots(1, 3), _PLANES, planes, strict=True):
            extent = (0.0, shape[across] * zooms[across], 0.0, shape[up] * zooms[up])
            ax.imshow(
                plane.T,
                origin="lower",
                cmap="gray",
                vmin=low,
                vmax=high,
                extent=extent,
                interpolation="nearest",
            )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("mm")
    with _nifti.atomic_file(picture) as out:
        FigureCanvasAgg(figure).print_png(out)
    return picture


def _mid_plane(image, shape: tuple[int, int, int], held: int) -> np.ndarray:
    """Read the plane through the middle of axis `held`, as float (scaling applied)."""
    index = [slice(None)] * 3 + [0] * (len(image.shape) - 3)
    index[held] = shape[held] // 2
    plane = np.asanyarray(image.dataobj[tuple(index)], dtype=np.float64)
    return plane.reshape([n for axis, n in enumerate(shape) if axis != held])
