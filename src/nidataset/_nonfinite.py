"""Non-finite values (NaN, +-inf) that stay where they are instead of spreading through the spline.

Pure numpy, with scipy's Euclidean distance transform. Before interpolation each non-finite value is
replaced by its nearest finite neighbour (so the spline sees a smooth continuation), and afterwards each
output sample whose nearest input sample was non-finite takes that value back.

This is the one path that needs the whole input at once: the nearest finite neighbour of a voxel can
lie anywhere in the volume (a NaN background around a brain mask, say), so it cannot be found a slab at
a time. The output still streams: :meth:`NonFinitePatch.restore` works on one output slab at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._operators import nearest_indices, sample_positions

__all__ = ["NonFinitePatch"]


class NonFinitePatch:
    """The non-finite values of an array, replaced for interpolation and put back after.

    Parameters
    ----------
    array : numpy.ndarray
        C-ordered float array holding at least one non-finite value.
    shape : sequence of int
        Shape of the resized output.
    align : {"origin", "center"}
        Grid alignment of the output (which input sample is nearest to each output sample).
    in_place : bool, optional
        Fill `array` itself instead of a copy (only the box around the non-finite values is kept).

    Attributes
    ----------
    filled : numpy.ndarray
        `array` with each non-finite value replaced by its nearest finite neighbour (left as it is where
        no value is finite).

    Examples
    --------
    >>> x = np.array([0.0, 1.0, np.nan, 3.0, 4.0])
    >>> patch = NonFinitePatch(x, (9,), "origin")
    >>> patch.filled  # the NaN takes a nearest finite neighbour's value
    array([0., 1., 1., 3., 4.])
    >>> out = np.arange(9.0) / 2  # stands for the interpolated values
    >>> patch.restore(out, 0)
    >>> out  # NaN where the nearest input sample was NaN (positions 1.67 and 2.22)
    array([0. , 0.5, 1. , nan, nan, 2.5, 3. , 3.5, 4. ])
    """

    def __init__(self, array: np.ndarray, shape: Sequence[int], align: str, *, in_place: bool = False):
        bad = ~np.isfinite(array)
        box = []
        for axis in range(array.ndim):  # every sample outside this box is finite
            others = tuple(a for a in range(array.ndim) if a != axis)
            hit = np.flatnonzero(bad.any(axis=others)) if others else np.flatnonzero(bad)
            if len(hit) == 0:
                raise ValueError("the array holds no non-finite value")
            box.append(slice(max(int(hit[0]) - 1, 0), int(hit[-1]) + 2))
        self.box = tuple(box)
        self.original = array[self.box].copy()
        self.bad = bad[self.box]
        self.filled = array if in_place else array.copy()
        if not self.bad.all():
            from scipy import ndimage  # only needed for non-finite inputs

            nearest = ndimage.distance_transform_edt(self.bad, return_distances=False, return_indices=True)
            self.filled[self.box] = self.original[tuple(nearest)]
        self.nearest = [
            nearest_indices(sample_positions(old, new, align), old)
            for old, new in zip(array.shape, shape, strict=True)
        ]

    def restore(self, values: np.ndarray, start: int) -> None:
        """Put the non-finite values back into `values`, output rows ``start : start + len(values)``.

        Each output sample whose nearest input sample was non-finite takes that sample's value.
        """
        index = [self.nearest[0][start : start + len(values)], *self.nearest[1:]]
        picked, local = [], []
        for axis, idx in enumerate(index):
            rel = idx - self.box[axis].start
            inside = np.flatnonzero((rel >= 0) & (rel < self.bad.shape[axis]))
            if len(inside) == 0:
                return
            picked.append(inside)
            local.append(rel[inside])
        where = np.ix_(*local)
        lost = self.bad[where]
        if lost.any():
            target = values[np.ix_(*picked)]
            target[lost] = self.original[where][lost]
            values[np.ix_(*picked)] = target
