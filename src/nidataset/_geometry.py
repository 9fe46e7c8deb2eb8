"""Voxel-to-world geometry of a resized grid: pure affine arithmetic.

Resizing an axis of ``old`` voxels to ``new`` samples voxel ``i`` at input index ``i * s + t`` with
``s = old / new`` (see :func:`nidataset._operators.sample_positions`): ``t = 0`` keeps the first voxel's
centre (``align="origin"``), ``t = (s - 1) / 2`` keeps the outer edges of the first and last voxels
(``align="center"``). In world coordinates the new voxel-to-world affine is ``affine @ [[diag(s), t],
[0, 1]]``: the axis directions are kept exactly, also for oblique and sheared affines, each column (voxel
step) is scaled by ``s``, the field of view ``size * spacing`` is unchanged, and the origin moves only
with ``align="center"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["resized_affine", "resized_zooms"]


def _factors(old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    if len(old_shape) != len(new_shape):
        raise ValueError(f"shapes {tuple(old_shape)} and {tuple(new_shape)} differ in length")
    return np.asarray(old_shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)


def resized_affine(
    affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int], align: str = "origin"
) -> np.ndarray:
    """Voxel-to-world affine of a grid resized from `old_shape` to `new_shape`.

    Parameters
    ----------
    affine : (4, 4) array_like
        Voxel-to-world affine of the input grid.
    old_shape, new_shape : sequence of 3 int
        Grid sizes before and after resizing.
    align : {"origin", "center"}
        Keep the first voxel's centre, or the outer voxel edges (the grid's centre).

    Returns
    -------
    numpy.ndarray
        ``affine @ [[diag(s), t], [0, 1]]`` as float64, with ``s = old_shape / new_shape`` and ``t = 0``
        or ``(s - 1) / 2``.

    Examples
    --------
    >>> import numpy as np
    >>> affine = np.array([[0.5, 0, 0, -10], [0, 0.5, 0, 20], [0, 0, 2, 5], [0, 0, 0, 1]])
    >>> resized_affine(affine, (512, 512, 300), (256, 256, 100))
    array([[  1.,   0.,   0., -10.],
           [  0.,   1.,   0.,  20.],
           [  0.,   0.,   6.,   5.],
           [  0.,   0.,   0.,   1.]])
    >>> resized_affine(affine, (512, 512, 300), (256, 256, 100), align="center")[:3, 3]
    array([-9.75, 20.25,  7.  ])
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    scale = _factors(old_shape, new_shape)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    if align == "center":
        step[:3, 3] = (scale - 1) / 2
    elif align != "origin":
        raise ValueError(f"align must be 'origin' or 'center', got {align!r}")
    return affine @ step


def resized_zooms(zooms: Sequence[float], old_shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Voxel spacing after resizing: ``zooms * old_shape / new_shape``.

    Examples
    --------
    >>> resized_zooms((0.5, 0.5, 1.0), (512, 512, 300), (256, 256, 128))
    array([1.     , 1.     , 2.34375])
    """
    return np.asarray(zooms, dtype=np.float64) * _factors(old_shape, new_shape)
