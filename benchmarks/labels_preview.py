"""What the options cost: ``interpolation="label"`` against ``"bspline"``, and ``preview=True`` against none.

1. ``resampling()`` of the same file with ``interpolation="label"`` and with ``"bspline"``, in this process
   (each warmed up once), medians of interleaved rounds:
   a. a 5,000-label instance map, 128^3 uint16 (the Voronoi cells of 5,000 random seeds) -> (96, 96, 96);
   b. the MNI152 2009a grey-matter map from nilearn's package data (uint8, 197x233x189, 256 distinct
      values; see _data.py) -> (96, 96, 96).
   Target: label <= 3x bspline.
2. ``preview=True`` against no preview on single_volume.py's CT job (512x512x300 int16 ``ct_phantom``,
   0.7x0.7x1.25 mm -> (224, 224, 128)), each run a whole process (``python -c ...``, so the matplotlib
   import counts). Target: the preview adds <= 1.0 s (difference of the medians).

"This project" is whatever ``nidataset`` this Python imports; ``--threads N`` passes ``threads=N`` to a
resampling() whose signature has it.

    .venv/bin/python benchmarks/labels_preview.py              # 5 rounds (a few minutes)
    .venv/bin/python benchmarks/labels_preview.py --quick      # tiny stand-ins, 1 round (the tests')
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_line, median, target_line, thread_kwargs, whole_process
from _data import mni, standin
from nidataset._phantom import ct_phantom
from nidataset.preprocessing import resampling

INTERPOLATIONS = ("label", "bspline")


def voronoi_labels(path, shape, labels, seed=0):
    """Write a uint16 instance map: each voxel takes the number (1..labels) of its nearest random seed."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, 1, (labels, 3)) * np.array(shape)
    centres = np.indices(shape, dtype=np.float32).reshape(3, -1).T + 0.5
    nearest = cKDTree(seeds).query(centres)[1]
    data = (nearest + 1).astype(np.uint16).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path, len(np.unique(data))


def label_rows(args, root):
    """Median seconds of each interpolation per file: {case: (description, {interpolation: seconds})}."""
    if args.quick:
        voronoi = voronoi_labels(os.path.join(root, "instances.nii.gz"), (16, 16, 16), 100)
        grey = standin("gm", os.path.join(root, "gm.nii.gz"), shape=(20, 23, 19))
        size = (12, 12, 12)
    else:
        voronoi = voronoi_labels(os.path.join(root, "instances.nii.gz"), (128, 128, 128), 5000)
        grey = mni("gm")
        size = (96, 96, 96)
    extra = thread_kwargs(resampling, args.threads)
    cases = {}
    for case, (path, count) in {
        "a": voronoi,
        "b": (grey, len(np.unique(np.asanyarray(nib.load(grey).dataobj)))),
    }.items():
        image = nib.load(path)
        shape = "x".join(map(str, image.shape))
        name = os.path.basename(path)
        cases[case] = (f"{name} ({shape} {image.get_data_dtype()}, {count} values) -> {size}", path)
    times = {(case, how): [] for case in cases for how in INTERPOLATIONS}
    out = os.path.join(root, "out")
    for round_ in range(args.rounds + 1):  # round 0: the warm-up, not counted
        for case, (_, path) in cases.items():
            for how in INTERPOLATIONS:
                start = time.perf_counter()
                resampling(path, out, size, interpolation=how, **extra)
                if round_:
                    times[case, how].append(time.perf_counter() - start)
    medians = {key: median(samples) for key, samples in times.items()}
    return {
        case: (text, {how: medians[case, how] for how in INTERPOLATIONS}) for case, (text, _) in cases.items()
    }


def preview_rows(args, root):
    shape, size = ((40, 40, 24), (18, 18, 10)) if args.quick else ((512, 512, 300), (224, 224, 128))
    data, affine = ct_phantom(shape, (0.7, 0.7, 1.25), seed=0)
    src = os.path.join(root, "ct.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), src)
    del data
    runs = {"no preview": {}, "preview=True": {"preview": True}}
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, kwargs in runs.items():
            out = os.path.join(root, "out", name.replace("=", "_"))
            results[name].append(whole_process(sys.executable, src, out, size, kwargs, args.threads))
    picture = os.path.join(root, "out", "preview_True", "ct_preview.png")
    if not os.path.isfile(picture):
        raise RuntimeError(f"preview=True wrote no {picture}")
    return "x".join(map(str, shape)), size, results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="pass threads=N where resampling() takes it")
    parser.add_argument("--quick", action="store_true", help="tiny stand-ins, 1 round (the tests')")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1

    with tempfile.TemporaryDirectory() as root:
        labels = label_rows(args, root)
        shape, size, previews = preview_rows(args, root)

    passed = " (threads= passed)" if thread_kwargs(resampling, args.threads) else ""
    print(f"nidataset: {os.path.dirname(sys.modules['nidataset'].__file__)}{passed}")
    print(machine_line(args.rounds))
    print("\n1. resampling() in this process, the call alone (median)")
    for case, (text, seconds) in labels.items():
        ratio = seconds["label"] / seconds["bspline"]
        print(f"   {case}. {text}: label {seconds['label']:.3f} s, bspline {seconds['bspline']:.3f} s")
        label = f"1{case}. label / bspline:"
        print(target_line(label, f"{ratio:.2f}x", "<= 3x", ratio <= 3))
    print(f"\n2. {shape} int16 CT-like -> {size}, each run a whole process (median)")
    print(f"   {'':<16}{'wall':>9}{'call':>9}{'peak RSS':>12}")
    for name, samples in previews.items():
        wall, call, peak = (median(samples, key) for key in ("wall", "call", "peak"))
        print(f"   {name:<16}{wall:>8.2f}s{call:>8.2f}s{peak / 2**20:>8.0f} MiB")
    added = median(previews["preview=True"], "wall") - median(previews["no preview"], "wall")
    paired = statistics.median(
        p["wall"] - n["wall"] for p, n in zip(previews["preview=True"], previews["no preview"], strict=True)
    )
    figure = f"{added:+.2f} s (per-round differences: median {paired:+.2f} s)"
    print(target_line("2. wall added by preview=True:", figure, "<= 1.0 s", added <= 1.0))


if __name__ == "__main__":
    main()
