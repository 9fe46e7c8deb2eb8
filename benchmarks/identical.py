"""Do two checkouts write byte-identical files? This project against another checkout, on a corpus.

The corpus (built in a temporary folder):

- synthetic volumes: uint8, int16, uint16, int32, float32, float64, each shrunk, grown and resized both
  ways; odd shapes (1- and 2-voxel axes); a scaled int16 file (scl_slope/scl_inter); big-endian int16 and
  float32 files; NIfTI-2; 4D files with trailing singleton dimensions; an oblique affine; NaN and
  infinite voxels; CT-like volumes large enough to be read slab by slab;
- every 3D ``.nii``/``.nii.gz`` volume (or 4D with trailing dimensions of 1) that nibabel ships in
  ``nibabel/tests/data`` (``.nii`` files gzipped first), shrunk and resized both ways;
- the MNI152 2009a T1 and grey-matter maps from nilearn's package data (see _data.py).

Every file is resampled with each interpolation in ("bspline", "linear", "nearest", "label") and each
``align`` in ("origin", "center"), by each implementation in one process of its own: this project
(whatever ``nidataset`` this Python imports) and ``--baseline-src`` (another checkout's ``src``, put first
on PYTHONPATH; default /tmp/baseline/src). The outputs' bytes are compared. A job that both sides refuse
is left out and listed; one that only one side refuses counts as a difference. For the files that differ,
the stored voxels are compared: how many differ and by how much at most. For label maps, each differing
voxel is also judged in exact arithmetic (rational sample positions, fractions for the weights): is it
a tie between labels, and which side gives the rule's label (ties to the smaller) there.
``--threads N`` passes ``threads=N`` to a resampling() whose signature has it (on both sides).

Exit status 0 only if every output is identical.

    .venv/bin/python benchmarks/identical.py                         # the whole corpus (several minutes)
    .venv/bin/python benchmarks/identical.py --baseline-src ../other/src
    .venv/bin/python benchmarks/identical.py --quick                 # synthetic files only, small
"""

import argparse
import gzip
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from fractions import Fraction

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from _common import default_baseline, environment, thread_kwargs
from _data import mni
from helpers import DTYPE_RANGES

INTERPOLATIONS = ("bspline", "linear", "nearest", "label")
ALIGNS = ("origin", "center")
RANGES = DTYPE_RANGES
#: (input shape, output size) per case of every data type.
SIZES = {
    "down": ((20, 18, 14), (9, 11, 6)),
    "up": ((7, 6, 5), (16, 15, 11)),
    "mixed": ((20, 8, 14), (9, 17, 14)),
}
#: The quick corpus: every file this small.
QUICK = ((10, 9, 7), (5, 6, 4))
ODD = {
    "x1": ((1, 20, 15), (3, 10, 7)),
    "xy2": ((2, 2, 9), (5, 1, 4)),
    "xy1": ((1, 1, 12), (1, 1, 5)),
    "y1z2": ((17, 1, 2), (8, 3, 5)),
    "tiny": ((3, 3, 3), (1, 2, 3)),
    "to2": ((9, 7, 6), (2, 2, 2)),
}
AFFINE = np.array([[0.8, 0, 0, -40.0], [0, 0.9, 0, 25.0], [0, 0, 2.5, 7.5], [0, 0, 0, 1]])


