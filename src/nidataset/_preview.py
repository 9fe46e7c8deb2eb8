"""A picture to check a resampling by eye: the mid-planes of two volumes, side by side (needs matplotlib).

It draws the planes it is given; they come from :class:`nidataset._nifti.MidPlanes`, kept while the
volumes streamed through the pipeline (or read a slab at a time for an output that already existed).
"""

from __future__ import annotations

import numpy as np

from ._nifti import MidPlanes, atomic_file

__all__ = ["write_preview"]

#: (title, axis held at its middle, horizontal axis, vertical axis) of each plane shown.
_PLANES = (("axial", 2, 0, 1), ("coronal", 1, 0, 2), ("sagittal", 0, 1, 2))


def write_preview(
    original: MidPlanes, resampled: MidPlanes, picture: str, names: tuple[str, str] = ("", "")
) -> str:
    """Write a PNG with the axial, coronal and sagittal mid-planes of two volumes, one row each.

    Each plane is drawn in millimetres, so it appears at its physical aspect ratio, and each row is titled
    with its file name, its volume's shape and its voxel spacing. Both rows share the grey scale of the
    original (its 0.5th to 99.5th percentiles on the planes shown). The file is written atomically.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("previews need matplotlib: pip install matplotlib") from err

    rows = [
        (role, name, volume, volume.planes())
        for role, name, volume in zip(("original", "resampled"), names, (original, resampled), strict=True)
    ]
    shown = np.concatenate([plane[np.isfinite(plane)].ravel() for plane in rows[0][3].values()])
    low, high = np.percentile(shown, [0.5, 99.5]) if shown.size else (0.0, 1.0)

    figure = Figure(figsize=(12, 8.5), dpi=100)  # fixed margins: a layout solver costs more than the drawing
    grid = figure.add_gridspec(2, 3, left=0.05, right=0.98, bottom=0.06, top=0.92, hspace=0.38, wspace=0.2)
    for row, (role, name, volume, planes) in enumerate(rows):
        size = " x ".join(map(str, volume.shape))
        spacing = " x ".join(f"{z:.3g}" for z in volume.zooms)
        title = f"{role}{': ' + name if name else ''}: {size} voxels, {spacing} mm"
        figure.text(0.5, 0.975 - row * 0.475, title, ha="center", va="top", fontsize=12, weight="bold")
        for column, (plane_title, held, across, up) in enumerate(_PLANES):
            ax = figure.add_subplot(grid[row, column])
            shape, zooms = volume.shape, volume.zooms
            extent = (0.0, shape[across] * zooms[across], 0.0, shape[up] * zooms[up])
            ax.imshow(
                planes[held].T,
                origin="lower",
                cmap="gray",
                vmin=low,
                vmax=high,
                extent=extent,
                interpolation="nearest",
            )
            ax.set_title(plane_title, fontsize=10, y=1.01)  # placed: no search for room above the ticks
            ax.set_xlabel("mm")
            ax.locator_params(nbins=4)  # few ticks: laying out tick labels is most of the drawing
    with atomic_file(picture) as out:
        FigureCanvasAgg(figure).print_png(out)
    return picture
