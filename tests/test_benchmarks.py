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
