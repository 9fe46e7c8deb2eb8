"""Separable resizing of arrays (cubic B-spline, linear, nearest): pure numpy, no files.

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
- *nearest* (order 0): the sample at ``floor(p_i + 0.5)``, clamped to the array (``sitkNearestNeighbor``).
- *anti-aliasing* puts a Gaussian ``G`` first: ``M = W B^-1 G``.

The entries of ``B^-1`` fall off as ``|z| ** distance`` (``|z| = 0.268``), so ``M`` is a band: it is kept
as dense tiles of a few rows over the columns where it exceeds the rounding level of the computation
type, and applied with BLAS matrix products.

The array is taken a slab at a time along its first axis, as it comes off disk: each slab gets its
shrinking axes resized at once, and each tile of the first axis's matrix is computed as soon as the rows
it reads have come in; the growing axes are resized at the end. Memory stays a few slabs plus the
(smaller) intermediate, and reading the next slab goes on while one is computed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALIGNS",
    "ORDERS",
    "NonFiniteError",
    "resample",
    "resize",
    "resize_slabs",
    "sample_positions",
    "slab_rows",
]

#: Interpolation orders: nearest, linear, cubic B-spline.
ORDERS = (0, 1, 3)
#: Grid alignments: keep the first voxel's centre, or centre the new grid on the old one.
ALIGNS = ("origin", "center")
#: Pole of the cubic B-spline prefilter.
_POLE = math.sqrt(3.0) - 2.0
#: Output samples per tile of an axis matrix.
_TILE = 16
#: Compute each slab in a worker thread while the next is produced (see :func:`resize_slabs`); processes of
#: a pool that already fills the cores turn it off.
OVERLAP = True
#: Input values per slab (a slab is this many values' worth of whole rows along the first axis).
_SLAB = 1 << 21


class NonFiniteError(ValueError):
    """A slab given to :func:`resize_slabs` holds NaN or infinity (which :func:`resize` handles)."""


def sample_positions(old: int, new: int, align: str = "origin") -> np.ndarray:
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


def resize(
    array: np.ndarray,
    shape: Sequence[int],
    *,
    order: int = 3,
    align: str = "origin",
    antialias: bool = False,
    clip: bool = True,
    output_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Resize an array by separable interpolation.

    Output index ``i`` along an axis samples the input at the position :func:`sample_positions` gives.

    Parameters
    ----------
    array : numpy.ndarray
        Integer or floating point array of any number of dimensions.
    shape : sequence of int
        Output shape, one positive size per dimension of `array`.
    order : {3, 1, 0}, optional
        Cubic B-spline (mirror boundary), linear (edge repeated) or nearest sample.
    align : {"origin", "center"}, optional
        Keep the first sample's position, or centre the new grid on the old one.
    antialias : bool, optional
        Before interpolating, smooth each axis that shrinks with a Gaussian of standard deviation
        ``(old / new - 1) / 2`` samples (as ``skimage.transform.resize(anti_aliasing=True)``), so that detail
        finer than the new spacing does not fold back as false patterns. Not with ``order=0``.
    clip : bool, optional
        Clip the result to the range of the finite input values, removing the spline's overshoot.
    output_dtype : numpy dtype, optional
        Type of the result. Integer types are rounded to nearest (not truncated). By default the result
        stays in the computation type (see Notes); ``order=0`` keeps the input's type.

    Returns
    -------
    numpy.ndarray
        Array of shape `shape`, C- or Fortran-ordered like `array`.

    Raises
    ------
    ValueError
        If `shape` does not have one positive size per dimension, or `order`, `align` or `antialias` is
        not one of the choices above.
    TypeError
        If `array` is not of an integer or floating point type.

    Notes
    -----
    The computation type is float32 for inputs of up to 16-bit integers and for float16/float32, and
    float64 otherwise (wider integers need its 53-bit mantissa to round back exactly).

    Non-finite values (NaN, +-inf) do not spread: before interpolation each is replaced by its nearest
    finite neighbour, and each output sample whose nearest input sample is non-finite takes that value.
    An axis whose size does not change is left untouched (its samples are interpolated exactly).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([0.0, 1.0, 4.0, 9.0])
    >>> resize(x, (8,))  # the spline passes through the samples; past 9 it is mirrored
    array([0. , 0.3, 1. , 2. , 4. , 7.2, 9. , 7.2])
    >>> resize(x, (8,), order=1)
    array([0. , 0.5, 1. , 2.5, 4. , 6.5, 9. , 9. ])
    >>> resize(np.array([0, 10, 0], dtype=np.int16), (5,), output_dtype=np.int16)
    array([0, 6, 9, 1, 4], dtype=int16)
    """
    array = np.asarray(array)
    shape = _check(array, shape, order, align)
    if antialias and order == 0:
        raise ValueError("antialias applies to the bspline and linear interpolations, not to nearest")
    if not array.flags.c_contiguous and array.flags.f_contiguous:
        result = resize(
            array.T,
            shape[::-1],
            order=order,
            align=align,
            antialias=antialias,
            clip=clip,
            output_dtype=output_dtype,
        )
        return result.T
    positions = [sample_positions(old, new, align) for old, new in zip(array.shape, shape, strict=True)]
    if order == 0:
        result = array[_nearest_indices(positions, array.shape)]
        return result if output_dtype is None else _cast(result, np.dtype(output_dtype))

    options = {"order": order, "align": align, "antialias": antialias, "clip": clip}
    array = np.ascontiguousarray(array)
    try:
        return resize_slabs(
            _slabs(array), array.shape, array.dtype, shape, **options, output_dtype=output_dtype
        )
    except NonFiniteError:
        pass
    bad = ~np.isfinite(array)
    if bad.all():
        nearest = array[_nearest_indices(positions, array.shape)]
        return nearest.astype(output_dtype or _float_type(array.dtype))
    values = _fill_nonfinite(array, bad)
    result = resize_slabs(_slabs(values), values.shape, values.dtype, shape, **options)
    near = _nearest_indices(positions, array.shape)
    lost = bad[near]
    result[lost] = array[near][lost]
    return result if output_dtype is None else _cast(result, np.dtype(output_dtype))


