"""The slab engine against scipy's cubic spline (mirror boundary), which is defined everywhere."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from helpers import mirror_spline
from nidataset import _engine, _operators
from nidataset._engine import InterpolatingEngine, NonFiniteError, cast, gather, resize, slabs_of
from nidataset._operators import axis_operator, sample_positions

SHAPES = [
    ((20, 17, 9), (7, 30, 9)),  # down, up, unchanged
    ((5, 6, 7), (11, 3, 14)),
    ((40, 36, 30), (17, 20, 11)),  # down on every axis
    ((9, 8, 7), (20, 19, 15)),  # up more than 2x on every axis
    ((1, 2, 3), (3, 3, 3)),  # tiny axes in
    ((3, 2, 1), (1, 1, 1)),  # tiny axes out
    ((2, 3, 4), (5, 7, 9)),
]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(("old", "new"), SHAPES)
def test_matches_scipy_mirror_spline_float64(old, new, order, rng):
    x = np.asarray(rng.standard_normal(old), order=order)
    # float64 all the way: only rounding separates the two (the prefilter horizon is below 1e-16).
    np.testing.assert_allclose(resize(x, new, clip=False), mirror_spline(x, new), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("old", "new"), SHAPES)
def test_matches_scipy_mirror_spline_float32(old, new, rng):
    x = rng.standard_normal(old).astype(np.float32)
    out = resize(x, new, clip=False)
    assert out.dtype == np.float32
    # float32 arithmetic on values of order 1 (|x| < 5): a few ulps after the prefilter's gain.
    np.testing.assert_allclose(out, mirror_spline(x, new), rtol=0, atol=5e-6)


@pytest.fixture
def small_pieces(monkeypatch):
    """Tiny tiles and slabs: many tiles per axis, many slabs per array, tiles spanning slabs."""
    monkeypatch.setattr(_operators, "TILE_ROWS", 3)  # a part of the operators' cache key
    return 50  # values per slab


@pytest.mark.parametrize("antialias", [False, True])
def test_tiles_and_slabs_agree_with_scipy(small_pieces, antialias, rng):
    cases = [
        ((30, 40, 50), (13, 17, 60)),
        ((50, 40, 30), (60, 17, 13)),
        ((41, 3, 2), (7, 5, 2)),
        ((5, 3, 40), (61, 7, 9)),  # tiles past the rows held so far
        ((97, 4, 3), (6, 4, 3)),  # tiles far wider than a slab
        ((400, 3, 2), (170, 2, 3)),  # many more rows than held at once: the rows move down
        ((300, 2, 2), (900, 2, 3)),
        ((1000, 2, 2), (10, 2, 2)),  # rows between tiles that no output needs
    ]
    for old, new in cases:
        x = rng.standard_normal(old)
        expected = x
        if antialias:
            for axis, (o, n) in enumerate(zip(old, new, strict=True)):
                if n < o:
                    expected = ndimage.gaussian_filter1d(expected, (o / n - 1) / 2, axis=axis, mode="mirror")
        got = resize(x, new, clip=False, antialias=antialias, slab_values=small_pieces)
        np.testing.assert_allclose(got, mirror_spline(expected, new), atol=1e-12)


def test_rows_no_output_needs_are_dropped_when_the_buffer_fills(small_pieces, monkeypatch, rng):
    # One output per tile, 100 rows apart: the buffer can fill up while the rows come from a gap that no
    # tile reads.
    monkeypatch.setattr(_operators, "TILE_ROWS", 1)
    x = rng.standard_normal((1000, 2, 2))
    got = resize(x, (10, 2, 2), clip=False, slab_values=small_pieces)
    np.testing.assert_allclose(got, mirror_spline(x, (10, 2, 2)), atol=1e-12)


@pytest.mark.parametrize(
    ("old", "new", "before", "after"),
    [
        ((300, 512, 512), (128, 224, 224), [1, 2], []),  # shrinking axes go first, slab by slab
        ((300, 512, 512), (600, 224, 1024), [1], [2]),  # growing axes at the end
        ((600, 512, 512), (60, 460, 460), [], [1, 2]),  # the first axis shrinks far more: it goes first
        ((8, 8, 8), (8, 4, 16), [1], [2]),  # the first axis unchanged
    ],
)
def test_plan_orders_the_axes(old, new, before, after):
    operators = [axis_operator(o, n, order=3, dtype=np.float32) for o, n in zip(old, new, strict=True)]
    assert _engine.plan_axes(old, operators) == (before, after)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_slabs_give_the_same_bits_as_the_whole_array(small_pieces, dtype, rng):
    x = (rng.standard_normal((37, 5, 4)) * 300).astype(dtype)
    new = (15, 3, 9)
    engine = InterpolatingEngine(x.shape, new, x.dtype, slab_values=small_pieces)
    slabs = [block.copy() for block in slabs_of(x, small_pieces)]
    assert len(slabs) > 3  # several slabs, each copied: the engine keeps what it needs
    streamed = gather(engine, slabs, new, engine.ftype)
    np.clip(streamed, engine.low, engine.high, out=streamed)
    np.testing.assert_array_equal(cast(streamed, dtype), resize(x, new, output_dtype=dtype))


def test_slabs_reused_by_the_caller_give_the_same_bits(small_pieces, rng):
    # The reader fills one buffer again and again: the engine must copy the rows it still needs.
    x = rng.standard_normal((60, 4, 5))
    buffer = np.empty((7, 4, 5))

    def refilled():
        for start in range(0, 60, 7):
            block = buffer[: min(7, 60 - start)]
            block[...] = x[start : start + 7]
            yield block

    engine = InterpolatingEngine(x.shape, (23, 3, 9), x.dtype, slab_values=small_pieces)
    np.testing.assert_array_equal(
        gather(engine, refilled(), (23, 3, 9), np.float64), resize(x, (23, 3, 9), clip=False)
    )


def test_slabs_with_non_finite_values_are_refused():
    x = np.ones((4, 5, 6), np.float32)
    x[3, 2, 1] = np.nan
    with pytest.raises(NonFiniteError):
        InterpolatingEngine(x.shape, (2, 2, 2), x.dtype).feed(x)


def test_slabs_that_do_not_continue_the_array_are_refused():
    x = np.ones((4, 5, 6))
    engine = InterpolatingEngine(x.shape, (2, 2, 2), x.dtype)
    with pytest.raises(ValueError, match="does not continue an array of"):
        engine.feed(x[:, :3])
    engine.feed(x[:2])
    with pytest.raises(ValueError, match="slabs ended at row 2 of 4"):
        engine.finish()


@pytest.mark.parametrize("order", ["C", "F"])
def test_input_is_never_modified(order, rng):
    for shape in [(7,), (7, 4), (2, 3, 4), (30, 5, 6)]:
        x = np.asarray(rng.standard_normal(shape), order=order)
        before = x.copy()
        resize(x, tuple(max(1, n - 1) for n in shape))
        np.testing.assert_array_equal(x, before)


def test_output_layout_follows_input(rng):
    x = rng.standard_normal((10, 11, 12))
    c = resize(x, (5, 6, 7))
    f = resize(np.asfortranarray(x), (5, 6, 7))
    assert c.flags.c_contiguous and f.flags.f_contiguous
    # The axes are taken in another order (slabs run along the slowest axis): only rounding differs.
    np.testing.assert_allclose(c, f, rtol=0, atol=1e-14)


def test_interpolating_and_constant_preserving(rng):
    x = rng.standard_normal((6, 5, 4))
    # Same size: the interpolating spline gives back every sample.
    np.testing.assert_array_equal(resize(x, x.shape), x)
    # Integer zoom: every other output sample is an input sample.
    np.testing.assert_allclose(resize(x, (12, 10, 8), clip=False)[::2, ::2, ::2], x, atol=1e-12)
    # A constant stays exactly constant (weights sum to the prefilter's gain).
    const = np.full((9, 4, 3), 7.25)
    np.testing.assert_allclose(resize(const, (5, 11, 2)), 7.25, rtol=1e-14)


def test_upsampling_past_last_sample_is_not_zero_filled():
    # The reference returns 0 for output samples past the last input voxel centre when upsampling 2x+.
    x = np.linspace(100, 200, 10)[:, None, None] * np.ones((1, 4, 4))
    out = resize(x, (30, 4, 4))
    assert out.min() >= 100  # clipped to the input range, nowhere near 0
    # The last samples mirror the edge: the spline is symmetric about the last voxel centre.
    positions = sample_positions(10, 30)
    np.testing.assert_allclose(out[-1, 0, 0], mirror_spline(x, (30, 4, 4))[-1, 0, 0], atol=1e-9)
    assert positions[-1] > 9  # this sample lies past the last voxel centre


def test_clip_removes_overshoot_and_respects_range():
    x = np.zeros((12, 1, 1))
    x[6] = 1000.0  # an impulse rings: the spline undershoots below 0 around it
    ringing = resize(x, (17, 1, 1), clip=False)
    assert ringing.min() < -1
    clipped = resize(x, (17, 1, 1))
    assert clipped.min() == 0 and clipped.max() <= 1000


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
def test_integer_output_is_rounded_not_truncated(dtype):
    x = np.array([0, 10, 0, 10, 0, 10, 0], dtype=dtype)
    exact = resize(x, (11,))
    rounded = resize(x, (11,), output_dtype=dtype)
    assert rounded.dtype == dtype
    np.testing.assert_array_equal(rounded, np.rint(exact).astype(dtype))
    assert np.any(np.rint(exact) != np.trunc(exact))  # the case where truncation would differ occurs


@pytest.mark.parametrize(
    ("dtype", "computed"),
    [
        (np.uint8, np.float32),
        (np.int16, np.float32),
        (np.uint16, np.float32),
        (np.float16, np.float32),
        (np.float32, np.float32),
        (np.int32, np.float64),
        (np.int64, np.float64),
        (np.float64, np.float64),
    ],
)
def test_computation_type(dtype, computed):
    assert resize(np.ones((3, 3, 3), dtype), (2, 2, 2)).dtype == computed


def test_wide_integers_round_trip_exactly():
    # float32 would lose these: float64 keeps every int32 value.
    x = np.array([2_000_000_001, -2_000_000_001, 123_456_789], dtype=np.int32)
    np.testing.assert_array_equal(resize(x, (3,), output_dtype=np.int32), x)


class TestNonFinite:
    def smooth(self):
        g = np.meshgrid(*[np.linspace(0, 1, n) for n in (24, 22, 20)], indexing="ij")
        return 100 + 50 * g[0] + 30 * g[1] * g[2]

    def test_nan_stays_where_the_nearest_voxel_is_nan(self):
        x = self.smooth()
        x[10, 11, 5] = np.nan
        x[3:5, 2:4, 15:18] = np.nan
        new = (13, 31, 9)
        out = resize(x, new)
        near = np.ix_(
            *[
                np.minimum(np.floor(sample_positions(o, n) + 0.5), o - 1).astype(int)
                for o, n in zip(x.shape, new, strict=True)
            ]
        )
        expected_nan = np.isnan(x)[near]
        assert expected_nan.any()
        np.testing.assert_array_equal(np.isnan(out), expected_nan)

    def test_finite_values_away_from_nan_are_unaffected(self):
        clean = self.smooth()
        x = clean.copy()
        x[10, 11, 5] = np.nan
        new = (13, 31, 9)
        out, ref = resize(x, new), resize(clean, new)
        pos = [sample_positions(o, n) for o, n in zip(x.shape, new, strict=True)]
        # Distance (in input voxels) from each output sample to the NaN voxel.
        d = np.sqrt(
            sum(
                ((p - c)[tuple(slice(None) if a == i else None for a in range(3))]) ** 2
                for i, (p, c) in enumerate(zip(pos, (10, 11, 5), strict=True))
            )
        )
        far = d >= 4
        assert far.sum() > 0.9 * far.size
        # The NaN is filled from its nearest neighbour; on a smooth volume the spline's response to that
        # small change decays as 0.268**distance: below 1e-3 of the range four voxels away.
        np.testing.assert_allclose(out[far], ref[far], atol=1e-3 * (np.nanmax(x) - np.nanmin(x)))
        assert np.isfinite(out[d >= 1]).all()

    def test_infinities_are_kept_local_too(self):
        x = self.smooth()
        x[5, 5, 5] = np.inf
        x[20, 20, 10] = -np.inf
        out = resize(x, (24, 22, 20))
        assert out[5, 5, 5] == np.inf and out[20, 20, 10] == -np.inf
        assert np.isfinite(out).sum() == out.size - 2

    def test_all_nan(self):
        out = resize(np.full((4, 4, 4), np.nan, np.float32), (2, 3, 5))
        assert out.shape == (2, 3, 5) and np.isnan(out).all()


@pytest.mark.parametrize(
    ("shape", "message"),
    [((2, 2), "one positive size per dimension"), ((2, 0, 2), "one positive size"), ((2, -1, 3), "positive")],
)
def test_bad_shape(shape, message):
    with pytest.raises(ValueError, match=message):
        resize(np.ones((3, 3, 3)), shape)


def test_bad_type():
    with pytest.raises(TypeError, match="complex"):
        resize(np.ones((3, 3, 3), np.complex64), (2, 2, 2))


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.integers(1, 3).flatmap(
        lambda nd: st.tuples(
            st.lists(st.integers(1, 12), min_size=nd, max_size=nd),
            st.lists(st.integers(1, 12), min_size=nd, max_size=nd),
        )
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_match_scipy(shapes, seed):
    old, new = shapes
    x = np.random.default_rng(seed).standard_normal(old)
    np.testing.assert_allclose(resize(x, new, clip=False), mirror_spline(x, new), rtol=0, atol=1e-11)


def scipy_at(x, positions, order, mode):
    coords = np.meshgrid(*positions, indexing="ij")
    return ndimage.map_coordinates(np.asarray(x, np.float64), coords, order=order, mode=mode)


@pytest.mark.parametrize("align", ["origin", "center"])
@pytest.mark.parametrize(("old", "new"), SHAPES)
def test_linear_matches_scipy_with_edges_repeated(old, new, align, rng):
    x = rng.standard_normal(old)
    positions = [sample_positions(o, n, align) for o, n in zip(old, new, strict=True)]
    expected = scipy_at(x, positions, 1, "nearest")  # scipy's "nearest" mode repeats the edge sample
    np.testing.assert_allclose(resize(x, new, order=1, align=align), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("align", ["origin", "center"])
def test_nearest_takes_the_nearest_sample_and_keeps_the_type(align, rng):
    x = rng.integers(0, 50, (7, 6, 5)).astype(np.uint8)
    new = (3, 13, 5)
    out = resize(x, new, order=0, align=align)
    assert out.dtype == np.uint8
    index = [
        np.clip(np.floor(sample_positions(o, n, align) + 0.5), 0, o - 1).astype(int)
        for o, n in zip(x.shape, new, strict=True)
    ]
    np.testing.assert_array_equal(out, x[np.ix_(*index)])
    assert set(np.unique(out)) <= set(np.unique(x))


@pytest.mark.parametrize(("old", "new"), SHAPES)
def test_centred_grid_matches_scipy(old, new, rng):
    x = rng.standard_normal(old)
    positions = [sample_positions(o, n, "center") for o, n in zip(old, new, strict=True)]
    np.testing.assert_allclose(
        resize(x, new, align="center", clip=False), scipy_at(x, positions, 3, "mirror"), atol=1e-12
    )


@pytest.mark.parametrize("order", [3, 1])
def test_centred_grid_commutes_with_flipping(order, rng):
    x = rng.standard_normal((17, 12, 9))
    new = (7, 30, 4)
    for axis in range(3):
        flipped_first = resize(np.flip(x, axis), new, order=order, align="center")
        flipped_after = np.flip(resize(x, new, order=order, align="center"), axis)
        np.testing.assert_allclose(flipped_first, flipped_after, rtol=0, atol=1e-12)
        # The origin-aligned grid is shifted by a fraction of a voxel: it does not commute.
        shifted = np.flip(resize(x, new, order=order), axis) - resize(np.flip(x, axis), new, order=order)
        assert np.abs(shifted).max() > 0.1


def zone_plate(n, k):
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij")
    return np.cos(k * sum(g**2 for g in grid))


def test_antialias_removes_aliasing_of_a_zone_plate():
    # cos(k r^2) has local frequency k r / pi cycles per voxel: up to 0.5 (no aliasing in the input).
    n, factor = 96, 4
    k = 0.5 * np.pi / (np.sqrt(3) * n / 2)
    x = zone_plate(n, k)
    new = (n // factor,) * 3
    nyquist = 0.5 / factor  # of the new grid, in cycles per input voxel
    pos = np.meshgrid(*[sample_positions(n, n // factor, "center") - (n - 1) / 2] * 3, indexing="ij")
    above = k * np.sqrt(sum(p**2 for p in pos)) / np.pi > nyquist
    assert 0.5 < above.mean() < 0.99
    for order in (3, 1):
        aliased = np.mean(resize(x, new, order=order, align="center")[above] ** 2)
        smoothed = np.mean(resize(x, new, order=order, align="center", antialias=True)[above] ** 2)
        assert aliased > 0.1  # without smoothing, the fine rings fold back at full strength
        assert smoothed < aliased / 10


def test_antialias_uses_scikit_image_sigma(rng):
    from scipy import ndimage as ndi

    x = rng.standard_normal((40, 30, 8))
    new = (10, 30, 16)  # shrinks 4x on x, unchanged on y, grows on z: only x is smoothed
    expected = resize(ndi.gaussian_filter1d(x, 1.5, axis=0, mode="mirror"), new, clip=False)
    np.testing.assert_allclose(resize(x, new, antialias=True, clip=False), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": 2}, r"order must be one of \(0, 1, 3\), got 2"),
        ({"align": "corner"}, r"align must be one of \('origin', 'center'\), got 'corner'"),
        ({"order": 0, "antialias": True}, "antialias applies to the bspline and linear"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resize(np.ones((3, 3, 3)), (2, 2, 2), **kwargs)


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_64_bit_integers_saturate_at_their_limits(dtype):
    # float64 rounds the 64-bit limits up to 2**63 or 2**64, which no such integer holds.
    info = np.iinfo(dtype)
    values = np.array([-1e30, float(info.min), 5.4, float(info.max), 1e30])
    assert cast(values.copy(), dtype).tolist() == [info.min, info.min, 5, info.max, info.max]
    x = np.array([info.min, 0, info.max, info.max], dtype=dtype)  # the limits are kept by interpolation
    assert resize(x, (4,), order=1, output_dtype=dtype).tolist() == x.tolist()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32])
@pytest.mark.parametrize("new", [(50, 47, 33), (9, 30, 21)])
def test_flushing_tiny_values_leaves_integer_results_alone(dtype, new):
    # A bright object on a background of zeros: three passes carry the spline's tails down to 1e-38,
    # where arithmetic is slow. Dropping what is below 2**-50 must not change one rounded value.
    from nidataset._phantom import ct_phantom

    data, _ = ct_phantom((24, 20, 14), seed=3)
    x = np.ascontiguousarray(np.clip(data.astype(np.int64) + 1000, 0, None)).astype(dtype)
    x[:, :4] = 0
    results = []
    for flush in (False, True):
        engine = InterpolatingEngine(x.shape, new, x.dtype, flush_tiny=flush)
        values = gather(engine, slabs_of(x, 500), new, engine.ftype)
        results.append(cast(np.clip(values, engine.low, engine.high), dtype))
        if not flush:
            small = np.abs(values[values != 0]).min()
    np.testing.assert_array_equal(results[0], results[1])
    assert small < _engine.TINY  # the tails do reach below what is dropped


def test_reused_buffers_leave_nothing_to_allocate_after_the_first_slabs():
    # With `reuse`, once output slabs flow every slab is computed in the buffers the first ones made, the
    # masks of `flush_tiny` included: fresh arrays cost page faults, and more where memory goes back to the
    # system as soon as it is freed (Dask's workers). Only small bookkeeping may be allocated.
    import tracemalloc

    from nidataset._phantom import ct_phantom

    data, _ = ct_phantom((256, 256, 160), seed=1)
    x = np.ascontiguousarray(data.T)  # (160, 256, 256) int16, fed 8 rows of 256 x 256 at a time
    engine = InterpolatingEngine(x.shape, (60, 128, 96), x.dtype, reuse=True, flush_tiny=True)
    blocks = slabs_of(x, 8 * 256 * 256)
    out = 0
    while out < 20:  # until the window is full and the growing axis has had its buffers
        out += sum(len(slab.values) for slab in engine.feed(next(blocks)))
    tracemalloc.start()
    try:
        for block in blocks:
            for slab in engine.feed(block):
                assert slab.values.shape[1:] == (128, 96)
                out += len(slab.values)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == 60
    assert peak < 64 << 10, peak  # the masks of one slab alone would be 512 KiB
