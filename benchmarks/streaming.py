"""Large outputs: wall time and peak memory of one resampling() that grows a volume, each run a whole process.

a. The MNI152 2009a T1 (uint8, 197x233x189, from nilearn's package data, see _data.py) -> (394, 466, 378):
   this project against nidataset 0.9.1 (and another checkout, ``--baseline-src``).
   Targets: wall >= 12x faster than 0.9.1; peak RSS <= 0.5x 0.9.1's.
b. A 256^3 int16 CT-like volume (``nidataset._phantom.ct_phantom``) -> (1000, 1000, 1000), a 2 GB
   output: this project against another checkout (``--baseline-src``, default /tmp/baseline/src when it
   exists); nidataset 0.9.1 only with ``--with-reference`` (slow). Each output is written to a temporary
   folder and deleted after its run. Targets: peak RSS <= 400 MB; wall not slower than the other checkout.

Each run is ``python -c "from nidataset.preprocessing import resampling; ..."``: start-up and imports
included, peak RSS read from /proc/self/status (VmHWM) of that process. The implementations run
interleaved, round by round, and the figures are medians over the rounds, ratios from the same run.
"This project" is whatever ``nidataset`` the running Python imports (this checkout, or another one put
first on PYTHONPATH); ``--threads N`` passes ``threads=N`` to a resampling() whose signature has it.
MB are 10^6 bytes.

    .venv/bin/python benchmarks/streaming.py                      # a (5 rounds) and b (3 rounds)
    .venv/bin/python benchmarks/streaming.py --parts b --with-reference
    .venv/bin/python benchmarks/streaming.py --baseline-src ../other/src --parts a
    .venv/bin/python benchmarks/streaming.py --quick              # tiny stand-ins, seconds (the tests')
"""

import argparse
import os
import shutil
import sys
import tempfile

import nibabel as nib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (
    default_baseline,
    environment,
    isolated_reference_python,
    machine_line,
    median,
    target_line,
    whole_process,
)
from _data import mni, standin
from nidataset._phantom import ct_phantom

MB = 1e6
OURS, REF, BASE = "this project", "nidataset 0.9.1", "baseline checkout"


def run_rounds(runs, src, root, size, rounds, threads):
    """Interleaved rounds of whole-process runs; each output folder is deleted after its run."""
    results = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (python, env) in runs.items():
            out = tempfile.mkdtemp(prefix="out-", dir=root)
            try:
                results[name].append(whole_process(python, src, out, size, threads=threads, env=env))
            finally:
                shutil.rmtree(out, ignore_errors=True)
    return results


def table(results):
    print(f"{'whole process (median)':<26}{'wall':>9}{'import':>9}{'call':>9}{'peak RSS':>12}")
    for name, samples in results.items():
        print(
            f"{name:<26}{median(samples, 'wall'):>8.2f}s{median(samples, 'imported'):>8.2f}s"
            f"{median(samples, 'call'):>8.2f}s{median(samples, 'peak') / MB:>9.0f} MB"
        )
    for name, samples in results.items():
        used = " (threads= passed)" if samples[0]["threads"] else ""
        print(f"  {name}: {os.path.dirname(samples[0]['where'])}{used}")


def part_a(args, runs, root):
    if args.quick:
        src = standin("t1", os.path.join(root, "t1.nii.gz"), shape=(20, 23, 19))
        size = (40, 46, 38)
    else:
        src = mni("t1")
        size = (394, 466, 378)
    image = nib.load(src)
    shape = "x".join(map(str, image.shape))
    results = run_rounds(runs, src, root, size, args.rounds, args.threads)
    print(f"a. {os.path.basename(src)}: {shape} {image.get_data_dtype()} -> {size}")
    print(machine_line(args.rounds))
    table(results)
    ours = results[OURS]
    if REF in results:
        ref = results[REF]
        faster = median(ref, "wall") / median(ours, "wall")
        memory = median(ours, "peak") / median(ref, "peak")
        print(target_line("a1. wall, 0.9.1 / this project:", f"{faster:.1f}x", ">= 12x", faster >= 12))
        print(target_line("a2. peak RSS, this project / 0.9.1:", f"{memory:.2f}", "<= 0.5", memory <= 0.5))
    if BASE in results:
        base = results[BASE]
        faster = median(base, "wall") / median(ours, "wall")
        memory = median(ours, "peak") / median(base, "peak")
        print(f"    wall, baseline checkout / this project:         {faster:.2f}x")
        print(f"    peak RSS, this project / baseline checkout:     {memory:.2f}")
    print()