def smooth(shape, rng, dtype, low, high):
    """A smooth random field in [low, high] with a little noise, of `dtype` (rounded for integers)."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    field = np.zeros(shape)
    for _ in range(4):
        centre, width = rng.uniform(0, 1, len(shape)), rng.uniform(0.15, 0.5)
        field += rng.uniform(0.3, 1) * np.exp(
            -sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) / width**2
        )
    field += 0.05 * rng.standard_normal(shape)
    span = field.max() - field.min()
    values = low + (high - low) * (field - field.min()) / (span if span else 1)
    return (np.rint(values) if np.dtype(dtype).kind in "iu" else values).astype(dtype)


def save(path, data, affine=AFFINE, image_class=nib.Nifti1Image, header=None, slope=None):
    image = image_class(data, affine, header)
    image.set_data_dtype(data.dtype)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(*slope)
    nib.save(image, path)
    return path


def synthetic(folder, quick):
    """[(name, path, [sizes])] of the synthetic files."""
    rng = np.random.default_rng(0)
    files = []

    def add(name, data, sizes, **options):
        files.append((name, save(os.path.join(folder, f"{name}.nii.gz"), data, **options), sizes))

    cases = {"down": QUICK} if quick else SIZES
    for dtype, (low, high) in RANGES.items():
        for case, (shape, size) in cases.items():
            add(f"{dtype}_{case}", smooth(shape, rng, dtype, low, high), [size])
    for case, (shape, size) in ODD.items():
        for dtype in ("int16",) if quick else ("int16", "float32"):
            add(f"odd_{case}_{dtype}", smooth(shape, rng, dtype, *RANGES[dtype]), [size])
    shape, size = QUICK if quick else SIZES["down"]
    up = tuple(2 * n - 3 for n in shape)  # grows every axis
    add("scaled_int16", smooth(shape, rng, np.int16, -1024, 3071), [size, up], slope=(0.5, -100.0))
    for dtype in ("int16", "float32"):
        header = nib.Nifti1Header(endianness=">")
        add(f"big_endian_{dtype}", smooth(shape, rng, dtype, *RANGES[dtype]), [size, up], header=header)
    for dtype in ("int16", "float64"):
        data = smooth(shape, rng, dtype, *RANGES[dtype])
        add(f"nifti2_{dtype}", data, [size, up], image_class=nib.Nifti2Image)
    add("trailing_1", smooth((*shape, 1), rng, np.int16, -1024, 3071), [size])
    add("trailing_1_1", smooth((*shape, 1, 1), rng, np.float32, -1.5, 2.5), [size])
    oblique = AFFINE.copy()
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[0.96, -0.28, 0.1], [0.28, 0.96, 0.0], [0.0, 0.05, 1.0]])
    add("oblique_int16", smooth(shape, rng, np.int16, -1024, 3071), [size], affine=oblique)
    holes = smooth(shape, rng, np.float32, -1.5, 2.5)
    holes[3:6, 4:7, 2:5] = np.nan
    holes[-2, 2, -1] = np.nan
    add("nan_float32", holes, [size, up])
    infinite = smooth(shape, rng, np.float64, -3e3, 1e4)
    infinite[-1, -2, -3], infinite[2, 3, 4] = np.inf, -np.inf
    add("inf_float64", infinite, [size])
    if not quick:
        from nidataset._phantom import ct_phantom

        data, affine = ct_phantom((160, 160, 80), (0.8, 0.8, 2.5), seed=1)
        add("ct_down", data, [(96, 96, 48)], affine=affine)
        data, affine = ct_phantom((64, 64, 40), (0.8, 0.8, 2.5), seed=2)
        add("ct_up", data, [(150, 140, 90)], affine=affine)
    return files


def nibabel_files(folder):
    """[(name, path, [sizes])] of nibabel's test volumes, and [(file, why)] of those left out."""
    data = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
    files, excluded = [], []
    for name in sorted(os.listdir(data)):
        if not name.endswith((".nii", ".nii.gz")):
            continue
        source = os.path.join(data, name)
        try:
            image = nib.load(source)
        except Exception as err:
            excluded.append((name, f"nibabel cannot read it: {err}"))
            continue
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            excluded.append((name, f"a {type(image).__name__}, not a NIfTI volume"))
            continue
        shape = image.shape
        if len(shape) < 3 or any(n != 1 for n in shape[3:]):
            excluded.append((name, f"shape {shape}: not 3D"))
            continue
        stem = "nib_" + name.removesuffix(".gz").removesuffix(".nii").replace(".", "_")
        path = os.path.join(folder, stem + ".nii.gz")
        with open(source, "rb") as file:
            raw = file.read()
        with open(path, "wb") as file:
            file.write(raw if name.endswith(".gz") else gzip.compress(raw, mtime=0))
        x, y, z = shape[:3]
        down = tuple(max(1, round(n * 0.6)) for n in (x, y, z))
        mixed = (max(1, round(x * 1.5)), max(1, round(y * 0.7)), z + 3)
        files.append((stem, path, [down, mixed]))
    return files, excluded


def corpus(folder, quick):
    files = synthetic(folder, quick)
    excluded = []
    if not quick:
        found, excluded = nibabel_files(folder)
        files += found
        for kind in ("t1", "gm"):
            path = os.path.join(folder, f"mni_{kind}.nii.gz")
            shutil.copyfile(mni(kind), path)
            files.append((f"mni_{kind}", path, [(96, 96, 96), (120, 250, 150)]))
    return files, excluded


