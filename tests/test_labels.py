"""Label maps: against brute-force one-hot argmaxes (floats and exact fractions), nearest, and in memory."""

import itertools
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from nidataset._labels import LabelEngine, resize_labels
from nidataset._operators import linear_taps, nearest_indices, sample_positions


def one_hot_argmax(labels, shape, align):
    """nnU-Net's rule the slow way: every label's full indicator, interpolated linearly; argmax."""
    values = np.unique(labels)
    coords = np.meshgrid(
        *[sample_positions(o, n, align) for o, n in zip(labels.shape, shape, strict=True)], indexing="ij"
    )
    stack = np.stack(
        [
            ndimage.map_coordinates((labels == v).astype(float), coords, order=1, mode="nearest")
            for v in values
        ]
    )
    return values[np.argmax(stack, axis=0)], np.sort(stack, axis=0)


def exact_scores(labels, shape, align):
    """Each output voxel's labels and exact scores: sums of products of the taps' weights, as fractions.

    The weights are those of ``linear_taps`` (float64, read exactly), so a score is the float computation
    without its rounding. Returns one ``{label: score}`` dict per output voxel, in C order.
    """
    taps = [linear_taps(sample_positions(o, n, align), o) for o, n in zip(labels.shape, shape, strict=True)]
    weights = [[[Fraction(w) for w in row] for row in t[1].tolist()] for t in taps]
    index = [t[0].tolist() for t in taps]
    found = []
    for k, j, i in itertools.product(*map(range, shape)):
        scores = {}
        for a, b, c in itertools.product(range(2), repeat=3):
            value = labels[index[0][k][a], index[1][j][b], index[2][i][c]].item()
            weight = weights[0][k][a] * weights[1][j][b] * weights[2][i][c]
            scores[value] = scores.get(value, 0) + weight
        found.append(scores)
    return found


def exact_winner(scores):
    """The best exact score's label, the smallest on ties; and the gap to the runner-up (None: none)."""
    best = min(scores, key=lambda v: (-scores[v], v))
    others = [s for v, s in scores.items() if v != best]
    return best, (scores[best] - max(others)) if others else None