def part_b(args, runs, root):
    shape, size = ((16, 16, 16), (60, 60, 60)) if args.quick else ((256, 256, 256), (1000, 1000, 1000))
    data, affine = ct_phantom(shape, (0.7, 0.7, 0.7), seed=0)
    src = os.path.join(root, "ct_cube.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), src)
    del data
    results = run_rounds(runs, src, root, size, args.rounds_big, args.threads)
    megabytes = 2 * size[0] * size[1] * size[2] / MB
    print(f"b. {'x'.join(map(str, shape))} int16 CT-like -> {size} ({megabytes:,.0f} MB as int16)")
    print(machine_line(args.rounds_big))
    table(results)
    ours = results[OURS]
    peak = median(ours, "peak") / MB
    print(target_line("b1. peak RSS, this project:", f"{peak:.0f} MB", "<= 400 MB", peak <= 400))
    if BASE in results:
        base = results[BASE]
        faster = median(base, "wall") / median(ours, "wall")
        memory = median(ours, "peak") / median(base, "peak")
        figure = f"{faster:.2f}x"
        print(target_line("b2. wall, baseline checkout / this project:", figure, ">= 1.0x", faster >= 1.0))
        print(f"    peak RSS, this project / baseline checkout:     {memory:.2f}")
    if REF in results:
        ref = results[REF]
        faster = median(ref, "wall") / median(ours, "wall")
        memory = median(ours, "peak") / median(ref, "peak")
        print(f"    wall, 0.9.1 / this project:                     {faster:.1f}x")
        print(f"    peak RSS, this project / 0.9.1:                 {memory:.2f}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ab", choices=("a", "b", "ab"), help="which parts (default ab)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of part a (default 5)")
    parser.add_argument("--rounds-big", type=int, default=3, help="rounds of part b (default 3)")
    parser.add_argument(
        "--baseline-src",
        help="src folder of another checkout, run with PYTHONPATH (default /tmp/baseline/src if it exists; "
        "'' leaves it out)",
    )
    parser.add_argument("--no-reference", action="store_true", help="leave nidataset 0.9.1 out of part a")
    parser.add_argument("--with-reference", action="store_true", help="add nidataset 0.9.1 to part b")
    parser.add_argument("--threads", type=int, help="pass threads=N where resampling() takes it")
    parser.add_argument("--quick", action="store_true", help="tiny stand-ins, 1 round, no reference")
    args = parser.parse_args()
    baseline = default_baseline(args.baseline_src)
    if args.quick:
        args.rounds, args.rounds_big, args.no_reference, args.with_reference = 1, 1, True, False
        baseline = args.baseline_src or None  # only when asked for
    if baseline and not os.path.isdir(os.path.join(baseline, "nidataset")):
        sys.exit(f"--baseline-src {baseline}: no nidataset package there")

    ours = {OURS: (sys.executable, None)}
    base = {BASE: (sys.executable, environment(baseline))} if baseline else {}
    ref = {}
    if not args.no_reference or args.with_reference:
        ref = {REF: (isolated_reference_python(), environment(isolated=True))}
    with tempfile.TemporaryDirectory() as root:
        if "a" in args.parts:
            part_a(args, {**ours, **({} if args.no_reference else ref), **base}, root)
        if "b" in args.parts:
            part_b(args, {**ours, **base, **(ref if args.with_reference else {})}, root)


if __name__ == "__main__":
    main()
