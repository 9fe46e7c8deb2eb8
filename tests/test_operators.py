"""Per-axis operators: the closed-form spline inverse against scipy, the band it keeps, the tiles."""

import numpy as np
from scipy import ndimage

from nidataset import _operators
from nidataset._operators import axis_operator, linear_taps, nearest_indices, sample_positions


def test_closed_form_spline_inverse_matches_scipy_spline_filter(rng):
    for n in (1, 2, 3, 5, 13, 40, 100):
        x = rng.standard_normal((n, 6))
        a, b, rows = _operators._spline_inverse_rows(0, n, n, tol=1e-18)
        expected = ndimage.spline_filter1d(x, order=3, axis=0, mode="mirror")
        np.testing.assert_allclose(rows @ x[a:b], expected, rtol=0, atol=1e-12)


def test_spline_inverse_leaves_out_only_negligible_columns():
    n = 200
    full_a, full_b, full = _operators._spline_inverse_rows(90, 110, n, tol=1e-300)
    assert (full_a, full_b) == (0, n)
    for tol in (2.0**-29, 2.0**-58):
        a, b, rows = _operators._spline_inverse_rows(90, 110, n, tol)
        assert 0 < a < 90 and 110 < b < n  # a band, not the whole matrix
        np.testing.assert_array_equal(rows, full[:, a:b])
        # What is left out changes a coefficient of samples |x| <= 1 by less than tol.
        left_out = np.abs(full[:, :a]).sum(axis=1) + np.abs(full[:, b:]).sum(axis=1)
        assert left_out.max() < tol


def test_tiles_cover_every_output_row_in_order():
    for old, new in [(512, 224), (40, 97), (3, 1), (2, 5)]:
        for order in (1, 3):
            op = axis_operator(old, new, order=order, align="center", dtype=np.float32)
            assert [(t.lo, t.hi) for t in op.tiles] == [
                (lo, min(lo + _operators.TILE_ROWS, new)) for lo in range(0, new, _operators.TILE_ROWS)
            ]
            for tile in op.tiles:
                assert 0 <= tile.first < tile.stop <= old
                assert tile.block.shape == (tile.hi - tile.lo, tile.stop - tile.first)
                assert tile.block.dtype == np.float32 and not tile.block.flags.writeable


def test_operator_rows_sum_to_one_and_reproduce_the_samples():
    # Interpolating: where an output sample lies on an input sample it takes that sample's value.
    for order in (1, 3):
        op = axis_operator(10, 20, order=order, dtype=np.float64)
        matrix = np.zeros((20, 10))
        for t in op.tiles:
            matrix[t.lo : t.hi, t.first : t.stop] = t.block
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(matrix[::2], np.eye(10), atol=1e-12)


def test_unchanged_axes_have_no_operator():
    assert axis_operator(7, 7, order=3) is None
    assert axis_operator(7, 7, order=1, align="center") is None
    assert axis_operator(7, 7, order=3, sigma=1.0) is not None


def test_taps_and_nearest_at_the_edges():
    positions = sample_positions(4, 8, "center")  # -0.25 ... 3.25
    taps = linear_taps(positions, 4)
    assert taps.taps.min() == 0 and taps.taps.max() == 3
    np.testing.assert_allclose(taps.weights.sum(axis=1), 1.0)
    assert nearest_indices(positions, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_gain_is_the_largest_absolute_row_sum_of_the_spline_matrix():
    # The matrix from scipy (the spline through each unit sample, mirror boundary), independently of the
    # tiles; its largest absolute row sum bounds how far one pass can grow the largest magnitude.
    from helpers import mirror_spline

    for old, new in ((20, 11), (11, 20), (7, 16), (2, 3), (100, 37)):
        matrix = np.stack([mirror_spline(column, (new,)) for column in np.eye(old)], axis=1)
        op = axis_operator(old, new, order=3)
        assert abs(op.gain - np.abs(matrix).sum(axis=1).max()) < 1e-9
        assert 1 <= op.gain < 1.55  # cardinal cubic splines' Lebesgue constant is 1.5490...
        assert axis_operator(old, new, order=1).gain == 1  # convex weights


def test_the_tile_size_is_part_of_the_operators_cache_key(monkeypatch):
    rows = _operators.TILE_ROWS
    default = axis_operator(40, 97, order=3)  # cached with the default tile size
    monkeypatch.setattr(_operators, "TILE_ROWS", 5)
    op = axis_operator(40, 97, order=3)
    assert {t.hi - t.lo for t in default.tiles[:-1]} == {rows} != {5}
    assert {t.hi - t.lo for t in op.tiles[:-1]} == {5}