def blobs(shape, rng, dtype=np.int16, values=(0, 3, 6, 9, 12)):
    """Blobs of a few labels (smoothed noise, thresholded into classes), the first value most frequent."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    classes = np.digitize(field, np.quantile(field, [0.55, 0.7, 0.85, 0.95]))
    return np.asarray(values, dtype=dtype)[classes]


@pytest.mark.parametrize("align", ["origin", "center"])
@pytest.mark.parametrize(
    ("old", "new"), [((12, 10, 8), (5, 13, 8)), ((7, 9, 11), (15, 4, 6)), ((20, 3, 2), (9, 5, 3))]
)
def test_matches_brute_force_one_hot_argmax(old, new, align, rng):
    labels = blobs(old, rng)
    expected, ranked = one_hot_argmax(labels, new, align)
    got = resize_labels(labels, new, align=align)
    clear = ranked[-1] - ranked[-2] > 1e-9  # where the largest indicator is not tied with the runner-up
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(got[clear], expected[clear])
    assert np.isin(got, np.unique(labels)).all()


# Where every weight is a multiple of 1/4, float64 computes every score exactly: the engine must then
# match the exact rule everywhere, ties included (they abound: 1/2 + 1/2 against 1/2 + 1/2, 27 against
# 9 + 9 + 9, ...).
DYADIC = [
    ((8, 6, 10), (4, 3, 5), "center", True),  # shrink by 2: every weight 1/2
    ((4, 3, 5), (8, 6, 10), "center", True),  # grow by 2: weights 1/4, 3/4 (27 = 9 + 9 + 9 of 64)
    ((3, 4, 2), (12, 16, 8), "origin", True),  # grow by 4: weights 0, 1/4, 1/2, 3/4
    ((9, 6, 8), (3, 3, 4), "origin", False),  # shrink by 3 and 2: integer positions, nearest
    ((5, 6, 7), (5, 12, 7), "center", False),  # one axis grown (3/4 against 1/4), two kept
]


@pytest.mark.parametrize(("old", "new", "align", "ties"), DYADIC)
@pytest.mark.parametrize("count", [2, 3, 5])
def test_matches_exact_fractions_at_ties(old, new, align, ties, count, rng):
    labels = rng.integers(0, count, old).astype(np.uint8) * 7
    scores = exact_scores(labels, new, align)
    expected = np.array([exact_winner(s)[0] for s in scores], dtype=labels.dtype).reshape(new)
    np.testing.assert_array_equal(resize_labels(labels, new, align=align), expected)
    if ties and count == 3:  # ties were decided (by the smaller label)
        assert sum(exact_winner(s)[1] == 0 for s in scores) > 0


@pytest.mark.parametrize("align", ["origin", "center"])
@pytest.mark.parametrize(
    ("old", "new"),
    [((7, 5, 6), (4, 8, 5)), ((6, 6, 6), (18, 18, 18)), ((5, 8, 3), (7, 3, 8)), ((2, 9, 1), (5, 4, 3))],
)
def test_matches_exact_fractions(old, new, align, rng):
    labels = rng.integers(-2, 2, old).astype(np.int32)
    scores = exact_scores(labels, new, align)
    got = resize_labels(labels, new, align=align).reshape(-1)
    decided = 0
    for value, voxel in zip(got.tolist(), scores, strict=True):
        best, gap = exact_winner(voxel)
        if gap is None or gap == 0 or gap > Fraction(1, 10**12):
            assert value == best  # exact ties included: the smaller label
            decided += 1
        else:  # within rounding of a tie (2/9 + 2/9 against 4/9 in float64 weights): either may win
            assert voxel[value] >= voxel[best] - Fraction(1, 10**12)
    assert decided >= 0.9 * len(scores)


def float_formula(labels, shape, align):
    """The rule as specified, voxel by voxel: each neighbour's label scored in float64, X, then Y, then Z."""
    taps = [linear_taps(sample_positions(o, n, align), o) for o, n in zip(labels.shape, shape, strict=True)]
    out = np.empty(shape, labels.dtype)
    for k, j, i in itertools.product(*map(range, shape)):
        (iz, wz), (iy, wy), (ix, wx) = [(t[0][v], t[1][v]) for t, v in zip(taps, (k, j, i), strict=True)]
        corners = labels[np.ix_(iz, iy, ix)]
        best = None
        for value in np.unique(corners):
            e = (corners == value).astype(np.float64)
            y = [
                wy[0] * (wx[0] * e[a, 0, 0] + wx[1] * e[a, 0, 1])
                + wy[1] * (wx[0] * e[a, 1, 0] + wx[1] * e[a, 1, 1])
                for a in (0, 1)
            ]
            score = wz[0] * y[0] + wz[1] * y[1]
            if best is None or score > best[0] or (score == best[0] and value < best[1]):
                best = (score, value)
        out[k, j, i] = best[1]
    return out


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        ((6, 6, 6), (18, 17, 16), np.uint8),  # grow by about 3: near-ties of 2/9 + 2/9 against 4/9
        ((9, 7, 8), (4, 5, 3), np.int16),
        ((5, 8, 3), (7, 3, 8), np.int32),
        ((1, 7, 6), (3, 1, 9), np.float32),
        ((8, 2, 9), (8, 5, 4), np.int64),
    ],
)
@pytest.mark.parametrize("align", ["origin", "center"])
def test_matches_the_float64_formula_bit_for_bit(old, new, kind, align, rng):
    shift = 0 if np.dtype(kind).kind == "u" else -7  # negative labels too where the type holds them
    labels = (rng.integers(0, 4, old) * 5 + shift).astype(kind)
    np.testing.assert_array_equal(resize_labels(labels, new, align=align), float_formula(labels, new, align))


def test_feeding_by_slabs_gives_the_same_result(rng):
    labels = blobs((23, 17, 19), rng, dtype=np.uint16, values=(0, 1, 500, 65535, 7))
    for shape, align in [((31, 9, 40), "origin"), ((10, 30, 7), "center"), ((23, 17, 19), "center")]:
        whole = resize_labels(labels, shape, align=align)
        for rows in (1, 3, len(labels)):
            engine = LabelEngine(labels.shape, shape, labels.dtype, align)
            buffer = np.empty((rows, *labels.shape[1:]), labels.dtype)
            out = np.full(shape, 12345, dtype=labels.dtype)
            done = 0
            for start in range(0, len(labels), rows):
                block = buffer[: len(labels[start : start + rows])]
                block[...] = labels[start : start + rows]
                slabs = engine.feed(block)
                block[...] = 4321  # the buffer is the caller's again: the engine must have copied
                for slab in slabs:
                    assert slab.start == done and slab.values.dtype == labels.dtype
                    assert slab.values.flags.c_contiguous and len(slab.values) >= 1
                    out[slab.start : slab.start + len(slab.values)] = slab.values
                    done += len(slab.values)
            assert list(engine.finish()) == [] and done == shape[0]
            np.testing.assert_array_equal(out, whole)


