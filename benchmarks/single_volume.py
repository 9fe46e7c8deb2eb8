"""One CT volume, 512x512x300 int16 -> (224, 224, 128): nidataset and nidataset 0.9.1 side by side.

Prints, as medians over interleaved rounds, with the ratios measured in the same run:

1. the wall time of a whole process (``python -c "from nidataset.preprocessing import resampling; ..."``),
2. its peak resident memory,
3. the time of ``import nidataset.preprocessing`` (in that fresh process),
4. the array engine alone on the float32 volume in memory, against ``SimpleITK.Resample(..., sitkBSpline)``
   with 1 and with 2 threads (ours computes on one thread),
5. how the cost grows with the number of voxels, 64^3 to 512^2x300, as a log-log plot (PNG) with the
   fitted slope (1 is linear).

The reference runs in its own venv (see _reference.py); ``--no-reference`` leaves it out.

    .venv/bin/python benchmarks/single_volume.py                 # the full benchmark (a few minutes)
    .venv/bin/python benchmarks/single_volume.py --quick         # a tiny configuration (the test suite's)
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, median, whole_process
from _reference import reference_python
from nidataset._engine import resize
from nidataset._phantom import ct_phantom
from nidataset.preprocessing import resampling

SPACING = (0.7, 0.7, 1.25)
#: Output size / input size of the main job, used for every size of the scaling runs.
FACTOR = 224 / 512


def sitk_resample(image, size, threads):
    """SimpleITK's B-spline resample of `image` to `size` on the same-origin grid, as 0.9.1 calls it."""
    import SimpleITK as sitk

    old = np.array(image.GetSize())
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in size])
    resampler.SetOutputSpacing([float(s) for s in np.array(image.GetSpacing()) * old / np.array(size)])
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(sitk.sitkBSpline)
    resampler.SetNumberOfThreads(threads)
    return resampler.Execute(image)


