"""A picture to check a resampling by eye: the mid-planes of two volumes, side by side (needs matplotlib).

It draws the planes it is given; they come from :class:`nidataset._nifti.MidPlanes`, kept while the
volumes streamed through the pipeline (or read a slab at a time for an output that already existed).
Each panel is an anatomical plane whatever the order the volume is stored in: the array axis nearest
to each world axis is read from the affine, and the planes are turned and flipped to a common view.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ._nifti import MidPlanes
from ._storage import LOCAL, Storage

__all__ = ["FORMATS", "Panel", "anatomical_panels", "write_preview"]

#: Picture formats, by file name suffix (matplotlib's Agg canvas writes each without another library).
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg", ".jpg": "jpg", ".jpeg": "jpg"}
#: (title, world axis held at the volume's middle, world axis across, world axis up) of each panel, world
#: axes numbered as in RAS+ (0: left -> right, 1: posterior -> anterior, 2: inferior -> superior).
_VIEWS = (("axial", 2, 0, 1), ("coronal", 1, 0, 2), ("sagittal", 0, 1, 2))
#: The letters at the low and the high end of each world axis.
_ENDS = (("L", "R"), ("P", "A"), ("I", "S"))


class Panel(NamedTuple):
    """One anatomical plane, ready to draw with ``imshow(values, origin="lower", extent=extent)``."""

    title: str
    values: np.ndarray  # [up, across]: row 0 at the bottom
    extent: tuple[float, float, float, float]  # world millimetres: left, right, bottom, top
    letters: tuple[str, str, str, str]  # at the left, right, bottom and top edges


def anatomical_panels(volume: MidPlanes) -> list[Panel]:
    """Return the axial, coronal and sagittal mid-planes of `volume`, in world orientation.

    Each array axis is matched to the world axis its direction is nearest to (as
    ``nibabel.aff2axcodes``); the plane held at the middle of the axis nearest to the superior direction
    is the axial one, and so on. Panels are seen with the subject's left on the left (axial, coronal)
    or the posterior on the left (sagittal), superior or anterior up; the extent gives the world
    coordinates, in millimetres, of the voxel edges along each panel's axes through the middle voxel.

    Examples
    --------
    >>> import nibabel as nib
    >>> import numpy as np
    >>> header = nib.Nifti1Header()
    >>> header.set_data_shape((4, 3, 2))
    >>> header.set_data_dtype(np.int16)
    >>> header.set_sform(np.diag([-2.0, 1.0, 3.0, 1.0]), code=1)  # stored right to left
    >>> volume = MidPlanes(header)
    >>> volume.add(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    >>> axial = anatomical_panels(volume)[0]
    >>> axial.values  # z = 1: x runs right to left in the file, left to right here
    array([[15., 14., 13., 12.],
           [19., 18., 17., 16.],
           [23., 22., 21., 20.]])
    >>> axial.extent, axial.letters
    ((-7.0, 1.0, -0.5, 2.5), ('L', 'R', 'P', 'A'))
    """
    affine = np.asarray(volume.affine, dtype=np.float64)
    linear = affine[:3, :3]
    world_of = _nearest_world_axes(linear)
    array_of = {w: j for j, w in enumerate(world_of)}
    middle = np.array([*volume.middle, 1.0])
    planes = volume.planes()
    panels = []
    for title, held, across, up in _VIEWS:
        j_held, j_across, j_up = array_of[held], array_of[across], array_of[up]
        values = planes[j_held]  # indexed by the two other array axes, in array order
        if j_across > j_up:
            values = values.T
        values = values.T  # [up, across]
        extent = []
        for j, flip_axis in ((j_across, 1), (j_up, 0)):
            n = volume.shape[j]
            step = linear[world_of[j], j]
            step = float(step)
            start = float((affine @ middle)[world_of[j]]) - step * volume.middle[j]  # index 0 along j
            low, high = start - step / 2, start + step * (n - 0.5)
            if step < 0:
                values = np.flip(values, axis=flip_axis)
                low, high = high, low
            extent += [low, high]
        panels.append(
            Panel(
                title,
                np.ascontiguousarray(values),
                (extent[0], extent[1], extent[2], extent[3]),
                (*_ENDS[across], *_ENDS[up]),
            )
        )
    return panels


def _nearest_world_axes(linear: np.ndarray) -> list[int]:
    """Return the world axis of each array axis: the strongest remaining direction, taken greedily.

    As ``nibabel.orientations.io_orientation`` does, the largest entry of the matrix of unit columns picks
    a pair (world axis, array axis), whose row and column then leave the contest, and so on: each world
    axis goes to exactly one array axis, also for sheared or strongly oblique grids.
    """
    norms = np.linalg.norm(linear, axis=0)
    strength = np.abs(linear) / np.where(norms > 0, norms, 1.0)
    world_of = [-1, -1, -1]
    for _ in range(3):
        world, array = np.unravel_index(int(np.argmax(strength)), strength.shape)
        world_of[int(array)] = int(world)
        strength[world, :] = -1.0
        strength[:, array] = -1.0
    return world_of


def write_preview(
    original: MidPlanes,
    resampled: MidPlanes,
    picture: str,
    names: tuple[str, str] = ("", ""),
    storage: Storage = LOCAL,
    waiting: Callable[[], None] | None = None,
) -> str:
    """Write a picture of the axial, coronal and sagittal mid-planes of two volumes, one row each.

    Each plane is drawn in world millimetres, so it appears at its physical aspect ratio, with the
    subject's directions written on its edges (:func:`anatomical_panels`), and each row is titled with
    its file name, its volume's shape and its voxel spacing. Both rows share the grey scale of the
    original (its 0.5th to 99.5th percentiles on the planes shown). The format follows the suffix of
    `picture` (:data:`FORMATS`); the file is written atomically, by `storage` if it is a URL (which
    calls `waiting` once the picture is drawn: see :meth:`Storage.upload`).

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If the suffix of `picture` is not one of :data:`FORMATS`.
    """
    suffix = os.path.splitext(picture)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"'{picture}': a preview is written as {', '.join(FORMATS)}, not '{suffix}'")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("previews need matplotlib, which is not installed: pip install matplotlib") from err

    rows = [
        (role, name, volume, anatomical_panels(volume))
        for role, name, volume in zip(("original", "resampled"), names, (original, resampled), strict=True)
    ]
    # Grey levels are drawn from values a quarter of the size: exactly the same picture, and no overflow
    # in the differences the percentiles and the colour scale take near float64's limits.
    shown = np.concatenate([panel.values[np.isfinite(panel.values)].ravel() for panel in rows[0][3]]) / 4
    low, high = np.percentile(shown, [0.5, 99.5]) if shown.size else (0.0, 1.0)
    span = (high - low) or 1.0  # grey levels handed to matplotlib in [0, 1]: before 3.10 its resampling
    # overflows (a RuntimeWarning) when the colour range is near float64's limits

    figure = Figure(figsize=(12, 8.5), dpi=100)  # fixed margins: a layout solver costs more than the drawing
    grid = figure.add_gridspec(2, 3, left=0.05, right=0.98, bottom=0.06, top=0.92, hspace=0.38, wspace=0.2)
    for row, (role, name, volume, panels) in enumerate(rows):
        size = " x ".join(map(str, volume.shape))
        spacing = " x ".join(f"{z:.3g}" for z in volume.zooms)
        title = f"{role}{': ' + name if name else ''}: {size} voxels, {spacing} mm"
        figure.text(0.5, 0.975 - row * 0.475, title, ha="center", va="top", fontsize=12, weight="bold")
        for column, panel in enumerate(panels):
            ax = figure.add_subplot(grid[row, column])
            ax.imshow(
                (panel.values / 4 - low) / span,
                origin="lower",
                cmap="gray",
                vmin=0.0,
                vmax=1.0,
                extent=panel.extent,
                interpolation="nearest",
            )
            ax.set_title(panel.title, fontsize=10, y=1.01)  # placed: no search for room above the ticks
            ax.set_xlabel("mm")
            ax.locator_params(nbins=4)  # few ticks: laying out tick labels is most of the drawing
            left, right, bottom, top = panel.letters
            style: dict[str, Any] = {
                "transform": ax.transAxes,
                "color": "yellow",
                "fontsize": 11,
                "weight": "bold",
            }
            ax.text(0.02, 0.5, left, ha="left", va="center", **style)
            ax.text(0.98, 0.5, right, ha="right", va="center", **style)
            ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
            ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    with storage.upload(picture, waiting) as out:
        FigureCanvasAgg(figure).print_figure(out, format=FORMATS[suffix], dpi=100)
    return picture
