"""Per-axis resampling operators: pure maths on one axis, no arrays of the volume.

Every interpolation here is separable and linear in the samples, so resizing an axis of ``old`` samples
to ``new`` multiplies it by a ``new x old`` matrix ``M``. Output sample ``i`` lies at input index ``p_i``
(see :func:`sample_positions`):

- *cubic B-spline* (order 3): ``M = W B^-1``. ``B^-1`` turns samples into B-spline coefficients, so that
  the spline passes through every sample; ``W`` weights the four coefficients around each ``p_i``.
  Indices past either end are mirrored (whole-sample symmetric: ``... 2 1 | 0 1 2 ... n-1 | n-2 ...``).
  This is SimpleITK's ``sitkBSpline`` (ITK's ``BSplineInterpolateImageFunction``, order 3), evaluated the
  same way past the last sample instead of returning 0 there. ``B^-1`` is known in closed form (Unser's
  recursive filter, pole ``z = sqrt(3) - 2``, summed over the mirror images).
- *linear* (order 1): ``M = W`` with two weights, the edge sample repeated past either end (``sitkLinear``).
- *nearest* (order 0): the sample at ``floor(p_i + 0.5)``, clamped to the axis (``sitkNearestNeighbor``).
- *anti-aliasing* puts a Gaussian ``G`` first: ``M = W B^-1 G``.

The entries of ``B^-1`` fall off as ``|z| ** distance`` (``|z| = 0.268``), so ``M`` is a band: it is kept
as dense :class:`Tile` s of a few rows over the columns where it exceeds the rounding level of the
computation type, ready for BLAS matrix products.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALIGNS",
    "ORDERS",
    "AxisOperator",
    "LinearTaps",
    "Tile",
    "antialias_sigma",
    "axis_operator",
    "linear_taps",
    "nearest_indices",
    "sample_positions",
]

#: Interpolation orders: nearest, linear, cubic B-spline.
ORDERS = (0, 1, 3)
#: Grid alignments: keep the first voxel's centre, or centre the new grid on the old one.
ALIGNS = ("origin", "center")
#: Pole of the cubic B-spline prefilter.
_POLE = math.sqrt(3.0) - 2.0
#: Output samples per tile.
TILE_ROWS = 16


def sample_positions(old: int, new: int, align: str = "origin") -> npt.NDArray[np.float64]:
    """Input index sampled by each output index when ``old`` samples are resized to ``new``.

    The spacing is scaled by ``old / new`` so that the grid spans the same extent. With
    ``align="origin"`` output sample ``i`` lies at ``i * old / new``: the first sample stays in place. With
    ``align="center"`` it lies at ``(i + 0.5) * old / new - 0.5``: the outer edges of the first and last
    voxels stay in place, so the grid is centred on the old one.

    Parameters
    ----------
    old, new : int
        Number of samples along the axis before and after resizing.
    align : {"origin", "center"}
        Which point of the old grid the new one keeps.

    Returns
    -------
    numpy.ndarray
        ``new`` float64 positions in input index units.

    Examples
    --------
    >>> sample_positions(4, 8)
    array([0. , 0.5, 1. , 1.5, 2. , 2.5, 3. , 3.5])
    >>> sample_positions(6, 3)
    array([0., 2., 4.])
    >>> sample_positions(6, 3, align="center")
    array([0.5, 2.5, 4.5])
    """
    index = np.arange(new, dtype=np.float64)
    if align == "origin":
        return index * (old / new)
    if align == "center":
        return (index + 0.5) * (old / new) - 0.5
    raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")


def antialias_sigma(old: int, new: int) -> float:
    """Return the Gaussian's standard deviation (in samples) that smooths `old` samples shrunk to `new`.

    ``(old / new - 1) / 2`` when the axis shrinks, as ``skimage.transform.resize(anti_aliasing=True)``;
    0 (no smoothing) otherwise.

    Examples
    --------
    >>> antialias_sigma(512, 128), antialias_sigma(100, 200)
    (1.5, 0.0)
    """
    return (old / new - 1) / 2 if new < old else 0.0


class Tile(NamedTuple):
    """Rows ``lo:hi`` of an axis matrix over its columns ``first:stop``; zero (to rounding) elsewhere."""

    lo: int
    hi: int
    first: int
    stop: int
    block: np.ndarray  # (hi - lo, stop - first), read-only


@dataclass(frozen=True, eq=False)
class AxisOperator:
    """The ``new x old`` matrix that resamples one axis, as dense :class:`Tile` s in output order."""

    old: int
    new: int
    tiles: tuple[Tile, ...]

    @property
    def widest(self) -> int:
        """Most input samples one tile reads."""
        return max(tile.stop - tile.first for tile in self.tiles)

    @functools.cached_property
    def gain(self) -> float:
        """Largest absolute row sum of the matrix (about 1.55 for the cubic B-spline, 1 for linear).

        No output sample, nor any partial sum of one, exceeds the largest input magnitude times this.

        Examples
        --------
        >>> cubic = axis_operator(256, 224, order=3, align="center")
        >>> round(cubic.gain, 3), axis_operator(256, 224, order=1).gain
        (1.549, 1.0)
        """
        return max(float(np.abs(tile.block.astype(np.float64)).sum(axis=1).max()) for tile in self.tiles)


def axis_operator(
    old: int,
    new: int,
    *,
    order: int,
    align: str = "origin",
    sigma: float = 0.0,
    dtype: npt.DTypeLike = np.float64,
) -> AxisOperator | None:
    """Matrix resampling an axis of `old` samples to `new` (``None``: the axis is left as it is).

    Parameters
    ----------
    old, new : int
        Samples before and after.
    order : {1, 3}
        Linear or cubic B-spline interpolation.
    align : {"origin", "center"}
        Grid alignment (see :func:`sample_positions`).
    sigma : float
        Smooth the axis first with a Gaussian of this standard deviation (in samples); 0: no smoothing.
    dtype : numpy dtype
        Type of the tiles: the computation type. Entries below its rounding level are left out.

    Examples
    --------
    >>> op = axis_operator(8, 4, order=1)
    >>> [(t.lo, t.hi, t.first, t.stop) for t in op.tiles]
    [(0, 4, 0, 7)]
    >>> op.tiles[0].block
    array([[1., 0., 0., 0., 0., 0., 0.],
           [0., 0., 1., 0., 0., 0., 0.],
           [0., 0., 0., 0., 1., 0., 0.],
           [0., 0., 0., 0., 0., 0., 1.]])
    >>> axis_operator(8, 8, order=3) is None
    True
    """
    if order not in (1, 3):
        raise ValueError(f"axis operators interpolate (order 1 or 3), got order {order!r}")
    if sigma == 0 and old == new and align in ALIGNS:
        return None  # both alignments sample 0, 1, ..., n - 1
    positions = sample_positions(old, new, align)
    return _cached_operator(positions.tobytes(), old, order, float(sigma), np.dtype(dtype).str, TILE_ROWS)


@functools.lru_cache(maxsize=64)
def _cached_operator(
    positions_bytes: bytes, old: int, order: int, sigma: float, dtype: str, tile_rows: int
) -> AxisOperator:
    positions = np.frombuffer(positions_bytes, dtype=np.float64)
    ftype = np.dtype(dtype)
    tol = float(np.finfo(ftype).eps) / 64
    if order == 3:
        index, weights = _cubic_taps(positions, old)
    else:
        taps = linear_taps(positions, old)
        index, weights = taps.taps, taps.weights
    tiles = []
    for lo in range(0, len(positions), tile_rows):
        hi = min(lo + tile_rows, len(positions))
        a, b, block = _scatter(index[lo:hi], weights[lo:hi])  # W
        if order == 3:
            a, b, block = _then(block, _spline_inverse_rows(a, b, old, tol))  # W B^-1
        if sigma > 0:
            a, b, block = _then(block, _gaussian_rows(a, b, old, sigma))  # ... G
        a, b, block = _trim(a, b, block, tol)
        block = block.astype(ftype)
        block.flags.writeable = False
        tiles.append(Tile(lo, hi, a, b, block))
    return AxisOperator(old, len(positions), tuple(tiles))


class LinearTaps(NamedTuple):
    """The two input samples and their weights for each output sample of a linear interpolation."""

    taps: npt.NDArray[np.intp]  # (new, 2): floor(p) and floor(p) + 1, clamped to the axis
    weights: npt.NDArray[np.float64]  # (new, 2): 1 - t and t, with t = p - floor(p)


def linear_taps(positions: npt.NDArray[np.float64], old: int) -> LinearTaps:
    """Linear interpolation at `positions` on an axis of `old` samples, the edge sample repeated.

    Examples
    --------
    >>> taps = linear_taps(np.array([0.0, 1.25, 2.5]), 3)
    >>> taps.taps.tolist(), taps.weights.tolist()
    ([[0, 1], [1, 2], [2, 2]], [[1.0, 0.0], [0.75, 0.25], [0.5, 0.5]])
    """
    base = np.floor(positions)
    t = positions - base
    index = np.clip(base.astype(np.intp)[:, None] + np.arange(2), 0, old - 1)
    return LinearTaps(index, np.stack([1 - t, t], axis=1))


def nearest_indices(positions: npt.NDArray[np.float64], old: int) -> npt.NDArray[np.intp]:
    """Input sample nearest to each position, halves rounded up (as ITK), clamped to the axis.

    Examples
    --------
    >>> nearest_indices(np.array([-0.5, 0.5, 1.49, 3.7]), 3).tolist()
    [0, 1, 1, 2]
    """
    return np.clip(np.floor(positions + 0.5), 0, old - 1).astype(np.intp)


def _cubic_taps(positions: np.ndarray, old: int) -> tuple[np.ndarray, np.ndarray]:
    """B-spline coefficient indices (mirrored) and weights, each ``(len(positions), 4)``."""
    base = np.floor(positions)
    t = positions - base
    t2 = t * t
    t3 = t2 * t
    weights = np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=1) / 6
    index = _mirror(base.astype(np.intp)[:, None] + np.arange(-1, 3), old)
    return index, weights


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Fold indices into ``[0, size)`` by whole-sample symmetric mirroring (period ``2 * size - 2``)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


def _scatter(index: np.ndarray, weights: np.ndarray) -> tuple[int, int, np.ndarray]:
    """Rows of a matrix given by column `index` and `weights` per row (repeated columns add up)."""
    a, b = int(index.min()), int(index.max()) + 1
    block = np.zeros((len(index), b - a))
    np.add.at(block, (np.arange(len(index))[:, None], index - a), weights)
    return a, b, block


def _then(block: np.ndarray, rows: tuple[int, int, np.ndarray]) -> tuple[int, int, np.ndarray]:
    """`block` (over some columns a:b) times rows a:b of another matrix, given as ``(a2, b2, rows)``."""
    a, b, matrix = rows
    return a, b, block @ matrix


def _spline_inverse_rows(k0: int, k1: int, n: int, tol: float) -> tuple[int, int, np.ndarray]:
    """Rows `k0:k1` of ``B^-1``, which turns `n` samples into cubic B-spline coefficients (mirror boundary).

    On an infinite line ``B^-1[k, j] = c z**|k - j|`` with ``c = -6 z / (1 - z**2)`` (Unser's filter).
    The mirror boundary extends the samples symmetrically with period ``P = 2n - 2``, so every sample
    ``j`` also stands at ``-j`` and at both plus any multiple of ``P``; the sum over these images is a
    geometric series. Columns farther than `tol` allows from the rows are left out.
    """
    if n == 1:
        return 0, 1, np.ones((k1 - k0, 1))
    z = _POLE
    reach = math.ceil(math.log(tol / 5) / math.log(-z))  # 5 > c * 2 / (1 - |z|): both tails together
    a, b = max(0, k0 - reach), min(n, k1 + reach)
    k = np.arange(k0, k1)[:, None]
    j = np.arange(a, b)[None, :]
    period = 2 * n - 2

    def power(d: np.ndarray) -> np.ndarray:  # z ** d for integers d >= 0, vectorised
        return np.where(d % 2, -1.0, 1.0) * np.exp(d * math.log(-z))

    def images(d: np.ndarray) -> np.ndarray:  # sum over t of z ** |d + t * period|
        d = d % period
        return (power(d) + power(period - d)) / (1 - z**period)

    block = images(k - j) + np.where((j > 0) & (j < n - 1), images(k + j), 0.0)
    return a, b, (-6 * z / (1 - z * z)) * block


def _gaussian_rows(k0: int, k1: int, n: int, sigma: float) -> tuple[int, int, np.ndarray]:
    """Rows `k0:k1` of Gaussian smoothing with a mirror boundary, as ``scipy.ndimage.gaussian_filter1d``.

    The same kernel (radius ``int(4 * sigma + 0.5)``, weights normalised to sum to 1), ``mode="mirror"``.
    """
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (sigma * sigma) * x**2)
    kernel /= kernel.sum()
    rows = np.arange(k0, k1)[:, None]
    return _scatter(_mirror(rows + x, n), np.broadcast_to(kernel, (k1 - k0, len(x))))


def _trim(a: int, b: int, block: np.ndarray, tol: float) -> tuple[int, int, np.ndarray]:
    """Drop the outer columns of `block` whose entries are all below `tol`."""
    keep = np.flatnonzero(np.abs(block).max(axis=0) > tol)
    if len(keep) == 0:
        return a, b, block
    return a + int(keep[0]), a + int(keep[-1]) + 1, block[:, keep[0] : keep[-1] + 1]