def worker(jobs_file, results_file, threads):
    """Run every job of `jobs_file` in this process; write {job id: "ok" or the error} to `results_file`."""
    from nidataset.preprocessing import resampling

    with open(jobs_file) as file:
        jobs = json.load(file)
    extra = thread_kwargs(resampling, threads)
    results, seconds = {}, {}
    for job in jobs:
        start = time.perf_counter()
        try:
            resampling(job["src"], job["out"], tuple(job["size"]), **job["options"], **extra)
            results[job["id"]] = "ok"
        except Exception as err:
            results[job["id"]] = f"{type(err).__name__}: {err}".splitlines()[0]
        seconds[job["id"]] = time.perf_counter() - start
    results["_seconds"] = seconds
    import nidataset

    results["_where"] = os.path.dirname(nidataset.__file__) + (" (threads= passed)" if extra else "")
    with open(results_file, "w") as file:
        json.dump(results, file)


def run_side(name, root, files, env, threads):
    jobs = []
    for file_name, path, sizes in files:
        for size in sizes:
            for how in INTERPOLATIONS:
                for align in ALIGNS:
                    key = f"{file_name} -> {size} {how} {align}"
                    out = os.path.join(root, name, str(len(jobs)))
                    options = {"interpolation": how, "align": align}
                    jobs.append({"id": key, "src": path, "out": out, "size": size, "options": options})
    jobs_file = os.path.join(root, f"{name}-jobs.json")
    results_file = os.path.join(root, f"{name}-results.json")
    with open(jobs_file, "w") as file:
        json.dump(jobs, file)
    command = [sys.executable, os.path.abspath(__file__), "--worker", jobs_file, results_file]
    if threads is not None:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True, env=env)
    with open(results_file) as file:
        results = json.load(file)
    outputs = {job["id"]: os.path.join(job["out"], file_name_of(job["src"])) for job in jobs}
    return jobs, results, outputs


def file_name_of(src):
    return os.path.basename(src).removesuffix(".nii.gz") + "_resampled.nii.gz"


