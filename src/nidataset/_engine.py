"""The slab engine: resize a C-ordered array that arrives, and leaves, a slab of rows at a time.

Pure numpy and synchronous: no threads, no files. A volume comes in as consecutive slabs along its first
axis (the slices of a NIfTI file, in the order they are stored). Each slab gets the in-plane axes that
shrink resized at once; the first axis is resized by the tiles of its matrix (see
:mod:`nidataset._operators`), each computed as soon as the rows it reads have come in, from a window
that keeps only the rows later tiles still need; the growing in-plane axes are resized last, on each
output slab. So neither the input nor the output is ever held whole here: memory is a window of rows
and a few slabs.

Interpolated values come out in the computation type, unclipped; :func:`cast` turns them into a stored
type. :func:`resize` runs the engine over an array in memory.

Values near the largest the computation type holds (a float32 "no data" of -3.4e38, say) would overflow
inside the matrix products: each pass can multiply the largest magnitude by its operator's
:attr:`~nidataset._operators.AxisOperator.gain` (1.55 for the cubic B-spline), and one infinity in a
dense tile turns its whole row of outputs into NaN. So an engine knows the largest input magnitude it can
compute as it is (its *headroom*, the type's largest value over a power of two that covers the gains of
every pass twice over); from the first slab that exceeds it on, it computes on values scaled down by that
power of two and scales the results back up, saturated at the type's limits. Scaling by a power of two
changes no rounding (as long as nothing underflows), so the results are those of the scaled input, scaled
back; ordinary values never come near the headroom (at least an eighth of the type's largest value:
4.2e37 for float32, 2.2e307 for float64) and are computed as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from ._nonfinite import NonFinitePatch
from ._operators import (
    ALIGNS,
    ORDERS,
    AxisOperator,
    antialias_sigma,
    axis_operator,
    nearest_indices,
    sample_positions,
)

__all__ = [
    "SLAB_VALUES",
    "TINY",
    "Engine",
    "InterpolatingEngine",
    "NearestEngine",
    "NonFiniteError",
    "Slab",
    "apply_axis",
    "cast",
    "check_shapes",
    "computation_type",
    "gather",
    "overflow_headroom",
    "plan_axes",
    "resize",
    "slab_rows",
    "slabs_of",
]

#: Values per slab: input slabs hold about this many values of whole rows, output slabs too.
SLAB_VALUES = 1 << 21
#: Magnitude below which `flush_tiny` drops values between passes.
TINY = 2.0**-50


class Slab(NamedTuple):
    """Rows ``start : start + len(values)`` along the first axis of a C-ordered volume."""

    start: int
    values: np.ndarray


class NonFiniteError(ValueError):
    """A slab fed to an :class:`InterpolatingEngine` holds NaN or infinity."""


class Engine(Protocol):
    """What drives an engine: consecutive input slabs in, output slabs out in order.

    :meth:`feed` returns an iterator that computes each output slab as it is asked for, so that a
    caller writing each slab before asking for the next holds one at a time. The caller exhausts it
    before feeding the next slab, and keeps the block it fed unchanged until then.
    """

    def feed(self, block: np.ndarray) -> Iterator[Slab]:
        """Take the next rows of the input; iterate over the output slabs they complete."""
        ...

    def finish(self) -> Iterator[Slab]:
        """After the last input rows: the remaining output slabs."""
        ...


def computation_type(dtype: npt.DTypeLike) -> np.dtype:
    """Floating type interpolation runs in: float32 for up to 16-bit integers and float16/32, else float64.

    Wider integers need float64's 53-bit mantissa to round back exactly.

    Examples
    --------
    >>> computation_type(np.int16), computation_type(np.int32), computation_type(np.float16)
    (dtype('float32'), dtype('float64'), dtype('float32'))
    """
    ftype = np.result_type(np.dtype(dtype), np.float32)
    return np.dtype(np.float32) if ftype.itemsize < 4 else ftype


def overflow_headroom(
    dtype: npt.DTypeLike, ftype: npt.DTypeLike, operators: Sequence[AxisOperator | None]
) -> tuple[np.floating[Any] | None, int]:
    """Largest input magnitude the `operators` can take in `ftype` without overflow, and the scale beyond it.

    A pass multiplies the largest magnitude, and that of every partial sum, by at most its operator's
    gain, so inputs up to ``finfo(ftype).max / 2**exponent``, with ``2**exponent`` at least twice the
    product of the gains, stay finite through every pass (the factor 2 covers rounding); larger ones are
    computed scaled down by ``2**exponent``.

    Parameters
    ----------
    dtype : numpy dtype
        Type of the input.
    ftype : numpy dtype
        Computation type.
    operators : sequence of AxisOperator or None
        One per axis (``None``: the axis is left as it is).

    Returns
    -------
    headroom : numpy floating scalar or None
        Of `ftype`; ``None`` if no value of `dtype` exceeds it (integers, float16 computed in float32) or
        no axis is resized (nothing is computed).
    exponent : int
        The power of two values beyond the headroom are scaled down by.

    Examples
    --------
    >>> from nidataset._operators import axis_operator
    >>> ops = [axis_operator(n, 11, order=3, dtype=np.float32) for n in (20, 20, 20)]
    >>> headroom, exponent = overflow_headroom(np.float32, np.float32, ops)  # 2 * 1.55**3 < 2**3
    >>> headroom.dtype, float(headroom), exponent
    (dtype('float32'), 4.2535293329816107e+37, 3)
    >>> overflow_headroom(np.int16, np.float32, ops)
    (None, 3)
    """
    gains = [op.gain for op in operators if op is not None]
    exponent = max(1, math.ceil(math.log2(2 * math.prod(gains))))
    limit = np.dtype(ftype).type(np.finfo(ftype).max / 2**exponent)  # of `ftype` (numpy 1 divides in float64)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        largest: Any = np.finfo(dtype).max
    else:
        info = np.iinfo(dtype)
        largest = max(-int(info.min), int(info.max))
    if not gains or largest <= limit:
        return None, exponent
    return limit, exponent


def cast(values: np.ndarray, dtype: npt.DTypeLike, out: np.ndarray | None = None) -> np.ndarray:
    """Convert interpolated `values` to `dtype`, rounding to nearest (not truncating) for integer types.

    Finite values beyond the range of `dtype` saturate at its limits (NaN and infinity stay as they are in
    a float type). `values` may be overwritten. With `out` (of `dtype` and `values`' shape) the result is
    written there.

    Examples
    --------
    >>> cast(np.array([-0.6, 0.5, 1.5, 2.4, 300.0]), np.uint8)
    array([  0,   0,   2,   2, 255], dtype=uint8)
    >>> cast(np.array([1e30, -1e30]), np.int64)
    array([ 9223372036854775807, -9223372036854775808])
    >>> cast(np.array([7e4, -np.inf, np.nan], dtype=np.float32), np.float16).tolist()
    [65504.0, -inf, nan]
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and values.dtype.kind == "f" and np.finfo(dtype).max < np.finfo(values.dtype).max:
        limit = np.finfo(dtype).max
        low, high = values.min(), values.max()  # NaN if there is one
        if not (-limit <= low and high <= limit):  # saturate the finite values only
            np.clip(values, -limit, limit, out=values, where=np.isfinite(values))
    if dtype.kind in "iu" and values.dtype.kind == "f":
        np.rint(values, out=values)
        info = np.iinfo(dtype)
        np.clip(values, info.min, info.max, out=values)
        exact = float(info.max) == info.max  # the float holds every limit exactly: up to 32-bit integers
    else:
        exact = True
    if out is not None:
        if exact:
            np.copyto(out, values, casting="unsafe")  # integral values: the conversion is exact
        else:
            out[...] = cast(values, dtype)
        return out
    if exact:
        return values.astype(dtype, copy=False)
    # 64-bit limits round up to 2**63 or 2**64 in float64, which no such integer holds: saturate them.
    over = values >= float(info.max)
    result = np.where(over, 0, values).astype(dtype)
    result[over] = info.max
    return result


def check_shapes(in_shape: Sequence[int], shape: Sequence[int], dtype: npt.DTypeLike) -> tuple[int, ...]:
    """Check that `shape` can be asked of an array of `in_shape` and `dtype`; return it as ints."""
    out = tuple(int(n) for n in shape)
    if len(out) != len(in_shape) or any(n < 1 for n in out):
        raise ValueError(
            f"shape must give one positive size per dimension of the {len(in_shape)}D array, got {out}"
        )
    if np.dtype(dtype).kind not in "iuf":
        raise TypeError(
            f"cannot resize an array of type {np.dtype(dtype)}; an integer or float type is needed"
        )
    if math.prod(in_shape) == 0:
        raise ValueError(f"cannot resize an empty array of shape {tuple(in_shape)}")
    return out


def slab_rows(shape: Sequence[int], values: int = SLAB_VALUES) -> int:
    """Rows along the first axis of an array of `shape` that make a slab of about `values` values."""
    return max(1, values // max(1, math.prod(shape[1:])))


def slabs_of(array: np.ndarray, values: int = SLAB_VALUES) -> Iterator[np.ndarray]:
    """Cut a C-contiguous array into consecutive slabs (views) along its first axis."""
    rows = slab_rows(array.shape, values)
    return (array[start : start + rows] for start in range(0, len(array), rows))


class InterpolatingEngine:
    """B-spline or linear resizing of an array fed as consecutive slabs along its first axis.

    Parameters
    ----------
    in_shape, shape : sequence of int
        Shape of the C-ordered input and of the output.
    dtype : numpy dtype
        Type of the input slabs; the computation type follows from it (:func:`computation_type`).
    order : {3, 1}
        Cubic B-spline (mirror boundary) or linear (edge repeated).
    align : {"origin", "center"}
        Grid alignment (:func:`nidataset._operators.sample_positions`).
    antialias : bool
        Smooth each shrinking axis first (:func:`nidataset._operators.antialias_sigma`).
    slab_values : int
        About how many values each output slab holds.
    check_finite : bool
        Raise :class:`NonFiniteError` on a float slab holding NaN or infinity.
    flush_tiny : bool
        Set values smaller than :data:`TINY` (the spline's far tails on a background of zeros, which
        three passes bring down to 1e-38) to 0 before each pass reads them: products of such values
        underflow, and the processor takes many times longer over them. For results rounded to integers:
        what is dropped is 2**25 times smaller than any difference float32 can make at 0.5.
    reuse : bool
        Compute into the same buffers again and again: each output slab (or piece) is then valid only
        until the next is asked for. Fresh arrays cost a page fault per 4 kB, and more where the
        allocator hands memory back to the system at once (as Dask's workers have it do).

    Attributes
    ----------
    low, high
        Smallest and largest input value fed so far (the input's range, once all is fed).
    headroom
        Largest input magnitude computed as it is (``None``: no value of the input type exceeds it).
        From the first slab beyond it on, values are computed scaled down by ``2**exponent`` (see the
        module's docstring).
    scaled_from
        The first output row computed on scaled values (``None`` while none is).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        shape: Sequence[int],
        dtype: npt.DTypeLike,
        *,
        order: int = 3,
        align: str = "origin",
        antialias: bool = False,
        slab_values: int = SLAB_VALUES,
        check_finite: bool = True,
        reuse: bool = False,
        flush_tiny: bool = False,
    ):
        self.in_shape = tuple(int(n) for n in in_shape)
        self.shape = check_shapes(self.in_shape, shape, dtype)
        if order not in (1, 3):
            raise ValueError(f"order must be 1 or 3 for an interpolating engine, got {order!r}")
        if align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {align!r}")
        self.dtype = np.dtype(dtype)
        self.ftype = computation_type(self.dtype)
        self.operators = tuple(
            axis_operator(
                old,
                new,
                order=order,
                align=align,
                sigma=antialias_sigma(old, new) if antialias else 0.0,
                dtype=self.ftype,
            )
            for old, new in zip(self.in_shape, self.shape, strict=True)
        )
        self.before, self.after = plan_axes(self.in_shape, self.operators)
        plane = list(self.in_shape[1:])
        for axis in self.before:
            plane[axis - 1] = self.shape[axis]
        self.plane = tuple(plane)  # the first axis's rows as its matrix takes them
        self.scratch = _Scratch(self.ftype, reuse)
        self.tiny = TINY if flush_tiny else 0.0
        first = self.operators[0]
        # (the scratch's own method, not the engine's: no cycle keeps the buffers once the engine goes)
        self.window = (
            _Window(first, math.prod(plane), self.ftype, self.scratch.get) if first is not None else None
        )
        self.slab_values = slab_values
        self.check_finite = check_finite and self.dtype.kind == "f"
        self.low: np.generic | None = None
        self.high: np.generic | None = None
        self.fed = 0
        self.headroom, self.exponent = overflow_headroom(self.dtype, self.ftype, self.operators)
        self.down = self.ftype.type(2.0**-self.exponent)
        self.up = self.ftype.type(2.0**self.exponent)
        self.scaled_from: int | None = None

    def feed(self, block: np.ndarray) -> Iterator[Slab]:
        """Take the next rows of the input; iterate over the output slabs they complete, in order."""
        return map(self.complete, self.pieces(block))

    def pieces(self, block: np.ndarray) -> Iterator[Slab]:
        """Like :meth:`feed`, but the output slabs' growing in-plane axes are left for :meth:`complete`.

        The block is checked, and its shrinking in-plane axes resized, at once; each piece (output rows,
        the first axis resized) is computed as it is asked for. Pieces are independent of each other:
        :meth:`complete` may run on them in any order and in any thread, and gives the slabs :meth:`feed`
        would, bit for bit.
        """
        if block.shape[1:] != self.in_shape[1:] or self.fed + len(block) > self.in_shape[0]:
            raise ValueError(f"a slab of shape {block.shape} does not continue an array of {self.in_shape}")
        if len(block) == 0:
            return iter(())
        low, high = block.min(), block.max()  # NaN if there is one
        if self.check_finite and not (np.isfinite(low) and np.isfinite(high)):
            raise NonFiniteError("the array holds NaN or infinite values")
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        if self.scaled_from is None and self.headroom is not None and max(-low, high) > self.headroom:
            self._scale_down()
        start = self.fed
        self.fed += len(block)
        if self.scaled_from is None and block.dtype == self.ftype and block.flags.c_contiguous:
            x = block
        else:
            x = self._array("in", block.shape)
            np.copyto(x, block, casting="unsafe")
            if self.scaled_from is not None:
                x *= self.down
        for turn, axis in enumerate(self.before):
            x = apply_axis(
                x, axis, self.operators[axis], self._array(f"before{turn % 2}", self._resized(x, axis))
            )
            self._flush(x)
        return self._pieces(start, x)

    def complete(self, piece: Slab) -> Slab:
        """Resize the growing in-plane axes of a piece from :meth:`pieces` (it reads nothing else)."""
        y = piece.values
        for turn, axis in enumerate(self.after):
            if turn:
                self._flush(y)
            y = apply_axis(
                y, axis, self.operators[axis], self._array(f"after{turn % 2}", self._resized(y, axis))
            )
        if self.scaled_from is not None and piece.start >= self.scaled_from:
            self._scale_up(y)
        return Slab(piece.start, y)

    def _scale_up(self, y: np.ndarray) -> None:
        """Scale values computed scaled down back up, in place, saturating at the type's limits."""
        limit = self.headroom
        assert limit is not None  # values are scaled only beyond a headroom
        np.clip(y, -limit, limit, out=y)  # what scales back to the type's largest value
        y *= self.up

    def _scale_down(self) -> None:
        """Compute every output row still to come on values scaled down by ``2**exponent``.

        Called before a slab beyond the headroom goes in: the rows the first axis's window holds are
        scaled down with it. Pieces already handed out stay unscaled (they read no value beyond the
        headroom), so :meth:`complete` tells the two apart by their first row.
        """
        window = self.window
        if window is None:
            self.scaled_from = self.fed
        else:
            tiles = window.tiles
            self.scaled_from = tiles[window.next].lo if window.next < len(tiles) else self.shape[0]
            window.buffer[: window.held] *= self.down

    def _flush(self, x: np.ndarray) -> None:
        """With `flush_tiny`, set the values of `x` smaller than :data:`TINY` to 0 (`x` is the engine's)."""
        if self.tiny:
            small, above = self._array("small", x.shape, bool), self._array("above", x.shape, bool)
            np.less(x, self.tiny, out=small)
            np.logical_and(small, np.greater(x, -self.tiny, out=above), out=small)
            np.copyto(x, 0, where=small)

    def _resized(self, x: np.ndarray, axis: int) -> tuple[int, ...]:
        """Shape of `x` once `axis` is resized."""
        op = self.operators[axis]
        return tuple(op.new if a == axis and op is not None else n for a, n in enumerate(x.shape))

    def _array(self, name: str, shape: Sequence[int], dtype: npt.DTypeLike | None = None) -> np.ndarray:
        """Return a new array (by default of the computation type), or with `reuse` the one kept as `name`."""
        return self.scratch.get(name, shape, dtype)

    def finish(self) -> Iterator[Slab]:
        """Check that the whole input was fed (every output slab has come out by then)."""
        if self.fed != self.in_shape[0]:
            raise ValueError(f"slabs ended at row {self.fed} of {self.in_shape[0]}")
        return iter(())

    def _pieces(self, start: int, x: np.ndarray) -> Iterator[Slab]:
        """Output rows with the first axis resized, in slabs of about `slab_values` output values."""
        if self.window is None:
            yield from self._split(start, x)
            return
        for lo, out in self.window.add(x.reshape(len(x), -1)):
            if self.after:
                self._flush(out)
            yield from self._split(lo, out.reshape(len(out), *self.plane))

    def _split(self, start: int, rows: np.ndarray) -> Iterator[Slab]:
        if not self.after:
            yield Slab(start, rows)
            return
        step = slab_rows(self.shape, self.slab_values)
        for lo in range(0, len(rows), step):
            yield Slab(start + lo, rows[lo : lo + step])


class NearestEngine:
    """Nearest-sample resizing of an array fed as consecutive slabs (values and type kept).

    Output row ``k`` copies input row ``nearest[k]`` at the in-plane nearest samples, so only the input
    rows some output row takes are kept, and each output row is returned as soon as its row is in.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        shape: Sequence[int],
        dtype: npt.DTypeLike,
        *,
        align: str = "origin",
        slab_values: int = SLAB_VALUES,
    ):
        self.in_shape = tuple(int(n) for n in in_shape)
        self.shape = check_shapes(self.in_shape, shape, dtype)
        self.dtype = np.dtype(dtype)
        index = [
            nearest_indices(sample_positions(old, new, align), old)
            for old, new in zip(self.in_shape, self.shape, strict=True)
        ]
        self.rows = index[0]
        self.plane: tuple[np.ndarray, ...] = np.ix_(*index[1:]) if len(index) > 1 else ()
        self.step = slab_rows(self.shape, slab_values)
        self.fed = 0
        self.done = 0  # output rows returned

    def feed(self, block: np.ndarray) -> Iterator[Slab]:
        """Take the next rows of the input; iterate over the output rows that copy from them, in slabs."""
        if block.shape[1:] != self.in_shape[1:] or self.fed + len(block) > self.in_shape[0]:
            raise ValueError(f"a slab of shape {block.shape} does not continue an array of {self.in_shape}")
        start, self.fed = self.fed, self.fed + len(block)
        first, self.done = self.done, int(np.searchsorted(self.rows, self.fed, side="left"))
        return self._outputs(block, start, first, self.done)

    def finish(self) -> Iterator[Slab]:
        """Check that the whole input was fed."""
        if self.fed != self.in_shape[0]:
            raise ValueError(f"slabs ended at row {self.fed} of {self.in_shape[0]}")
        return iter(())

    def _outputs(self, block: np.ndarray, start: int, first: int, stop: int) -> Iterator[Slab]:
        """Output rows ``first:stop`` (they read rows of `block`), a slab at a time."""
        for lo in range(first, stop, self.step):
            picked = block[self.rows[lo : min(lo + self.step, stop)] - start]  # a copy
            if self.plane:
                index: tuple[Any, ...] = (slice(None), *self.plane)
                picked = picked[index]
            yield Slab(lo, picked)


def resize(
    array: npt.ArrayLike,
    shape: Sequence[int],
    *,
    order: int = 3,
    align: str = "origin",
    antialias: bool = False,
    clip: bool = True,
    output_dtype: npt.DTypeLike | None = None,
    slab_values: int = SLAB_VALUES,
) -> np.ndarray:
    """Resize an array in memory by separable interpolation, with the slab engine.

    Output index ``i`` along an axis samples the input at the position
    :func:`nidataset._operators.sample_positions` gives.

    Parameters
    ----------
    array : array_like
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
    slab_values : int, optional
        About how many values the engine takes at a time. Results can differ in the last bits of float
        rounding between slab sizes (BLAS picks its kernels by size); files use the default.

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
    float64 otherwise (:func:`computation_type`).

    Values near the limits of the computation type are computed scaled down by a power of two, so that
    nothing overflows (see the module's docstring); finite input gives finite output, and unclipped
    values beyond the type's range saturate at its limits.

    Non-finite values (NaN, +-inf) do not spread: before interpolation each is replaced by its nearest
    finite neighbour, and each output sample whose nearest input sample is non-finite takes that value
    (:mod:`nidataset._nonfinite`). An axis whose size does not change is left untouched.

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
    shape = check_shapes(array.shape, shape, array.dtype)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if antialias and order == 0:
        raise ValueError("antialias applies to the bspline and linear interpolations, not to nearest")
    if not array.flags.c_contiguous and array.flags.f_contiguous:
        transposed = resize(
            array.T,
            shape[::-1],
            order=order,
            align=align,
            antialias=antialias,
            clip=clip,
            output_dtype=output_dtype,
            slab_values=slab_values,
        )
        return transposed.T
    array = np.ascontiguousarray(array)
    if order == 0:
        engine: Engine = NearestEngine(array.shape, shape, array.dtype, align=align, slab_values=slab_values)
        result = gather(engine, slabs_of(array, slab_values), shape, array.dtype)
        return result if output_dtype is None else cast(result, output_dtype)

    def run(values: np.ndarray, check_finite: bool) -> tuple[InterpolatingEngine, np.ndarray]:
        engine = InterpolatingEngine(
            array.shape,
            shape,
            array.dtype,
            order=order,
            align=align,
            antialias=antialias,
            slab_values=slab_values,
            check_finite=check_finite,
        )
        return engine, gather(engine, slabs_of(values, slab_values), shape, engine.ftype)

    patch = None
    try:
        engine, result = run(array, check_finite=True)
    except NonFiniteError:
        patch = NonFinitePatch(array, shape, align)
        engine, result = run(patch.filled, check_finite=False)
    if clip and engine.low is not None and not np.isnan(engine.low):  # all NaN: no range to clip to
        np.clip(result, engine.low, engine.high, out=result)
    if patch is not None:
        patch.restore(result, 0)
    if output_dtype is None:
        return result
    out = cast(result, output_dtype)
    if clip and array.dtype.kind in "iu" and out.dtype.kind in "iu" and array.dtype.itemsize == 8:
        # A 64-bit range is clipped above in float64, which rounds its limits (2**62 + 1 to 2**62, say):
        # clip again, exactly, in the integer type.
        low, high = engine.low, engine.high
        assert low is not None and high is not None  # the engine has seen the whole array
        info = np.iinfo(out.dtype)
        np.clip(out, max(int(low.item()), info.min), min(int(high.item()), info.max), out=out)
    return out


def gather(
    engine: Engine, blocks: Iterable[np.ndarray], shape: Sequence[int], dtype: npt.DTypeLike
) -> np.ndarray:
    """Feed `blocks` to `engine` and collect its output slabs into one new array of `shape`."""
    out = np.empty(shape, dtype=dtype)
    for block in blocks:
        for start, values in engine.feed(block):
            out[start : start + len(values)] = values
    for start, values in engine.finish():
        out[start : start + len(values)] = values
    return out


# --- The first axis's window, and resizing one axis of a slab --------------------------------------------


class _Scratch:
    """Buffers kept by name, each grown as needed and handed out as views of its start.

    Without `reuse`, a new array each time.
    """

    def __init__(self, dtype: np.dtype, reuse: bool = True):
        self.dtype = dtype  # unless asked for another
        self.reuse = reuse
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: Sequence[int], dtype: npt.DTypeLike | None = None) -> np.ndarray:
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if not self.reuse:
            return np.empty(shape, dtype=dtype)
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = self.buffers[name] = np.empty(size, dtype=dtype)
        return buffer[:size].reshape(shape)


class _Window:
    """Input rows along the first axis, held until every tile of its matrix that reads them is computed.

    A tile is computed as soon as its last row has come in, in one matrix product over its rows, and
    tiles come out in output order. The buffer holds the rows of the widest tile plus as many again, so
    that the rows still needed are moved down only once per that many rows.
    """

    def __init__(
        self, op: AxisOperator, width: int, ftype: np.dtype, array: Callable[[str, Sequence[int]], np.ndarray]
    ):
        self.op = op
        self.array = array  # where tiles are computed
        self.tiles = op.tiles
        # Rows every tile from t on still needs: the smallest first row of tiles t, t + 1, ...
        self.keep = np.minimum.accumulate([tile.first for tile in op.tiles][::-1])[::-1]
        self.buffer = np.empty((2 * op.widest, width), dtype=ftype)
        self.first = 0  # the input row held in buffer[0]
        self.held = 0
        self.next = 0  # the next tile to compute

    def add(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Take the next input `rows` (2D); yield ``(lo, output rows)`` of each tile now computable."""
        while len(rows):
            room = len(self.buffer) - self.held
            if room == 0:
                self._drop()
                room = len(self.buffer) - self.held
            if room == 0:  # every held row is still needed: make room
                grown = np.empty((2 * len(self.buffer), self.buffer.shape[1]), dtype=self.buffer.dtype)
                grown[: self.held] = self.buffer[: self.held]
                self.buffer = grown
                room = len(self.buffer) - self.held
            take = rows[:room]
            self.buffer[self.held : self.held + len(take)] = take
            self.held += len(take)
            rows = rows[len(take) :]
            end = self.first + self.held
            while self.next < len(self.tiles) and self.tiles[self.next].stop <= end:
                tile = self.tiles[self.next]
                out = self.array("tile", (tile.hi - tile.lo, self.buffer.shape[1]))
                np.matmul(tile.block, self.buffer[tile.first - self.first : tile.stop - self.first], out=out)
                self.next += 1
                yield tile.lo, out

    def _drop(self) -> None:
        """Let go of the rows no tile still to come reads."""
        end = self.first + self.held
        keep = min(int(self.keep[self.next]), end) if self.next < len(self.tiles) else end
        drop = keep - self.first
        if drop > 0:
            self.buffer[: self.held - drop] = self.buffer[drop : self.held]
            self.first, self.held = keep, self.held - drop


def plan_axes(
    shape: tuple[int, ...], operators: Sequence[AxisOperator | None]
) -> tuple[list[int], list[int]]:
    """In-plane axes resized on each input slab, before the first axis, and those resized on each output slab.

    Each list goes from the most shrinking axis. Every shrinking axis goes first (slabs shrink as they
    come, and the first axis's window is small), unless resizing the first axis earlier saves a quarter
    of the work; growing axes go last, so that the window holds rows of the smaller plane.
    """
    ratio = {a: op.new / op.old for a, op in enumerate(operators) if op is not None}
    moving = sorted((a for a in ratio if a > 0), key=lambda a: ratio[a])
    shrinking = [a for a in moving if ratio[a] <= 1]
    candidates = [shrinking]
    if 0 in ratio:
        candidates.append([a for a in shrinking if ratio[a] < ratio[0]])

    def work(before: list[int]) -> int:
        size, sizes, total = math.prod(shape), list(shape), 0
        for axis in [*before, *([0] if 0 in ratio else []), *(a for a in moving if a not in before)]:
            total += size
            op = operators[axis]
            assert op is not None
            sizes[axis] = op.new
            size = math.prod(sizes)
        return total

    before = candidates[0]
    if len(candidates) > 1 and work(candidates[1]) < 0.75 * work(before):
        before = candidates[1]
    return before, [a for a in moving if a not in before]


def apply_axis(
    x: np.ndarray, axis: int, op: AxisOperator | None, out: np.ndarray | None = None
) -> np.ndarray:
    """Resample C-contiguous `x` along `axis` with `op`, into `out` (C-contiguous) or a new array."""
    if op is None:
        return x
    outer = math.prod(x.shape[:axis])
    inner = math.prod(x.shape[axis + 1 :])
    if out is None:
        out = np.empty((*x.shape[:axis], op.new, *x.shape[axis + 1 :]), dtype=x.dtype)
    out = out.reshape(outer, op.new, inner)
    if inner == 1:  # the axis is the last one: rows of samples times the transposed matrix
        lines, result = x.reshape(outer, op.old), out.reshape(outer, op.new)
        for tile in op.tiles:
            np.matmul(lines[:, tile.first : tile.stop], tile.block.T, out=result[:, tile.lo : tile.hi])
    else:  # the matrix times each plane (outer, old, inner)
        planes = x.reshape(outer, op.old, inner)
        for tile in op.tiles:
            np.matmul(tile.block, planes[:, tile.first : tile.stop], out=out[:, tile.lo : tile.hi])
    return out.reshape(*x.shape[:axis], op.new, *x.shape[axis + 1 :])
