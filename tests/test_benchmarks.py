"""The benchmark scripts run (in tiny configurations) so that they cannot rot; no timing is asserted."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(script, *args):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dataset_workers_quick():
    out = run("dataset_workers.py", "--quick")
    assert "nidataset workers=1" in out and "nidataset workers=2" in out
    assert "workers=2 vs workers=1:" in out and "workers=2 vs workers=1, one thread:" in out


def test_accuracy_quick():
    out = run("accuracy.py", "--quick")
    worst = out.split("Worst per dtype (engine, as written):")[1].split()
    figures = dict(zip(worst[0::3], worst[1::3], strict=True))
    assert set(figures) == {"uint8", "int16", "uint16", "int32", "float32", "float64"}
    assert all(float(f) < 1e-4 for f in figures.values())  # the acceptance tolerance, before rounding


def test_single_volume_quick(tmp_path):
    plot = tmp_path / "scaling.png"
    out = run("single_volume.py", "--quick", "--plot", str(plot))
    for line in (
        "3. import nidataset.preprocessing:",
        "4. engine alone",
        "SimpleITK / ours:",
        "log-log slope over all sizes:",
    ):
        assert line in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_streaming_quick():
    src = Path(__file__).parent.parent / "src"  # this checkout as the "other" one: the comparison rows run
    out = run("streaming.py", "--quick", "--baseline-src", str(src), "--threads", "1")
    for line in (
        "a. t1.nii.gz: 20x23x19 uint8 -> (40, 46, 38)",
        "wall, baseline checkout / this project:",
        "b. 16x16x16 int16 CT-like -> (60, 60, 60)",
        "b1. peak RSS, this project:",
        "b2. wall, baseline checkout / this project:",
    ):
        assert line in out


def test_executors_quick():
    out = run("executors.py", "--quick")
    for line in (
        "Dask 2 processes x 1 thread",
        "Dask 1 process x 2 threads",
        "ThreadPoolExecutor(2) x resampling()",
        "1. Dask 2 processes x 1 thread: time(workers=2) / time(Dask):",
        "2. Dask 1 process x 2 threads: time(workers=2) / time(Dask):",
        "3. 2 scans, thread pool: time(workers=2) / time(pool):",
    ):
        assert line in out


def test_labels_preview_quick():
    out = run("labels_preview.py", "--quick")
    for line in ("1a. label / bspline:", "1b. label / bspline:", "2. wall added by preview=True:"):
        assert line in out
    assert "uint8, 256 values)" in out  # the grey-matter stand-in has every uint8 value, as the real map does


def test_buckets_quick():
    import pytest

    for module in ("moto.server", "s3fs", "boto3"):
        pytest.importorskip(module)
    out = run("buckets.py", "--quick")
    for line in (
        "b. bucket -> bucket, workers=2",
        "c. transfer alone, s3fs",
        "c. transfer alone, boto3",
        "d. bucket -> bucket, Dask 2 processes x 1 thread",
        "1. workers=2: time(bucket) / max(disk, transfer):",
        "2. Dask 2x1: time(bucket) / max(disk, transfer):",
        "bytes down:",
        "3. peak RSS, S3 -> S3 / local:",
    ):
        assert line in out
