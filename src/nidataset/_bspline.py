"""Separable cubic B-spline resizing of arrays: pure numpy, no files.

A cubic B-spline through the samples of an N-D array is the tensor product of 1D splines, so resizing it
is done one axis at a time. Along an axis of ``old`` samples resized to ``new``:

1. *Prefilter*: turn the samples into B-spline coefficients with the recursive filter of Unser (pole
   ``z = sqrt(3) - 2``, a causal and an anti-causal pass, mirror-symmetric boundary). This makes the
   spline interpolating: it passes through every input sample.
2. *Evaluate*: output sample ``i`` lies at input index ``p = i * old / new`` (the grid keeps its first
   sample and spans the same extent) and is the weighted sum of the four coefficients around ``p``.
   Indices past either end are mirrored (whole-sample symmetric: ``... 2 1 | 0 1 2 ... n-1 | n-2 ...``).

Both steps run over whole slabs (every line of the axis at once), so each Python-level step is one numpy
call over many thousands of values. Axes are resized from the most shrinking to the most growing, so
the later passes work on the smaller arrays.

This is the interpolation SimpleITK's ``sitkBSpline`` (ITK's ``BSplineInterpolateImageFunction``,
order 3) computes, evaluated the same way past the last sample instead of giving up there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["resize", "sample_positions"]

#: Pole of the cubic B-spline prefilter.
_POLE = math.sqrt(3.0) - 2.0
#: Contiguous run (in values) below which an axis is treated as the innermost one and
#: resized in transposed blocks rather than in place.
_MIN_RUN = 256
#: Values held by one float working block.
_BLOCK = 1 << 22


def sample_positions(old: int, new: int) -> np.ndarray:
    """Input index sampled by each output index when ``old`` samples are resized to ``new``.

    Output sample ``i`` lies at ``i * old / new``: the first sample stays in place and the spacing is
    scaled by ``old / new``, so the grid spans the same extent.

    Parameters
    ----------
    old, new : int
        Number of samples along the axis before and after resizing.

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
    """
    return np.arange(new, dtype=np.float64) * (old / new)


def resize(
    array: np.ndarray,
    shape: Sequence[int],
    *,
    clip: bool = True,
    output_dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Resize an array with cubic B-spline interpolation.

    Output index ``i`` along an axis of ``old`` samples samples the input at ``i * old / new``
    (see :func:`sample_positions`), with a mirror-symmetric boundary.

    Parameters
    ----------
    array : numpy.ndarray
        Integer or floating point array of any number of dimensions.
    shape : sequence of int
        Output shape, one positive size per dimension of `array`.
    clip : bool, optional
        Clip the result to the range of the finite input values, removing the spline's overshoot.
    output_dtype : numpy dtype, optional
        Type of the result. Integer types are rounded to nearest (not truncated). By default the result
        stays in the computation type (see Notes).

    Returns
    -------
    numpy.ndarray
        Array of shape `shape`, C- or Fortran-ordered like `array`.

    Raises
    ------
    ValueError
        If `shape` does not have one positive size per dimension.
    TypeError
        If `array` is not of an integer or floating point type.

    Notes
    -----
    The computation type is float32 for inputs of up to 16-bit integers and for float16/float32, and
    float64 otherwise (wider integers need its 53-bit mantissa to round back exactly).

    Non-finite values (NaN, +-inf) do not spread: before interpolation each is replaced by its nearest
    finite neighbour, and each output sample whose nearest input sample is non-finite takes that value.
    An axis whose size does not change is left untouched, since the spline interpolates its samples.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([0.0, 1.0, 4.0, 9.0])
    >>> resize(x, (8,))  # the spline passes through the samples; past 9 it is mirrored
    array([0. , 0.3, 1. , 2. , 4. , 7.2, 9. , 7.2])
    >>> resize(np.array([0, 10, 0], dtype=np.int16), (5,), output_dtype=np.int16)
    array([0, 6, 9, 1, 4], dtype=int16)
    """
    array = np.asarray(array)
    shape = tuple(int(n) for n in shape)
    if len(shape) != array.ndim or any(n < 1 for n in shape):
        raise ValueError(
            f"shape must give one positive size per dimension of the {array.ndim}D array, got {shape}"
        )
    if array.dtype.kind not in "iuf":
        raise TypeError(f"cannot resize an array of type {array.dtype}; an integer or float type is needed")
    if array.size == 0:
        raise ValueError(f"cannot resize an empty array of shape {array.shape}")
    ftype = np.result_type(array.dtype, np.float32)
    if ftype.itemsize < 4:  # float16 computes in float32
        ftype = np.dtype(np.float32)
    if not array.flags.c_contiguous and array.flags.f_contiguous:
        result = resize(array.T, shape[::-1], clip=clip, output_dtype=output_dtype)
        return result.T

    bad = None
    values = array
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = ~finite
            if not finite.any():
                return _nearest(array, shape).astype(output_dtype or ftype)
            values = _fill_nonfinite(array, bad)
    lo, hi = (values.min(), values.max()) if clip else (None, None)  # values are all finite here

    result = values
    for axis in sorted(range(array.ndim), key=lambda a: shape[a] / array.shape[a]):
        if shape[axis] != result.shape[axis]:
            result = _resize_axis(result, axis, shape[axis], ftype)
    if result is values:  # nothing resized: still return a new array in the computation type
        result = values.astype(ftype)
    if clip:
        np.clip(result, lo, hi, out=result)
    if bad is not None:
        near = _nearest_indices(array.shape, shape)
        lost = bad[near]
        result[lost] = array[near][lost]
    return _cast(result, np.dtype(output_dtype)) if output_dtype is not None else result


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float results to `dtype`, rounding to nearest for integer types."""
    if dtype.kind in "iu":
        np.rint(values, out=values)
        info = np.iinfo(dtype)
        np.clip(values, info.min, info.max, out=values)
    return values.astype(dtype, copy=False)


def _nearest_indices(old_shape: Sequence[int], new_shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Open-mesh index of the input sample nearest to each output sample."""
    return np.ix_(
        *(
            np.minimum(np.floor(sample_positions(old, new) + 0.5), old - 1).astype(np.intp)
            for old, new in zip(old_shape, new_shape, strict=True)
        )
    )


