"""Voxel values of `resampling` against SimpleITK's float64 B-spline resample (the reference's engine).

Tolerance: 1e-4 of the input's intensity range, wherever SimpleITK evaluates the spline (see
``conftest.sitk_resample``); elsewhere against scipy's mirror-boundary spline, which defines the same
spline everywhere. Integer outputs are SimpleITK's value clipped and rounded to nearest.
"""

import nibabel as nib
import numpy as np
import pytest

from helpers import mirror_spline, sitk_resample, smooth_volume, write_nifti
from nidataset import resampling

CASES = {
    "down": ((40, 36, 30), (17, 20, 11)),
    "up": ((9, 8, 7), (20, 19, 15)),
    "mixed": ((30, 12, 20), (13, 25, 20)),
    "tiny-in": ((1, 2, 3), (3, 1, 2)),
    "tiny-out": ((3, 3, 3), (1, 2, 3)),
    "twos": ((2, 3, 2), (3, 2, 5)),
}
RANGES = {
    np.uint8: (0, 255),
    np.int16: (-1024, 3071),
    np.uint16: (0, 4095),
    np.int32: (-100_000, 2_000_000),
    np.float32: (-1.5, 2.5),
    np.float64: (-3e3, 1e4),
}


def resample_file(tmp_path, data, new, **kwargs):
    src = write_nifti(tmp_path / "in.nii.gz", data, **kwargs)
    out = resampling(src, tmp_path / "out", new)
    return src, nib.load(out)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", list(RANGES))
def test_values_match_simpleitk(tmp_path, rng, dtype, case):
    old, new = CASES[case]
    data = smooth_volume(old, rng, dtype, *RANGES[dtype])
    src, image = resample_file(tmp_path, data, new)
    out = np.asanyarray(image.dataobj)
    assert image.get_data_dtype() == dtype and out.shape == new

    expected, valid = sitk_resample(src, new)
    lo, hi = float(data.min()), float(data.max())
    tol = 1e-4 * (hi - lo)
    expected = np.clip(expected, lo, hi)
    got = out.astype(np.float64)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(got[valid], expected[valid], rtol=0, atol=tol)
    else:
        # Rounded to nearest: off by at most 0.5 (+ tol), and exactly rint() away from the .5 ties.
        assert np.all(np.abs(got[valid] - expected[valid]) <= 0.5 + tol)
        clear = valid & (np.abs(np.abs(expected - np.floor(expected)) - 0.5) > tol)
        np.testing.assert_array_equal(got[clear], np.rint(expected[clear]))
    # Everywhere, including past the last voxel centre where SimpleITK gives up: the mirror spline.
    spline = np.clip(mirror_spline(data, new), lo, hi)
    np.testing.assert_allclose(got, spline, rtol=0, atol=tol + (0.5 if np.dtype(dtype).kind in "iu" else 0))


def test_simpleitk_comparison_covers_the_volume(tmp_path, rng):
    # Guard against a vacuous oracle: for a downsampling case SimpleITK defines every sample.
    old, new = CASES["down"]
    src = write_nifti(tmp_path / "in.nii.gz", smooth_volume(old, rng, np.int16, 0, 1000))
    _, valid = sitk_resample(src, new)
    assert valid.all()


@pytest.mark.parametrize("factor", [2, 3])
def test_no_zero_filled_last_slices_when_upsampling(tmp_path, rng, factor):
    old = (8, 7, 6)
    new = tuple(factor * n for n in old)
    data = smooth_volume(old, rng, np.int16, 500, 1500)  # no zeros anywhere in the input
    src, image = resample_file(tmp_path, data, new)
    out = np.asanyarray(image.dataobj)
    _, valid = sitk_resample(src, new)
    assert not valid.all()  # SimpleITK (and so nidataset 0.9.1) leaves the last slices undefined: 0
    assert out.min() >= 500  # here they are the spline's values, within the input range
    np.testing.assert_allclose(out, np.clip(mirror_spline(data, new), 500, 1500), atol=0.5 + 0.1)


def test_scaled_integers_resampled_in_world_values(tmp_path, rng):
    old, new = (30, 28, 16), (14, 33, 9)
    stored = smooth_volume(old, rng, np.int16, -1000, 3000)
    src, image = resample_file(tmp_path, stored, new, slope=0.5, inter=-1024.0)
    # Kept as stored: same type, same scaling.
    assert image.get_data_dtype() == np.int16
    assert (image.dataobj.slope, image.dataobj.inter) == (0.5, -1024.0)
    world = image.get_fdata()
    expected, valid = sitk_resample(src, new)  # SimpleITK applies the scaling when reading
    lo, hi = 0.5 * stored.min() - 1024, 0.5 * stored.max() - 1024
    tol = 1e-4 * (hi - lo)
    # Read back within half a stored unit (0.5 * slope) of the world-value resample.
    assert np.all(np.abs(world[valid] - np.clip(expected, lo, hi)[valid]) <= 0.25 + tol)


def test_nan_voxels_stay_local(tmp_path):
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in (20, 18, 16)], indexing="ij")
    clean = (100 + 40 * g[0] + 25 * g[1] * g[2]).astype(np.float32)
    data = clean.copy()
    data[8, 8, 9] = np.nan
    src, image = resample_file(tmp_path, data, (10, 36, 16))
    out = image.get_fdata()
    # NaN only where the nearest input voxel is the NaN one: x sample 4 (at 8.0), y samples 15 and 16
    # (at 7.5 and 8.0), z sample 9.
    assert sorted(map(tuple, np.argwhere(np.isnan(out)))) == [(4, 15, 9), (4, 16, 9)]
    # The rest is finite, and from 3 input voxels away unaffected: the hole is filled from its nearest
    # neighbour, and the spline's response to that small change decays as 0.268**distance.
    _, reference = resample_file(tmp_path / "clean", clean, (10, 36, 16))
    assert np.isfinite(out[~np.isnan(out)]).all()
    x, y, z = np.meshgrid(
        *[np.arange(n) * o / n for o, n in zip((20, 18, 16), (10, 36, 16), strict=True)], indexing="ij"
    )
    far = np.sqrt((x - 8) ** 2 + (y - 8) ** 2 + (z - 9) ** 2) >= 3
    np.testing.assert_allclose(out[far], reference.get_fdata()[far], atol=1e-3 * 65)
    # SimpleITK reads NaN as 0, so the reference resamples a hole of 0 into the field.
    expected, _ = sitk_resample(src, (10, 36, 16))
    assert expected[4, 15, 9] < 0.8 * reference.get_fdata()[4, 15, 9]
