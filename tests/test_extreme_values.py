"""Values near the limits of their type: finite input gives finite output, within the input's range.

The spline's passes can multiply the largest magnitude by 1.55 each (its Lebesgue constant), so values
near float32's or float64's limit overflowed inside the computation, and one infinity in a dense tile of
the axis matrix made its whole row of outputs NaN (issue 10, point 3). The oracle is scipy in float64 on
the input scaled down by a power of two (which changes no rounding), scaled back and clipped to the
input's range.
"""

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from nidataset import _operators
from nidataset._engine import InterpolatingEngine, gather, overflow_headroom, resize, slabs_of
from nidataset._operators import axis_operator
from nidataset._options import Options
from nidataset._pipeline import resample_file
from nidataset.preprocessing import resampling

#: (input shape, output shape): the issue's case, growing on every axis, and both at once.
SHAPES = {
    "down": ((20, 20, 20), (11, 11, 11)),
    "up": ((7, 6, 5), (16, 15, 11)),
    "mixed": ((20, 8, 14), (9, 17, 14)),
}
#: Relative tolerance of the computation type against the float64 oracle, as a share of the peak.
RTOL = {np.float32: 4e-6, np.float64: 1e-13}
INTEGERS = (np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)


def limits(dtype):
    """Smallest and largest value of `dtype`, as numpy scalars of it."""
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    return np.dtype(dtype).type(info.min), np.dtype(dtype).type(info.max)