def timed(function, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine(data, size, rounds, sitk_rounds):
    """Median seconds of our engine and of SimpleITK (1 and 2 threads) on `data` in memory."""
    import SimpleITK as sitk

    volume = np.asfortranarray(data, dtype=np.float32)
    image = sitk.GetImageFromArray(volume.T)  # SimpleITK's array order is z, y, x
    image.SetSpacing(SPACING)
    ours = timed(lambda: resize(volume, size), rounds)
    return {
        "ours": ours,
        "sitk1": timed(lambda: sitk_resample(image, size, 1), sitk_rounds),
        "sitk2": timed(lambda: sitk_resample(image, size, 2), sitk_rounds),
    }


def scaling(root, shapes, rounds):
    """Seconds of resampling() (file to file, in this process) and of the engine alone, per input shape."""
    rows = []
    for shape in shapes:
        size = tuple(max(1, round(n * FACTOR)) for n in shape)
        data, affine = ct_phantom(shape, SPACING, seed=1)
        src = os.path.join(root, "scaling.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), src)
        call = timed(lambda src=src, size=size: resampling(src, os.path.join(root, "scaling"), size), rounds)
        alone = timed(lambda data=data, size=size: resize(data, size, output_dtype=data.dtype), rounds)
        rows.append((shape, math.prod(shape), call, alone))
    return rows


def slope(rows, column, smallest=0):
    """Slope of log(time) against log(voxels) over inputs of at least `smallest` voxels (1 = linear)."""
    rows = [r for r in rows if r[1] >= smallest]
    return float(np.polyfit(np.log([r[1] for r in rows]), np.log([r[column] for r in rows]), 1)[0])


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    voxels = np.array([r[1] for r in rows], dtype=float)
    figure = Figure(figsize=(11, 4.4), layout="constrained")
    total, per_voxel = figure.subplots(1, 2)
    for column, label in ((2, "resampling(), file to file"), (3, "engine alone, in memory")):
        seconds = np.array([r[column] for r in rows])
        total.loglog(voxels, seconds, "o-", label=f"{label} (slope {slope(rows, column):.2f})")
        # A line of slope 1 through the largest size: where linear growth would put the smaller ones.
        total.loglog(voxels, seconds[-1] * voxels / voxels[-1], ":", color="grey")
        per_voxel.semilogx(voxels, seconds / voxels * 1e9, "o-", label=label)
    total.set_xlabel("input voxels")
    total.set_ylabel("seconds (median)")
    total.set_title("cost against volume size (dotted: slope 1)")
    per_voxel.set_xlabel("input voxels")
    per_voxel.set_ylabel("nanoseconds per input voxel")
    per_voxel.set_ylim(bottom=0)
    per_voxel.set_title("cost per voxel: flat once fixed costs are paid")
    for axes in (total, per_voxel):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    for shape, count, seconds, _ in rows:
        total.annotate(
            "x".join(map(str, shape)),
            (count, seconds),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
    figure.suptitle("nidataset: 512x512x300-like CT volumes shrunk by 224/512 on every axis")
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--size", type=int, nargs=3, default=(224, 224, 128))
    parser.add_argument("--rounds", type=int, default=5, help="whole-process rounds (default 5)")
    parser.add_argument("--sitk-rounds", type=int, default=3, help="SimpleITK engine rounds (default 3)")
    parser.add_argument("--no-reference", action="store_true", help="leave nidataset 0.9.1 out")
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(__file__), "scaling.png"))
    parser.add_argument("--quick", action="store_true", help="a tiny configuration: seconds, no reference")
    args = parser.parse_args()
    shapes = [
        (64, 64, 64),
        (128, 128, 75),
        (192, 192, 112),
        (256, 256, 150),
        (384, 384, 225),
        (512, 512, 300),
    ]
    if args.quick:
        args.shape, args.size, args.rounds, args.sitk_rounds, args.no_reference = (
            (40, 40, 24),
            (18, 18, 10),
            1,
            1,
            True,
        )
        shapes = [(16, 16, 16), (24, 24, 14), (32, 32, 19)]

    runs = {"nidataset": sys.executable}
    if not args.no_reference:
        runs["nidataset 0.9.1"] = reference_python()
    with tempfile.TemporaryDirectory() as root:
        src = os.path.join(root, "ct.nii.gz")
        data, affine = ct_phantom(tuple(args.shape), SPACING, seed=0)
        nib.save(nib.Nifti1Image(data, affine), src)
        megabytes = os.path.getsize(src) / 1e6
        results = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved: each round runs every implementation once
            for name, python in runs.items():
                results[name].append(
                    whole_process(
                        python,
                        src,
                        os.path.join(root, "out"),
                        args.size,
                        env=environment(isolated=python != sys.executable),
                    )
                )
        speed = engine(data, tuple(args.size), args.rounds, args.sitk_rounds)
        growth = scaling(root, shapes, args.rounds)

    shape = "x".join(map(str, args.shape))
    print(f"{shape} int16 CT-like volume ({megabytes:.0f} MB .nii.gz) -> {tuple(args.size)}")
    python = sys.version.split()[0]
    print(f"machine: {os.cpu_count()} cores, Python {python}, {args.rounds} interleaved rounds\n")
    print(f"{'whole process (median)':<24}{'wall':>9}{'import':>9}{'call':>9}{'peak RSS':>12}")
    for name, samples in results.items():
        print(
            f"{name:<24}{median(samples, 'wall'):>8.2f}s{median(samples, 'imported'):>8.2f}s"
            f"{median(samples, 'call'):>8.2f}s{median(samples, 'peak') / 2**20:>9.0f} MiB"
        )
    ours = results["nidataset"]
    if "nidataset 0.9.1" in results:
        ref = results["nidataset 0.9.1"]
        faster = median(ref, "wall") / median(ours, "wall")
        memory = median(ours, "peak") / median(ref, "peak")
        print(f"\n1. wall time, 0.9.1 / ours:        {faster:.1f}x  (target >= 10x)")
        print(f"2. peak RSS, ours / 0.9.1:         {memory:.2f}  (target <= 0.5)")
    print(f"3. import nidataset.preprocessing: {median(ours, 'imported'):.2f} s  (target <= 0.3 s)")
    print(
        f"4. engine alone, float32 in memory: ours {speed['ours']:.3f} s (1 thread), SimpleITK "
        f"{speed['sitk1']:.2f} s (1 thread), {speed['sitk2']:.2f} s (2 threads)"
    )
    print(
        f"   SimpleITK / ours: {speed['sitk1'] / speed['ours']:.0f}x with 1 thread each, "
        f"{speed['sitk2'] / speed['ours']:.0f}x against SimpleITK's 2  (target >= 20x)"
    )
    print("5. cost against voxels (medians):")
    for shape, count, call, alone in growth:
        name = "x".join(map(str, shape))
        print(
            f"   {name:>12} {count:>11,} voxels  resampling() {call:.3f} s "
            f"({call / count * 1e9:.1f} ns/voxel)  engine {alone:.3f} s ({alone / count * 1e9:.1f} ns/voxel)"
        )
    big = min(count for _, count, _, _ in growth[-3:])
    print(
        f"   log-log slope over all sizes: resampling() {slope(growth, 2):.2f}, engine "
        f"{slope(growth, 3):.2f}; from {big:,} voxels: {slope(growth, 2, big):.2f}, "
        f"{slope(growth, 3, big):.2f}  (1 = linear)"
    )
    plot(growth, args.plot)
    print(f"   plot: {args.plot}")


if __name__ == "__main__":
    main()