def first_difference(a, b):
    """Offset of the first byte that differs between `a` and `b` (the shorter length if one ends first)."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
    return int(differ[0]) if differ.size else n


def differences(ours, theirs):
    """Describe how two output files differ: voxels, then the header."""
    a, b = nib.load(ours), nib.load(theirs)
    if a.shape != b.shape:
        return f"shapes {a.shape} and {b.shape}"
    if a.get_data_dtype() != b.get_data_dtype():
        return f"types {a.get_data_dtype()} and {b.get_data_dtype()}"
    x = np.asarray(a.dataobj.get_unscaled(), dtype=np.float64)
    y = np.asarray(b.dataobj.get_unscaled(), dtype=np.float64)
    differ = ~((x == y) | (np.isnan(x) & np.isnan(y)))
    if differ.any():
        largest = np.nanmax(np.abs(x - y)[differ]) if np.isfinite(x[differ] - y[differ]).any() else np.inf
        return f"{int(differ.sum())} of {x.size} voxels differ, largest difference {largest:g}"
    if a.header.binaryblock != b.header.binaryblock:
        fields = [k for k in a.header if not np.array_equal(a.header[k], b.header[k], equal_nan=True)]
        return f"same voxels, headers differ in {', '.join(fields) or 'their bytes'}"
    with open(ours, "rb") as file:
        packed = file.read()
    with open(theirs, "rb") as file:
        other = file.read()
    x, y = gzip.decompress(packed), gzip.decompress(other)
    if x == y:
        first = first_difference(packed, other)
        return (
            f"same voxels and header, same {len(x):,} uncompressed bytes; the gzip streams differ "
            f"({len(packed):,} and {len(other):,} bytes, first difference at byte {first:,})"
        )
    first = first_difference(x, y)
    return (
        f"same voxels and header; uncompressed {len(x):,} and {len(y):,} bytes, first difference at {first:,}"
    )


def exact_label(labels, shape, align, index):
    """The label the rule picks at output voxel `index`, in exact arithmetic, and whether it was a tie.

    The rule: the label whose linearly interpolated indicator is largest, ties to the smaller label. The
    sample positions are the exact rationals ``i * old / new`` (or the "center" ones), not their float64
    roundings, and the edge voxel is repeated past the last one.
    """
    corners = []
    for i, old, new in zip(index, labels.shape, shape, strict=True):
        if align == "origin":
            position = Fraction(int(i) * old, new)
        else:
            position = Fraction((2 * int(i) + 1) * old, 2 * new) - Fraction(1, 2)
        position = min(max(position, Fraction(0)), Fraction(old - 1))
        low = min(int(position), old - 1)
        corners.append(((low, 1 - (position - low)), (min(low + 1, old - 1), position - low)))
    scores = Counter()
    for corner in itertools.product(*corners):
        weight = math.prod((w for _, w in corner), start=Fraction(1))
        scores[labels[tuple(i for i, _ in corner)].item()] += weight
    best = max(scores.values())
    winners = sorted(label for label, score in scores.items() if score == best)
    return winners[0], len(winners) > 1


def label_ties(source, ours, theirs, align, most=2000):
    """Where two label outputs differ: are those voxels exact ties, and who gives the rule's label there?"""
    labels = np.asarray(nib.load(source).dataobj.get_unscaled())
    labels = labels.reshape(labels.shape[:3])
    x, y = (np.asarray(nib.load(p).dataobj.get_unscaled()) for p in (ours, theirs))
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        return "the map holds NaN (not checked)"
    places = np.argwhere(x != y)[:most]
    ties = mine = other = 0
    for index in map(tuple, places):
        rule, tie = exact_label(labels, x.shape, align, index)
        ties += tie
        mine += x[index] == rule
        other += y[index] == rule
    return (
        f"{ties} of {len(places)} checked are exact ties; the rule's label (ties to the smaller) is this "
        f"project's at {mine}, the other's at {other}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", help="src folder of the other checkout (default /tmp/baseline/src)")
    parser.add_argument("--threads", type=int, help="pass threads=N where resampling() takes it")
    parser.add_argument("--quick", action="store_true", help="a small synthetic corpus only")
    parser.add_argument("--keep", metavar="DIR", help="copy both outputs of each difference into DIR")
    parser.add_argument("--worker", nargs=2, metavar=("JOBS", "RESULTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.threads)
    baseline = default_baseline(args.baseline_src)
    if not baseline or not os.path.isdir(os.path.join(baseline, "nidataset")):
        sys.exit(f"no other checkout to compare with: --baseline-src {baseline!r} has no nidataset package")

    with tempfile.TemporaryDirectory() as root:
        inputs = os.path.join(root, "in")
        os.makedirs(inputs)
        files, excluded = corpus(inputs, args.quick)
        jobs, ours, ours_out = run_side("ours", root, files, None, args.threads)
        _, theirs, theirs_out = run_side("baseline", root, files, environment(baseline), args.threads)
        print(f"this project: {ours['_where']}")
        print(f"other:        {theirs['_where']}")
        print(f"corpus: {len(files)} files, {len(jobs)} jobs (interpolations x aligns x sizes)\n")
        total, same, refused, reports = Counter(), Counter(), [], []
        for job in jobs:
            key, how = job["id"], job["options"]["interpolation"]
            mine, other = ours[key], theirs[key]
            if mine != "ok" and other != "ok":
                refused.append(f"  {key}: both refuse ({mine})")
                continue
            total[how] += 1
            if mine != "ok" or other != "ok":
                side, reason = ("this project", mine) if mine != "ok" else ("the other", other)
                reports.append(f"  {key}: only {side} refuses it: {reason}")
                continue
            with open(ours_out[key], "rb") as a, open(theirs_out[key], "rb") as b:
                if a.read() == b.read():
                    same[how] += 1
                    continue
            reports.append(f"  {key}: {differences(ours_out[key], theirs_out[key])}")
            if how == "label":
                reports[-1] += (
                    f"; {label_ties(job['src'], ours_out[key], theirs_out[key], job['options']['align'])}"
                )
            if args.keep:
                kept = os.path.join(args.keep, str(len(reports)))
                os.makedirs(kept, exist_ok=True)
                shutil.copy(ours_out[key], os.path.join(kept, "ours_" + os.path.basename(ours_out[key])))
                shutil.copy(theirs_out[key], os.path.join(kept, "other_" + os.path.basename(theirs_out[key])))
                reports[-1] += f" (kept in {kept})"

    print("identical outputs / total, per interpolation:")
    for how in INTERPOLATIONS:
        print(f"  {how:<8} {same[how]:>4} / {total[how]}")
    print(f"  {'all':<8} {sum(same.values()):>4} / {sum(total.values())}")
    if excluded:
        print("\nnibabel test files left out:")
        for name, why in excluded:
            print(f"  {name}: {why}")
    if refused:
        print(f"\nrefused by both sides, left out ({len(refused)}):")
        print("\n".join(refused))
    if reports:
        print(f"\ndifferent ({len(reports)}):")
        print("\n".join(reports))
    identical = not reports
    print(f"\nall identical: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
