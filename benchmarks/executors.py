"""A folder of scans on other executors: Dask clusters and a thread pool, against ``workers=2``.

32 int16 CT-like scans of 256x256x160 (``ct_phantom``, a seed each) -> (128, 128, 96); the call alone is
timed, inside this one process, with the clusters already started:

- ``resampling_dataset(..., workers=2)``: the reference row (``workers=1`` is shown for context);
- ``executor=client.get_executor()`` of a ``distributed.LocalCluster`` of 2 processes x 1 thread, and of
  1 process x 2 threads (processes=True, no dashboard, ports chosen by the OS);
- on 8 of the scans: ``resampling()`` called per file from a ``ThreadPoolExecutor(2)`` in this process,
  against ``resampling_dataset(workers=2)`` on the same 8.

Targets, as time(reference) / time(row), medians of interleaved rounds: Dask 2x1 >= 0.9, Dask 1x2 >= 0.8,
thread pool >= 0.9. Every configuration runs once before the rounds (Dask workers import nidataset on
first use). ``--threads N`` passes ``threads=N`` to every call whose signature has it (by default nothing
is passed: the library's own default). "This project" is whatever ``nidataset`` this Python imports.

    .venv/bin/python benchmarks/executors.py                 # 32 scans, 5 rounds (a few minutes)
    .venv/bin/python benchmarks/executors.py --quick         # tiny scans, 1 round (the tests')
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_line, median, target_line, thread_kwargs
from nidataset._phantom import ct_phantom
from nidataset.preprocessing import resampling, resampling_dataset

W1, W2 = "workers=1", "workers=2"
DASK21, DASK12 = "Dask 2 processes x 1 thread", "Dask 1 process x 2 threads"
EIGHT_W2, EIGHT_POOL = "workers=2", "ThreadPoolExecutor(2) x resampling()"


def make_scans(folder, count, shape, first=0):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(first, first + count):
        data, affine = ct_phantom(shape, (0.7, 0.7, 1.25), seed=i)
        paths.append(os.path.join(folder, f"ct_{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(data, affine), paths[-1])
    return paths


def start_cluster(workers, threads):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        scheduler_port=0,  # the OS chooses every port: also the scheduler's HTTP routes (default 8787)
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
    )
    return cluster, Client(cluster, set_as_default=False)


def configurations(scans, eight, size, threads, executors):
    """Name -> function of an output folder that runs that configuration."""
    dataset = thread_kwargs(resampling_dataset, threads)
    single = thread_kwargs(resampling, threads)

    def folder(inputs, **options):
        return lambda out: resampling_dataset(inputs, out, size, progress=False, **dataset, **options)

    def pool(out):
        with ThreadPoolExecutor(2) as threads_:
            list(threads_.map(lambda path: resampling(path, out, size, **single), eight))

    runs = {("all", W1): folder(scans), ("all", W2): folder(scans, workers=2)}
    for name, executor in executors.items():
        runs["all", name] = folder(scans, executor=executor)
    runs["eight", EIGHT_W2] = folder(os.path.dirname(eight[0]), workers=2)
    runs["eight", EIGHT_POOL] = pool
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=32)
    parser.add_argument("--subset", type=int, default=8, help="scans of the thread-pool comparison")
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 160))
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 96))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="pass threads=N where the function takes it")
    parser.add_argument("--no-dask", action="store_true", help="leave the Dask clusters out")
    parser.add_argument("--quick", action="store_true", help="4 scans of 40x40x24, 1 round (the tests')")
    args = parser.parse_args()
    if args.quick:
        args.scans, args.subset, args.shape, args.size, args.rounds = 4, 2, (40, 40, 24), (20, 20, 12), 1
    size = tuple(args.size)

    clusters = {}
    try:
        if not args.no_dask:
            clusters[DASK21] = start_cluster(2, 1)
            clusters[DASK12] = start_cluster(1, 2)
        with tempfile.TemporaryDirectory() as root:
            scans = os.path.join(root, "scans")
            make_scans(scans, args.scans, tuple(args.shape))
            eight = os.path.join(root, "subset")
            os.makedirs(eight)
            subset = []
            for name in sorted(os.listdir(scans))[: args.subset]:  # the same files, linked
                subset.append(os.path.join(eight, name))
                os.link(os.path.join(scans, name), subset[-1])
            executors = {name: client.get_executor() for name, (_, client) in clusters.items()}
            runs = configurations(scans, subset, size, args.threads, executors)
            out = os.path.join(root, "out")
            times = {key: [] for key in runs}
            for round_ in range(args.rounds + 1):  # round 0: the warm-up, not counted
                for key, run in runs.items():
                    shutil.rmtree(out, ignore_errors=True)
                    start = time.perf_counter()
                    run(out)
                    elapsed = time.perf_counter() - start
                    if round_:
                        times[key].append(elapsed)
    finally:
        logging.getLogger("distributed").setLevel(logging.ERROR)  # no lines about closing
        for cluster, client in clusters.values():
            client.close()
            cluster.close()

    medians = {key: median(samples) for key, samples in times.items()}
    shape = "x".join(map(str, args.shape))
    print(f"int16 CT-like scans {shape} -> {size}: the call alone, in one process (median)")
    print(machine_line(args.rounds))
    passed = " (threads= passed)" if thread_kwargs(resampling, args.threads) else ""
    print(f"nidataset: {os.path.dirname(sys.modules['nidataset'].__file__)}{passed}\n")
    for (group, name), seconds in medians.items():
        count = args.scans if group == "all" else args.subset
        print(f"  {count:>2} scans, {name:<40}{seconds:>8.2f} s")
    print()
    w2 = medians["all", W2]
    print(f"    workers=1 / workers=2 ({args.scans} scans): {medians['all', W1] / w2:.2f}x (context)")
    width = 66
    for number, (name, target) in enumerate(((DASK21, 0.9), (DASK12, 0.8)), 1):
        if ("all", name) in medians:
            ratio = w2 / medians["all", name]
            label = f"{number}. {name}: time(workers=2) / time(Dask):"
            print(target_line(label, f"{ratio:.2f}", f">= {target}", ratio >= target, width))
    ratio = medians["eight", EIGHT_W2] / medians["eight", EIGHT_POOL]
    label = f"3. {args.subset} scans, thread pool: time(workers=2) / time(pool):"
    print(target_line(label, f"{ratio:.2f}", ">= 0.9", ratio >= 0.9, width))


if __name__ == "__main__":
    main()