def test_slabs_are_emitted_as_soon_as_possible_and_bounded():
    z, y, _ = np.indices((40, 20, 30))
    labels = ((z // 3 + y // 5) % 4).astype(np.int32)
    engine = LabelEngine(labels.shape, (80, 256, 256), labels.dtype)  # 65536 voxels an output slice
    rows = [len(slab.values) for slab in engine.feed(labels[:30])]
    assert rows == [32, 27]  # output slice k reads input slices k // 2 and, if k is odd, k // 2 + 1
    assert [len(slab.values) for slab in engine.feed(labels[30:])] == [21]


def test_window_stays_bounded():
    # Fed a slice at a time, memory does not grow with the number of slices.
    def peak(height):
        labels = np.zeros((height, 40, 40), dtype=np.int16)
        labels[:, 10:30, 5:25] = 3
        labels[::7, 20:, :] = 9
        engine = LabelEngine(labels.shape, (height // 2, 30, 30), labels.dtype, "center")
        tracemalloc.start()
        for row in labels:
            for _ in engine.feed(row[None]):
                pass
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    assert peak(2000) < 1.5 * peak(200)


def spheres(shape, spacing):
    """Three analytic spheres (labels 1, 2, 5) rasterised at voxel centres of a grid covering 60 mm."""
    centres = [(20.0, 22.0, 30.0), (38.0, 35.0, 25.0), (30.0, 30.0, 42.0)]
    radii = [9.0, 6.5, 4.0]
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    labels = np.zeros(shape, dtype=np.uint8)
    for value, centre, radius in zip((1, 2, 5), centres, radii, strict=True):
        labels[sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2] = value
    return labels


def dice(a, b, value):
    a, b = a == value, b == value
    return 2 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def nearest(labels, shape):
    pairs = zip(labels.shape, shape, strict=True)
    return labels[np.ix_(*[nearest_indices(sample_positions(o, n), o) for o, n in pairs])]


@pytest.mark.parametrize(("high", "low"), [(120, 40), (96, 30), (90, 36), (100, 33), (64, 50)])
def test_follows_shapes_better_than_nearest(high, low):
    # Same field of view (60 mm), origin-aligned grids: low-resolution voxel i lies at i * 60 / low mm.
    fine = spheres((high,) * 3, (60 / high,) * 3)
    truth = spheres((low,) * 3, (60 / low,) * 3)
    by_label = np.mean([dice(resize_labels(fine, (low,) * 3), truth, v) for v in (1, 2, 5)])
    by_nearest = np.mean([dice(nearest(fine, (low,) * 3), truth, v) for v in (1, 2, 5)])
    if high % low == 0:  # nearest then samples exactly the truth's voxel centres: both are perfect
        assert by_label == by_nearest == 1.0
    else:  # measured: 0.982 vs 0.977, 0.963 vs 0.935, 0.977 vs 0.940, 0.950 vs 0.942
        assert by_label > by_nearest


@pytest.mark.parametrize(
    "labels",
    [
        np.array([[[0, 1], [2, 255]]], dtype=np.uint8),
        np.array([[[-5, 0], [7, 7]]], dtype=np.int16),
        np.array([[[-100, 0], [100, 120]]], dtype=np.int8),  # a span wider than int8 holds
        np.array([[[0, 1_000_000], [2_000_000_000, 0]]], dtype=np.int32),
        np.array([[[-(2**62), 1], [2**62, -1]]], dtype=np.int64),
        np.array([[[0, 2**63 + 5], [2**64 - 1, 0]]], dtype=np.uint64),
        np.array([[[0.0, 1.5], [-2.5, 0.0]]], dtype=np.float32),
        np.array([[[0, 300], [-7, 300]]], dtype=">i2"),  # big-endian, as NIfTI files may hold
    ],
)
def test_keeps_type_and_only_labels_present(labels):
    big = np.kron(labels, np.ones((3, 5, 4), dtype=labels.dtype)).astype(labels.dtype)
    for align in ("origin", "center"):
        out = resize_labels(big, (4, 7, 9), align=align)
        assert out.dtype == labels.dtype
        assert set(np.unique(out)) <= set(np.unique(labels))
        expected, ranked = one_hot_argmax(big, (4, 7, 9), align)
        clear = ranked[-1] - ranked[-2] > 1e-9
        np.testing.assert_array_equal(out[clear], expected[clear])
    np.testing.assert_array_equal(resize_labels(big, big.shape), big)
    # Halving blocks of 3 voxels: ties of 1/2 against 1/2 across the borders, won by the smaller label.
    small = np.kron(labels, np.ones((2, 3, 3), dtype=labels.dtype)).astype(labels.dtype)
    scores = exact_scores(small, (1, 3, 3), "center")
    assert sum(exact_winner(s)[1] == 0 for s in scores) >= 3
    expected = np.array([exact_winner(s)[0] for s in scores], dtype=labels.dtype).reshape(1, 3, 3)
    np.testing.assert_array_equal(resize_labels(small, (1, 3, 3), align="center"), expected)


def test_fortran_ordered_input(rng):
    labels = np.asfortranarray(rng.integers(0, 4, (9, 8, 7)).astype(np.uint8))
    got = resize_labels(labels, (4, 5, 6))
    expected, ranked = one_hot_argmax(labels, (4, 5, 6), "origin")
    clear = ranked[-1] - ranked[-2] > 1e-9
    np.testing.assert_array_equal(got[clear], expected[clear])
    # A Fortran-ordered volume is computed as its (C-ordered) transpose: the same result, X taken first.
    np.testing.assert_array_equal(got, resize_labels(np.ascontiguousarray(labels.T), (6, 5, 4)).T)


@pytest.mark.parametrize(("old", "new"), [((10,), (4,)), ((10,), (23,)), ((6, 9), (4, 14)), ((1, 7), (3, 2))])
def test_one_and_two_dimensions(old, new, rng):
    labels = rng.integers(0, 3, old).astype(np.uint8)
    padded = labels.reshape((1,) * (3 - len(old)) + old)
    expected = resize_labels(padded, (1,) * (3 - len(new)) + new).reshape(new)
    np.testing.assert_array_equal(resize_labels(labels, new), expected)
    np.testing.assert_array_equal(resize_labels(np.asfortranarray(labels), new), expected)


def voronoi(shape, seeds, rng):
    """Label map of the nearest of `seeds` random points (labels 1 to `seeds`), uint16."""
    points = rng.uniform(0, 1, (seeds, 3)) * shape
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return (cKDTree(points).query(grid)[1] + 1).astype(np.uint16).reshape(shape)


def test_five_thousand_labels_in_bounded_memory(rng):
    # A one-hot float64 array of this map would take 5000 * 100**3 * 8 B = 40 GB.
    labels = voronoi((96, 96, 96), 5000, rng)
    assert len(np.unique(labels)) == 5000
    shape = (100, 100, 100)
    output_sized = np.prod(shape) * 8  # bytes of an output-sized float64 array

    def peak(volume):
        tracemalloc.start()
        out = resize_labels(volume, shape)
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, result

    out, many = peak(labels)
    _, few = peak(labels % 3)  # the same borders, 3 labels
    assert many < 3 * output_sized  # the result (2 B a voxel), a slab of it, scratch arrays of fixed size
    assert many < 1.5 * few
    np.testing.assert_array_equal(np.unique(out), np.arange(1, 5001))


def test_bad_arguments():
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    for shape in [(2, 2), (2, 2, 2, 2), (2, 0, 2), (2, -1, 2), "abc", 5]:
        with pytest.raises(ValueError, match="one positive size per dimension"):
            resize_labels(labels, shape)
    for kind in [bool, np.complex64, object, "U3"]:
        with pytest.raises(TypeError, match="integer or float"):
            resize_labels(np.zeros((4, 5, 6), dtype=kind), (2, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        resize_labels(np.zeros((4, 0, 6), dtype=np.uint8), (2, 2, 2))
    with pytest.raises(ValueError, match="align"):
        resize_labels(labels, (2, 2, 2), align="corner")
    with pytest.raises(ValueError, match="1, 2 or 3 dimensions"):
        resize_labels(np.zeros((2, 2, 2, 2), dtype=np.uint8), (1, 1, 1, 1))
    with pytest.raises(ValueError, match="one positive size per dimension"):
        LabelEngine((4, 5, 6), (2, 2), np.uint8)
    with pytest.raises(ValueError, match="in_shape"):
        LabelEngine((4, 0, 6), (2, 2, 2), np.uint8)
    with pytest.raises(TypeError, match="integer or float"):
        LabelEngine((4, 5, 6), (2, 2, 2), np.bool_)
    engine = LabelEngine((4, 5, 6), (2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="slices of shape"):
        engine.feed(np.zeros((1, 6, 5), dtype=np.uint8))
    with pytest.raises(TypeError, match="type"):
        engine.feed(np.zeros((1, 5, 6), dtype=np.int16))
    slabs = engine.feed(labels[:3])
    with pytest.raises(ValueError, match="4 slices"):
        engine.feed(labels[:2])  # one slice too many
    with pytest.raises(ValueError, match="previous block"):
        engine.feed(labels[3:])  # before the output slabs of the first block were taken
    assert [slab.start for slab in slabs] == [0]
    with pytest.raises(ValueError, match="only 3 were fed"):
        engine.finish()
