"""Make a small synthetic CT-like dataset (no patient data), resample it, and show what happened.

Run with ``make demo``. Files go to ``build/demo/`` (inputs in ``scans/``, results in ``resampled/``).
"""

import os
import shutil
import sys
import time

import nibabel as nib
import numpy as np

from nidataset._phantom import ct_phantom
from nidataset.preprocessing import resampling_dataset

ROOT = os.path.join("build", "demo")
TARGET = (128, 128, 64)
#: (name, shape, spacing in mm): scanners disagree on both.
SCANS = [
    ("chest_001", (256, 256, 120), (0.8, 0.8, 2.5)),
    ("chest_002", (320, 320, 90), (0.6, 0.6, 3.0)),
    ("chest_003", (192, 192, 160), (1.0, 1.0, 1.0)),
    ("chest_004", (224, 200, 100), (0.9, 0.9, 2.0)),
]


def describe(image):
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    fov = np.multiply(image.shape, zooms)
    return (
        f"{'x'.join(map(str, image.shape)):>11}  {'x'.join(f'{z:.3f}' for z in zooms):>17} mm"
        f"  FOV {'x'.join(f'{f:.1f}' for f in fov):>17} mm"
    )


def main():
    inputs, outputs = os.path.join(ROOT, "scans"), os.path.join(ROOT, "resampled")
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(inputs)

    start = time.perf_counter()
    for seed, (name, shape, spacing) in enumerate(SCANS):
        data, affine = ct_phantom(shape, spacing, seed)
        nib.save(nib.Nifti1Image(data, affine), os.path.join(inputs, f"{name}.nii.gz"))
    made = time.perf_counter() - start
    print(f"Made {len(SCANS)} synthetic CT-like scans in {inputs}/ ({made:.1f} s)\n")

    start = time.perf_counter()
    written = resampling_dataset(inputs, outputs, TARGET, saving_mode="case", debug=True)
    took = time.perf_counter() - start
    sys.stderr.flush()

    print(f"\n{'scan':<10} {'':>6} {'size':>11}  {'spacing':>20}  {'field of view':>21}")
    for (name, _, _), path in zip(SCANS, written, strict=True):
        before = nib.load(os.path.join(inputs, f"{name}.nii.gz"))
        after = nib.load(path)
        print(f"{name:<10} {'before':>6} {describe(before)}")
        print(f"{'':<10} {'after':>6} {describe(after)}")
        assert after.shape == TARGET and after.get_data_dtype() == before.get_data_dtype()
        assert np.allclose(
            np.multiply(before.shape, before.header.get_zooms()),
            np.multiply(after.shape, after.header.get_zooms()),
        )
    voxels = sum(np.prod(shape) for _, shape, _ in SCANS)
    print(
        f"\nResampled {len(written)} int16 scans ({voxels / 1e6:.1f} M voxels) to {TARGET} in {took:.2f} s "
        f"({took / len(written):.2f} s per scan, reading and writing .nii.gz included)."
    )
    print(f"Outputs: {outputs}/<scan>/<scan>_resampled.nii.gz")


if __name__ == "__main__":
    main()
