"""A folder of CT-like scans: nidataset with 1 and 2 workers, and nidataset 0.9.1, side by side.

Each run is a whole process (``python -c "...resampling_dataset(...)"``: start-up and imports included),
runs are interleaved round by round so that all of them see the same machine load, and the figures are
medians over the rounds. The reference runs in its own venv (see _reference.py); ``--no-reference``
leaves it out.

With ``workers=1`` each file is read on one thread while the slab read before is computed on another, so
one process already keeps both cores of a 2-core machine busy. The processes of ``workers=2`` compute on
one thread each. The row "workers=1, one thread" runs the single process that way too (``threads=1``):
against it, ``workers=2`` shows how well processes share the cores.

    .venv/bin/python benchmarks/dataset_workers.py              # 8 scans of 256x256x160 -> 128x128x96
    .venv/bin/python benchmarks/dataset_workers.py --quick      # a tiny configuration (the test suite's)
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import nibabel as nib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _reference import reference_python
from nidataset._phantom import ct_phantom

RUN = """
import time
from nidataset.preprocessing import resampling_dataset
{setup}
start = time.perf_counter()
resampling_dataset({folder!r}, {out!r}, {size!r}, {extra})
print(time.perf_counter() - start)
"""


def timed(python, folder, out, size, extra="", setup=""):
    """Whole-process wall time and the time of the call alone (after the imports), in seconds."""
    shutil.rmtree(out, ignore_errors=True)
    code = RUN.format(folder=folder, out=out, size=size, extra=extra, setup=setup)
    start = time.perf_counter()
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr)
    return wall, float(done.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 160))
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 96))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--quick", action="store_true", help="3 scans of 40x40x24, 1 round, no reference")
    args = parser.parse_args()
    if args.quick:
        args.scans, args.shape, args.size, args.rounds, args.no_reference = (
            3,
            (40, 40, 24),
            (20, 20, 12),
            1,
            True,
        )

    with tempfile.TemporaryDirectory() as root:
        folder = os.path.join(root, "scans")
        os.makedirs(folder)
        for i in range(args.scans):
            data, affine = ct_phantom(args.shape, (0.7, 0.7, 1.25), seed=i)
            nib.save(nib.Nifti1Image(data, affine), os.path.join(folder, f"ct_{i:03d}.nii.gz"))
        size = tuple(args.size)
        runs = {
            "nidataset workers=1": (sys.executable, "progress=False", ""),
            "workers=1, one thread": (sys.executable, "progress=False, threads=1", ""),
            "nidataset workers=2": (sys.executable, "workers=2, progress=False", ""),
        }
        if not args.no_reference:
            runs["nidataset 0.9.1"] = (reference_python(), "", "")
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (python, extra, setup) in runs.items():
                times[name].append(timed(python, folder, os.path.join(root, "out"), size, extra, setup))

    print(
        f"{args.scans} int16 CT-like scans {'x'.join(map(str, args.shape))} -> {size}, {args.rounds} rounds"
    )
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print(f"{'':<22}{'whole process (median)':>24}{'the call alone (median)':>26}")
    medians = {}
    for name, samples in times.items():
        wall = statistics.median(s[0] for s in samples)
        call = statistics.median(s[1] for s in samples)
        medians[name] = (wall, call)
        print(f"{name:<22}{wall:>22.2f} s{call:>24.2f} s")
    one, two = medians["nidataset workers=1"], medians["nidataset workers=2"]
    single = medians["workers=1, one thread"]

    def ratio(slow, fast, digits):
        return (
            f"{slow[0] / fast[0]:.{digits}f}x whole process, {slow[1] / fast[1]:.{digits}f}x the call alone"
        )

    print(f"\nworkers=2 vs workers=1:             {ratio(one, two, 2)}")
    print(f"workers=2 vs workers=1, one thread: {ratio(single, two, 2)}")
    if "nidataset 0.9.1" in medians:
        ref = medians["nidataset 0.9.1"]
        print(f"workers=2 vs 0.9.1:                 {ratio(ref, two, 1)}")
        print(f"workers=1 vs 0.9.1:                 {ratio(ref, one, 1)}")


if __name__ == "__main__":
    main()