def _slabs(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Cut a C-contiguous array into the slabs (views) that :func:`resize_slabs` takes."""
    rows = slab_rows(array.shape)
    return ((start, array[start : start + rows]) for start in range(0, len(array), rows))


def slab_rows(shape: Sequence[int]) -> int:
    """Return how many rows along the first axis :func:`resize_slabs` takes at a time for `shape`."""
    return max(1, _SLAB // max(1, math.prod(shape[1:])))


def resize_slabs(
    slabs: Iterable[tuple[int, np.ndarray]],
    in_shape: Sequence[int],
    dtype: np.dtype | type,
    shape: Sequence[int],
    *,
    order: int = 3,
    align: str = "origin",
    antialias: bool = False,
    clip: bool = True,
    output_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """:func:`resize` of a C-ordered array of `in_shape` and `dtype` that arrives in slabs.

    `slabs` yields ``(start, array[start : start + slab_rows(in_shape)])`` for ``start = 0, rows,
    2 * rows, ...`` (see :func:`slab_rows`), in that order. Each slab is computed in a worker thread while
    the caller's iterator produces the next one (unless :data:`OVERLAP` is off), so that producing slabs
    (reading and decompressing a file, say) overlaps with computing them. A slab is done with before the
    iterator is asked for the one after next, so the iterator may fill two buffers in turn. The result is
    the same, bit for bit, as :func:`resize` of the whole array. Only for order 1 and 3.

    Raises
    ------
    NonFiniteError
        If a slab holds NaN or infinity: :func:`resize` of the whole array handles those.
    """
    in_shape = tuple(int(n) for n in in_shape)
    dtype = np.dtype(dtype)
    shape = _check_args(in_shape, dtype, shape, order, align)
    if order == 0:
        raise ValueError("resize_slabs interpolates (order 1 or 3); take nearest samples with resize()")
    ftype = _float_type(dtype)
    operators = []
    for old, new in zip(in_shape, shape, strict=True):
        sigma = (old / new - 1) / 2 if antialias and new < old else 0.0
        operators.append(_operator(sample_positions(old, new, align), old, order, sigma, ftype))
    bounds = []

    def check(block: np.ndarray) -> None:
        low, high = block.min(), block.max()  # NaN if there is one
        if block.dtype.kind == "f" and not (np.isfinite(low) and np.isfinite(high)):
            raise NonFiniteError("the array holds NaN or infinite values")
        bounds.append((low, high))

    result = _run(slabs, in_shape, operators, ftype, check)
    if clip:
        np.clip(result, min(lo for lo, _ in bounds), max(hi for _, hi in bounds), out=result)
    return _cast(result, np.dtype(output_dtype)) if output_dtype is not None else result


def resample(
    array: np.ndarray, positions: Sequence[np.ndarray], *, order: int = 3, dtype: np.dtype | None = None
) -> np.ndarray:
    """Sample the order-1 or order-3 interpolant of `array` on the grid ``positions[0] x positions[1] x ...``.

    The core of :func:`resize`, without its handling of types, non-finite values and clipping: `array` is
    read as `dtype` (default: its own float type), and the result is a new C-contiguous array of that type.
    An axis whose positions are exactly ``0, 1, ..., n - 1`` is left as it is.
    """
    ftype = np.dtype(dtype or np.result_type(array.dtype, np.float32))
    array = np.ascontiguousarray(array)
    operators = [
        _operator(np.asarray(pos, dtype=np.float64), old, order, 0.0, ftype)
        for pos, old in zip(positions, array.shape, strict=True)
    ]
    return _run(_slabs(array), array.shape, operators, ftype)


def _check(array: np.ndarray, shape: Sequence[int], order: int, align: str) -> tuple[int, ...]:
    return _check_args(array.shape, array.dtype, shape, order, align)


def _check_args(
    in_shape: tuple[int, ...], dtype: np.dtype, shape: Sequence[int], order: int, align: str
) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != len(in_shape) or any(n < 1 for n in shape):
        raise ValueError(
            f"shape must give one positive size per dimension of the {len(in_shape)}D array, got {shape}"
        )
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if dtype.kind not in "iuf":
        raise TypeError(f"cannot resize an array of type {dtype}; an integer or float type is needed")
    if math.prod(in_shape) == 0:
        raise ValueError(f"cannot resize an empty array of shape {in_shape}")
    return shape


def _float_type(dtype: np.dtype) -> np.dtype:
    """Return the computation type: float32 for up to 16-bit integers and float16/32, else float64."""
    ftype = np.result_type(dtype, np.float32)
    return np.dtype(np.float32) if ftype.itemsize < 4 else ftype


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float results to `dtype`, rounding to nearest for integer types."""
    if dtype.kind in "iu" and values.dtype.kind == "f":
        np.rint(values, out=values)
        info = np.iinfo(dtype)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)


