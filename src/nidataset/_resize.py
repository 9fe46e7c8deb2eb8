"""Separable resizing of arrays (cubic B-spline, linear, nearest): pure numpy, no files.

Every interpolation here is separable, so an N-D array is resized one axis at a time. Along an axis of
``old`` samples, output sample ``i`` lies at input index ``p_i`` (see :func:`sample_positions`) and is
a weighted sum of the samples around it:

- *cubic B-spline* (order 3): the samples are first turned into B-spline coefficients by the recursive
  prefilter of Unser (pole ``z = sqrt(3) - 2``, a causal and an anti-causal pass), so that the spline
  passes through every sample; then four coefficients around ``p_i`` are weighted. Indices past either end
  are mirrored (whole-sample symmetric: ``... 2 1 | 0 1 2 ... n-1 | n-2 ...``). This is SimpleITK's
  ``sitkBSpline`` (ITK's ``BSplineInterpolateImageFunction``, order 3), evaluated the same way past the
  last sample instead of returning 0 there.
- *linear* (order 1): two samples, the edge sample repeated past either end (SimpleITK's ``sitkLinear``).
- *nearest* (order 0): the sample at ``floor(p_i + 0.5)``, clamped to the array (``sitkNearestNeighbor``).

Each step runs over whole slabs (every line of the axis at once), so each Python-level step is one numpy
call over many thousands of values. Axes are resized from the most shrinking to the most growing, so
later passes work on smaller arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["ALIGNS", "ORDERS", "resample", "resize", "sample_positions"]

#: Interpolation orders: nearest, linear, cubic B-spline.
ORDERS = (0, 1, 3)
#: Grid alignments: keep the first voxel's centre, or centre the new grid on the old one.
ALIGNS = ("origin", "center")
#: Pole of the cubic B-spline prefilter.
_POLE = math.sqrt(3.0) - 2.0
#: Contiguous run (in values) below which an axis is treated as the innermost one and
#: resized in transposed blocks rather than in place.
_MIN_RUN = 256
#: Values held by one float working block.
_BLOCK = 1 << 22


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

    ftype = np.result_type(array.dtype, np.float32)
    if ftype.itemsize < 4:  # float16 computes in float32
        ftype = np.dtype(np.float32)
    bad = None
    values = array
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = ~finite
            if not finite.any():
                return array[_nearest_indices(positions, array.shape)].astype(output_dtype or ftype)
            values = _fill_nonfinite(array, bad)
    lo, hi = (values.min(), values.max()) if clip else (None, None)  # values are all finite here
    if antialias:
        values = _smooth_shrinking_axes(values, shape, ftype)

    result = resample(values, positions, order=order, dtype=ftype)
    if clip:
        np.clip(result, lo, hi, out=result)
    if bad is not None:
        near = _nearest_indices(positions, array.shape)
        lost = bad[near]
        result[lost] = array[near][lost]
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
    result = np.asarray(array)
    if not result.flags.c_contiguous:
        result = np.ascontiguousarray(result)
    shrinking_first = sorted(range(result.ndim), key=lambda a: len(positions[a]) / result.shape[a])
    for axis in shrinking_first:
        old, pos = result.shape[axis], np.asarray(positions[axis], dtype=np.float64)
        if len(pos) == old and np.array_equal(pos, np.arange(old)):
            continue
        result = _resize_axis(result, axis, pos, order, ftype)
    if result is array or result.dtype != ftype:  # nothing resized: still a new array of the type
        result = result.astype(ftype)
    return result


def _check(array: np.ndarray, shape: Sequence[int], order: int, align: str) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != array.ndim or any(n < 1 for n in shape):
        raise ValueError(
            f"shape must give one positive size per dimension of the {array.ndim}D array, got {shape}"
        )
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"cannot resize an array of type {array.dtype}; an integer or float type is needed")
    if array.size == 0:
        raise ValueError(f"cannot resize an empty array of shape {array.shape}")
    return shape


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


def _smooth_shrinking_axes(values: np.ndarray, shape: Sequence[int], ftype: np.dtype) -> np.ndarray:
    """Gaussian-smooth each axis that shrinks, with sigma ``(old / new - 1) / 2`` (scikit-image's rule)."""
    from scipy import ndimage

    smoothed = values
    for axis, (old, new) in enumerate(zip(values.shape, shape, strict=True)):
        sigma = (old / new - 1) / 2
        if sigma > 0:
            smoothed = ndimage.gaussian_filter1d(smoothed, sigma, axis=axis, mode="mirror", output=ftype)
    return smoothed


def _taps(positions: np.ndarray, old: int, order: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices and weights, each ``(len(positions), order + 1)``, of the interpolant at `positions`.

    Cubic weights are six times the B-spline's, because :func:`_prefilter` leaves out its gain of 6.
    """
    base = np.floor(positions)
    t = positions - base
    base = base.astype(np.intp)[:, None]
    if order == 3:
        t2 = t * t
        t3 = t2 * t
        weights = np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=1)
        index = _mirror(base + np.arange(-1, 3), old)
    else:
        weights = np.stack([1 - t, t], axis=1)
        index = np.clip(base + np.arange(2), 0, old - 1)
    return index, weights.astype(dtype)


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Fold indices into ``[0, size)`` by whole-sample symmetric mirroring (period ``2 * size - 2``)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


def _resize_axis(x: np.ndarray, axis: int, positions: np.ndarray, order: int, ftype: np.dtype) -> np.ndarray:
    """Resample C-contiguous `x` at `positions` along `axis`; returns a C-contiguous `ftype` array."""
    old, new = x.shape[axis], len(positions)
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    out_shape = (*x.shape[:axis], new, *x.shape[axis + 1 :])
    if old == 1:  # every interpolation of a single sample is that sample
        return np.broadcast_to(x, out_shape).astype(ftype)
    x3 = x.reshape(outer, old, inner)
    out = np.empty((outer, new, inner), dtype=ftype)
    index, weights = _taps(positions, old, order, ftype)
    if inner >= _MIN_RUN:
        # Each slab x3[:, k, :] is made of contiguous runs: filter in blocks of runs.
        step = max(_MIN_RUN, _BLOCK // (outer * old))
        for lo in range(0, inner, step):
            coef = x3[:, :, lo : lo + step].astype(ftype)
            if order == 3:
                _prefilter(coef)
            _evaluate(coef, index, weights, out[:, :, lo : lo + step])
    else:
        # The axis is (nearly) the innermost one: transpose blocks of lines so that it becomes the outer one.
        step = max(1, _BLOCK // (old * inner))
        for lo in range(0, outer, step):
            block = x3[lo : lo + step]
            coef = np.array(block.transpose(1, 0, 2), dtype=ftype, order="C").reshape(1, old, -1)  # a copy
            if order == 3:
                _prefilter(coef)
            res = np.empty((1, new, coef.shape[2]), dtype=ftype)
            _evaluate(coef, index, weights, res)
            out[lo : lo + step] = res.reshape(new, len(block), inner).transpose(1, 0, 2)
    return out.reshape(out_shape)


def _prefilter(c: np.ndarray) -> None:
    """Turn samples into cubic B-spline coefficients along axis 1 of `c`, in place (mirror boundary).

    The result is the coefficients divided by the filter's gain of 6; :func:`_taps` puts it back.
    """
    n = c.shape[1]
    z = _POLE
    # Causal initial value: sum over the mirror-symmetric extension, truncated once z**k is negligible.
    horizon = math.ceil(math.log(np.finfo(c.dtype).eps) / math.log(-z))
    if n <= horizon:
        k = np.arange(n)
        v = z**k + np.where((k > 0) & (k < n - 1), z ** (2 * n - 2 - k), 0.0)
        v /= 1 - z ** (2 * n - 2)
    else:
        v = z ** np.arange(horizon)
    first = np.einsum("k,akb->ab", v.astype(c.dtype), c[:, : len(v)])
    c[:, 0] = first
    tmp = np.empty_like(first)
    for k in range(1, n):
        np.multiply(c[:, k - 1], z, out=tmp)
        c[:, k] += tmp
    # Anti-causal initial value (mirror boundary), then the backward pass.
    np.multiply(c[:, n - 2], z, out=tmp)
    tmp += c[:, n - 1]
    np.multiply(tmp, z / (z * z - 1), out=c[:, n - 1])
    for k in range(n - 2, -1, -1):
        np.subtract(c[:, k + 1], c[:, k], out=c[:, k])
        c[:, k] *= z


def _evaluate(c: np.ndarray, index: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """``out[:, i] = sum_k weights[i, k] * c[:, index[i, k]]`` (along axis 1)."""
    tmp = np.empty_like(out[:, 0])
    for i in range(index.shape[0]):
        o = out[:, i]
        np.multiply(c[:, index[i, 0]], weights[i, 0], out=o)
        for k in range(1, index.shape[1]):
            np.multiply(c[:, index[i, k]], weights[i, k], out=tmp)
            o += tmp