def _nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return array[_nearest_indices(array.shape, shape)]


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


def _taps(old: int, new: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Coefficient indices and weights, each ``(new, 4)``, of the spline at every output position.

    The weights are six times the cubic B-spline's, because :func:`_prefilter` leaves out its gain of 6.
    """
    pos = sample_positions(old, new)
    base = np.floor(pos)
    t = pos - base
    t2 = t * t
    t3 = t2 * t
    weights = np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=1)
    index = base.astype(np.intp)[:, None] + np.arange(-1, 3)
    return _mirror(index, old), weights.astype(dtype)


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Fold indices into ``[0, size)`` by whole-sample symmetric mirroring (period ``2 * size - 2``)."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * size - 2
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


def _resize_axis(x: np.ndarray, axis: int, new: int, ftype: np.dtype) -> np.ndarray:
    """Resize C-contiguous `x` along `axis` to `new` samples; returns a C-contiguous `ftype` array."""
    old = x.shape[axis]
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    out_shape = (*x.shape[:axis], new, *x.shape[axis + 1 :])
    if old == 1:
        return np.broadcast_to(x, out_shape).astype(ftype)
    x3 = x.reshape(outer, old, inner)
    out = np.empty((outer, new, inner), dtype=ftype)
    index, weights = _taps(old, new, ftype)
    if inner >= _MIN_RUN:
        # Each slab x3[:, k, :] is made of contiguous runs: filter in blocks of runs.
        step = max(_MIN_RUN, _BLOCK // (outer * old))
        for lo in range(0, inner, step):
            coef = x3[:, :, lo : lo + step].astype(ftype)
            _prefilter(coef)
            _evaluate(coef, index, weights, out[:, :, lo : lo + step])
    else:
        # The axis is (nearly) the innermost one: transpose blocks of lines so that it becomes the outer one.
        step = max(1, _BLOCK // (old * inner))
        for lo in range(0, outer, step):
            block = x3[lo : lo + step]
            coef = np.array(block.transpose(1, 0, 2), dtype=ftype, order="C").reshape(1, old, -1)  # a copy
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
        for k in range(1, 4):
            np.multiply(c[:, index[i, k]], weights[i, k], out=tmp)
            o += tmp