def _nearest_indices(positions: Sequence[np.ndarray], old_shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Open-mesh index of the input sample nearest to each output sample (halves round up, as ITK)."""
    return np.ix_(
        *(
            np.clip(np.floor(pos + 0.5), 0, old - 1).astype(np.intp)
            for pos, old in zip(positions, old_shape, strict=True)
        )
    )


def _fill_nonfinite(array: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Copy of `array` with each non-finite value replaced by its nearest finite neighbour.

    The search is confined to the bounding box of the non-finite values grown by one sample: every
    sample outside that box is finite, and the nearest of them to a point in the box lies on its rim.
    """
    from scipy import ndimage  # only needed for non-finite inputs

    box = []
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        hit = np.flatnonzero(bad.any(axis=others))
        box.append(slice(max(hit[0] - 1, 0), hit[-1] + 2))
    box = tuple(box)
    filled = array.copy()
    sub = filled[box]
    nearest = ndimage.distance_transform_edt(bad[box], return_distances=False, return_indices=True)
    sub[...] = sub[tuple(nearest)]
    return filled


# --- The engine: each axis a banded matrix, applied slab by slab -----------------------------------------


@dataclass(frozen=True, eq=False)
class _Operator:
    """The ``new x old`` matrix resampling one axis, as dense tiles ``(lo, hi, a, b, block)``.

    ``block`` holds rows ``lo:hi`` over columns ``a:b``; every entry outside the tiles is below the
    rounding level of the computation type. ``first`` and ``last`` list each tile's ``a`` and ``b``.
    """

    old: int
    new: int
    tiles: tuple[tuple[int, int, int, int, np.ndarray], ...]
    first: np.ndarray
    last: np.ndarray


def _operator(positions: np.ndarray, old: int, order: int, sigma: float, ftype: np.dtype) -> _Operator | None:
    """Matrix sampling an axis of `old` samples at `positions` (``None``: the axis is left as it is).

    `sigma` > 0 smooths the axis first with a Gaussian of that standard deviation (in samples).
    """
    positions = np.asarray(positions, dtype=np.float64)
    if sigma == 0 and len(positions) == old and np.array_equal(positions, np.arange(old)):
        return None
    return _cached_operator(positions.tobytes(), old, order, float(sigma), np.dtype(ftype).str)


@functools.lru_cache(maxsize=64)
def _cached_operator(positions: bytes, old: int, order: int, sigma: float, ftype: str) -> _Operator:
    positions = np.frombuffer(positions, dtype=np.float64)
    ftype = np.dtype(ftype)
    tol = float(np.finfo(ftype).eps) / 64
    index, weights = _taps(positions, old, order)
    tiles = []
    for lo in range(0, len(positions), _TILE):
        hi = min(lo + _TILE, len(positions))
        a, b, block = _scatter(index[lo:hi], weights[lo:hi])  # W
        if order == 3:
            a, b, block = _then(block, _spline_inverse_rows(a, b, old, tol))  # W B^-1
        if sigma > 0:
            a, b, block = _then(block, _gaussian_rows(a, b, old, sigma))  # ... G
        a, b, block = _trim(a, b, block, tol)
        block = block.astype(ftype)
        block.flags.writeable = False
        tiles.append((lo, hi, a, b, block))
    first = np.array([tile[2] for tile in tiles])
    last = np.array([tile[3] for tile in tiles])
    return _Operator(old, len(positions), tuple(tiles), first, last)


def _taps(positions: np.ndarray, old: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices and weights, each ``(len(positions), order + 1)``, of the interpolant at `positions`.

    Cubic weights apply to B-spline coefficients (mirrored indices), linear ones to samples (edge
    repeated).
    """
    base = np.floor(positions)
    t = positions - base
    base = base.astype(np.intp)[:, None]
    if order == 3:
        t2 = t * t
        t3 = t2 * t
        weights = np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=1) / 6
        index = _mirror(base + np.arange(-1, 3), old)
    else:
        weights = np.stack([1 - t, t], axis=1)
        index = np.clip(base + np.arange(2), 0, old - 1)
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


def _plan(shape: tuple[int, ...], operators: Sequence[_Operator | None]) -> tuple[list[int], list[int]]:
    """Axes resized in each slab before the first axis, and those resized at the end.

    Each list goes from the most shrinking axis. Every shrinking axis goes first (slabs shrink as they
    come, while the next is read, and the intermediate is small), unless resizing the first axis earlier
    saves a quarter of the work.
    """
    ratio = {a: op.new / op.old for a, op in enumerate(operators) if op is not None}
    moving = sorted((a for a in ratio if a > 0), key=ratio.get)
    shrinking = [a for a in moving if ratio[a] <= 1]
    candidates = [shrinking]
    if 0 in ratio:
        candidates.append([a for a in shrinking if ratio[a] < ratio[0]])

    def work(before: list[int]) -> int:
        size, sizes, total = math.prod(shape), list(shape), 0
        for axis in [*before, *([0] if 0 in ratio else []), *(a for a in moving if a not in before)]:
            total += size
            sizes[axis] = operators[axis].new
            size = math.prod(sizes)
        return total

    before = candidates[0]
    if len(candidates) > 1 and work(candidates[1]) < 0.75 * work(before):
        before = candidates[1]
    return before, [a for a in moving if a not in before]


class _Resampler:
    """Resample an array fed as consecutive slabs along its first axis (see :func:`resize_slabs`)."""

    def __init__(self, shape: tuple[int, ...], operators: Sequence[_Operator | None], ftype: np.dtype):
        self.shape, self.operators, self.ftype = shape, operators, ftype
        self.before, self.after = _plan(shape, operators)
        middle = [op.new if op is not None else n for op, n in zip(operators, shape, strict=True)]
        for axis in self.after:
            middle[axis] = shape[axis]
        self.middle = np.empty(middle, dtype=ftype)  # every axis but `after` resized
        if operators[0] is not None:
            width = math.prod(self.middle.shape[1:])
            self.rows = _Rows(operators[0], width, ftype, slab_rows(shape))
        self.done = 0

    def feed(self, start: int, block: np.ndarray) -> None:
        if start != self.done:
            raise ValueError(f"slabs must come in order: expected row {self.done}, got {start}")
        x = np.ascontiguousarray(block, dtype=self.ftype)  # no copy if it already is
        for axis in self.before:
            x = _apply(x, axis, self.operators[axis])
        if self.operators[0] is None:
            self.middle[start : start + len(x)] = x
        else:
            self.rows.add(x.reshape(len(x), -1), self.middle.reshape(len(self.middle), -1))
        self.done = start + len(x)

    def result(self) -> np.ndarray:
        if self.done != self.shape[0]:
            raise ValueError(f"slabs ended at row {self.done} of {self.shape[0]}")
        if not self.after:
            return self.middle
        out_shape = list(self.middle.shape)
        for axis in self.after:
            out_shape[axis] = self.operators[axis].new
        out = np.empty(out_shape, dtype=self.ftype)
        rows = slab_rows(self.middle.shape)
        for start in range(0, len(out), rows):
            y = self.middle[start : start + rows]
            for axis in self.after:
                y = _apply(y, axis, self.operators[axis])
            out[start : start + rows] = y
        return out


class _Rows:
    """Input rows along the first axis, held until every tile of its matrix that reads them is computed.

    A tile is computed as soon as its last row has come in, in one matrix product over its rows. The
    buffer holds the rows of the widest tile plus as many again (or a slab), so that the rows still
    needed are moved down only once per that many rows.
    """

    def __init__(self, op: _Operator, width: int, ftype: np.dtype, slab: int):
        self.op = op
        span = int((op.last - op.first).max())
        self.buffer = np.empty((span + max(span, slab), width), dtype=ftype)
        self.first = 0  # the input row held in buffer[0]
        self.held = 0
        self.todo = sorted(range(len(op.tiles)), key=lambda t: op.tiles[t][3])  # by their last row

    def add(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Take the next `rows` (2D), and write the rows of `out` (2D) that can now be computed."""
        end = self.first + self.held
        if self.held + len(rows) > len(self.buffer):
            keep = min(min(int(self.op.first[t]) for t in self.todo), end) if self.todo else end
            drop = keep - self.first
            self.buffer[: self.held - drop] = self.buffer[drop : self.held]
            self.first, self.held = keep, self.held - drop
        self.buffer[self.held : self.held + len(rows)] = rows
        self.held += len(rows)
        end += len(rows)
        while self.todo and self.op.tiles[self.todo[0]][3] <= end:
            lo, hi, a, b, block = self.op.tiles[self.todo.pop(0)]
            np.matmul(block, self.buffer[a - self.first : b - self.first], out=out[lo:hi])


def _run(
    slabs: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, ...],
    operators: Sequence[_Operator | None],
    ftype: np.dtype,
    check=None,
) -> np.ndarray:
    """Feed `slabs` to a :class:`_Resampler` in a worker thread, `check` each first; return the result."""
    resampler = _Resampler(shape, operators, ftype)

    def step(start: int, block: np.ndarray) -> None:
        if check is not None:
            check(block)
        resampler.feed(start, block)

    if not OVERLAP:
        with _one_blas_thread():
            for start, block in slabs:
                step(start, block)
            return resampler.result()
    with _one_blas_thread(), ThreadPoolExecutor(1, thread_name_prefix="nidataset-resize") as pool:
        pending = None
        for start, block in slabs:  # the next slab is produced here while the last one is computed
            if pending is not None:
                pending.result()
            pending = pool.submit(step, start, block)
        if pending is not None:
            pending.result()
        return resampler.result()


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Keep BLAS on one thread: the engine runs its own threads, and processes of a pool each take a core.

    The limit is process-wide, and OpenBLAS does not reliably take it from threads other than the main
    one (a limit set there can stay after it is lifted): so it is set for calls from the main thread only
    (as in the processes of a local pool), and other threads leave the process's settings alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter = None


def _apply(x: np.ndarray, axis: int, op: _Operator) -> np.ndarray:
    """Resample C-contiguous `x` along `axis` with `op`; a new C-contiguous array of `x`'s type."""
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    out = np.empty((outer, op.new, inner), dtype=x.dtype)
    if inner == 1:  # the axis is the last one: rows of samples times the transposed matrix
        lines, result = x.reshape(outer, op.old), out.reshape(outer, op.new)
        for lo, hi, a, b, block in op.tiles:
            np.matmul(lines[:, a:b], block.T, out=result[:, lo:hi])
    else:  # the matrix times each plane (outer, old, inner)
        planes = x.reshape(outer, op.old, inner)
        for lo, hi, a, b, block in op.tiles:
            np.matmul(block, planes[:, a:b], out=out[:, lo:hi])
    return out.reshape(*x.shape[:axis], op.new, *x.shape[axis + 1 :])
