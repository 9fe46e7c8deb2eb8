"""How close nidataset's values are to SimpleITK's B-spline, and how they differ from nidataset 0.9.1.

Part 1 (needs SimpleITK, the test oracle): for each data type and size case, the largest deviation of
`resampling()` from SimpleITK's float64 ``Resample(..., sitkBSpline)``, as a fraction of the input's
intensity range, where SimpleITK evaluates the spline (see tests/conftest.py). Shown before rounding (the
engine's float result) and as written (clipped, rounded to the stored type).

Part 2 (``--reference``): nidataset 0.9.1 and this project on the same CT-like files, side by side:
voxels that differ, the reference's zero-filled samples, and its truncation of integers.

    .venv/bin/python benchmarks/accuracy.py [--reference]
"""

import argparse
import os
import sys
import tempfile

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from helpers import DTYPE_RANGES, sitk_resample, smooth_volume, write_nifti
from nidataset import resampling
from nidataset._engine import resize
from nidataset._phantom import ct_phantom

CASES = {
    "down": ((40, 36, 30), (17, 20, 11)),
    "up 2.2x": ((9, 8, 7), (20, 19, 15)),
    "mixed": ((30, 12, 20), (13, 25, 20)),
    "tiny": ((3, 3, 3), (1, 2, 3)),
    "CT-like": ((160, 160, 80), (96, 96, 48)),
}
RANGES = DTYPE_RANGES


def part1(folder, cases):
    rng = np.random.default_rng(0)
    print("Largest |nidataset - SimpleITK float64| / intensity range, where SimpleITK evaluates the spline")
    print(f"{'dtype':<8} {'case':<8} {'samples':>8} {'engine (float)':>15} {'as written':>11}")
    worst = {}
    for dtype, (low, high) in RANGES.items():
        for case, (old, new) in cases.items():
            data = smooth_volume(old, rng, dtype, low, high)
            src = write_nifti(os.path.join(folder, f"{dtype}-{case}.nii.gz"), data)
            expected, valid = sitk_resample(src, new)
            span = float(data.max()) - float(data.min())
            engine = resize(np.asanyarray(nib.load(src).dataobj), new, clip=False)
            written = np.asanyarray(nib.load(resampling(src, os.path.join(folder, "out"), new)).dataobj)
            e = np.abs(engine.astype(np.float64) - expected)[valid].max() / span
            clipped = np.clip(expected, data.min(), data.max())
            w = np.abs(written.astype(np.float64) - clipped)[valid].max() / span
            worst[dtype] = max(worst.get(dtype, (0, 0)), (e, w))
            print(f"{dtype:<8} {case:<8} {int(valid.sum()):>8} {e:>15.2e} {w:>11.2e}")
    print("\nWorst per dtype (engine, as written):")
    for dtype, (e, w) in worst.items():
        print(f"  {dtype:<8} {e:.2e}  {w:.2e}")


def part2(folder):
    sys.path.insert(0, os.path.dirname(__file__))
    from _reference import reference_python, run_reference

    python = reference_python()
    scans = {
        "CT 256x256x120 -> 128x128x64 (down)": ((256, 256, 120), (128, 128, 64)),
        "CT 96x96x40 -> 224x224x128 (up 2.3x)": ((96, 96, 40), (224, 224, 128)),
    }
    print("\nnidataset 0.9.1 (reference) and this project on the same int16 CT-like scans")
    for label, (shape, new) in scans.items():
        data, affine = ct_phantom(shape, (0.8, 0.8, 2.5), seed=1)
        src = os.path.join(folder, "ref", f"{shape[0]}.nii.gz")
        os.makedirs(os.path.dirname(src), exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), src)
        ours = nib.load(resampling(src, os.path.join(folder, "ours"), new)).dataobj
        ours = np.asanyarray(ours).astype(np.int64)
        out_dir = os.path.join(folder, "theirs")
        code = "from nidataset.preprocessing import resampling\n"
        code += f"print(resampling({src!r}, {out_dir!r}, {new!r}))"
        theirs = np.asanyarray(nib.load(run_reference(python, code).strip()).dataobj).astype(np.int64)
        expected, valid = sitk_resample(src, new)
        expected = np.clip(expected, data.min(), data.max())
        diff = ours - theirs
        ours_v, theirs_v, expected_v = ours[valid], theirs[valid], expected[valid]
        print(f"  {label}")
        print(f"    voxels: {diff.size}, identical: {np.mean(diff == 0):.2%}")
        print(f"    where SimpleITK evaluates the spline ({valid.mean():.1%} of voxels):")
        print(f"      max |ours - ref| = {np.abs(diff[valid]).max()}")
        print(f"      ours == round(SimpleITK float64): {np.mean(ours_v == np.rint(expected_v)):.2%}")
        print(f"      ref  == trunc(SimpleITK float64): {np.mean(theirs_v == np.trunc(expected_v)):.2%}")
        print(f"      mean (ours - SimpleITK float64) = {np.mean(ours_v - expected_v):+.3f}")
        print(f"      mean (ref  - SimpleITK float64) = {np.mean(theirs_v - expected_v):+.3f}")
        if not valid.all():
            outside = ~valid
            zeros_ref, zeros_ours = np.mean(theirs[outside] == 0), np.mean(ours[outside] == 0)
            print(f"    past the last voxel centre ({outside.mean():.1%} of voxels, input min {data.min()}):")
            print(f"      ref is 0 in {zeros_ref:.1%} of them, ours in {zeros_ours:.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", action="store_true", help="also compare with nidataset 0.9.1 (builds its venv)"
    )
    parser.add_argument("--quick", action="store_true", help="two small cases per dtype (the test suite's)")
    args = parser.parse_args()
    cases = {k: CASES[k] for k in ("down", "tiny")} if args.quick else CASES
    with tempfile.TemporaryDirectory() as folder:
        part1(folder, cases)
        if args.reference:
            part2(folder)


if __name__ == "__main__":
    main()
