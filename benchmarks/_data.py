"""The MNI152 2009a T1 and grey-matter volumes that nilearn ships, without making nilearn a dependency.

Both are uint8, 197x233x189 voxels of 1 mm. They are taken from an installed nilearn when there is one
(found with ``importlib.util.find_spec``, nilearn is not imported), else from ``benchmarks/.data``, where
the first use puts them: ``pip download nilearn --no-deps -d benchmarks/.data`` and the two files taken
out of the wheel with zipfile.

For the quick runs, :func:`standin` writes small synthetic volumes of the same kind instead.
"""

import glob
import importlib.util
import os
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, ".data")
NAMES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
}
SHAPE = (197, 233, 189)
#: Where the files are inside the nilearn package (and its wheel).
PACKAGE_FOLDER = ("datasets", "data")


def mni(kind):
    """Path of the MNI152 volume `kind` ("t1" or "gm"), fetched into benchmarks/.data if needed."""
    name = NAMES[kind]
    spec = importlib.util.find_spec("nilearn")  # a top-level package: found, not imported
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, *PACKAGE_FOLDER, name)
        if os.path.isfile(path):
            return path
    path = os.path.join(DATA, name)
    if not os.path.isfile(path):
        _extract_from_wheel()
    return path


def _extract_from_wheel():
    os.makedirs(DATA, exist_ok=True)
    wheels = sorted(glob.glob(os.path.join(DATA, "nilearn-*.whl")))
    if not wheels:
        print(f"downloading the nilearn wheel into {DATA} (for the MNI152 files) ...", file=sys.stderr)
        command = [sys.executable, "-m", "pip", "download", "nilearn", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*command, "--quiet", "-d", DATA], check=True)
        wheels = sorted(glob.glob(os.path.join(DATA, "nilearn-*.whl")))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for name in NAMES.values():
            target = os.path.join(DATA, name)
            partial = target + ".part"
            with open(partial, "wb") as file:
                file.write(wheel.read("/".join(("nilearn", *PACKAGE_FOLDER, name))))
            os.replace(partial, target)


def mni_affine(shape):
    """1 mm RAS grid with the MNI152 2009a origin, (-98, -134, -72), rescaled to `shape` voxels."""
    spacing = np.array(SHAPE) / np.array(shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-98.0, -134.0, -72.0)
    return affine


def standin(kind, path, shape=(20, 23, 19), seed=0):
    """Write a small synthetic stand-in for the MNI volume `kind` to `path`; returns `path`.

    "t1": a uint8 head-like volume (a bright shell, darker inside, noise); "gm": a uint8 probability map
    holding every value 0..255 once at least, as the real grey-matter map does.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    if kind == "t1":
        values = np.where(radius < 0.9, 110.0, 5.0) + np.where((radius > 0.75) & (radius < 0.9), 100.0, 0.0)
        values += 8 * rng.standard_normal(shape)
    else:
        values = 255 * np.exp(-(((radius - 0.6) / 0.2) ** 2)) + 10 * rng.standard_normal(shape)
        values.flat[:256] = np.arange(256)
    data = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, mni_affine(shape)), path)
    return path