def pattern(name, shape, dtype, rng):
    """A volume of `dtype` whose values reach the type's limits in the way `name` says."""
    low, high = limits(dtype)
    if name == "sentinel":  # ordinary values, and 5 of 20 slices of "no data" at the type's minimum
        span = min(1000.0, float(high) / 2)
        x = (rng.uniform(-span, span, shape) if low < 0 else rng.uniform(0, span, shape)).astype(dtype)
        x[3 : 3 + max(1, shape[0] // 4)] = low
        return x
    if name == "checkerboard":  # the type's minimum and maximum alternating along every axis
        parity = np.indices(shape).sum(axis=0) % 2
        return np.where(parity == 1, high, low).astype(dtype)
    if name == "random":  # the minimum and the maximum at random
        return np.where(rng.random(shape) < 0.5, high, low).astype(dtype)
    if name == "near":  # within a factor 2 of the maximum, random
        x = rng.uniform(0.5, 1.0, shape) * float(high)
        return np.minimum(x, high).astype(dtype) if np.dtype(dtype).kind == "f" else _integers(x, dtype)
    if name == "worst":  # the signs of the largest row of every axis's matrix: the spline's largest gain
        return worst_case(shape, dtype, 3)
    raise ValueError(name)


def _integers(x, dtype):
    """Floats within `dtype`'s range as its integers (saturating where float64 rounds past the limit)."""
    low, high = limits(dtype)
    return np.where(x >= float(high), high, np.where(x <= float(low), low, x.astype(dtype))).astype(dtype)


def worst_case(shape, dtype, order, out_shape=None, align="origin"):
    """Values at the type's limits, signed like the largest row of each axis's matrix (outer product):
    the output sample of that row (on every axis) is the peak times the product of the gains."""
    low, high = limits(dtype)
    out_shape = out_shape or SHAPES["down"][1]
    signs = []
    for old, new in zip(shape, out_shape, strict=True):
        op = axis_operator(old, new, order=order, align=align)
        tile, row = max(
            ((t, r) for t in op.tiles for r in range(t.hi - t.lo)),
            key=lambda tr: np.abs(tr[0].block[tr[1]]).sum(),
        )
        sign = np.ones(old)
        sign[tile.first : tile.stop] = np.where(tile.block[row] < 0, -1.0, 1.0)
        signs.append(sign)
    sign = signs[0][:, None, None] * signs[1][None, :, None] * signs[2][None, None, :]
    return np.where(sign > 0, high, low).astype(dtype)


def positions(old, new, align):
    index = np.arange(new, dtype=np.float64)
    return index * old / new if align == "origin" else (index + 0.5) * old / new - 0.5


def oracle(x, shape, order, align="origin", antialias=False, exponent=8):
    """scipy in float64 on `x` scaled by ``2**-exponent``, scaled back and clipped to `x`'s range.

    The cubic B-spline with a mirror boundary, or linear with the edge repeated; antialiasing as
    ``scipy.ndimage.gaussian_filter1d`` with sigma ``(old / new - 1) / 2`` on each shrinking axis.
    """
    scale = 2.0**-exponent
    v = np.asarray(x, dtype=np.float64) * scale
    if antialias:
        for axis, (o, n) in enumerate(zip(x.shape, shape, strict=True)):
            if n < o:
                v = ndimage.gaussian_filter1d(v, (o / n - 1) / 2, axis=axis, mode="mirror")
    coords = np.meshgrid(
        *[positions(o, n, align) for o, n in zip(x.shape, shape, strict=True)], indexing="ij"
    )
    v = ndimage.map_coordinates(v, coords, order=order, mode="mirror" if order == 3 else "nearest")
    return np.clip(v, float(x.min()) * scale, float(x.max()) * scale) / scale


def peak(x):
    return max(abs(float(x.min())), abs(float(x.max())))


def assert_finite_in_range(got, x):
    assert np.isfinite(got).all(), f"{np.count_nonzero(~np.isfinite(got))} non-finite of {got.size}"
    assert got.min() >= x.min() and got.max() <= x.max()


# --- resize(): floats against scipy --------------------------------------------------------------------


@pytest.mark.parametrize("shapes", list(SHAPES))
@pytest.mark.parametrize("name", ["sentinel", "checkerboard", "random", "near", "worst"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_floats_at_the_limit_stay_finite_and_match_the_scaled_oracle(dtype, name, shapes, rng):
    old, new = SHAPES[shapes]
    x = pattern(name, old, dtype, rng)
    for order in (3, 1):
        for antialias in (False, True):
            for align in ("origin", "center"):
                for slab_values in (1 << 21, 300):  # one slab, or scaling switched on mid-stream
                    got = resize(
                        x, new, order=order, align=align, antialias=antialias, slab_values=slab_values
                    )
                    assert got.dtype == dtype
                    assert_finite_in_range(got, x)
                    expected = oracle(x, new, order, align, antialias)
                    np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL[dtype] * peak(x))


def test_the_issue_case_no_nan_in_either_half(rng):
    # float32, "no data" at -3.4028235e38 in 5 of 20 slices, 20**3 -> 11**3: 0.9.1 stays finite; the
    # engine gave 1,287 NaN of 1,331 outputs, 585 of them in the half with no sentinel.
    x = rng.uniform(-1000, 1000, (20, 20, 20)).astype(np.float32)
    x[3:8] = np.float32(-3.4028235e38)
    got = resize(x, (11, 11, 11))
    assert_finite_in_range(got, x)
    # The spline rings away from a step of 3.4e38 (by 0.268 a slice): the other half holds large values
    # too, as in exact arithmetic.
    np.testing.assert_allclose(got, oracle(x, (11, 11, 11), 3), rtol=0, atol=4e-6 * 3.4028235e38)


def test_unclipped_values_saturate_at_the_type_limits():
    # The worst sign pattern: the true spline value at the largest row is about 3.7 times the maximum.
    x = worst_case((20, 20, 20), np.float32, 3)
    got = resize(x, (11, 11, 11), clip=False)
    assert np.isfinite(got).all()
    assert got.max() == np.finfo(np.float32).max and got.min() == np.finfo(np.float32).min
    # Where the spline stays within float32's range it is the oracle's value (unclipped).
    v = np.asarray(x, dtype=np.float64) * 2.0**-8
    coords = np.meshgrid(*[positions(20, 11, "origin")] * 3, indexing="ij")
    unclipped = ndimage.map_coordinates(v, coords, order=3, mode="mirror") * 2.0**8
    inside = np.abs(unclipped) < 0.99 * float(np.finfo(np.float32).max)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(got[inside], unclipped[inside], rtol=0, atol=4e-6 * 3.4028235e38)
    assert (np.sign(got[~inside]) == np.sign(unclipped[~inside])).all()


def test_longdouble_at_the_limit(rng):
    x = pattern("random", (12, 9, 7), np.longdouble, rng)
    got = resize(x, (5, 13, 7))
    assert got.dtype == np.longdouble
    assert_finite_in_range(got, x)
    # The same computation on the input scaled down by 2**8, scaled back: exactly.
    scaled = resize(x / np.longdouble(256), (5, 13, 7)) * np.longdouble(256)
    np.testing.assert_array_equal(got, scaled)


def test_float16_overshoot_saturates_instead_of_overflowing(rng):
    # float16 is computed in float32: nothing overflows there, but the spline's overshoot past 65504
    # overflowed the cast back (and warned).
    x = pattern("checkerboard", (9, 9, 9), np.float16, rng)
    got = resize(x, (20, 20, 20), clip=False, output_dtype=np.float16)
    assert np.isfinite(got).all() and np.abs(got).max() == 65504
    got = resize(x, (20, 20, 20), output_dtype=np.float16)
    assert_finite_in_range(got, x)


# --- resize(): integers at their limits -----------------------------------------------------------------


@pytest.mark.parametrize("shapes", list(SHAPES))
@pytest.mark.parametrize("name", ["sentinel", "checkerboard", "random", "near", "worst"])
@pytest.mark.parametrize("dtype", INTEGERS)
def test_integers_at_their_limits_stay_in_range(dtype, name, shapes, rng):
    old, new = SHAPES[shapes]
    x = pattern(name, old, dtype, rng)
    for order in (3, 1):
        for antialias in (False, True):
            for align in ("origin", "center"):
                got = resize(x, new, order=order, align=align, antialias=antialias, output_dtype=dtype)
                assert got.dtype == dtype
                assert got.min() >= x.min() and got.max() <= x.max()  # exactly, in the integer type
                expected = np.rint(oracle(x, new, order, align, antialias, exponent=0))
                # float32 (up to 16 bits) or float64 rounding, and the rounding to integers.
                rtol = 4e-6 if np.dtype(dtype).itemsize <= 2 else 1e-13
                error = np.abs(got.astype(np.float64) - expected)
                assert error.max() <= rtol * peak(x) + 1


def test_64_bit_range_clipped_exactly():
    # float64 rounds 2**62 + 1000 to 2**62 + 1024 and -(2**63) + 1 to -(2**63): a clip in float64 lets
    # both past the input's range.
    high, low = 2**62 + 1000, -(2**63) + 1
    x = np.array([2**62 + 1, high, high, 5, low, low, 5], dtype=np.int64)
    got = resize(x, (15,), output_dtype=np.int64)
    assert got.max() == high and got.min() == low  # both reached (the spline overshoots), not passed
    u = np.array([2**64 - 1, 0, 0, 2**64 - 1, 2**64 - 1], dtype=np.uint64)
    got = resize(u, (13,), output_dtype=np.uint64)
    assert got.max() == 2**64 - 1 and got.min() == 0


# --- the engine: where it scales, and that scaling changes nothing else ---------------------------------


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiles of 3 rows and slabs of 50 values: scaling switches on with rows of many tiles held."""
    monkeypatch.setattr(_operators, "TILE_ROWS", 3)  # a part of the operators' cache key
    return 50


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ((120, 4, 3), (50, 5, 3)),  # the first axis shrinks: rows of many tiles held when scaling starts
        ((100, 3, 2), (230, 4, 2)),  # it grows
        ((20, 8, 6), (20, 5, 9)),  # it is left as it is (no window)
    ],
)
def test_scaled_computation_is_the_scaled_input_computed(small_pieces, dtype, old, new, rng):
    # Scaling by a power of two changes no rounding: the result is bit for bit that of the input scaled
    # down, computed as it is, saturated and scaled back, even where the scaling starts mid-volume.
    x = rng.uniform(-1, 1, old) * float(np.finfo(dtype).max) / 1e3
    x[len(x) // 2 :] *= 1e3  # the second half beyond the headroom
    x = x.astype(dtype)
    engine = InterpolatingEngine(old, new, dtype, slab_values=small_pieces)
    got = gather(engine, slabs_of(x, small_pieces), new, dtype)
    assert engine.scaled_from is not None and engine.scaled_from > 0  # switched on mid-volume
    k = engine.exponent
    down = resize(x * dtype(2.0**-k), new, clip=False, slab_values=small_pieces)
    expected = np.clip(down, -engine.headroom, engine.headroom) * dtype(2.0**k)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("order", [3, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_headroom_is_enough_for_the_worst_input(dtype, order):
    # The worst sign pattern at exactly the headroom is computed as it is, and stays finite.
    old, new = SHAPES["down"]
    x = worst_case(old, dtype, order)
    ops = [axis_operator(o, n, order=order, dtype=dtype) for o, n in zip(old, new, strict=True)]
    headroom, exponent = overflow_headroom(dtype, dtype, ops)
    gain = math.prod(op.gain for op in ops)
    assert 2 * gain <= 2.0**exponent < 4 * gain
    x = np.where(x > 0, headroom, -headroom).astype(dtype)
    engine = InterpolatingEngine(old, new, dtype, order=order)
    got = gather(engine, [x], new, dtype)
    assert engine.scaled_from is None
    assert np.isfinite(got).all()
    assert np.abs(got).max() > 0.99 * gain * float(headroom)  # the worst row reached its gain
    nudged = np.nextafter(x, np.where(x > 0, np.inf, -np.inf).astype(dtype))  # just beyond: scaled
    engine = InterpolatingEngine(old, new, dtype, order=order)
    gather(engine, [nudged], new, dtype)
    assert engine.scaled_from == 0


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint64, np.float16])
def test_types_whose_values_cannot_reach_the_headroom_have_none(dtype):
    ops = [axis_operator(20, 11, order=3, dtype=np.float32)] * 3
    assert (
        overflow_headroom(dtype, np.float32 if np.dtype(dtype).itemsize <= 2 else np.float64, ops)[0] is None
    )


def test_ordinary_values_are_not_scaled(rng):
    x = (rng.standard_normal((20, 20, 20)) * 1e30).astype(np.float32)  # far below the headroom
    engine = InterpolatingEngine(x.shape, (11, 11, 11), np.float32)
    gather(engine, slabs_of(x, 500), (11, 11, 11), np.float32)
    assert engine.scaled_from is None


# --- files -----------------------------------------------------------------------------------------------


def write(path, data):
    """`data` (indexed x, y, z) stored as its own type, with nibabel."""
    image = nib.Nifti1Image(np.asarray(data), np.diag([0.8, 0.9, 2.5, 1.0]), dtype=np.asarray(data).dtype)
    nib.save(image, path)
    return str(path)


def stored(path):
    return np.asanyarray(nib.load(path).dataobj)


def file_volume(dtype, shape, rng):
    """Ordinary values, "no data" slices at the type's minimum and a checkerboard of both limits."""
    x = pattern("sentinel", shape, dtype, rng)
    board = pattern("checkerboard", shape, dtype, rng)
    x[..., -3:] = board[..., -3:]
    return x


FILE_TYPES = (
    np.float32,
    np.float64,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
)


@pytest.mark.parametrize("shapes", ["down", "up"])
@pytest.mark.parametrize("dtype", FILE_TYPES)
def test_files_at_the_limits(tmp_path, dtype, shapes, rng):
    old, new = SHAPES[shapes]
    x = file_volume(dtype, old, rng)
    src = write(tmp_path / "in.nii.gz", x)
    for interpolation in ("bspline", "linear", "nearest", "label"):
        for align in ("origin", "center"):
            for antialias in (False, True) if interpolation in ("bspline", "linear") else (False,):
                folder = tmp_path / f"{interpolation}-{align}-{antialias}"
                out = resampling(
                    src, folder, new, interpolation=interpolation, align=align, antialias=antialias
                )
                got = stored(out)
                assert got.dtype == dtype and got.shape == new
                assert_finite_in_range(got, x)
                if interpolation == "nearest":
                    index = np.ix_(
                        *[
                            np.clip(np.floor(positions(o, n, align) + 0.5), 0, o - 1).astype(int)
                            for o, n in zip(old, new, strict=True)
                        ]
                    )
                    np.testing.assert_array_equal(got, x[index])
                elif interpolation == "label":
                    assert np.isin(got, x).all()
                else:
                    order = 3 if interpolation == "bspline" else 1
                    expected = oracle(x, new, order, align, antialias)
                    if dtype in RTOL:
                        np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL[dtype] * peak(x))
                    else:
                        rtol = 4e-6 if np.dtype(dtype).itemsize <= 2 else 1e-13
                        assert np.abs(got.astype(np.float64) - np.rint(expected)).max() <= rtol * peak(x) + 1


#: Files whose z axis (the slabs') is long enough for output slabs to leave before the limits come in.
LONG = {
    "long down": ((6, 5, 200), (7, 4, 50)),  # the output held: pieces cast as they come
    "long up": ((6, 5, 100), (9, 7, 230)),  # the input held: pieces completed on other threads
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shapes", [*SHAPES, *LONG])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_files_scaled_mid_stream(tmp_path, dtype, shapes, threads, rng, monkeypatch):
    # Small slabs: the limits arrive after ordinary slabs, when some output rows may have left already.
    old, new = {**SHAPES, **LONG}[shapes]
    x = rng.uniform(-1000, 1000, old).astype(dtype)  # the first slabs (along z) ordinary, then the limits
    half = old[2] // 2
    x[..., half:] = pattern("checkerboard", old, dtype, rng)[..., half:]
    x[::3, :, -1] = np.finfo(dtype).min
    src = write(tmp_path / "in.nii.gz", x)
    switched = []
    scale_down = InterpolatingEngine._scale_down

    def spy(engine):
        scale_down(engine)
        switched.append(engine.scaled_from)

    monkeypatch.setattr(InterpolatingEngine, "_scale_down", spy)
    for interpolation in ("bspline", "linear"):
        options = Options(interpolation=interpolation)
        out = resample_file(
            src, str(tmp_path / interpolation), new, options, threads=threads, slab_values=100
        )
        got = stored(out)
        assert_finite_in_range(got, x)
        expected = oracle(x, new, 3 if interpolation == "bspline" else 1)
        np.testing.assert_allclose(got, expected, rtol=0, atol=RTOL[dtype] * peak(x))
    assert len(switched) == 2
    if shapes in LONG:
        assert all(row > 0 for row in switched)  # output rows computed unscaled, then scaled ones


def test_the_issue_case_through_a_file(tmp_path, rng):
    x = rng.uniform(-1000, 1000, (20, 20, 20)).astype(np.float32)
    x[:, :, 3:8] = np.float32(-3.4028235e38)  # 5 of 20 slices
    src = write(tmp_path / "in.nii.gz", x)
    for interpolation in ("bspline", "linear"):
        got = stored(resampling(src, tmp_path / interpolation, (11, 11, 11), interpolation=interpolation))
        assert_finite_in_range(got, x)
        expected = oracle(x, (11, 11, 11), 3 if interpolation == "bspline" else 1)
        np.testing.assert_allclose(got, expected, rtol=0, atol=4e-6 * 3.4028235e38)


def test_nothing_resized_nothing_computed():
    x = pattern("checkerboard", (4, 5, 6), np.float32, None)
    np.testing.assert_array_equal(resize(x, x.shape, clip=False), x)


def test_file_with_nan_and_sentinel(tmp_path, rng):
    x = file_volume(np.float32, (20, 20, 20), rng)
    x[11, 11, 11] = np.nan
    src = write(tmp_path / "in.nii.gz", x)
    got = stored(resampling(src, tmp_path / "out", (11, 11, 11)))
    nan = np.isnan(got)
    assert nan.sum() == 1  # the output voxel whose nearest input voxel is the NaN (6 * 20 / 11 = 10.9)
    assert nan[6, 6, 6]
    finite = got[~nan]
    assert np.isfinite(finite).all() and finite.min() >= np.nanmin(x) and finite.max() <= np.nanmax(x)
